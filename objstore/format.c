/* format.c - encode/decode the thaw image index; see format.h and docs/FORMAT.md.
 * The decoder trusts nothing: every length is checked before it is used, in
 * 64-bit arithmetic that cannot overflow for lengths below 2^63. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/err.h"
#include "../common/xxh.h"
#include "format.h"

static uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return le32toh(v); }
static uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return le64toh(v); }
static void wr32(uint8_t *p, uint32_t v) { v = htole32(v); memcpy(p, &v, 4); }
static void wr64(uint8_t *p, uint64_t v) { v = htole64(v); memcpy(p, &v, 8); }

int img_is_index(const void *buf, size_t len)
{
	/* The magic alone decides: a short object that starts with it is a
	 * truncated image (and gets that error), not a plain object. */
	return len >= 8 && !memcmp(buf, IMG_MAGIC, 8);
}

/* Header fields, once validated. */
struct hdr {
	uint64_t size, nchunks, nunique, index_len, subs;
	uint32_t shift, sub_shift;
};

static uint64_t index_len_of(uint64_t nchunks, uint64_t nunique, uint64_t subs)
{
	return IMG_HEADER_LEN + 4 * nchunks + 16 * nunique + 8 * subs * nunique + IMG_TRAILER_LEN;
}

static int parse_header(const uint8_t *p, size_t len, struct hdr *h)
{
	if (len < IMG_HEADER_LEN)
		return err_set(EINVAL, "image index truncated: %zu bytes, header needs %d", len, IMG_HEADER_LEN);
	if (memcmp(p, IMG_MAGIC, 8))
		return err_set(EINVAL, "not a thaw image (bad magic)");
	uint32_t ver = rd32(p + 8), hlen = rd32(p + 12);
	if (ver < IMG_VERSION_MIN || ver > IMG_VERSION)
		return err_set(EPROTONOSUPPORT,
			       "thaw image version %u is not supported (this thaw reads versions %d to %d)", ver,
			       IMG_VERSION_MIN, IMG_VERSION);
	if (hlen != IMG_HEADER_LEN)
		return err_set(EINVAL, "image header length %u, expected %d", hlen, IMG_HEADER_LEN);
	h->size = rd64(p + 16);
	h->shift = rd32(p + 24);
	uint32_t alg = rd32(p + 28);
	h->nchunks = rd64(p + 32);
	h->nunique = rd64(p + 40);
	h->index_len = rd64(p + 48);
	/* Version 1 reserves the last 8 bytes; version 2 keeps the sub-block
	 * shift in the first 4 of them. */
	h->sub_shift = ver >= 2 ? rd32(p + 56) : 0;
	if (rd32(p + 60) != 0 || (ver < 2 && rd32(p + 56) != 0))
		return err_set(EINVAL, "image header: reserved field is not zero");
	if (alg != IMG_HASH_XXH3_128)
		return err_set(EINVAL, "image header: unknown hash algorithm %u", alg);
	if (h->shift < IMG_MIN_SHIFT || h->shift > IMG_MAX_SHIFT)
		return err_set(EINVAL, "image header: chunk size 2^%u out of range [2^%d, 2^%d]", h->shift,
			       IMG_MIN_SHIFT, IMG_MAX_SHIFT);
	if (ver >= 2 && (h->sub_shift < IMG_MIN_SHIFT || h->sub_shift > h->shift))
		return err_set(EINVAL, "image header: sub-block size 2^%u out of range [2^%d, 2^%u]", h->sub_shift,
			       IMG_MIN_SHIFT, h->shift);
	h->subs = ver >= 2 ? 1ull << (h->shift - h->sub_shift) : 0;
	if (h->size > (1ull << 50))
		return err_set(EINVAL, "image header: size %llu beyond 1 PiB", (unsigned long long)h->size);
	uint64_t want = (h->size + (1ull << h->shift) - 1) >> h->shift;
	if (h->nchunks != want)
		return err_set(EINVAL, "image header: %llu chunks but size %llu needs %llu",
			       (unsigned long long)h->nchunks, (unsigned long long)h->size,
			       (unsigned long long)want);
	if (h->nunique > h->nchunks)
		return err_set(EINVAL, "image header: %llu unique chunks exceed %llu chunks",
			       (unsigned long long)h->nunique, (unsigned long long)h->nchunks);
	uint64_t expect = index_len_of(h->nchunks, h->nunique, h->subs);
	if (h->index_len != expect)
		return err_set(EINVAL, "image header: index length %llu, fields imply %llu",
			       (unsigned long long)h->index_len, (unsigned long long)expect);
	return 0;
}

