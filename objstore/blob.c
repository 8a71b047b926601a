/* blob.c - the lazy blob (see blob.h for the contract).
 *
 * Locking: one mutex per blob guards the chunk states, the three queues, the
 * hydration cursor and the counters; one condition variable is broadcast
 * whenever a chunk settles (present or failed).  Fetch completions arrive on
 * store threads; they verify and commit the bytes *outside* the lock, then
 * take it only to publish the new state and start the next fetches.
 *
 * A chunk moves ABSENT -> QUEUED -> INFLIGHT -> PRESENT, or -> FAILED, from
 * which a later demand starts it again (one new bounded attempt per demand). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../common/log.h"
#include "../common/timeutil.h"
#include "../common/xxh.h"
#include "blob.h"
#include "cache.h"

#define WAIT_SHARDS 16

/* Chunks published together by one call of the store's sink at most. */
#define SINK_BATCH 64

/* A GET streamed into a cache is written in pieces of up to this much.
 * libcurl hands its write callback at most 16 KiB at a time (it chops each
 * recv into CURL_MAX_WRITE_SIZE pieces), and a pwrite per piece cost ~7 of
 * them per recv: syscall entry, ext4's write_begin/end and the inode lock,
 * each time.  Gathering them costs one copy into a buffer that stays hot. */
#define SINK_WBUF (256u << 10)
/* Chunks a gathered write completes are published once this much waits, or
 * at a multiple of it in the file: the page cache then holds the data file in
 * folios of this size, which a passthrough re-read walks faster (1 GiB from
 * the page cache: 14.1 GB/s in 128 KiB folios, 15.4 in 256 KiB, 17.8 in
 * 2 MiB).  Larger writes cost the daemon more here (512 KiB: +40% CPU),
 * larger folios coming from memory the host has taken back. */
#define SINK_FLUSH (256u << 10)

/* C_CACHED: recorded in a persistent cache at open, not yet checked against
 * its map entry; C_CHECKING: a reader is checking it (outside the lock). */
enum cstate { C_ABSENT = 0, C_QUEUED, C_INFLIGHT, C_PRESENT, C_FAILED, C_CACHED, C_CHECKING };

/* A FIFO of chunk indices; entries go stale when a chunk is promoted or
 * settles, and are skipped when popped (cheaper than removal). */
struct fifo {
	uint64_t *v;
	size_t head, tail, cap;
};

struct fetch {
	struct store_op op;
	struct blob *b;
	uint64_t idx;
	uint64_t count; /* chunks idx..idx+count-1, one ranged GET (plain objects, sub-blocks) */
	uint64_t base;  /* streamed: the blob offset of the op's first byte */
	int prio;
	int tries;    /* verification attempts so far */
	uint8_t *buf; /* malloc'd for a cache backing; points into mem otherwise;
	                 NULL for a streamed fetch (plain object, image sub-blocks) */
	uint64_t published;  /* streamed: chunks idx..idx+published-1 are present */
	XXH3_state_t *hs;    /* streamed into a cache or checked as it comes (sub-blocks):
	                        the XXH3-64 of the chunk being written */
	/* Streamed into a cache: body bytes not yet written (from blob offset
	 * wat), and the chunks they complete, not yet published. */
	uint8_t *wbuf;
	size_t wcap, wlen;
	uint64_t wat;
	uint64_t done_first, ndone;
	uint64_t sums[SINK_BATCH];
};

struct blob {
	struct store *s;
	struct blob_opts o;
	char key[STORE_KEY_MAX];
	char etag[STORE_ETAG_MAX];
	int image;
	struct img_index ix;
	uint64_t size, cs, n;
	unsigned shift;
	/* An image read in sub-blocks (image_sub_blocks, format 2): the blob's
	 * chunks are the index's sub-blocks, 2^ushift of them to a stored chunk,
	 * each fetched as a range of its chunk object and checked against its
	 * own hash.  Otherwise the blob's chunks are the image's (ushift 0). */
	int units;
	unsigned ushift;

	uint8_t *mem;      /* memory backing (NULL with a cache) */
	size_t mem_len;
	struct cache *cache;

	pthread_mutex_t mu;
	pthread_cond_t cv;
	/* Readers waiting for a chunk sleep on wcv[idx % WAIT_SHARDS], so a chunk
	 * that lands wakes its own readers, not every reader of the blob (a
	 * streamed GET publishes a chunk every few tens of microseconds). */
	pthread_cond_t wcv[WAIT_SHARDS];
	int nwait[WAIT_SHARDS];
	uint8_t *state;
	uint8_t *qprio;    /* the priority a QUEUED chunk waits at */
	struct fifo q[PRIO_COUNT];
	int inflight, inflight_bg;
	int completing; /* completions still running outside the lock */
	int closing;
	char last_err[ERR_MSG_MAX];

	int hydrating;
	uint64_t *first;
	size_t nfirst, first_pos;
	uint64_t cursor;
	uint64_t bg_started_bytes, bg_t0_ns;
	pthread_t ticker;
	int ticker_running;

	blob_listener listener;
	void *listener_arg;

	uint64_t *csum; /* persistent cache: recorded sums of C_CACHED chunks */
	uint64_t present, zero, bytes_fetched, fetches, fetch_failures, verify_failures, cache_hits, cache_rejects;
	uint64_t unchecked; /* chunks still C_CACHED or C_CHECKING */
	/* Set (with mu held) by a reader that will run a demand fetch itself:
	 * start_fetch leaves the first small one there instead of submitting it. */
	struct fetch **claim;
};

#define PLAIN_CHUNK_MIN (64u << 10)
#define PLAIN_CHUNKS_MAX (1u << 20)

/* The largest fetch a reader runs on its own thread (one image chunk). */
#define HERE_MAX (1u << 20)

static void dispatch(struct blob *b);
static void check_cached(struct blob *b, uint64_t idx);
static void enqueue_range(struct blob *b, uint64_t first, uint64_t last, int prio);

/* Wake the readers of chunk idx (b->mu held). */
static void wake_chunk(struct blob *b, uint64_t idx)
{
	if (b->nwait[idx % WAIT_SHARDS])
		pthread_cond_broadcast(&b->wcv[idx % WAIT_SHARDS]);
}

