/* blobcat.c - drive one lazy blob from the command line, for benches and
 * tests: pull it all (hydrate), read it sequentially, or make random reads,
 * and print one JSON line with throughput and per-read latency. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../common/err.h"
#include "../../common/timeutil.h"
#include "../../objstore/blob.h"

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static int parse_size(const char *s, uint64_t *v)
{
	char *e;
	*v = strtoull(s, &e, 10);
	if (*e == 'K' || *e == 'k')
		*v <<= 10;
	else if (*e == 'M' || *e == 'm')
		*v <<= 20;
	else if (*e == 'G' || *e == 'g')
		*v <<= 30;
	else if (*e)
		return -1;
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: blobcat URL [--mode hydrate|seq|random] [--part N] [--jobs N] [--count N]\n"
		   "               [--read-size N] [--cache DIR] [--out FILE] [--seed N]\n"
		   "  hydrate  fetch every chunk with --jobs in flight (ranged-GET throughput)\n"
		   "  seq      read start to end in --read-size demand reads (default 1M)\n"
		   "  random   --count reads of --read-size (default 4K) at random offsets\n"
		   "  --part N chunk size for plain objects (default 1M)\n"
		   "  --out F  write what was read (seq) or the whole blob (hydrate) to F\n");
}

int main(int argc, char **argv)
{
	const char *mode = "hydrate", *cache = NULL, *out = NULL;
	uint64_t part = 1 << 20, jobs = 16, count = 200, rsize = 0, seed = 1;
	static const struct option opts[] = { { "mode", 1, 0, 'm' }, { "part", 1, 0, 'p' }, { "jobs", 1, 0, 'j' },
					      { "count", 1, 0, 'n' }, { "read-size", 1, 0, 'r' }, { "cache", 1, 0, 'c' },
					      { "out", 1, 0, 'o' }, { "seed", 1, 0, 's' }, { "help", 0, 0, 'h' },
					      { 0, 0, 0, 0 } };
	int c;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		int bad = 0;
		switch (c) {
		case 'm': mode = optarg; break;
		case 'p': bad = parse_size(optarg, &part); break;
		case 'j': bad = parse_size(optarg, &jobs); break;
		case 'n': bad = parse_size(optarg, &count); break;
		case 'r': bad = parse_size(optarg, &rsize); break;
		case 's': bad = parse_size(optarg, &seed); break;
		case 'c': cache = optarg; break;
		case 'o': out = optarg; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
		if (bad) {
			fprintf(stderr, "blobcat: bad number '%s'\n", optarg);
			return 2;
		}
	}
	if (argc - optind != 1) {
		usage(stderr);
		return 2;
	}
	struct thaw_url u;
	struct store *s;
	struct store_config cfg;
	store_config_default(&cfg);
	cfg.max_inflight = (int)jobs;
	if (url_parse(argv[optind], &u) < 0 || store_open(&u, &cfg, &s) < 0) {
		fprintf(stderr, "blobcat: %s\n", err_msg());
		return 1;
	}
	struct blob_opts o;
	blob_opts_default(&o);
	o.jobs = (int)jobs;
	o.bg_jobs = (int)jobs;
	o.plain_chunk_size = part;
	o.cache_dir = cache;
	struct blob *b;
	uint64_t t0 = now_ns();
	if (blob_open(s, u.key, &o, &b) < 0) {
		fprintf(stderr, "blobcat: %s\n", err_msg());
		return 1;
	}
	uint64_t t_open = now_ns() - t0, size = blob_size(b), bytes = 0;
	uint64_t *lat = NULL, nlat = 0, *cold = NULL, ncold = 0;
	int rc = 0;
	uint64_t t1 = now_ns();
	if (!strcmp(mode, "hydrate")) {
		rc = blob_hydrate_start(b, NULL, 0);
		if (rc == 0)
			rc = blob_hydrate_wait(b, 600000);
		bytes = size;
	} else if (!strcmp(mode, "seq") || !strcmp(mode, "random")) {
		int seq = !strcmp(mode, "seq");
		if (!rsize)
			rsize = seq ? 1 << 20 : 4096;
		uint64_t n = seq ? (size + rsize - 1) / rsize : count;
		lat = malloc((n + 1) * sizeof *lat);
		cold = malloc((n + 1) * sizeof *cold);
		char *buf = malloc(rsize);
		FILE *of = out && seq ? fopen(out, "w") : NULL;
		unsigned rs = (unsigned)seed;
		for (uint64_t i = 0; i < n && rc == 0; i++) {
			uint64_t off = seq ? i * rsize : ((uint64_t)rand_r(&rs) << 31 ^ (uint64_t)rand_r(&rs)) % (size > rsize ? size - rsize : 1);
			if (!seq)
				off &= ~4095ull;
			struct blob_stats s0, s1;
			blob_get_stats(b, &s0);
			uint64_t ts = now_ns();
			ssize_t got = blob_read(b, buf, rsize, off, PRIO_DEMAND);
			lat[nlat++] = now_ns() - ts;
			blob_get_stats(b, &s1);
			if (s1.fetches > s0.fetches) /* this read waited for the store: a cold read */
				cold[ncold++] = lat[nlat - 1];
			if (got < 0) {
				rc = (int)got;
				break;
			}
			bytes += (uint64_t)got;
			if (of)
				fwrite(buf, 1, (size_t)got, of);
		}
		if (of)
			fclose(of);
		free(buf);
	} else {
		fprintf(stderr, "blobcat: unknown mode '%s'\n", mode);
		return 2;
	}
	double secs = (double)(now_ns() - t1) / 1e9;
	if (rc < 0) {
		fprintf(stderr, "blobcat: %s\n", err_msg());
		return 1;
	}
	if (out && !strcmp(mode, "hydrate")) {
		FILE *of = fopen(out, "w");
		char *buf = malloc(1 << 20);
		for (uint64_t off = 0; of && off < size; off += 1 << 20) {
			ssize_t got = blob_read(b, buf, 1 << 20, off, PRIO_DEMAND);
			if (got > 0)
				fwrite(buf, 1, (size_t)got, of);
		}
		if (of)
			fclose(of);
		free(buf);
	}
	struct blob_stats st;
	blob_get_stats(b, &st);
	if (nlat)
		qsort(lat, nlat, sizeof *lat, cmp_u64);
	if (ncold)
		qsort(cold, ncold, sizeof *cold, cmp_u64);
	printf("{\"mode\":\"%s\",\"size\":%llu,\"bytes\":%llu,\"secs\":%.4f,\"MBps\":%.1f,\"open_ms\":%.2f,"
	       "\"fetched\":%llu,\"fetches\":%llu,\"gets\":%llu,\"reads\":%llu,\"p50_us\":%.0f,\"p99_us\":%.0f,"
	       "\"first_us\":%.0f,\"cold_reads\":%llu,\"cold_p50_us\":%.0f,\"cold_p99_us\":%.0f}\n",
	       mode, (unsigned long long)size, (unsigned long long)bytes, secs, secs > 0 ? (double)bytes / secs / 1e6 : 0,
	       (double)t_open / 1e6, (unsigned long long)st.bytes_fetched, (unsigned long long)st.fetches,
	       (unsigned long long)atomic_load(&s->stats.gets), (unsigned long long)nlat,
	       nlat ? (double)lat[nlat / 2] / 1e3 : 0, nlat ? (double)lat[nlat * 99 / 100] / 1e3 : 0,
	       nlat ? (double)lat[0] / 1e3 : 0, (unsigned long long)ncold,
	       ncold ? (double)cold[ncold / 2] / 1e3 : 0, ncold ? (double)cold[ncold * 99 / 100] / 1e3 : 0);
	free(lat);
	free(cold);
	blob_close(b);
	store_close(s);
	return 0;
}
