/* hist.c - log-linear histogram (see hist.h).  Every field is updated with relaxed
 * atomics: samples come from fault threads while SIGUSR1 dumps read them. */
#include <string.h>

#include "hist.h"

#define LD(p) __atomic_load_n(p, __ATOMIC_RELAXED)
#define ADD(p, v) __atomic_fetch_add(p, v, __ATOMIC_RELAXED)

void hist_init(struct hist *h) { memset(h, 0, sizeof *h); }

/* Below HIST_SUB, one bucket per value; above, the top HIST_SUB_BITS + 1 bits
 * pick it: the power of two, then which of its HIST_SUB slices. */
static unsigned bucket_of(uint64_t ns)
{
	if (ns < HIST_SUB)
		return (unsigned)ns;
	unsigned k = 63u - (unsigned)__builtin_clzll(ns); /* >= HIST_SUB_BITS */
	unsigned sub = (unsigned)(ns >> (k - HIST_SUB_BITS)) & (HIST_SUB - 1);
	return (k - HIST_SUB_BITS + 1) * HIST_SUB + sub;
}

void hist_bucket_range(unsigned i, uint64_t *lo, uint64_t *hi)
{
	if (i < HIST_SUB) {
		*lo = i;
		*hi = i + 1;
		return;
	}
	unsigned k = i / HIST_SUB + HIST_SUB_BITS - 1, sub = i % HIST_SUB;
	uint64_t step = 1ull << (k - HIST_SUB_BITS);
	*lo = (1ull << k) + sub * step;
	*hi = *lo + step; /* wraps to 0 only for the very last bucket */
	if (*hi == 0)
		*hi = UINT64_MAX;
}

static void store_max(uint64_t *p, uint64_t v)
{
	uint64_t cur = LD(p);
	while (v > cur && !__atomic_compare_exchange_n(p, &cur, v, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
		;
}

static void store_min(uint64_t *p, uint64_t v)
{
	uint64_t cur = LD(p);
	while ((cur == 0 || v < cur) &&
	       !__atomic_compare_exchange_n(p, &cur, v ? v : 1, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
		;
}

void hist_add(struct hist *h, uint64_t ns)
{
	ADD(&h->b[bucket_of(ns)], 1);
	ADD(&h->sum_ns, ns);
	store_max(&h->max_ns, ns);
	store_min(&h->min_ns, ns);
	ADD(&h->count, 1); /* last, so a reader never sees a count without its bucket */
}

void hist_snapshot(const struct hist *h, struct hist *out)
{
	for (unsigned i = 0; i < HIST_BUCKETS; i++)
		out->b[i] = LD(&h->b[i]);
	out->sum_ns = LD(&h->sum_ns);
	out->max_ns = LD(&h->max_ns);
	out->min_ns = LD(&h->min_ns);
	out->count = 0;
	for (unsigned i = 0; i < HIST_BUCKETS; i++)
		out->count += out->b[i];
}

void hist_merge(struct hist *dst, const struct hist *src)
{
	struct hist s;
	hist_snapshot(src, &s);
	if (!s.count)
		return;
	for (unsigned i = 0; i < HIST_BUCKETS; i++)
		ADD(&dst->b[i], s.b[i]);
	ADD(&dst->sum_ns, s.sum_ns);
	store_max(&dst->max_ns, s.max_ns);
	store_min(&dst->min_ns, s.min_ns);
	ADD(&dst->count, s.count);
}

uint64_t hist_quantile_ns(const struct hist *h, double q)
{
	uint64_t n = 0, seen = 0;
	for (unsigned i = 0; i < HIST_BUCKETS; i++)
		n += h->b[i];
	if (!n)
		return 0;
	uint64_t want = (uint64_t)(q * (double)n);
	if (want >= n)
		want = n - 1;
	for (unsigned i = 0; i < HIST_BUCKETS; i++) {
		if (seen + h->b[i] > want) {
			uint64_t lo, hi;
			hist_bucket_range(i, &lo, &hi);
			/* The want-th sample of this bucket's, spread evenly over it. */
			double frac = ((double)(want - seen) + 0.5) / (double)h->b[i];
			uint64_t v = lo + (uint64_t)(frac * (double)(hi - lo));
			if (h->max_ns && v > h->max_ns)
				v = h->max_ns;
			if (v < h->min_ns)
				v = h->min_ns;
			return v;
		}
		seen += h->b[i];
	}
	return h->max_ns;
}

void hist_json(const struct hist *h, FILE *f)
{
	struct hist s;
	hist_snapshot(h, &s);
	fprintf(f, "{\"count\":%llu,\"mean_us\":%.2f,\"min_us\":%.2f,\"max_us\":%.2f,\"p50_us\":%.2f,"
		   "\"p90_us\":%.2f,\"p99_us\":%.2f,\"buckets_us\":{",
		(unsigned long long)s.count, s.count ? (double)s.sum_ns / (double)s.count / 1e3 : 0.0,
		(double)s.min_ns / 1e3, (double)s.max_ns / 1e3, (double)hist_quantile_ns(&s, 0.5) / 1e3,
		(double)hist_quantile_ns(&s, 0.9) / 1e3, (double)hist_quantile_ns(&s, 0.99) / 1e3);
	int first = 1;
	for (unsigned i = 0; i < HIST_BUCKETS; i++) {
		if (!s.b[i])
			continue;
		/* Keys are bucket lower bounds in microseconds, like postcopy-latency-dist's. */
		uint64_t lo, hi;
		hist_bucket_range(i, &lo, &hi);
		fprintf(f, "%s\"%g\":%llu", first ? "" : ",", (double)lo / 1e3, (unsigned long long)s.b[i]);
		first = 0;
	}
	fprintf(f, "}}");
}