/* Wake every waiter: chunks settled in bulk (b->mu held). */
static void wake_all(struct blob *b)
{
	pthread_cond_broadcast(&b->cv);
	for (int i = 0; i < WAIT_SHARDS; i++)
		if (b->nwait[i])
			pthread_cond_broadcast(&b->wcv[i]);
}

void blob_opts_default(struct blob_opts *o)
{
	memset(o, 0, sizeof *o);
	o->jobs = 16;
	o->plain_chunk_size = 0;
	o->coalesce_bytes = 16u << 20;
}

static int fifo_push(struct fifo *f, uint64_t v)
{
	if (f->tail - f->head == f->cap) {
		size_t nc = f->cap ? f->cap * 2 : 256;
		uint64_t *nv = malloc(nc * sizeof *nv);
		if (!nv)
			return -ENOMEM;
		for (size_t i = 0; i < f->tail - f->head; i++)
			nv[i] = f->v[(f->head + i) % f->cap];
		f->tail -= f->head;
		f->head = 0;
		free(f->v);
		f->v = nv;
		f->cap = nc;
	}
	f->v[f->tail++ % f->cap] = v;
	return 0;
}

static int fifo_pop(struct fifo *f, uint64_t *v)
{
	if (f->head == f->tail)
		return 0;
	*v = f->v[f->head++ % f->cap];
	return 1;
}

uint64_t blob_size(const struct blob *b) { return b->size; }
uint64_t blob_chunk_size(const struct blob *b) { return b->cs; }
uint64_t blob_nchunks(const struct blob *b) { return b->n; }
int blob_is_image(const struct blob *b) { return b->image; }
const char *blob_etag(const struct blob *b) { return b->etag; }
const struct img_index *blob_index(const struct blob *b) { return b->image ? &b->ix : NULL; }

/* The image chunk (stored object) blob chunk idx lies in, and which of its
 * sub-blocks it is (0 unless the image is read in sub-blocks). */
static inline uint64_t chunk_of(const struct blob *b, uint64_t idx) { return idx >> b->ushift; }
static inline uint64_t sub_of(const struct blob *b, uint64_t idx) { return idx & ((1ull << b->ushift) - 1); }

uint64_t blob_chunk_len(const struct blob *b, uint64_t idx)
{
	uint64_t off = idx << b->shift;
	return b->size - off < b->cs ? b->size - off : b->cs;
}

int blob_chunk_is_zero(const struct blob *b, uint64_t idx)
{
	return b->image && idx < b->n && b->ix.map[chunk_of(b, idx)] == 0;
}

int blob_chunk_present(const struct blob *b, uint64_t idx)
{
	return idx < b->n && __atomic_load_n(&b->state[idx], __ATOMIC_ACQUIRE) == C_PRESENT;
}

void *blob_chunk_ptr(struct blob *b, uint64_t idx)
{
	return b->mem ? b->mem + (idx << b->shift) : NULL;
}

int blob_drop_memory(struct blob *b)
{
	if (!b->mem)
		return 0;
	pthread_mutex_lock(&b->mu);
	/* A fetch that already published its chunk may still be finishing (its
	 * listener call); that takes microseconds, so wait for it. */
	struct timespec dl = deadline_after_ms(5000);
	while (!b->inflight && b->completing &&
	       pthread_cond_timedwait(&b->cv, &b->mu, &dl) != ETIMEDOUT)
		;
	if (b->inflight || b->completing) {
		pthread_mutex_unlock(&b->mu);
		return err_set(EBUSY, "%s: fetches in flight; memory not dropped", b->key);
	}
	b->hydrating = 0;
	madvise(b->mem, b->mem_len, MADV_DONTNEED);
	for (uint64_t i = 0; i < b->n; i++)
		if (b->state[i] == C_PRESENT && !blob_chunk_is_zero(b, i))
			b->state[i] = C_ABSENT;
	b->present = b->zero;
	pthread_mutex_unlock(&b->mu);
	return 0;
}

/* --- fetching --- */

static void fetch_done(struct store_op *op);
static int fetch_sink(struct store_op *op, uint64_t pos, const void *p, size_t n);
static void fetch_refused(struct blob *b, struct fetch *f);

static int start_fetch(struct blob *b, uint64_t idx, uint64_t count, int prio)
{
	struct fetch *f = calloc(1, sizeof *f);
	if (!f)
		return -ENOMEM;
	f->b = b;
	f->idx = idx;
	f->count = count;
	f->prio = prio;
	uint64_t len = ((count - 1) << b->shift) + blob_chunk_len(b, idx + count - 1);
	/* Sub-blocks are streamed like a plain object's chunks, each checked
	 * against its own hash as its last byte lands, before it is published. */
	int streamed = !b->image || b->units;
	f->base = idx << b->shift;
	if (streamed && (b->cache || b->units) && !(f->hs = XXH3_createState())) {
		free(f);
		return -ENOMEM;
	}
	if (streamed && b->cache) {
		f->wcap = len < SINK_WBUF ? (size_t)len : SINK_WBUF;
		f->wbuf = malloc(f->wcap);
		if (!f->wbuf) {
			XXH3_freeState(f->hs);
			free(f);
			return -ENOMEM;
		}
	}
	if (streamed) {
		f->buf = NULL;
	} else if (b->mem) {
		f->buf = b->mem + (idx << b->shift);
	} else {
		f->buf = malloc(len);
		if (!f->buf) {
			free(f);
			return -ENOMEM;
		}
	}
	struct store_op *op = &f->op;
	op->kind = STORE_GET;
	op->buf = f->buf;
	op->len = len;
	if (b->image) {
		img_chunk_key(&b->ix.hashes[b->ix.map[chunk_of(b, idx)] - 1], op->key, sizeof op->key);
		op->off = sub_of(b, idx) << b->shift;
	} else {
		snprintf(op->key, sizeof op->key, "%s", b->key);
		op->off = idx << b->shift;
		snprintf(op->if_match, sizeof op->if_match, "%s", b->etag);
	}
	op->done = fetch_done;
	op->sink = streamed ? fetch_sink : NULL;
	op->arg = f;
	op->urgent = prio == PRIO_DEMAND;
	for (uint64_t k = 0; k < count; k++) {
		op->urgent |= b->state[idx + k] == C_QUEUED && b->qprio[idx + k] == PRIO_DEMAND;
		b->state[idx + k] = C_INFLIGHT;
	}
	b->inflight++;
	if (prio == PRIO_BACKGROUND) {
		b->inflight_bg++;
		b->bg_started_bytes += len;
	}
	b->fetches++;
	if (prio == PRIO_DEMAND && b->claim && !*b->claim && len <= HERE_MAX) {
		*b->claim = f; /* the reader submits it once it has let go of mu */
		return 0;
	}
	int rc = store_submit(b->s, op);
	if (rc < 0)
		fetch_refused(b, f);
	return rc;
}