int img_header_len(const void *buf, size_t len, uint64_t *index_len)
{
	struct hdr h;
	int rc = parse_header(buf, len, &h);
	if (rc < 0)
		return rc;
	*index_len = h.index_len;
	return 0;
}

int img_decode(const void *buf, size_t len, struct img_index *ix)
{
	const uint8_t *p = buf;
	struct hdr h;
	memset(ix, 0, sizeof *ix);
	int rc = parse_header(p, len, &h);
	if (rc < 0)
		return rc;
	if (len != h.index_len)
		return err_set(EINVAL, "image index is %zu bytes, header says %llu (truncated or padded)", len,
			       (unsigned long long)h.index_len);
	uint64_t sum = rd64(p + len - IMG_TRAILER_LEN);
	if (XXH3_64bits(p, len - IMG_TRAILER_LEN) != sum)
		return err_set(EINVAL, "image index checksum mismatch (corrupt index)");
	ix->size = h.size;
	ix->chunk_shift = h.shift;
	ix->nchunks = h.nchunks;
	ix->nunique = h.nunique;
	ix->sub_shift = h.sub_shift;
	ix->map = malloc((h.nchunks ? h.nchunks : 1) * sizeof *ix->map);
	ix->hashes = malloc((h.nunique ? h.nunique : 1) * sizeof *ix->hashes);
	if (h.subs)
		ix->sub = malloc((h.nunique ? h.nunique * h.subs : 1) * sizeof *ix->sub);
	if (!ix->map || !ix->hashes || (h.subs && !ix->sub)) {
		img_index_free(ix);
		return err_set(ENOMEM, "out of memory for an index of %llu chunks", (unsigned long long)h.nchunks);
	}
	const uint8_t *m = p + IMG_HEADER_LEN;
	for (uint64_t i = 0; i < h.nchunks; i++) {
		uint32_t v = rd32(m + 4 * i);
		if (v > h.nunique) {
			img_index_free(ix);
			return err_set(EINVAL, "image index: chunk %llu refers to unique chunk %u of %llu",
				       (unsigned long long)i, v, (unsigned long long)h.nunique);
		}
		ix->map[i] = v;
	}
	memcpy(ix->hashes, m + 4 * h.nchunks, 16 * h.nunique);
	const uint8_t *sp = m + 4 * h.nchunks + 16 * h.nunique;
	for (uint64_t i = 0; i < h.nunique * h.subs; i++)
		ix->sub[i] = rd64(sp + 8 * i);
	/* A short last chunk must not share an entry with full-size chunks:
	 * the entry's length would be ambiguous. */
	if (h.nchunks && img_chunk_len(ix, h.nchunks - 1) != img_chunk_size(ix)) {
		uint32_t last = ix->map[h.nchunks - 1];
		for (uint64_t i = 0; last && i + 1 < h.nchunks; i++)
			if (ix->map[i] == last) {
				img_index_free(ix);
				return err_set(EINVAL, "image index: short last chunk shares its entry with chunk %llu",
					       (unsigned long long)i);
			}
		/* Its sub-blocks past the end have no bytes to hash. */
		uint64_t used = (img_chunk_len(ix, h.nchunks - 1) + (1ull << h.sub_shift) - 1) >> h.sub_shift;
		for (uint64_t j = used; last && j < h.subs; j++)
			if (ix->sub[(last - 1) * h.subs + j]) {
				img_index_free(ix);
				return err_set(EINVAL, "image index: sub-block %llu past the short last chunk's end has a hash",
					       (unsigned long long)j);
			}
	}
	return 0;
}

