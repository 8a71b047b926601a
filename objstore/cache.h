/* cache.h - the persistent chunk cache behind a lazy blob (thaw mount --cache).
 *
 * One directory per object version under the cache root, named from the store
 * location, the key and the ETag, so a changed object never meets stale bytes:
 *   <root>/<xxh64(location)>-<xxh64(etag)>/data   sparse file, the object's bytes
 *   <root>/<...>/map                             header + one u64 per chunk
 * A map entry is the XXH3-64 of the chunk as committed (0 = absent).  Entries
 * are written only after an fdatasync of the data file has made the chunk's
 * bytes durable (a flusher batches that), and every recorded chunk is read
 * back and checked against its entry before its bytes are first served after
 * an open: a chunk damaged by a crash or by hand is simply fetched again.  A map from another thaw version, or one whose
 * header does not match the object, is discarded and rebuilt. */
#ifndef THAW_CACHE_H
#define THAW_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "format.h"
#include "store.h"

struct cache;

int cache_open(const char *root, struct store *s, const char *key, const char *etag, uint64_t size,
	       uint64_t chunk_size, int writable, struct cache **out);
/* The map's entries: sums[i] is chunk i's recorded XXH3-64, 0 if absent.
 * Nothing is verified here (opening a large cache stays cheap): check a
 * chunk with cache_check before its bytes are first used. */
int cache_load_map(struct cache *c, uint64_t *sums);
/* 0 if chunk idx's bytes in the data file hash to sum; else -EBADMSG (the
 * entry is cleared, so the chunk counts as absent from now on) or another
 * error reading them. */
int cache_check(struct cache *c, uint64_t idx, uint64_t sum);
/* Write chunk idx's verified bytes; durable (and recorded) at the next flush. */
int cache_commit(struct cache *c, uint64_t idx, const void *buf, uint64_t len);
/* The same in two steps, for bytes that arrive as a stream: write any piece
 * at its object offset, then record a chunk whose bytes are all written,
 * with the XXH3-64 of them (sum_of makes 0 a valid hash). */
int cache_write(struct cache *c, const void *buf, size_t len, uint64_t off);
int cache_record(struct cache *c, uint64_t idx, uint64_t xxh3_64);
/* The same for chunks idx..idx+n-1. */
int cache_record_run(struct cache *c, uint64_t idx, const uint64_t *sums, size_t n);
int cache_read(struct cache *c, void *buf, size_t len, uint64_t off);
/* on: drop a chunk's pages from the page cache once it is durable and has
 * been served (cache_served), whichever comes second.  For a reader that
 * keeps its own copy of what it reads (FUSE's page cache), so the bytes are
 * not held in memory twice; re-reading them from the data file then goes to
 * disk.  Call before the cache is shared (and before cache_load_map). */
void cache_drop_durable(struct cache *c, int on);
/* [off, off+len) has been handed to the reader, which keeps its own copy:
 * mark the chunks it covers whole as served, and drop the aligned groups of
 * chunks that are now durable and served throughout. */
void cache_served(struct cache *c, uint64_t off, uint64_t len);
/* Make every committed chunk durable and recorded now. */
int cache_flush(struct cache *c);
const char *cache_dir(const struct cache *c);
/* The data file (bytes at their object offsets), for splicing reads from it. */
int cache_data_fd(const struct cache *c);
void cache_close(struct cache *c);

#endif