/* What f fetches, for messages: "chunk 7", or for an image read in
 * sub-blocks the image's chunk and the sub-blocks of it ("chunk 2, sub-blocks
 * 0-15"), so the chunk named is the one `thaw stat` and the index count. */
static const char *fetch_label(const struct blob *b, const struct fetch *f, char *buf, size_t n)
{
	uint64_t first = sub_of(b, f->idx), last = sub_of(b, f->idx + f->count - 1);
	if (!b->units)
		snprintf(buf, n, "chunk %llu", (unsigned long long)f->idx);
	else if (first == last)
		snprintf(buf, n, "chunk %llu, sub-block %llu", (unsigned long long)chunk_of(b, f->idx),
			 (unsigned long long)first);
	else
		snprintf(buf, n, "chunk %llu, sub-blocks %llu-%llu", (unsigned long long)chunk_of(b, f->idx),
			 (unsigned long long)first, (unsigned long long)last);
	return buf;
}

/* The store would not take f (err_msg() says why): its chunks fail.  With
 * b->mu held. */
static void fetch_refused(struct blob *b, struct fetch *f)
{
	for (uint64_t k = 0; k < f->count; k++)
		b->state[f->idx + k] = C_FAILED;
	b->inflight--;
	if (f->prio == PRIO_BACKGROUND)
		b->inflight_bg--;
	char what[64];
	snprintf(b->last_err, sizeof b->last_err, "%s: %s", fetch_label(b, f, what, sizeof what), err_msg());
	if (!b->mem)
		free(f->buf);
	XXH3_freeState(f->hs);
	free(f->wbuf);
	free(f);
}

/* A streamed fetch finished chunks k..k+n-1 (sums: their XXH3-64 for the
 * cache map): record them and let their readers go, under one lock. */
static int publish(struct blob *b, struct fetch *f, uint64_t k, uint64_t n, const uint64_t *sums)
{
	if (b->cache) {
		int rc = cache_record_run(b->cache, k, sums, n);
		if (rc < 0)
			return rc;
	}
	uint64_t bytes = ((n - 1) << b->shift) + blob_chunk_len(b, k + n - 1);
	pthread_mutex_lock(&b->mu);
	for (uint64_t i = k; i < k + n; i++) {
		__atomic_store_n(&b->state[i], C_PRESENT, __ATOMIC_RELEASE);
		wake_chunk(b, i);
	}
	b->present += n;
	b->bytes_fetched += bytes;
	f->published += n;
	blob_listener fn = b->listener;
	void *arg = b->listener_arg;
	pthread_mutex_unlock(&b->mu);
	for (uint64_t i = k; fn && i < k + n; i++)
		fn(arg, i, 0);
	return 0;
}

/* The XXH3-64 the index gives sub-block (blob chunk) idx. */
static uint64_t sub_hash(const struct blob *b, uint64_t idx)
{
	return b->ix.sub[(b->ix.map[chunk_of(b, idx)] - 1) * img_subs_per_chunk(&b->ix) + sub_of(b, idx)];
}

/* Write what f has gathered (into a cache), then publish the chunks it completes. */
static int sink_flush(struct blob *b, struct fetch *f)
{
	if (f->wlen) {
		int rc = cache_write(b->cache, f->wbuf, f->wlen, f->wat);
		if (rc < 0)
			return rc;
		f->wat += f->wlen;
		f->wlen = 0;
	}
	uint64_t n = f->ndone;
	f->ndone = 0;
	return n ? publish(b, f, f->done_first, n, f->sums) : 0;
}

/* The store's sink for a plain object's ranged GET, or for sub-blocks of an
 * image's chunk object: body bytes go into the backing (for a cache, through
 * f->wbuf, see SINK_WBUF), and each chunk is published once its bytes are
 * there (and, a sub-block, once it has matched its hash).  Into memory, a
 * chunk is published by the piece that completes it; into a cache, when
 * SINK_FLUSH bytes have gathered or the file reaches a multiple of it, the
 * batch is full, or the GET's last chunk is complete, so a reader waits at
 * most SINK_FLUSH behind the bytes.  The store passes every byte once, in
 * order, after checking the answer against the pinned ETag.  A sub-block's
 * bytes land in the backing before they are checked, but no reader sees an
 * unpublished chunk, and a failed one is not recorded. */
