/* cache.c - the persistent chunk cache; see cache.h for the layout and the
 * durability rule (bytes first, fdatasync, then the map entry). */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/log.h"
#include "../common/timeutil.h"
#include "../common/xxh.h"
#include "cache.h"
#include "../common/fsutil.h"

#define MAP_MAGIC "THAWCMAP"
#define MAP_VERSION 1
#define MAP_HDR 4096 /* header block: magic, version, size, chunk size, etag, location, checksum */

struct cache {
	char dir[4096];
	int data_fd, map_fd;
	uint64_t size, cs, n;
	pthread_mutex_t mu;
	uint64_t *pend_idx, *pend_sum; /* committed, not yet durable */
	size_t npend, cap;
	struct cache *next;  /* on the flusher's list */
	int flushing;        /* the flusher is working on it (flush_mu) */
	uint8_t *fate;       /* per chunk: FATE_DURABLE | FATE_SERVED (atomic); NULL unless
	                        pages are dropped once durable and served (cache_drop_durable) */
};

/* A chunk's pages leave the page cache once both have happened: it is
 * durable (the flusher), and its reader has taken its own copy
 * (cache_served).  Dropping at durability alone threw away what a reader
 * trailing the fetch had not read yet, and it read every byte back from
 * disk.  Pages go by aligned groups of DROP_GROUP bytes, whoever completes a
 * group dropping it: the data file's page cache holds large folios (up to
 * 2 MiB, naturally aligned), and the kernel drops no folio a range covers
 * only in part. */
#define FATE_DURABLE 1
#define FATE_SERVED 2
#define DROP_GROUP (2ull << 20)

/* One flusher thread for every cache in the process, not one per open
 * object: a mount that has touched thousands of files keeps thousands of
 * caches open.  Every 200 ms it makes each cache's committed chunks durable
 * and records them. */
static pthread_mutex_t flush_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t flush_cv = PTHREAD_COND_INITIALIZER;
static struct cache *flush_list;
static struct cache *flush_next; /* where the flusher's walk goes on */
static int flusher_started;

static void make_header(struct cache *c, const char *loc, const char *etag, uint8_t *h)
{
	memset(h, 0, MAP_HDR);
	memcpy(h, MAP_MAGIC, 8);
	uint32_t v = MAP_VERSION;
	memcpy(h + 8, &v, 4);
	memcpy(h + 16, &c->size, 8);
	memcpy(h + 24, &c->cs, 8);
	snprintf((char *)h + 64, 256, "%s", etag);
	snprintf((char *)h + 320, MAP_HDR - 320 - 8, "%s", loc);
	uint64_t sum = XXH3_64bits(h, MAP_HDR - 8);
	memcpy(h + MAP_HDR - 8, &sum, 8);
}

static void *flusher_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&flush_mu);
	for (;;) {
		struct timespec dl = deadline_after_ms(200);
		pthread_cond_timedwait(&flush_cv, &flush_mu, &dl);
		/* Walk the list one cache at a time, without holding the lock over
		 * an fdatasync; cache_close waits for the cache it removes. */
		for (struct cache *c = flush_list; c; c = flush_next) {
			flush_next = c->next; /* flusher_remove moves it on past a cache it takes out */
			c->flushing = 1;
			pthread_mutex_unlock(&flush_mu);
			cache_flush(c);
			pthread_mutex_lock(&flush_mu);
			c->flushing = 0;
			pthread_cond_broadcast(&flush_cv);
		}
	}
	return NULL;
}

/* Put c on the flusher's list, starting the flusher the first time. */
static int flusher_add(struct cache *c)
{
	pthread_mutex_lock(&flush_mu);
	if (!flusher_started) {
		pthread_t th;
		pthread_attr_t at;
		pthread_attr_init(&at);
		pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
		int e = pthread_create(&th, &at, flusher_main, NULL);
		pthread_attr_destroy(&at);
		if (e) {
			pthread_mutex_unlock(&flush_mu);
			return err_set(e, "cannot start the cache flusher: %s", strerror(e));
		}
		pthread_setname_np(th, "thaw-flush");
		flusher_started = 1;
	}
	c->next = flush_list;
	flush_list = c;
	pthread_mutex_unlock(&flush_mu);
	return 0;
}