int img_encode(const struct img_index *ix, void **out, size_t *outlen)
{
	uint64_t subs = img_subs_per_chunk(ix);
	size_t len = index_len_of(ix->nchunks, ix->nunique, subs);
	uint8_t *p = calloc(1, len);
	if (!p)
		return err_set(ENOMEM, "out of memory encoding index");
	memcpy(p, IMG_MAGIC, 8);
	wr32(p + 8, ix->sub ? IMG_VERSION : 1);
	wr32(p + 12, IMG_HEADER_LEN);
	wr64(p + 16, ix->size);
	wr32(p + 24, ix->chunk_shift);
	wr32(p + 28, IMG_HASH_XXH3_128);
	wr64(p + 32, ix->nchunks);
	wr64(p + 40, ix->nunique);
	wr64(p + 48, len);
	if (ix->sub)
		wr32(p + 56, ix->sub_shift);
	for (uint64_t i = 0; i < ix->nchunks; i++)
		wr32(p + IMG_HEADER_LEN + 4 * i, ix->map[i]);
	memcpy(p + IMG_HEADER_LEN + 4 * ix->nchunks, ix->hashes, 16 * ix->nunique);
	uint8_t *sp = p + IMG_HEADER_LEN + 4 * ix->nchunks + 16 * ix->nunique;
	for (uint64_t i = 0; i < ix->nunique * subs; i++)
		wr64(sp + 8 * i, ix->sub[i]);
	wr64(p + len - IMG_TRAILER_LEN, XXH3_64bits(p, len - IMG_TRAILER_LEN));
	*out = p;
	*outlen = len;
	return 0;
}

void img_index_free(struct img_index *ix)
{
	free(ix->map);
	free(ix->hashes);
	free(ix->sub);
	ix->map = NULL;
	ix->hashes = NULL;
	ix->sub = NULL;
}

void img_sub_hash(const void *chunk, size_t len, uint32_t sub_shift, uint64_t subs, uint64_t *out)
{
	const uint8_t *p = chunk;
	size_t bs = (size_t)1 << sub_shift;
	for (uint64_t j = 0; j < subs; j++) {
		size_t off = (size_t)j << sub_shift;
		out[j] = off < len ? XXH3_64bits(p + off, len - off < bs ? len - off : bs) : 0;
	}
}

void img_hash_chunk(const void *data, size_t len, struct img_hash *h)
{
	XXH128_hash_t x = XXH3_128bits(data, len);
	XXH128_canonical_t c;
	XXH128_canonicalFromHash(&c, x);
	memcpy(h->b, c.digest, 16);
}

void img_hash_hex(const struct img_hash *h, char out[33])
{
	static const char hx[] = "0123456789abcdef";
	for (int i = 0; i < 16; i++) {
		out[2 * i] = hx[h->b[i] >> 4];
		out[2 * i + 1] = hx[h->b[i] & 15];
	}
	out[32] = 0;
}

void img_chunk_key(const struct img_hash *h, char *key, size_t n)
{
	char hex[33];
	img_hash_hex(h, hex);
	snprintf(key, n, IMG_CHUNK_PREFIX "%.2s/%s", hex, hex);
}

int img_is_zero(const void *data, size_t len)
{
	const uint8_t *p = data;
	/* Compare 8 bytes at a time, then the buffer against itself shifted. */
	if (len < 16) {
		for (size_t i = 0; i < len; i++)
			if (p[i])
				return 0;
		return 1;
	}
	uint64_t a, b;
	memcpy(&a, p, 8);
	memcpy(&b, p + 8, 8);
	if (a | b)
		return 0;
	return !memcmp(p, p + 16, len - 16);
}