static int fetch_sink(struct store_op *op, uint64_t pos, const void *p, size_t n)
{
	struct fetch *f = op->arg;
	struct blob *b = f->b;
	uint64_t at = f->base + pos;
	if (!b->cache) {
		memcpy(b->mem + at, p, n);
	} else if (f->wlen && at != f->wat + f->wlen) {
		int rc = sink_flush(b, f); /* not contiguous: cannot happen, but cheap to honour */
		if (rc < 0)
			return rc;
	}
	if (b->cache && !f->wlen)
		f->wat = at;
	const uint8_t *q = p;
	uint64_t last = f->idx + f->count - 1;
	while (n) {
		uint64_t k = at >> b->shift, start = k << b->shift, end = start + blob_chunk_len(b, k);
		size_t take = n < end - at ? n : (size_t)(end - at);
		if (b->cache) {
			if (f->wlen == f->wcap) {
				int rc = sink_flush(b, f);
				if (rc < 0)
					return rc;
			}
			if (take > f->wcap - f->wlen)
				take = f->wcap - f->wlen;
			memcpy(f->wbuf + f->wlen, q, take);
			f->wlen += take;
		}
		if (f->hs) {
			if (at == start)
				XXH3_64bits_reset(f->hs);
			XXH3_64bits_update(f->hs, q, take);
		}
		at += take;
		q += take;
		n -= take;
		if (at != end)
			continue;
		uint64_t sum = f->hs ? XXH3_64bits_digest(f->hs) : 0;
		if (b->units && sum != sub_hash(b, k)) {
			int rc = sink_flush(b, f);
			if (rc < 0)
				return rc;
			return err_set(EBADMSG, "%s: sub-block %llu does not match its XXH3-64 (corrupt chunk)", op->key,
				       (unsigned long long)sub_of(b, k));
		}
		if (!f->ndone)
			f->done_first = k;
		f->sums[f->ndone++] = sum;
		/* A reader already waiting is not kept waiting for more bytes (one
		 * that starts to wait just after this look waits for the next flush). */
		if (f->ndone == SINK_BATCH || k == last ||
		    (b->cache && (f->wlen >= SINK_FLUSH || !(at & (SINK_FLUSH - 1)) || __atomic_load_n(&b->nwait[k % WAIT_SHARDS], __ATOMIC_RELAXED)))) {
			int rc = sink_flush(b, f);
			if (rc < 0)
				return rc;
		}
	}
	return b->cache ? 0 : sink_flush(b, f);
}

/* Check what arrived; 0 if the bytes may be used. */
static int verify(struct blob *b, struct fetch *f, char *why, size_t n)
{
	struct store_op *op = &f->op;
	if (op->rc < 0) {
		snprintf(why, n, "%s", op->errmsg);
		return op->rc;
	}
	if (op->nread != op->len) {
		snprintf(why, n, "%s: got %llu bytes, expected %llu (object shorter than it was at open?)",
			 op->key, (unsigned long long)op->nread, (unsigned long long)op->len);
		return -EIO;
	}
	if (b->image && !b->units) { /* sub-blocks were checked in fetch_sink */
		struct img_hash h;
		img_hash_chunk(f->buf, op->len, &h);
		if (memcmp(&h, &b->ix.hashes[b->ix.map[f->idx] - 1], sizeof h)) {
			snprintf(why, n, "%s: content does not match its XXH3-128 (corrupt chunk)", op->key);
			return -EBADMSG;
		}
	}
	return 0;
}

static void fetch_done(struct store_op *op)
{
	struct fetch *f = op->arg;
	struct blob *b = f->b;
	char why[ERR_MSG_MAX];
	int streamed = op->sink != NULL;
	/* A GET that failed part way keeps the whole chunks it brought. */
	if (streamed && (f->wlen || f->ndone)) {
		int frc = sink_flush(b, f);
		if (frc < 0 && op->rc == 0)
			store_op_fail(op, frc, "%s", err_msg());
	}
	int rc = verify(b, f, why, sizeof why);
	if (rc == -EBADMSG) {
		__atomic_add_fetch(&b->verify_failures, 1, __ATOMIC_RELAXED);
		/* One re-fetch: a bit flip on the way heals; a corrupt object does
		 * not.  A streamed fetch asks again for what it has not published. */
		if (f->tries++ < 1 && !b->closing) {
			log_warn("%s; fetching it again", why);
			uint64_t skip = streamed ? f->published << b->shift : 0;
			uint64_t len = op->len - skip, off = op->off + skip;
			char key[STORE_KEY_MAX];
			memcpy(key, op->key, sizeof key);
			memset(op, 0, sizeof *op);
			memcpy(op->key, key, sizeof key);
			op->kind = STORE_GET;
			op->buf = f->buf;
			op->off = off;
			op->len = len;
			op->sink = streamed ? fetch_sink : NULL;
			f->base += skip;
			op->urgent = f->prio == PRIO_DEMAND;
			op->done = fetch_done;
			op->arg = f;
			if (store_submit(b->s, op) == 0)
				return;
			snprintf(why, sizeof why, "%s", err_msg());
		}
	}
	if (rc == 0 && streamed && f->published != f->count) {
		snprintf(why, sizeof why, "%s: only %llu of %llu chunks arrived", op->key,
			 (unsigned long long)f->published, (unsigned long long)f->count);
		rc = -EIO;
	}
	for (uint64_t k = 0; rc == 0 && !streamed && b->cache && k < f->count; k++) {
		rc = cache_commit(b->cache, f->idx + k, f->buf + (k << b->shift), blob_chunk_len(b, f->idx + k));
		if (rc < 0)
			snprintf(why, sizeof why, "%s", err_msg());
	}
	/* A streamed fetch's published chunks stand; the rest settle here. */
	uint64_t from = streamed ? f->published : 0;
	if (rc < 0 && b->mem && from < f->count)
		/* Don't leave unverified bytes where a later reader could see them. */
		memset(b->mem + ((f->idx + from) << b->shift), 0,
		       ((f->count - from - 1) << b->shift) + blob_chunk_len(b, f->idx + f->count - 1));

	pthread_mutex_lock(&b->mu);
	b->inflight--;
	if (f->prio == PRIO_BACKGROUND)
		b->inflight_bg--;
	if (rc == 0 && !streamed) {
		for (uint64_t k = 0; k < f->count; k++)
			__atomic_store_n(&b->state[f->idx + k], C_PRESENT, __ATOMIC_RELEASE);
		b->present += f->count;
		b->bytes_fetched += op->len;
	} else if (rc < 0) {
		for (uint64_t k = from; k < f->count; k++)
			b->state[f->idx + k] = C_FAILED;
		b->fetch_failures++;
		char what[64];
		snprintf(b->last_err, sizeof b->last_err, "%s of %s: %s", fetch_label(b, f, what, sizeof what), b->key,
			 why);
		log_error("%s", b->last_err);
	}
	wake_all(b);
	if (!b->closing)
		dispatch(b);
	blob_listener fn = b->listener;
	void *arg = b->listener_arg;
	int own_buf = !b->mem;
	b->completing++; /* keeps blob_close waiting until we are out */
	pthread_mutex_unlock(&b->mu);
	for (uint64_t k = from; fn && (rc < 0 || !streamed) && k < f->count; k++)
		fn(arg, f->idx + k, rc);
	if (own_buf)
		free(f->buf);
	XXH3_freeState(f->hs);
	free(f->wbuf);
	free(f);
	pthread_mutex_lock(&b->mu);
	if (--b->completing == 0)
		pthread_cond_broadcast(&b->cv); /* blob_close, blob_drop_memory */
	pthread_mutex_unlock(&b->mu);
}

