/* hist.h - a lock-free log-linear latency histogram (in the spirit of QEMU's
 * postcopy-latency-dist, with HDR-style sub-buckets): each power of two of
 * nanoseconds is split into HIST_SUB equal buckets, so a bucket spans at
 * most 1/HIST_SUB of its lower bound (12.5%), a distribution fits in a few
 * hundred counters, and recording is one atomic add.  Readers may snapshot
 * while writers record; totals may lag by a sample. */
#ifndef THAW_HIST_H
#define THAW_HIST_H

#include <stdint.h>
#include <stdio.h>

#define HIST_SUB_BITS 3
#define HIST_SUB (1u << HIST_SUB_BITS)
/* Values below HIST_SUB get a bucket each; then HIST_SUB per power of two. */
#define HIST_BUCKETS ((64 - HIST_SUB_BITS + 1) * HIST_SUB)

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
/* The q-quantile (0..1): interpolated by rank inside its bucket, within
 * [min, max] (so off by at most the bucket's width, 12.5%). */
uint64_t hist_quantile_ns(const struct hist *h, double q);
/* Bucket i's range of nanoseconds: [lo, hi). */
void hist_bucket_range(unsigned i, uint64_t *lo, uint64_t *hi);
/* JSON object: count, mean/min/max/p50/p90/p99 in microseconds, and the
 * non-empty buckets as {"<lower bound in us>": count, ...}. */
void hist_json(const struct hist *h, FILE *f);

#endif
