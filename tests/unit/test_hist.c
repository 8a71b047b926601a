/* test_hist.c - the latency histogram: buckets tile the whole range without
 * gaps, quantiles land within a bucket's width (12.5%) of the true value
 * where a log2 histogram was off by up to 2x, and count, mean, min, max,
 * merge and the JSON stay exact. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/hist.h"
#include "check.h"

/* |got - want| within frac of want */
static int near(uint64_t got, double want, double frac) { return fabs((double)got - want) <= frac * want; }

static int by_value(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

int main(void)
{
	/* The buckets tile [0, 2^64): each starts where the one before ends. */
	uint64_t lo, hi, prev_hi = 0;
	int tiled = 1;
	for (unsigned i = 0; i < HIST_BUCKETS; i++) {
		hist_bucket_range(i, &lo, &hi);
		tiled &= lo == prev_hi && hi > lo && (lo < HIST_SUB || (double)(hi - lo) <= (double)lo / HIST_SUB);
		prev_hi = hi;
	}
	CHECK(tiled);
	CHECK(prev_hi == UINT64_MAX);

	struct hist h;
	hist_init(&h);
	CHECK(hist_quantile_ns(&h, 0.5) == 0);

	/* 10,000 samples spread log-uniformly over 1 us .. 100 ms. */
	enum { N = 10000 };
	static uint64_t v[N];
	srand(7);
	uint64_t sum = 0, mn = UINT64_MAX, mx = 0;
	for (int i = 0; i < N; i++) {
		v[i] = (uint64_t)(1000.0 * pow(1e5, (double)rand() / RAND_MAX));
		hist_add(&h, v[i]);
		sum += v[i];
		mn = v[i] < mn ? v[i] : mn;
		mx = v[i] > mx ? v[i] : mx;
	}
	qsort(v, N, sizeof v[0], by_value);
	CHECK(h.count == N && h.sum_ns == sum && h.min_ns == mn && h.max_ns == mx);
	const double qs[] = { 0.01, 0.1, 0.5, 0.9, 0.99 };
	for (size_t k = 0; k < sizeof qs / sizeof qs[0]; k++) {
		uint64_t got = hist_quantile_ns(&h, qs[k]), want = v[(size_t)(qs[k] * N)];
		CHECK(near(got, (double)want, 0.125));
		if (!near(got, (double)want, 0.125))
			fprintf(stderr, "  q %.2f: %llu ns, the samples' %llu\n", qs[k], (unsigned long long)got,
				(unsigned long long)want);
	}
	CHECK(hist_quantile_ns(&h, 1.0) <= mx && hist_quantile_ns(&h, 0.0) >= mn);

	/* One value: every quantile is that value (min and max clamp it). */
	struct hist one;
	hist_init(&one);
	hist_add(&one, 12345678);
	CHECK(hist_quantile_ns(&one, 0.5) == 12345678 && hist_quantile_ns(&one, 0.99) == 12345678);

	/* Small values have a bucket each. */
	struct hist small;
	hist_init(&small);
	for (uint64_t x = 0; x < HIST_SUB; x++)
		hist_add(&small, x);
	for (unsigned i = 0; i < HIST_SUB; i++)
		CHECK(small.b[i] == 1);

	/* Merge adds counts and keeps the extremes. */
	struct hist m;
	hist_init(&m);
	hist_merge(&m, &h);
	hist_merge(&m, &one);
	CHECK(m.count == N + 1 && m.sum_ns == sum + 12345678 && m.min_ns == mn && m.max_ns == mx);

	/* JSON: the count, and bucket keys that are lower bounds in microseconds. */
	char buf[65536];
	FILE *f = fmemopen(buf, sizeof buf, "w");
	hist_json(&one, f);
	fclose(f);
	CHECK(strstr(buf, "\"count\":1,") != NULL);
	CHECK(strstr(buf, "\"p50_us\":12345.68") != NULL);
	CHECK(strstr(buf, "\"buckets_us\":{\"11534.3\":1}") != NULL); /* 11 * 2^20 ns */
	if (!strstr(buf, "\"buckets_us\":{\"11534.3\":1}"))
		fprintf(stderr, "  json: %s\n", buf);
	return check_summary("test_hist");
}
