/* test_format.c - the image index codec: round trips of versions 1 and 2,
 * and every way a damaged index must be refused (truncation, bit flips,
 * lying header fields, sub-block hashes where there are no bytes). */
#include <stdlib.h>
#include <string.h>

#include "../../common/err.h"
#include "../../objstore/format.h"
#include "check.h"

static void build(struct img_index *ix, uint64_t size, uint32_t shift)
{
	memset(ix, 0, sizeof *ix);
	ix->size = size;
	ix->chunk_shift = shift;
	ix->nchunks = (size + (1ull << shift) - 1) >> shift;
	ix->map = calloc(ix->nchunks + 1, 4);
	ix->hashes = calloc(ix->nchunks + 1, 16);
	for (uint64_t i = 0; i < ix->nchunks; i++) {
		if (i % 3 == 1)
			continue; /* zero chunk */
		if (i % 3 == 2 && i + 1 < ix->nchunks) {
			ix->map[i] = 1; /* a repeat of the first stored chunk */
			continue;
		}
		char data[64];
		memset(data, (int)i, sizeof data);
		img_hash_chunk(data, sizeof data, &ix->hashes[ix->nunique]);
		ix->map[i] = (uint32_t)++ix->nunique;
	}
}

/* Version 2: sub-block hashes of 2^sub_shift bytes (made up, but 0 exactly
 * past the end of a short last chunk, as the format requires). */
static void add_subs(struct img_index *ix, uint32_t sub_shift)
{
	ix->sub_shift = sub_shift;
	uint64_t subs = 1ull << (ix->chunk_shift - sub_shift);
	ix->sub = calloc(ix->nunique * subs + 1, 8);
	for (uint64_t k = 0; k < ix->nunique * subs; k++)
		ix->sub[k] = 0x9e3779b97f4a7c15ull * (k + 1);
	uint64_t last = ix->nchunks ? ix->map[ix->nchunks - 1] : 0;
	uint64_t used = ix->nchunks ? (img_chunk_len(ix, ix->nchunks - 1) + (1ull << sub_shift) - 1) >> sub_shift : 0;
	for (uint64_t j = used; last && j < subs; j++)
		ix->sub[(last - 1) * subs + j] = 0;
}

/* 1 if img_decode refuses every truncation of the len-byte index p. */
static int all_truncations_refused(const uint8_t *p, size_t len)
{
	struct img_index out;
	for (size_t cut = 0; cut < len; cut += (cut < 200 ? 1 : 97))
		if (img_decode(p, cut, &out) == 0) {
			img_index_free(&out);
			return 0;
		}
	return 1;
}

