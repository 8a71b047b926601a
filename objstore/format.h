/* format.h - the thaw image index codec (docs/FORMAT.md is the byte-level spec).
 *
 * An image is one index object at the image's key plus content-addressed chunk
 * objects at ".thaw/chunks/<32 hex of XXH3-128>" under the store root.  All-zero
 * chunks are not stored.  The index is small and self-checking: a fixed header,
 * a chunk map (u32 per chunk: 0 = zero chunk, k = k-th unique chunk), a table of
 * unique chunk hashes, in version 2 the XXH3-64 of every sub-block of each
 * unique chunk (so a reader can fetch and check part of a chunk), and an
 * XXH3-64 trailer over everything before it. */
#ifndef THAW_FORMAT_H
#define THAW_FORMAT_H

#include <stddef.h>
#include <stdint.h>

#define IMG_MAGIC "THAWIMG\0"
#define IMG_VERSION 2      /* what img_encode writes when the index has sub-block hashes */
#define IMG_VERSION_MIN 1  /* the oldest still read */
#define IMG_HEADER_LEN 64
#define IMG_TRAILER_LEN 8
#define IMG_HASH_XXH3_128 1
#define IMG_MIN_SHIFT 12 /* 4 KiB */
#define IMG_MAX_SHIFT 26 /* 64 MiB */
/* The first GET of an image reads this much; a larger index needs one more. */
#define IMG_PROBE_LEN (64u << 10)
#define IMG_CHUNK_PREFIX ".thaw/chunks/"
/* Sub-blocks of version 2: the least a cold random read of an image fetches. */
#define IMG_SUB_SHIFT_DEFAULT 16 /* 64 KiB */

struct img_hash {
	uint8_t b[16]; /* XXH3-128 in canonical (big-endian) form */
};

struct img_index {
	uint64_t size;       /* logical size of the file the image was pushed from */
	uint32_t chunk_shift;
	uint64_t nchunks;    /* ceil(size / chunk size) */
	uint64_t nunique;
	uint32_t *map;       /* nchunks entries: 0 = zero chunk, else 1 + index into hashes */
	struct img_hash *hashes; /* nunique entries */
	/* Version 2: sub-block size 2^sub_shift (IMG_MIN_SHIFT..chunk_shift) and
	 * per unique chunk img_subs_per_chunk() XXH3-64s of its sub-blocks
	 * (sub[(k-1) * subs + j] for entry k; 0 past a short chunk's end).
	 * Version 1: sub_shift 0 and sub NULL. */
	uint32_t sub_shift;
	uint64_t *sub;
};

static inline uint64_t img_chunk_size(const struct img_index *ix) { return 1ull << ix->chunk_shift; }
/* Length of chunk i (the last may be short). */
static inline uint64_t img_chunk_len(const struct img_index *ix, uint64_t i)
{
	uint64_t cs = img_chunk_size(ix), off = i * cs;
	return ix->size - off < cs ? ix->size - off : cs;
}

static inline uint64_t img_subs_per_chunk(const struct img_index *ix)
{
	return ix->sub ? 1ull << (ix->chunk_shift - ix->sub_shift) : 0;
}
/* The XXH3-64s of a chunk's subs sub-blocks of 2^sub_shift bytes into
 * out[0..subs), 0 for those past len. */
void img_sub_hash(const void *chunk, size_t len, uint32_t sub_shift, uint64_t subs, uint64_t *out);

/* Does buf start with the image magic (then it is an image, maybe a damaged one)? */
int img_is_index(const void *buf, size_t len);
/* Total index length announced by a header (validated against the other header
 * fields), or <0 with err_msg() if the header is malformed. */
int img_header_len(const void *buf, size_t len, uint64_t *index_len);
/* Parse a whole index.  Every field is bounds-checked; on success ix owns its
 * arrays (free with img_index_free). */
int img_decode(const void *buf, size_t len, struct img_index *ix);
/* Serialize; *out is malloc'd. */
int img_encode(const struct img_index *ix, void **out, size_t *outlen);
void img_index_free(struct img_index *ix);

void img_hash_chunk(const void *data, size_t len, struct img_hash *h);
void img_hash_hex(const struct img_hash *h, char out[33]);
/* The store key of a stored chunk. */
void img_chunk_key(const struct img_hash *h, char *key, size_t n);
int img_is_zero(const void *data, size_t len);

#endif
