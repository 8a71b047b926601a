/* blob.h - the lazy blob: "give me bytes [off, off+len)" over a remote object,
 * fetched chunk by chunk on demand.  fusefs/ and uffd/ both sit on this.
 *
 * A blob is either a thaw image (chunks are content-addressed objects, checked
 * against their XXH3-128 on arrival; zero chunks cost nothing) or a plain object
 * (chunks are ranged GETs pinned to the ETag seen at open).  A plain object's
 * chunks are small, so a random read costs little, and queued neighbours share
 * one long GET whose chunks are streamed into the backing and published one
 * by one as they land: a reader waits for its chunk, not for the whole GET.
 *
 * Each chunk is fetched at most once at a time however many threads wait for
 * it (single flight).  Pending fetches wait in three queues, served strictly
 * in order: demand > readahead > background; a demand for a chunk queued at a
 * lower priority promotes it.  At most opts.jobs fetches run at once.
 *
 * Bytes live in a backing: anonymous memory (MAP_NORESERVE, the uffd server's
 * choice: it installs straight from there) or, with opts.cache_dir, a persistent
 * cache directory (a sparse data file and a chunk map per object version; see
 * cache.h).  A chunk is "present" only after its bytes passed verification and
 * were committed to the backing; a chunk found in the cache at open counts as
 * present and is checked against the cache map when it is first used. */
#ifndef THAW_BLOB_H
#define THAW_BLOB_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "format.h"
#include "store.h"

enum blob_prio { PRIO_DEMAND = 0, PRIO_READAHEAD = 1, PRIO_BACKGROUND = 2, PRIO_COUNT };

struct blob_opts {
	int jobs;                 /* fetches in flight (default 16) */
	uint64_t plain_chunk_size;/* chunk size for plain objects (a power of two): the least a
	                             cold random read fetches; 0 (the default): by the object's
	                             size, 64 KiB doubled until it has at most 2^20 chunks */
	const char *cache_dir;    /* NULL: anonymous-memory backing; else persistent cache */
	int writable;             /* allow blob_write (copy-on-write into the cache) */
	uint64_t bg_bytes_per_sec;/* cap for background fetches; 0 = none */
	int bg_jobs;              /* background fetches in flight (default: jobs) */
	int image_sub_blocks;     /* an image with sub-block hashes (format 2) is fetched and
	                             cached in sub-blocks: a random read fetches one, not its
	                             chunk (0: whole chunks, as installing memory wants) */
	int drop_durable;         /* persistent cache: cache_drop_durable (the reader keeps its
	                             own copy in memory) */
	uint64_t coalesce_bytes;  /* plain objects: adjacent queued chunks go in one ranged
	                             GET of up to this many bytes (default 16 MiB; the
	                             chunk size = off) */
};

struct blob_stats {
	uint64_t size, chunk_size, nchunks;
	uint64_t chunks_zero;      /* image chunks known zero (never fetched) */
	uint64_t chunks_present;   /* including zero chunks */
	uint64_t bytes_fetched;    /* from the store, this session */
	uint64_t fetches, fetch_failures, verify_failures;
	uint64_t cache_hits_at_open; /* chunks recorded in a persistent cache at open */
	uint64_t cache_rejects;    /* of those, chunks that failed their check on first use */
	uint64_t inflight;
	uint64_t queued[PRIO_COUNT];
};

/* A listener hears about every chunk that becomes present (rc == 0) or whose
 * fetch failed (rc < 0).  Called from a store thread: do little, don't block. */
typedef void (*blob_listener)(void *arg, uint64_t idx, int rc);

struct blob;

void blob_opts_default(struct blob_opts *o);
/* Open key in s as a blob: one or two GETs read an image index, or a HEAD-like
 * first GET finds a plain object.  The store must outlive the blob. */
int blob_open(struct store *s, const char *key, const struct blob_opts *o, struct blob **out);
void blob_close(struct blob *b);