/* Take c off the list; on return the flusher is not touching it. */
static void flusher_remove(struct cache *c)
{
	pthread_mutex_lock(&flush_mu);
	for (struct cache **pp = &flush_list; *pp; pp = &(*pp)->next)
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	if (flush_next == c)
		flush_next = c->next;
	while (c->flushing)
		pthread_cond_wait(&flush_cv, &flush_mu);
	pthread_mutex_unlock(&flush_mu);
}

int cache_open(const char *root, struct store *s, const char *key, const char *etag, uint64_t size,
	       uint64_t chunk_size, int writable, struct cache **out)
{
	(void)writable;
	struct cache *c = calloc(1, sizeof *c);
	if (!c)
		return err_set(ENOMEM, "out of memory");
	char loc[8192];
	url_format(&s->url, loc, sizeof loc);
	snprintf(loc + strlen(loc), sizeof loc - strlen(loc), "%s", key);
	snprintf(c->dir, sizeof c->dir, "%s/%016llx-%016llx", root, (unsigned long long)XXH3_64bits(loc, strlen(loc)),
		 (unsigned long long)XXH3_64bits(etag, strlen(etag)));
	c->size = size;
	c->cs = chunk_size;
	c->n = (size + chunk_size - 1) / chunk_size;
	c->data_fd = c->map_fd = -1;
	pthread_mutex_init(&c->mu, NULL);
	int rc = fsu_mkdir_p(c->dir, 0700);
	if (rc < 0) {
		free(c);
		return err_set(-rc, "cache directory %s: %s", root, strerror(-rc));
	}
	char p[4200];
	uint8_t *want = malloc(MAP_HDR), *have = malloc(MAP_HDR);
	if (!want || !have) {
		rc = err_set(ENOMEM, "out of memory");
		goto fail;
	}
	make_header(c, loc, etag, want);
	snprintf(p, sizeof p, "%s/map", c->dir);
	c->map_fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (c->map_fd < 0) {
		rc = err_set(errno, "open cache map %s: %s", p, strerror(errno));
		goto fail;
	}
	ssize_t n = pread(c->map_fd, have, MAP_HDR, 0);
	struct stat st;
	fstat(c->map_fd, &st);
	int fresh = n != MAP_HDR || memcmp(have, want, MAP_HDR) ||
		    (uint64_t)st.st_size != MAP_HDR + 8 * c->n;
	if (fresh) {
		if (n > 0)
			log_warn("cache %s: map from another thaw version or damaged; rebuilding it", c->dir);
		/* Allocate the map's blocks now: when the data file later fills the
		 * disk, the map must still take every entry, or nothing is recorded. */
		if (ftruncate(c->map_fd, 0) < 0 || ftruncate(c->map_fd, (off_t)(MAP_HDR + 8 * c->n)) < 0 ||
		    posix_fallocate(c->map_fd, 0, (off_t)(MAP_HDR + 8 * c->n)) != 0 ||
		    pwrite(c->map_fd, want, MAP_HDR, 0) != MAP_HDR) {
			rc = err_set(errno, "write cache map %s: %s", p, strerror(errno));
			goto fail;
		}
	}
	snprintf(p, sizeof p, "%s/data", c->dir);
	c->data_fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC | (fresh ? O_TRUNC : 0), 0600);
	if (c->data_fd < 0 || ftruncate(c->data_fd, (off_t)size) < 0) {
		rc = err_set(errno, "open cache data %s: %s", p, strerror(errno));
		goto fail;
	}
	if ((rc = flusher_add(c)) < 0)
		goto fail;
	free(want);
	free(have);
	*out = c;
	return 0;
fail:
	free(want);
	free(have);
	if (c->map_fd >= 0)
		close(c->map_fd);
	if (c->data_fd >= 0)
		close(c->data_fd);
	free(c);
	return rc;
}

