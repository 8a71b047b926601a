/* record.c - the working set of a resume (REAP, ASPLOS'21): the chunks a
 * client touched, in the order it first touched them, stored as one small
 * object so that a later resume of the same image can fetch them in bulk as
 * it starts (--prefetch) instead of one fault at a time.
 *
 * Object layout, little-endian:
 *   0   8  magic "THAWWSET"
 *   8   4  version (1)
 *   12  4  chunk_shift of the image it was recorded against
 *   16  8  image size in bytes
 *   24  8  count
 *   32  4*count  chunk indices, first touch first
 *   ..  8  XXH3-64 of all the bytes before it
 * A set recorded against a different size or chunking is refused on load
 * (the indices would name the wrong bytes). */
#include <stdlib.h>
#include <string.h>

#include "../common/err.h"
#include "../common/log.h"
#include "../common/xxh.h"
#include "session.h"

#define WS_MAGIC "THAWWSET"
#define WS_VERSION 1
#define WS_HDR 32
#define WS_MAX (64u << 20) /* 16M chunks: far beyond any image's chunk count we accept */

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}
static void put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get32(const uint8_t *p)
{
	uint32_t v = 0;
	for (int i = 3; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}
static uint64_t get64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

int ws_encode(const uint32_t *idx, size_t n, uint32_t chunk_shift, uint64_t image_size, void **out, size_t *len)
{
	size_t total = WS_HDR + 4 * n + 8;
	uint8_t *b = malloc(total);
	if (!b)
		return err_set(ENOMEM, "out of memory for a working set of %zu chunks", n);
	memcpy(b, WS_MAGIC, 8);
	put32(b + 8, WS_VERSION);
	put32(b + 12, chunk_shift);
	put64(b + 16, image_size);
	put64(b + 24, n);
	for (size_t i = 0; i < n; i++)
		put32(b + WS_HDR + 4 * i, idx[i]);
	put64(b + total - 8, XXH3_64bits(b, total - 8));
	*out = b;
	*len = total;
	return 0;
}

int ws_decode(const void *buf, size_t len, uint32_t chunk_shift, uint64_t image_size, uint64_t nchunks,
	      uint64_t **out, size_t *n)
{
	const uint8_t *b = buf;
	*out = NULL;
	*n = 0;
	if (len < WS_HDR + 8 || memcmp(b, WS_MAGIC, 8))
		return err_set(EINVAL, "not a thaw working-set object (bad magic)");
	if (get32(b + 8) != WS_VERSION)
		return err_set(EINVAL, "working-set version %u is not supported", get32(b + 8));
	uint64_t count = get64(b + 24);
	if (count > (len - WS_HDR - 8) / 4 || WS_HDR + 4 * count + 8 != len)
		return err_set(EINVAL, "working set claims %llu chunks but holds %zu bytes", (unsigned long long)count,
			       len);
	if (XXH3_64bits(b, len - 8) != get64(b + len - 8))
		return err_set(EINVAL, "working set fails its checksum");
	if (get32(b + 12) != chunk_shift || get64(b + 16) != image_size)
		return err_set(EINVAL,
			       "working set was recorded for a %llu-byte image in %u-byte chunks, this one is %llu bytes "
			       "in %llu-byte chunks",
			       (unsigned long long)get64(b + 16), 1u << (get32(b + 12) & 31), (unsigned long long)image_size,
			       1ull << chunk_shift);
	uint64_t *v = malloc((count ? count : 1) * sizeof *v);
	uint8_t *seen = calloc(nchunks / 8 + 1, 1);
	if (!v || !seen) {
		free(v);
		free(seen);
		return err_set(ENOMEM, "out of memory");
	}
	size_t k = 0;
	for (uint64_t i = 0; i < count; i++) {
		uint32_t c = get32(b + WS_HDR + 4 * i);
		if (c >= nchunks) {
			free(v);
			free(seen);
			return err_set(EINVAL, "working set names chunk %u of an image with %llu chunks", c,
				       (unsigned long long)nchunks);
		}
		if (seen[c / 8] & (1u << (c % 8)))
			continue;
		seen[c / 8] |= (uint8_t)(1u << (c % 8));
		v[k++] = c;
	}
	free(seen);
	*out = v;
	*n = k;
	return 0;
}

void record_touch(struct session *s, uint64_t chunk)
{
	if (!s->recording || chunk > UINT32_MAX || (s->rec_seen[chunk / 8] & (1u << (chunk % 8))))
		return;
	if (s->nrec == s->rec_cap) {
		size_t nc = s->rec_cap ? s->rec_cap * 2 : 256;
		uint32_t *n = realloc(s->rec, nc * sizeof *n);
		if (!n)
			return; /* a shorter record is still a record */
		s->rec = n;
		s->rec_cap = nc;
	}
	s->rec_seen[chunk / 8] |= (uint8_t)(1u << (chunk % 8));
	s->rec[s->nrec++] = (uint32_t)chunk;
	metrics_add(&s->m->ws_recorded, 1);
}

int record_save(struct session *s)
{
	void *buf;
	size_t len;
	s->rec_saved = 1;
	uint32_t shift = (uint32_t)__builtin_ctzll(blob_chunk_size(s->blob));
	int rc = ws_encode(s->rec, s->nrec, shift, blob_size(s->blob), &buf, &len);
	if (rc == 0) {
		rc = userver_store_ws(s->srv, buf, len);
		free(buf);
	}
	if (rc < 0)
		log_error("connection %d: working set not saved: %s", s->id, err_msg());
	else
		log_info("connection %d: working set saved: %zu chunks (%.1f MiB) to %s", s->id, s->nrec,
			 (double)s->nrec * (double)blob_chunk_size(s->blob) / 1048576.0, userver_cfg(s->srv)->record_url);
	return rc;
}
