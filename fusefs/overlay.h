/* overlay.h - the copy-on-write layer of a `thaw mount --rw` file.
 *
 * The blob underneath is read-only, so writes land here: one sparse data file
 * and a dirty-chunk map per file, under <cache>/overlay/<xxh64(location)>/.
 * The first write to a chunk copies the whole chunk in (the caller fetches the
 * base bytes first unless the write covers the chunk); from then on that chunk
 * is read and written here only.  Nothing is ever uploaded, and dirty chunks
 * are never evicted.
 *
 * Durability follows the cache's rule: a map entry is written only after an
 * fdatasync of the data file has made the copied-in chunk durable, so a crash
 * can lose writes nobody fsync'ed but never turns a chunk to garbage.
 * overlay_sync() (fsync, close, and a timer) records what is pending.
 *
 * An overlay is tied to the version of the object it was made over.  If the
 * object changed, or the map is damaged, opening it fails: thaw would rather
 * refuse a file than silently drop or misplace someone's writes. */
#ifndef THAW_FUSEFS_OVERLAY_H
#define THAW_FUSEFS_OVERLAY_H

#include <stddef.h>
#include <stdint.h>

struct overlay;

/* Open the overlay of `loc` (store location + key) made over ETag base_etag,
 * for an object of `size` bytes in chunks of `cs`; create it if `create`,
 * else *out = NULL when there is none (a read-only mount still shows what an
 * earlier --rw mount wrote). */
int overlay_open(const char *root, const char *loc, const char *base_etag, uint64_t size, uint64_t cs, int create,
		 struct overlay **out);
void overlay_close(struct overlay *o);

int overlay_dirty(const struct overlay *o, uint64_t idx);
uint64_t overlay_ndirty(const struct overlay *o);
const char *overlay_dir(const struct overlay *o);

/* Read [off, off+len); every chunk touched must be dirty. */
int overlay_read(struct overlay *o, void *buf, size_t len, uint64_t off);
/* Copy chunk idx in (its full content, len bytes) and mark it dirty. */
int overlay_install(struct overlay *o, uint64_t idx, const void *buf, size_t len);
/* Write [off, off+len); every chunk touched must be dirty. */
int overlay_write(struct overlay *o, const void *buf, size_t len, uint64_t off);
/* Make every write so far durable and every dirty chunk recorded. */
int overlay_sync(struct overlay *o);

#endif