uint64_t blob_size(const struct blob *b);
uint64_t blob_chunk_size(const struct blob *b);
uint64_t blob_nchunks(const struct blob *b);
int blob_is_image(const struct blob *b);
const char *blob_etag(const struct blob *b);     /* the index's or plain object's ETag */
const struct img_index *blob_index(const struct blob *b); /* NULL for plain objects */
uint64_t blob_chunk_len(const struct blob *b, uint64_t idx);
/* 1 if chunk idx is known to be all zeros without fetching (image zero chunk). */
int blob_chunk_is_zero(const struct blob *b, uint64_t idx);
int blob_chunk_present(const struct blob *b, uint64_t idx);

/* Ask for chunk idx at prio; returns at once.  A chunk whose fetch failed is
 * tried again only for PRIO_DEMAND (one attempt per call). */
void blob_request(struct blob *b, uint64_t idx, enum blob_prio prio);
/* A reader's chunks first..last at PRIO_DEMAND and its readahead window
 * ra_first..ra_last (none if ra_first > ra_last) at PRIO_READAHEAD, queued
 * together so one GET can run from the demand on through the window.  With
 * no window, the demand's fetch (up to 1 MiB) runs on the calling thread
 * before this returns (store_submit_here), so call it with no lock held. */
void blob_request_read(struct blob *b, uint64_t first, uint64_t last, uint64_t ra_first, uint64_t ra_last);
/* Make chunk idx present and wait for it (or its failure).  0 or <0 + err_msg. */
int blob_ensure(struct blob *b, uint64_t idx, enum blob_prio prio);
/* Wait for chunk idx, which the caller has just asked for at PRIO_DEMAND
 * (blob_request, blob_request_read): its failure is returned, never tried a
 * second time for the same read. */
int blob_wait_requested(struct blob *b, uint64_t idx);
/* Read [off, off+len) (clipped at the end of the blob), fetching what is missing
 * at prio.  Returns bytes read or <0 + err_msg.  Never returns unverified bytes. */
ssize_t blob_read(struct blob *b, void *buf, size_t len, uint64_t off, enum blob_prio prio);
/* Memory backing only: the address of chunk idx's bytes (valid once present,
 * until blob_close or blob_drop_memory).  NULL for a persistent-cache backing.
 * Promised: the chunks are one contiguous mapping (chunk i at
 * blob_chunk_ptr(b, 0) + i * chunk size), and a zero chunk's bytes read as
 * zeros there without being fetched. */
void *blob_chunk_ptr(struct blob *b, uint64_t idx);
/* Memory backing only: give the memory back (every fetched chunk becomes
 * absent again and would be fetched anew).  For a server whose clients all
 * have the whole image: it need not hold a second copy.  -EBUSY while
 * fetches are in flight. */
int blob_drop_memory(struct blob *b);

/* Background hydration: queue every chunk not yet present at PRIO_BACKGROUND,
 * those listed in `first` (may be NULL) before the rest, the rest in address
 * order.  Demand and readahead always go ahead of it. */
int blob_hydrate_start(struct blob *b, const uint64_t *first, size_t nfirst);
/* Wait until every chunk is present or one has failed; timeout_ms 0 = no limit.
 * 0 when complete, -ETIMEDOUT, or the first failure. */
int blob_hydrate_wait(struct blob *b, uint64_t timeout_ms);
int blob_complete(const struct blob *b);
/* Complete, and every chunk found in the cache at open has been checked: the
 * cache's data file alone now holds the right bytes. */
int blob_complete_checked(const struct blob *b);
/* Take every chunk found in the cache at open as checked: for a caller that
 * saw this same cache (key and ETag) wholly checked earlier in this process. */
void blob_trust_cached(struct blob *b);

void blob_set_listener(struct blob *b, blob_listener fn, void *arg);
/* Persistent-cache backing only: the cache's data file, where a present chunk's
 * bytes sit at their object offsets (for splice).  -1 for memory backing.
 * Owned by the blob: dup() it to keep it past blob_close. */
int blob_cache_fd(const struct blob *b);
/* The reader has its own copy of [off, off+len) now (a FUSE reply into the
 * kernel's page cache): see cache_served.  No-op without drop_durable. */
void blob_served(struct blob *b, uint64_t off, uint64_t len);
void blob_get_stats(struct blob *b, struct blob_stats *st);

#endif