/* 1 if img_decode catches a flip of every step-th bit (by a field check or the checksum). */
static int all_flips_caught(const uint8_t *p, size_t len, size_t step)
{
	struct img_index out;
	uint8_t *bad = malloc(len);
	int ok = 1;
	for (size_t bit = 0; ok && bit < len * 8; bit += step) {
		memcpy(bad, p, len);
		bad[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		if (img_decode(bad, len, &out) == 0) {
			ok = 0;
			img_index_free(&out);
		}
	}
	free(bad);
	return ok;
}

static uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static void wr32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void wr64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

int main(void)
{
	struct img_index ix, out;
	void *enc;
	size_t len;

	/* Round trips at several sizes, including empty and one byte. */
	uint64_t sizes[] = { 0, 1, 4096, 4097, 10 << 20, (10 << 20) + 123 };
	for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
		build(&ix, sizes[k], 12);
		CHECK_RC(img_encode(&ix, &enc, &len));
		CHECK(img_is_index(enc, len));
		uint64_t ilen = 0;
		CHECK(img_header_len(enc, IMG_HEADER_LEN, &ilen) == 0 && ilen == len);
		CHECK_RC(img_decode(enc, len, &out));
		CHECK(out.size == ix.size && out.nchunks == ix.nchunks && out.nunique == ix.nunique);
		CHECK(!memcmp(out.map, ix.map, 4 * ix.nchunks));
		CHECK(!memcmp(out.hashes, ix.hashes, 16 * ix.nunique));
		CHECK(out.sub == NULL && out.sub_shift == 0 && ((uint8_t *)enc)[8] == 1);
		img_index_free(&out);
		free(enc);
		/* The same with sub-block hashes: version 2. */
		add_subs(&ix, 12);
		CHECK_RC(img_encode(&ix, &enc, &len));
		CHECK(((uint8_t *)enc)[8] == IMG_VERSION);
		CHECK(img_header_len(enc, IMG_HEADER_LEN, &ilen) == 0 && ilen == len);
		CHECK_RC(img_decode(enc, len, &out));
		CHECK(out.sub_shift == ix.sub_shift && img_subs_per_chunk(&out) == img_subs_per_chunk(&ix));
		CHECK(!memcmp(out.map, ix.map, 4 * ix.nchunks));
		CHECK(!memcmp(out.sub, ix.sub, 8 * ix.nunique * img_subs_per_chunk(&ix)));
		img_index_free(&out);
		free(enc);
		img_index_free(&ix);
	}
	/* 13-bit chunks of 12-bit sub-blocks, a short last chunk of one
	 * sub-block: its second hash must be 0. */
	{
		build(&ix, (3 << 13) + 100, 13);
		add_subs(&ix, 12);
		CHECK(ix.map[3] != 0);
		CHECK_RC(img_encode(&ix, &enc, &len));
		CHECK_RC(img_decode(enc, len, &out));
		img_index_free(&out);
		free(enc);
		ix.sub[(ix.map[3] - 1) * 2 + 1] = 7;
		CHECK_RC(img_encode(&ix, &enc, &len));
		CHECK(img_decode(enc, len, &out) < 0 && strstr(err_msg(), "past the short last chunk"));
		/* A sub-block larger than the chunk, checksum recomputed. */
		ix.sub[(ix.map[3] - 1) * 2 + 1] = 0;
		free(enc);
		CHECK_RC(img_encode(&ix, &enc, &len));
		wr32((uint8_t *)enc + 56, 14);
		CHECK(img_decode(enc, len, &out) < 0 && strstr(err_msg(), "sub-block size"));
		wr32((uint8_t *)enc + 56, 12);
		wr32((uint8_t *)enc + 60, 1);
		CHECK(img_decode(enc, len, &out) < 0 && strstr(err_msg(), "reserved"));
		free(enc);
		img_index_free(&ix);
	}

	build(&ix, 1 << 20, 12);
	CHECK_RC(img_encode(&ix, &enc, &len));
	uint8_t *p = enc, *bad = malloc(len + 16);

	/* Every truncation is refused; every single bit flip is caught. */
	CHECK(all_truncations_refused(p, len));
	CHECK(img_decode(p, len - 1, &out) < 0 && strstr(err_msg(), "truncated"));
	CHECK(all_flips_caught(p, len, 7));

	/* Header fields that lie, with the checksum recomputed so only the field check can catch them. */
	memcpy(bad, p, len);
	memcpy(bad, "THAWIMX", 7);
	CHECK(img_decode(bad, len, &out) < 0 && strstr(err_msg(), "magic"));
	memcpy(bad, p, len);
	bad[8] = 9;
	CHECK(img_decode(bad, len, &out) == -EPROTONOSUPPORT && strstr(err_msg(), "version 9"));
	memcpy(bad, p, len);
	bad[24] = 40; /* chunk shift */
	CHECK(img_decode(bad, len, &out) < 0 && strstr(err_msg(), "chunk size"));
	memcpy(bad, p, len);
	wr64(bad + 16, rd64(bad + 16) * 4); /* size no longer matches nchunks */
	CHECK(img_decode(bad, len, &out) < 0 && strstr(err_msg(), "chunks but size"));
	memcpy(bad, p, len);
	wr64(bad + 40, rd64(bad + 32) + 1); /* more unique than chunks */
	CHECK(img_decode(bad, len, &out) < 0 && strstr(err_msg(), "unique"));
	memcpy(bad, p, len);
	wr64(bad + 48, 1ull << 62); /* absurd index length */
	CHECK(img_decode(bad, len, &out) < 0 && strstr(err_msg(), "index length"));
	uint64_t il;
	CHECK(img_header_len(bad, len, &il) < 0);
	memcpy(bad, p, len);
	wr64(bad + 56, 1); /* reserved */
	CHECK(img_decode(bad, len, &out) < 0 && strstr(err_msg(), "reserved"));

	/* A map entry pointing past the hash table, with a valid checksum. */
	{
		struct img_index ev = ix;
		uint32_t *m = malloc(4 * ix.nchunks);
		memcpy(m, ix.map, 4 * ix.nchunks);
		m[0] = (uint32_t)ix.nunique + 5;
		ev.map = m;
		void *e2;
		size_t l2;
		CHECK_RC(img_encode(&ev, &e2, &l2));
		CHECK(img_decode(e2, l2, &out) < 0 && strstr(err_msg(), "refers to unique chunk"));
		free(e2);
		free(m);
	}
	/* Padding after a valid index is refused too (the length is exact). */
	memcpy(bad, p, len);
	CHECK(img_decode(bad, len + 8, &out) < 0);

	/* Zero detection and chunk keys. */
	uint8_t z[8192] = { 0 };
	CHECK(img_is_zero(z, sizeof z) && img_is_zero(z, 3) && img_is_zero(z, 0));
	z[8191] = 1;
	CHECK(!img_is_zero(z, sizeof z));
	z[8191] = 0;
	z[17] = 1;
	CHECK(!img_is_zero(z, sizeof z));
	char key[128];
	img_chunk_key(&ix.hashes[0], key, sizeof key);
	CHECK(!strncmp(key, ".thaw/chunks/", 13) && strlen(key) == 13 + 3 + 32 && key[15] == '/' &&
	      !strncmp(key + 13, key + 16, 2));

	free(bad);
	free(enc);
	img_index_free(&ix);

	/* Version 2: every truncation and every bit flip is refused. */
	build(&ix, 1 << 20, 14);
	add_subs(&ix, 12);
	CHECK_RC(img_encode(&ix, &enc, &len));
	CHECK(all_truncations_refused(enc, len));
	CHECK(all_flips_caught(enc, len, 5));
	free(enc);
	img_index_free(&ix);
	return check_summary("test_format");
}