int cache_load_map(struct cache *c, uint64_t *sums)
{
	if (c->n && fsu_pread_full(c->map_fd, sums, c->n * 8, MAP_HDR) < 0)
		return err_set(EIO, "read cache map in %s", c->dir);
	for (uint64_t i = 0; c->fate && i < c->n; i++)
		if (sums[i])
			c->fate[i] = FATE_DURABLE; /* recorded, so durable */
	return 0;
}

int cache_check(struct cache *c, uint64_t idx, uint64_t sum)
{
	uint64_t off = idx * c->cs, len = c->size - off < c->cs ? c->size - off : c->cs;
	uint8_t *buf = malloc(len ? len : 1);
	if (!buf)
		return err_set(ENOMEM, "out of memory checking a cached chunk");
	int rc = fsu_pread_full(c->data_fd, buf, len, off);
	uint64_t h = rc < 0 ? 0 : XXH3_64bits(buf, len);
	if (rc < 0) {
		rc = err_set(-rc, "read cache data in %s: %s", c->dir, strerror(-rc));
	} else if (h != sum && !(sum == 1 && h == 0)) {
		uint64_t zero = 0;
		if (pwrite(c->map_fd, &zero, 8, (off_t)(MAP_HDR + 8 * idx)) != 8)
			log_warn("cache %s: cannot clear the entry of chunk %llu: %s", c->dir,
				 (unsigned long long)idx, strerror(errno));
		rc = err_set(EBADMSG, "cache %s: chunk %llu failed verification", c->dir, (unsigned long long)idx);
	}
	free(buf);
	return rc;
}

int cache_write(struct cache *c, const void *buf, size_t len, uint64_t off)
{
	size_t done = 0;
	while (done < len) {
		ssize_t n = pwrite(c->data_fd, (const char *)buf + done, len - done, (off_t)(off + done));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return err_set(errno, "cache write of chunk %llu in %s: %s%s",
				       (unsigned long long)((off + done) / c->cs), c->dir, strerror(errno),
				       errno == ENOSPC ? " (cache disk full)" : "");
		done += (size_t)n;
	}
	return 0;
}

int cache_record_run(struct cache *c, uint64_t idx, const uint64_t *sums, size_t n)
{
	pthread_mutex_lock(&c->mu);
	if (c->npend + n > c->cap) {
		size_t nc = c->cap ? c->cap : 256;
		while (nc < c->npend + n)
			nc *= 2;
		uint64_t *a = realloc(c->pend_idx, nc * 8), *b2 = a ? realloc(c->pend_sum, nc * 8) : NULL;
		if (a)
			c->pend_idx = a;
		if (b2)
			c->pend_sum = b2;
		if (!a || !b2) {
			pthread_mutex_unlock(&c->mu);
			return err_set(ENOMEM, "out of memory");
		}
		c->cap = nc;
	}
	for (size_t i = 0; i < n; i++) {
		c->pend_idx[c->npend] = idx + i;
		/* 0 means absent; cache_check takes 1 for a chunk whose hash is 0 */
		c->pend_sum[c->npend++] = sums[i] ? sums[i] : 1;
	}
	pthread_mutex_unlock(&c->mu);
	return 0;
}

int cache_record(struct cache *c, uint64_t idx, uint64_t sum)
{
	return cache_record_run(c, idx, &sum, 1);
}

int cache_commit(struct cache *c, uint64_t idx, const void *buf, uint64_t len)
{
	int rc = cache_write(c, buf, (size_t)len, idx * c->cs);
	return rc < 0 ? rc : cache_record(c, idx, XXH3_64bits(buf, len));
}

static uint64_t group_chunks(const struct cache *c) { return c->cs < DROP_GROUP ? DROP_GROUP / c->cs : 1; }

/* Drop group g's pages if all its chunks are durable and served.  Sequentially
 * consistent with the fetch_or of each side, so that of two threads completing
 * a group at once at least one sees it complete. */
static void drop_group_if_done(struct cache *c, uint64_t g)
{
	uint64_t per = group_chunks(c), first = g * per, last = first + per < c->n ? first + per : c->n;
	for (uint64_t i = first; i < last; i++)
		if ((__atomic_load_n(&c->fate[i], __ATOMIC_SEQ_CST) & (FATE_DURABLE | FATE_SERVED)) !=
		    (FATE_DURABLE | FATE_SERVED))
			return;
	uint64_t from = first * c->cs, to = last * c->cs < c->size ? last * c->cs : c->size;
	posix_fadvise(c->data_fd, (off_t)from, (off_t)(to - from), POSIX_FADV_DONTNEED);
}