/* The next background chunk from the hydration order, or 0 if none. */
static int next_hydrate(struct blob *b, uint64_t *idx)
{
	while (b->first_pos < b->nfirst) {
		uint64_t i = b->first[b->first_pos++];
		if (i < b->n && b->state[i] == C_ABSENT) {
			*idx = i;
			return 1;
		}
	}
	while (b->cursor < b->n) {
		uint64_t i = b->cursor++;
		if (b->state[i] == C_ABSENT) {
			*idx = i;
			return 1;
		}
	}
	return 0;
}

static int bg_throttled(struct blob *b)
{
	if (!b->o.bg_bytes_per_sec)
		return 0;
	double secs = (double)(now_ns() - b->bg_t0_ns) / 1e9;
	return (double)b->bg_started_bytes > secs * (double)b->o.bg_bytes_per_sec;
}

/* Start fetches while there are free slots.  Called with b->mu held. */
static void dispatch(struct blob *b)
{
	while (b->inflight < b->o.jobs) {
		uint64_t idx;
		int prio = -1;
		for (int p = 0; p < PRIO_COUNT && prio < 0; p++) {
			if (p == PRIO_BACKGROUND && (b->inflight_bg >= b->o.bg_jobs || bg_throttled(b)))
				break;
			while (fifo_pop(&b->q[p], &idx))
				if (b->state[idx] == C_QUEUED && b->qprio[idx] == p) {
					prio = p;
					break;
				}
		}
		if (prio < 0 && b->hydrating && b->inflight_bg < b->o.bg_jobs && !bg_throttled(b) &&
		    next_hydrate(b, &idx))
			prio = PRIO_BACKGROUND;
		if (prio < 0)
			return;
		uint64_t count = 1;
		if (!b->image || b->units) {
			/* Plain objects: adjacent queued chunks go in one ranged GET (a
			 * request costs milliseconds on most servers, whatever its size).
			 * The GET is streamed and each chunk published as it lands, so
			 * a demand chunk at its head is not slowed by its tail.  An
			 * image's sub-blocks: those of one stored chunk go together. */
			uint64_t max = b->o.coalesce_bytes >> b->shift;
			/* Under a bandwidth cap one GET may not spend more than a
			 * quarter second of it: the cap is kept by spacing GETs. */
			if (prio == PRIO_BACKGROUND && b->o.bg_bytes_per_sec &&
			    max > (b->o.bg_bytes_per_sec / 4) >> b->shift)
				max = (b->o.bg_bytes_per_sec / 4) >> b->shift;
			while (count < max && idx + count < b->n &&
			       (!b->units || chunk_of(b, idx + count) == chunk_of(b, idx))) {
				uint64_t j = idx + count;
				if (b->state[j] == C_QUEUED)
					;
				else if (prio == PRIO_BACKGROUND && b->hydrating && b->state[j] == C_ABSENT &&
					 b->first_pos >= b->nfirst && b->cursor == j)
					b->cursor++;
				else
					break;
				count++;
			}
		}
		if (start_fetch(b, idx, count, prio) < 0) {
			wake_all(b);
			log_error("%s", b->last_err);
		}
	}
}

/* Queue idx at prio (promoting it if it waits lower).  Called with b->mu held. */
static void enqueue(struct blob *b, uint64_t idx, int prio)
{
	uint8_t st = b->state[idx];
	if (st == C_ABSENT || st == C_FAILED || (st == C_QUEUED && prio < b->qprio[idx])) {
		if (fifo_push(&b->q[prio], idx) < 0) {
			snprintf(b->last_err, sizeof b->last_err, "out of memory queueing chunk %llu",
				 (unsigned long long)idx);
			b->state[idx] = C_FAILED;
			return;
		}
		b->state[idx] = C_QUEUED;
		b->qprio[idx] = (uint8_t)prio;
	}
}

void blob_request(struct blob *b, uint64_t idx, enum blob_prio prio)
{
	if (idx >= b->n || blob_chunk_present(b, idx))
		return;
	pthread_mutex_lock(&b->mu);
	enqueue_range(b, idx, idx, prio);
	dispatch(b);
	pthread_mutex_unlock(&b->mu);
}

/* Queue first..last at prio, without dispatching (b->mu held).  A failed
 * chunk gets one new attempt per demand (as blob_ensure does), never from
 * readahead or background work, which would retry forever. */
static void enqueue_range(struct blob *b, uint64_t first, uint64_t last, int prio)
{
	if (last >= b->n)
		last = b->n - 1;
	for (uint64_t i = first; b->n && i <= last; i++)
		if (b->state[i] != C_PRESENT && (b->state[i] != C_FAILED || prio == PRIO_DEMAND))
			enqueue(b, i, prio);
}

void blob_request_read(struct blob *b, uint64_t first, uint64_t last, uint64_t ra_first, uint64_t ra_last)
{
	struct fetch *mine = NULL;
	pthread_mutex_lock(&b->mu);
	enqueue_range(b, first, last, PRIO_DEMAND);
	enqueue_range(b, ra_first, ra_last, PRIO_READAHEAD);
	/* With no window to open this reader would only sleep until its chunk
	 * came: it fetches the chunk itself, saving two thread hand-offs.  (With
	 * a window, the demand's GET runs on through it: not this thread's job.) */
	if (ra_first > ra_last)
		b->claim = &mine;
	dispatch(b);
	b->claim = NULL;
	pthread_mutex_unlock(&b->mu);
	if (mine && store_submit_here(b->s, &mine->op) < 0) {
		pthread_mutex_lock(&b->mu);
		fetch_refused(b, mine);
		wake_all(b);
		log_error("%s", b->last_err);
		pthread_mutex_unlock(&b->mu);
	}
}

