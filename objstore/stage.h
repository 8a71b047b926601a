/* stage.h - write-behind staging of freshly fetched chunks, for the cache.
 *
 * A chunk fetched for a reader that keeps its own copy (a FUSE mount) goes
 * into a slot of memory, is served from there, and is written to the cache's
 * data file with O_DIRECT by one writer thread.  Written through the page
 * cache instead, every byte was copied once more and took a fresh page that
 * the kernel then had to write back and drop; that was a third of the mount
 * daemon's CPU on a cold sequential read.
 *
 * A slot is freed once its chunk is both written and served, or, written
 * and unserved (readahead nobody read yet, hydration), when the pool needs
 * room or has been idle for ten seconds.  A chunk with no slot is in the data
 * file: its bytes were written before the slot went, or were never staged
 * (no room, the short last chunk, a file system without O_DIRECT), in which
 * case the caller wrote them itself.  Disk blocks are allocated when a slot
 * is taken, so a full disk fails the fetch, as a buffered write would, and
 * not the write behind it. */
#ifndef THAW_STAGE_H
#define THAW_STAGE_H

#include <stddef.h>
#include <stdint.h>

struct stage;

/* Called on the writer thread once chunk idx's bytes are in the data file
 * (err 0), or could not be put there (err < 0; the slot then stays, so its
 * bytes are still served, and the chunk is never recorded). */
typedef void (*stage_done_fn)(void *arg, uint64_t idx, uint64_t sum, int err);

/* path: the data file (opened again with O_DIRECT); cap: bytes of slots at
 * most.  -EINVAL (and no stage) when O_DIRECT or the chunk size does not allow
 * it; the cache then writes as before. */
int stage_open(const char *path, uint64_t cs, uint64_t size, size_t cap, stage_done_fn done, void *arg,
	       struct stage **out);
/* Waits (bounded) for queued writes; their done() calls come first. */
void stage_close(struct stage *s);
/* Bytes [p, p+n) at offset at within chunk idx.  1: staged; 0: not staged,
 * write them yourself; < 0: error (the disk is full). */
int stage_write(struct stage *s, uint64_t idx, uint64_t at, const void *p, size_t n);
/* Chunk idx is complete (sum goes back through done): 1 if staged, and so
 * queued for its write; 0 if not staged. */
int stage_commit(struct stage *s, uint64_t idx, uint64_t sum);
/* For chunks first..last: ptr[i - first] = its staged bytes, pinned until
 * stage_unpin, or NULL if the chunk has no slot (its bytes are on disk).
 * Returns how many were pinned; *unwritten: whether any pinned one is not on
 * disk yet. */
int stage_pin(struct stage *s, uint64_t first, uint64_t last, const uint8_t **ptr, int *unwritten);
/* ptr as stage_pin filled it, or NULL when every chunk was pinned. */
void stage_unpin(struct stage *s, uint64_t first, uint64_t last, const uint8_t **ptr);
/* The reader has its own copy of chunks first..last. */
void stage_served(struct stage *s, uint64_t first, uint64_t last);
/* Wait up to timeout_ms for every committed chunk to be written; 0 once
 * none is waiting, -ETIMEDOUT otherwise. */
int stage_drain(struct stage *s, int timeout_ms);

#endif
