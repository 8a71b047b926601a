/* cmd_stat.c - `thaw stat URL`: what an image or object is, from its index
 * alone (one or two GETs): size, chunking, zero fraction, dedup savings. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "../common/progress.h"
#include "../common/json.h"
#include "../objstore/blob.h"
#include "cli.h"

int cmd_stat(int argc, char **argv)
{
	int json = 0;
	static const struct option opts[] = { { "json", 0, 0, 'J' }, { "help", 0, 0, 'h' }, { 0, 0, 0, 0 } };
	int c;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'J': json = 1; break;
		case 'h':
			printf("usage: thaw stat URL [--json]\n\nDescribe a thaw image (size, chunk size, chunks "
			       "stored, zero fraction, dedup\nsavings) or a plain object (size, ETag).\n");
			return 0;
		default: return 2;
		}
	}
	if (argc - optind != 1) {
		fprintf(stderr, "usage: thaw stat URL [--json]\n");
		return 2;
	}
	struct store *s;
	char key[STORE_KEY_MAX];
	if (cli_open(argv[optind], 0, &s, key, sizeof key) < 0)
		return cli_fail("stat");
	struct blob *b;
	if (blob_open(s, key, NULL, &b) < 0) {
		store_close(s);
		return cli_fail("stat");
	}
	const struct img_index *ix = blob_index(b);
	uint64_t size = blob_size(b), zero = 0, stored = 0, refs = 0;
	if (ix) {
		for (uint64_t i = 0; i < ix->nchunks; i++)
			zero += ix->map[i] == 0;
		refs = ix->nchunks - zero;
		stored = ix->nunique;
	}
	uint64_t cs = blob_chunk_size(b);
	uint64_t zero_bytes = 0, dedup_bytes = 0;
	if (ix) {
		for (uint64_t i = 0; i < ix->nchunks; i++)
			if (!ix->map[i])
				zero_bytes += img_chunk_len(ix, i);
		dedup_bytes = (refs - stored) * cs; /* the short last chunk is never a repeat */
	}
	uint64_t stored_bytes = size - zero_bytes - dedup_bytes;
	double zf = size ? (double)zero_bytes / (double)size : 0;
	if (json) {
		printf("{\"url\":");
		json_write_str(stdout, argv[optind]);
		printf(",\"kind\":\"%s\",\"size\":%llu,\"etag\":", ix ? "thaw-image" : "object",
		       (unsigned long long)size);
		json_write_str(stdout, blob_etag(b));
		if (ix)
			printf(",\"chunk_size\":%llu,\"chunks\":%llu,\"chunks_zero\":%llu,\"chunks_stored\":%llu,"
			       "\"zero_fraction\":%.4f,\"dedup_saved_bytes\":%llu,\"stored_bytes\":%llu",
			       (unsigned long long)cs, (unsigned long long)ix->nchunks, (unsigned long long)zero,
			       (unsigned long long)stored, zf, (unsigned long long)dedup_bytes,
			       (unsigned long long)stored_bytes);
		if (ix)
			printf(",\"format\":%d,\"sub_block\":%llu", ix->sub ? 2 : 1,
			       ix->sub ? 1ull << ix->sub_shift : 0ull);
		printf("}\n");
	} else {
		char a[32], d[32], st[32];
		fmt_bytes((double)size, a, sizeof a);
		printf("url:            %s\nkind:           %s\nsize:           %llu (%s)\netag:           %s\n",
		       argv[optind], !ix ? "plain object" : ix->sub ? "thaw image (format 2)" : "thaw image (format 1)",
		       (unsigned long long)size, a, blob_etag(b));
		if (ix) {
			fmt_bytes((double)dedup_bytes, d, sizeof d);
			fmt_bytes((double)stored_bytes, st, sizeof st);
			printf("chunk size:     %llu KiB\nchunks:         %llu\nzero chunks:    %llu (%.1f%% of the "
			       "bytes, not stored)\nchunks stored:  %llu (%s)\ndedup savings:  %llu repeated chunks "
			       "(%s)\n",
			       (unsigned long long)(cs >> 10), (unsigned long long)ix->nchunks, (unsigned long long)zero,
			       100 * zf, (unsigned long long)stored, st, (unsigned long long)(refs - stored), d);
			if (ix->sub)
				printf("sub-block:      %llu KiB (hashed each: a random read fetches one)\n",
				       (unsigned long long)((1ull << ix->sub_shift) >> 10));
		}
	}
	blob_close(b);
	store_close(s);
	return 0;
}