/* First use of a chunk found in the cache at open: check its bytes against
 * the map (with b->mu held; dropped while reading).  A bad one becomes
 * absent and is fetched like any other. */
static void check_cached(struct blob *b, uint64_t idx)
{
	b->state[idx] = C_CHECKING;
	pthread_mutex_unlock(&b->mu);
	int rc = cache_check(b->cache, idx, b->csum[idx]);
	if (rc < 0)
		log_warn("%s; fetching it again", err_msg());
	pthread_mutex_lock(&b->mu);
	if (rc == 0) {
		__atomic_store_n(&b->state[idx], C_PRESENT, __ATOMIC_RELEASE);
	} else {
		b->state[idx] = C_ABSENT;
		b->present--;
		b->cache_rejects++;
	}
	/* After present, so that blob_complete_checked never sees a rejected
	 * chunk as both checked and present. */
	__atomic_sub_fetch(&b->unchecked, 1, __ATOMIC_RELEASE);
	wake_chunk(b, idx);
}

/* Wait for idx with b->mu held.  Unless the caller has just asked for it
 * (asked), a chunk that had failed before this call is tried once more; a
 * failure after that is returned. */
static int wait_chunk(struct blob *b, uint64_t idx, int prio, int asked)
{
	/* Never wait forever: the store bounds each attempt, this bounds the wait. */
	uint64_t limit_ms = b->s->cfg.max_total_ms * 3 + b->s->cfg.stall_timeout_ms + 5000;
	struct timespec dl = deadline_after_ms(limit_ms);
	for (;;) {
		uint8_t st = b->state[idx];
		if (st == C_PRESENT)
			return 0;
		if (st == C_CACHED) {
			check_cached(b, idx);
			continue;
		}
		if (st == C_FAILED) {
			if (asked)
				return err_set(EIO, "%s", b->last_err);
			enqueue(b, idx, prio);
			dispatch(b);
		} else if (st == C_ABSENT || (st == C_QUEUED && b->qprio[idx] > prio)) {
			enqueue(b, idx, prio);
			dispatch(b);
		}
		asked = 1;
		if (b->state[idx] == C_FAILED)
			continue;
		/* Atomic for fetch_sink, which peeks without the lock. */
		__atomic_add_fetch(&b->nwait[idx % WAIT_SHARDS], 1, __ATOMIC_RELAXED);
		int t = pthread_cond_timedwait(&b->wcv[idx % WAIT_SHARDS], &b->mu, &dl);
		__atomic_sub_fetch(&b->nwait[idx % WAIT_SHARDS], 1, __ATOMIC_RELAXED);
		if (t == ETIMEDOUT)
			return err_set(ETIMEDOUT, "timed out after %llu ms waiting for chunk %llu of %s",
				       (unsigned long long)limit_ms, (unsigned long long)idx, b->key);
	}
}

int blob_wait_requested(struct blob *b, uint64_t idx)
{
	if (blob_chunk_present(b, idx))
		return 0;
	pthread_mutex_lock(&b->mu);
	int rc = idx < b->n ? wait_chunk(b, idx, PRIO_DEMAND, 1)
			    : err_set(EINVAL, "chunk %llu beyond the end of %s", (unsigned long long)idx, b->key);
	pthread_mutex_unlock(&b->mu);
	return rc;
}

int blob_ensure(struct blob *b, uint64_t idx, enum blob_prio prio)
{
	if (idx >= b->n)
		return err_set(EINVAL, "chunk %llu beyond the end of %s (%llu chunks)", (unsigned long long)idx,
			       b->key, (unsigned long long)b->n);
	if (blob_chunk_present(b, idx))
		return 0;
	pthread_mutex_lock(&b->mu);
	int rc = wait_chunk(b, idx, prio, 0);
	pthread_mutex_unlock(&b->mu);
	return rc;
}

ssize_t blob_read(struct blob *b, void *buf, size_t len, uint64_t off, enum blob_prio prio)
{
	if (off >= b->size)
		return 0;
	if (len > b->size - off)
		len = b->size - off;
	if (!len)
		return 0;
	uint64_t first = off >> b->shift, last = (off + len - 1) >> b->shift;
	/* Ask for every missing chunk first so they are fetched in parallel. */
	int missing = 0;
	for (uint64_t i = first; i <= last; i++)
		missing |= !blob_chunk_present(b, i);
	if (missing) {
		pthread_mutex_lock(&b->mu);
		for (uint64_t i = first; i <= last; i++)
			if (b->state[i] != C_PRESENT && b->state[i] != C_INFLIGHT)
				enqueue(b, i, prio);
		dispatch(b);
		for (uint64_t i = first; i <= last; i++) {
			/* Asked for just above: a failure now is this read's answer,
			 * not a reason for a second attempt. */
			int rc = wait_chunk(b, i, prio, 1);
			if (rc < 0) {
				pthread_mutex_unlock(&b->mu);
				return rc;
			}
		}
		pthread_mutex_unlock(&b->mu);
	}
	if (b->mem) {
		memcpy(buf, b->mem + off, len);
		return (ssize_t)len;
	}
	int rc = cache_read(b->cache, buf, len, off);
	return rc < 0 ? rc : (ssize_t)len;
}

/* --- hydration --- */

static void *ticker_main(void *arg)
{
	struct blob *b = arg;
	pthread_mutex_lock(&b->mu);
	while (!b->closing && b->present < b->n) {
		struct timespec dl = deadline_after_ms(20);
		pthread_cond_timedwait(&b->cv, &b->mu, &dl);
		dispatch(b);
	}
	pthread_mutex_unlock(&b->mu);
	return NULL;
}

