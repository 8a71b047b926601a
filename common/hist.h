/* hist.h - a lock-free log2 latency histogram (in the spirit of QEMU's
 * postcopy-latency-dist): bucket k counts samples in [2^k, 2^(k+1)) ns, so a
 * whole distribution fits in 64 counters and recording is one atomic add.
 * Readers may snapshot while writers record; totals may lag by a sample. */
#ifndef THAW_HIST_H
#define THAW_HIST_H

#include <stdint.h>
#include <stdio.h>

#define HIST_BUCKETS 64

struct hist {
	uint64_t count, sum_ns, max_ns, min_ns; /* min_ns 0 = no sample yet */
	uint64_t b[HIST_BUCKETS];
};

void hist_init(struct hist *h);
void hist_add(struct hist *h, uint64_t ns);
/* Fold src into dst (both may be live; dst gets a snapshot of src). */
void hist_merge(struct hist *dst, const struct hist *src);
/* Consistent-enough copy for reporting. */
void hist_snapshot(const struct hist *h, struct hist *out);
/* The q-quantile (0..1) estimated at the upper edge of its bucket, capped by max. */
uint64_t hist_quantile_ns(const struct hist *h, double q);
/* JSON object: count, mean/min/max/p50/p90/p99 in microseconds, and the
 * non-empty buckets as {"<lower bound in us>": count, ...}. */
void hist_json(const struct hist *h, FILE *f);

#endif
