/* readahead.h - the readahead window of one open file.
 *
 * Sequential reads open a window ahead of the reader that starts at `min`
 * and doubles each time it is topped up, up to `max` (mountpoint-s3 grows its
 * prefetch the same way); a read that lands away from where the stream was
 * going resets it.  The kernel sends its own readahead from several threads,
 * so "sequential" tolerates a little reordering (RA_SLACK).
 *
 * Pure arithmetic: the caller locks and turns the answer into chunk requests. */
#ifndef THAW_FUSEFS_READAHEAD_H
#define THAW_FUSEFS_READAHEAD_H

#include <stdint.h>

#define RA_SLACK (4ull << 20)

struct ra {
	uint64_t next;   /* where a sequential reader reads next */
	uint64_t issued; /* readahead has been asked for up to here */
	uint64_t win;
	uint64_t min, max;
	uint64_t reads;  /* reads seen since the last reset */
};

void ra_init(struct ra *r, uint64_t min, uint64_t max);
/* A read of [off, off+len) of a file of `size` bytes arrived.  Returns 1 and
 * sets [*from, *to) when that range should be requested ahead, else 0. */
int ra_advance(struct ra *r, uint64_t off, uint64_t len, uint64_t size, uint64_t *from, uint64_t *to);

#endif