int blob_hydrate_start(struct blob *b, const uint64_t *first, size_t nfirst)
{
	uint64_t *copy = NULL;
	if (nfirst) {
		copy = malloc(nfirst * sizeof *copy);
		if (!copy)
			return err_set(ENOMEM, "out of memory for a working set of %zu chunks", nfirst);
		memcpy(copy, first, nfirst * sizeof *copy);
	}
	pthread_mutex_lock(&b->mu);
	free(b->first);
	b->first = copy;
	b->nfirst = nfirst;
	b->first_pos = 0;
	b->cursor = 0;
	b->hydrating = 1;
	b->bg_t0_ns = now_ns();
	b->bg_started_bytes = 0;
	if (b->o.bg_bytes_per_sec && !b->ticker_running) {
		/* A cap can leave no fetch in flight to trigger the next dispatch. */
		if (pthread_create(&b->ticker, NULL, ticker_main, b) == 0)
			b->ticker_running = 1;
	}
	dispatch(b);
	pthread_mutex_unlock(&b->mu);
	return 0;
}

int blob_complete(const struct blob *b)
{
	return __atomic_load_n(&b->present, __ATOMIC_RELAXED) == b->n;
}

int blob_complete_checked(const struct blob *b)
{
	return __atomic_load_n(&b->unchecked, __ATOMIC_ACQUIRE) == 0 && blob_complete(b);
}

void blob_trust_cached(struct blob *b)
{
	pthread_mutex_lock(&b->mu);
	for (uint64_t i = 0; i < b->n; i++)
		if (b->state[i] == C_CACHED) {
			__atomic_store_n(&b->state[i], C_PRESENT, __ATOMIC_RELEASE);
			__atomic_sub_fetch(&b->unchecked, 1, __ATOMIC_RELEASE);
		}
	pthread_mutex_unlock(&b->mu);
}

int blob_hydrate_wait(struct blob *b, uint64_t timeout_ms)
{
	struct timespec dl = deadline_after_ms(timeout_ms ? timeout_ms : 1000ull * 86400 * 365);
	pthread_mutex_lock(&b->mu);
	int rc = 0;
	uint64_t fails0 = b->fetch_failures;
	while (b->present < b->n) {
		if (b->fetch_failures > fails0) {
			rc = err_set(EIO, "%s", b->last_err);
			break;
		}
		if (!b->hydrating) {
			rc = err_set(EINVAL, "blob_hydrate_wait without blob_hydrate_start");
			break;
		}
		if (pthread_cond_timedwait(&b->cv, &b->mu, &dl) == ETIMEDOUT) {
			rc = err_set(ETIMEDOUT, "hydration of %s not complete after %llu ms (%llu of %llu chunks)",
				     b->key, (unsigned long long)timeout_ms, (unsigned long long)b->present,
				     (unsigned long long)b->n);
			break;
		}
	}
	pthread_mutex_unlock(&b->mu);
	return rc;
}

int blob_cache_fd(const struct blob *b)
{
	return b->cache ? cache_data_fd(b->cache) : -1;
}

void blob_served(struct blob *b, uint64_t off, uint64_t len)
{
	if (b->cache)
		cache_served(b->cache, off, len);
}

void blob_set_listener(struct blob *b, blob_listener fn, void *arg)
{
	pthread_mutex_lock(&b->mu);
	b->listener = fn;
	b->listener_arg = arg;
	pthread_mutex_unlock(&b->mu);
}

void blob_get_stats(struct blob *b, struct blob_stats *st)
{
	pthread_mutex_lock(&b->mu);
	st->size = b->size;
	st->chunk_size = b->cs;
	st->nchunks = b->n;
	st->chunks_zero = b->zero;
	st->chunks_present = b->present;
	st->bytes_fetched = b->bytes_fetched;
	st->fetches = b->fetches;
	st->fetch_failures = b->fetch_failures;
	st->verify_failures = __atomic_load_n(&b->verify_failures, __ATOMIC_RELAXED);
	st->cache_hits_at_open = b->cache_hits;
	st->cache_rejects = b->cache_rejects;
	st->inflight = (uint64_t)b->inflight;
	for (int p = 0; p < PRIO_COUNT; p++)
		st->queued[p] = b->q[p].tail - b->q[p].head;
	pthread_mutex_unlock(&b->mu);
}

/* --- open / close --- */

static int read_index(struct blob *b, uint8_t *probe, uint64_t got)
{
	uint64_t ilen;
	int rc = img_header_len(probe, got, &ilen);
	if (rc < 0)
		return err_wrap(rc, "%s", b->key);
	uint8_t *buf = probe;
	if (ilen > got) {
		/* The second (and last) request for the index, pinned to the first's version. */
		buf = malloc(ilen);
		if (!buf)
			return err_set(ENOMEM, "out of memory for a %llu-byte index", (unsigned long long)ilen);
		memcpy(buf, probe, got);
		uint64_t n2 = 0;
		rc = store_get(b->s, b->key, got, ilen - got, buf + got, b->etag, &n2, NULL, NULL);
		if (rc == 0 && n2 != ilen - got)
			rc = err_set(EINVAL, "%s: image index truncated (%llu of %llu bytes)", b->key,
				     (unsigned long long)(got + n2), (unsigned long long)ilen);
	}
	if (rc == 0)
		rc = img_decode(buf, ilen, &b->ix);
	if (buf != probe)
		free(buf);
	return rc < 0 ? err_wrap(rc, "%s", b->key) : 0;
}