/* Mark chunks first..last with bit, then drop the groups that completes. */
static void mark_and_drop(struct cache *c, uint64_t first, uint64_t last, uint8_t bit)
{
	for (uint64_t i = first; i <= last; i++)
		__atomic_fetch_or(&c->fate[i], bit, __ATOMIC_SEQ_CST);
	uint64_t per = group_chunks(c);
	for (uint64_t g = first / per; g <= last / per; g++)
		drop_group_if_done(c, g);
}

void cache_served(struct cache *c, uint64_t off, uint64_t len)
{
	if (!c->fate || off >= c->size || !len)
		return;
	uint64_t end = len > c->size - off ? c->size : off + len;
	/* Only chunks read whole are served: the rest of one read in part is
	 * still to come (the last chunk ends at the object's end). */
	uint64_t first = (off + c->cs - 1) / c->cs, last = end == c->size ? c->n : end / c->cs;
	if (first < last)
		mark_and_drop(c, first, last - 1, FATE_SERVED);
}

int cache_flush(struct cache *c)
{
	pthread_mutex_lock(&c->mu);
	size_t n = c->npend;
	uint64_t *idx = c->pend_idx, *sum = c->pend_sum;
	c->pend_idx = c->pend_sum = NULL;
	c->npend = c->cap = 0;
	pthread_mutex_unlock(&c->mu);
	if (!n) {
		free(idx);
		free(sum);
		return 0;
	}
	int rc = 0;
	if (fdatasync(c->data_fd) < 0)
		rc = err_set(errno, "fdatasync cache data in %s: %s", c->dir, strerror(errno));
	/* Chunks mostly land in order: write each run of adjacent entries at once. */
	for (size_t i = 0, j; rc == 0 && i < n; i = j) {
		for (j = i + 1; j < n && idx[j] == idx[j - 1] + 1 && j - i < 4096; j++)
			;
		ssize_t len = (ssize_t)(8 * (j - i));
		if (pwrite(c->map_fd, &sum[i], (size_t)len, (off_t)(MAP_HDR + 8 * idx[i])) != len)
			rc = err_set(errno, "write cache map in %s: %s", c->dir, strerror(errno));
		/* Clean after the fdatasync, so the pages go at once; pages a
		 * reply is still splicing from keep their bytes (the pipe holds a
		 * reference).  Freed pages are the next ones the allocator hands
		 * out, which is cheaper than fresh memory, most of all in a VM whose
		 * free memory goes back to the host. */
		if (c->fate)
			mark_and_drop(c, idx[i], idx[j - 1], FATE_DURABLE);
	}
	if (rc < 0)
		log_error("%s (those chunks stay unrecorded and will be fetched again)", err_msg());
	free(idx);
	free(sum);
	return rc;
}

int cache_read(struct cache *c, void *buf, size_t len, uint64_t off)
{
	int rc = fsu_pread_full(c->data_fd, buf, len, off);
	return rc < 0 ? err_set(-rc, "read cache data in %s: %s", c->dir, strerror(-rc)) : 0;
}

void cache_drop_durable(struct cache *c, int on)
{
	/* Set once, before the cache is shared; without memory for the fates
	 * nothing is dropped (the pages stay, as on a --direct-io mount). */
	if (!on) {
		free(c->fate);
		c->fate = NULL;
	} else if (!c->fate && c->n && !(c->fate = calloc(c->n, 1))) {
		log_warn("cache %s: no memory to track chunk pages; keeping them in the page cache", c->dir);
	}
}
const char *cache_dir(const struct cache *c) { return c->dir; }
int cache_data_fd(const struct cache *c) { return c->data_fd; }

void cache_close(struct cache *c)
{
	flusher_remove(c);
	cache_flush(c);
	close(c->data_fd);
	close(c->map_fd);
	free(c->pend_idx);
	free(c->pend_sum);
	free(c->fate);
	free(c);
}
