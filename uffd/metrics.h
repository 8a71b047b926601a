/* metrics.h - what the uffd server measures, per connection and in total.
 *
 * Per fault: service latency from the moment the fault message was read to
 * the moment the faulting thread was woken, and how it was served (from
 * memory, after a fetch from the store, as zeros, already there, or poisoned).
 * Per connection: blocked time (sum of fault latencies, and wall time during
 * which at least one fault was outstanding, QEMU's "blocktime" idea), pusher
 * progress, and the time from handshake to the first fault served and to
 * the transfer being complete.  Written as JSON by metrics_write(). */
#ifndef THAW_UFFD_METRICS_H
#define THAW_UFFD_METRICS_H

#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "../common/hist.h"

enum fault_kind {
	FK_MEMORY = 0, /* chunk already fetched: installed straight away */
	FK_STORE,      /* had to wait for a fetch */
	FK_ZERO,       /* zero chunk, or a page the balloon removed */
	FK_DUP,        /* page already installed (a second thread, or the pusher won) */
	FK_POISON,     /* chunk could not be fetched: answered with UFFDIO_POISON */
	FK_UNKNOWN,    /* address outside every region: served zero */
	FK_COUNT
};

/* Every counter is updated with relaxed atomics: the fault thread and the
 * pusher write, a SIGUSR1 dump reads. */
struct sess_metrics {
	int id;
	pid_t pid;
	uid_t uid;
	char state[16];             /* "handshake", "serving", "complete", "ended", "refused" */
	char refused[256];          /* why a handshake was refused */
	uint64_t nregions, bytes_total;
	uint64_t page_size_min, page_size_max;

	uint64_t faults[FK_COUNT];
	struct hist lat, lat_kind[FK_COUNT];
	uint64_t blocked_sum_ns;    /* sum of fault latencies */
	uint64_t blocked_any_ns;    /* wall time with >= 1 fault outstanding */
	uint64_t deferred;          /* faults retried after EAGAIN (events pending) */

	uint64_t ev_remove, ev_unmap, ev_remap, ev_fork, removed_bytes;
	uint64_t bytes_fault;       /* installed on behalf of faults (whole blocks) */
	uint64_t bytes_push;        /* installed by the pusher */
	uint64_t bytes_zero;        /* of those, zero pages */
	uint64_t bytes_poisoned;
	uint64_t bytes_done;        /* installed + removed + unmapped + poisoned */
	uint64_t ws_recorded;       /* chunks in the working-set record */
	uint64_t ws_prefetch;       /* chunks in the prefetch set used */

	/* Monotonic ns; 0 = not (yet) happened. */
	uint64_t t_accept, t_handshake, t_first_fault, t_push_start, t_push_end, t_complete, t_end;
};

void metrics_fault(struct sess_metrics *m, enum fault_kind k, uint64_t lat_ns);
void metrics_add(uint64_t *counter, uint64_t v);
uint64_t metrics_get(const uint64_t *counter);
void metrics_set_time(uint64_t *t, uint64_t ns); /* only the first time */

/* Emit one connection's metrics as a JSON object. */
void metrics_session_json(const struct sess_metrics *m, FILE *f);
/* Fold a connection into a running total (counters and histograms). */
void metrics_fold(struct sess_metrics *total, const struct sess_metrics *m);

#endif