int blob_open(struct store *s, const char *key, const struct blob_opts *opts, struct blob **out)
{
	struct blob *b = calloc(1, sizeof *b);
	if (!b)
		return err_set(ENOMEM, "out of memory");
	b->s = s;
	if (opts)
		b->o = *opts;
	else
		blob_opts_default(&b->o);
	if (b->o.jobs < 1)
		b->o.jobs = 16;
	if (b->o.bg_jobs < 1 || b->o.bg_jobs > b->o.jobs)
		/* Leave demand a free slot or two, so a fault never queues behind the pusher. */
		b->o.bg_jobs = b->o.jobs > 2 ? b->o.jobs - 2 : 1;
	if (!b->o.coalesce_bytes)
		b->o.coalesce_bytes = 16u << 20;
	snprintf(b->key, sizeof b->key, "%s", key);
	pthread_mutex_init(&b->mu, NULL);
	pthread_cond_init(&b->cv, NULL);
	for (int i = 0; i < WAIT_SHARDS; i++)
		pthread_cond_init(&b->wcv[i], NULL);

	uint8_t *probe = malloc(IMG_PROBE_LEN);
	int rc = probe ? 0 : err_set(ENOMEM, "out of memory");
	uint64_t got = 0, osize = 0;
	if (rc == 0)
		rc = store_get(s, key, 0, IMG_PROBE_LEN, probe, NULL, &got, &osize, b->etag);
	if (rc == 0 && img_is_index(probe, got)) {
		b->image = 1;
		rc = read_index(b, probe, got);
		if (rc == 0) {
			b->size = b->ix.size;
			b->shift = b->ix.chunk_shift;
			if (b->o.image_sub_blocks && b->ix.sub) {
				b->units = 1;
				b->shift = b->ix.sub_shift;
				b->ushift = b->ix.chunk_shift - b->ix.sub_shift;
			}
			b->n = (b->size + (1ull << b->shift) - 1) >> b->shift;
		}
	} else if (rc == 0) {
		uint64_t cs = b->o.plain_chunk_size;
		/* Small chunks make a cold random read cheap, large ones a
		 * sequential read (per-chunk work: 16 KiB chunks read 200 random
		 * 4 KiB pieces of 1 GiB in s3rver 10-28% faster than 64 KiB, but
		 * cost 5-15% of a cold sequential read); the cap on their number
		 * bounds the chunk map (10 bytes a chunk in memory, 8 on disk). */
		if (!cs)
			for (cs = PLAIN_CHUNK_MIN; osize / cs > PLAIN_CHUNKS_MAX; cs <<= 1)
				;
		if (cs & (cs - 1) || cs < 4096)
			rc = err_set(EINVAL, "plain chunk size %llu is not a power of two >= 4096",
				     (unsigned long long)cs);
		b->size = osize;
		b->shift = (unsigned)__builtin_ctzll(cs);
		b->n = (osize + cs - 1) / cs;
	}
	if (rc < 0) {
		free(probe);
		blob_close(b);
		return rc;
	}
	b->cs = 1ull << b->shift;
	b->state = calloc(b->n ? b->n : 1, 1);
	b->qprio = calloc(b->n ? b->n : 1, 1);
	if (!b->state || !b->qprio) {
		free(probe);
		blob_close(b);
		return err_set(ENOMEM, "out of memory for a chunk map of %llu chunks", (unsigned long long)b->n);
	}
	for (uint64_t i = 0; b->image && i < b->n; i++)
		if (b->ix.map[chunk_of(b, i)] == 0) {
			b->state[i] = C_PRESENT;
			b->zero++;
		}
	b->present = b->zero;
	if (b->o.cache_dir) {
		rc = cache_open(b->o.cache_dir, s, key, b->etag, b->size, b->cs, b->o.writable, &b->cache);
		if (rc == 0)
			cache_drop_durable(b->cache, b->o.drop_durable);
		if (rc == 0 && !(b->csum = calloc(b->n ? b->n : 1, 8)))
			rc = err_set(ENOMEM, "out of memory for a cache map of %llu chunks", (unsigned long long)b->n);
		if (rc == 0)
			rc = cache_load_map(b->cache, b->csum);
		for (uint64_t i = 0; rc == 0 && i < b->n; i++)
			if (b->csum[i] && b->state[i] != C_PRESENT) {
				b->state[i] = C_CACHED;
				b->present++;
				b->cache_hits++;
				b->unchecked++;
			}
	} else if (b->n) {
		b->mem_len = (size_t)(b->n << b->shift);
		b->mem = mmap(NULL, b->mem_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (b->mem == MAP_FAILED) {
			b->mem = NULL;
			rc = err_set(ENOMEM, "cannot map %zu bytes for %s", b->mem_len, key);
		} else {
			/* Huge pages: a chunk lands in fresh memory, and first-touching
			 * it 4 KiB at a time cost ~3 ms per MiB on this VM (a host fault
			 * per page); with 2 MiB pages a uffd fault served from a local
			 * store took 0.4 ms at p50 instead of 5.2.  Sparse use may hold
			 * up to one huge page per chunk touched; the uffd server pushes
			 * the whole image in anyway. */
			madvise(b->mem, b->mem_len, MADV_HUGEPAGE);
		}
	}
	/* A plain object's first bytes came with the probe: they are its first
	 * chunks (same ETag), so a reader starting at 0 need not ask again. */
	for (uint64_t k = 0; rc == 0 && !b->image && k < b->n && ((k << b->shift) + blob_chunk_len(b, k)) <= got; k++) {
		if (b->state[k] == C_PRESENT || b->state[k] == C_CACHED)
			continue;
		uint64_t len = blob_chunk_len(b, k);
		if (b->cache && cache_commit(b->cache, k, probe + (k << b->shift), len) < 0) {
			log_warn("%s", err_msg()); /* not fatal: the chunk is fetched when read */
			break;
		}
		if (b->mem)
			memcpy(b->mem + (k << b->shift), probe + (k << b->shift), len);
		b->state[k] = C_PRESENT;
		b->present++;
		b->bytes_fetched += len;
	}
	free(probe);
	if (rc < 0) {
		blob_close(b);
		return rc;
	}
	*out = b;
	return 0;
}

void blob_close(struct blob *b)
{
	if (!b)
		return;
	pthread_mutex_lock(&b->mu);
	b->closing = 1;
	b->hydrating = 0;
	wake_all(b);
	/* Fetches in flight point at this blob; let them land (the store bounds them). */
	while (b->inflight > 0 || b->completing > 0)
		pthread_cond_wait(&b->cv, &b->mu);
	pthread_mutex_unlock(&b->mu);
	if (b->ticker_running)
		pthread_join(b->ticker, NULL);
	if (b->cache)
		cache_close(b->cache);
	if (b->mem)
		munmap(b->mem, b->mem_len);
	for (int p = 0; p < PRIO_COUNT; p++)
		free(b->q[p].v);
	free(b->first);
	free(b->state);
	free(b->qprio);
	free(b->csum);
	img_index_free(&b->ix);
	free(b);
}
