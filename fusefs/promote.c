/* promote.c - moving a complete file's re-reads from FUSE's page cache to
 * passthrough (see promote.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../common/fsutil.h"
#include "../common/log.h"
#include "../common/timeutil.h"
#include "file.h"
#include "promote.h"

/* Residency is checked, and what is missing read back, a piece at a time;
 * reads land in a buffer of BUF bytes. */
#define PIECE (16u << 20)
#define BUF (1u << 20)

struct promoter {
	struct thawfs *fs;
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct tnode **q;       /* queued files: q[head..tail) */
	size_t head, tail, cap;
	uint8_t *buf;           /* BUF bytes that reads back land in */
	int stop;
};

static int stopping(struct promoter *p) { return __atomic_load_n(&p->stop, __ATOMIC_ACQUIRE); }

/* MemAvailable in bytes, or 0 if it cannot be read. */
static uint64_t mem_available(void)
{
	FILE *f = fopen("/proc/meminfo", "r");
	if (!f)
		return 0;
	char line[128];
	unsigned long long kb = 0;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1)
			break;
	fclose(f);
	return (uint64_t)kb << 10;
}

#ifndef SYS_cachestat
#define SYS_cachestat 451 /* the same on every architecture; ENOSYS before 6.5 */
#endif

/* Bytes of fd in [off, off + len) in the page cache (len 0: to the end), by
 * cachestat(2); 0 when it cannot tell. */
static uint64_t cached_bytes(int fd, uint64_t off, uint64_t len)
{
	struct { uint64_t off, len; } range = { off, len };
	struct { uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted; } cs;
	if (syscall(SYS_cachestat, fd, &range, &cs, 0) < 0)
		return 0;
	return cs.nr_cache * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* Read [d, h) of fd through the CPU; 0 or <0 + err_msg.  (The data file is
 * as long as the object, so no read here meets its end.) */
static int read_range(struct promoter *p, int fd, off_t d, off_t h, const char *key)
{
	for (size_t want; d < h; d += (off_t)want) {
		want = (uint64_t)(h - d) < BUF ? (size_t)(h - d) : BUF;
		int rc = fsu_pread_full(fd, p->buf, want, (uint64_t)d);
		if (rc < 0)
			return err_set(-rc, "%s: read the cache data file back: %s", key, strerror(-rc));
	}
	return 0;
}

/* Bring the data extents of fd in [0, size) into the page cache, skipping
 * pieces already there; *done gets the bytes read.  0 or <0 + err_msg. */
static int read_back(struct promoter *p, int fd, uint64_t size, const char *key, uint64_t *done)
{
	long page = sysconf(_SC_PAGESIZE);
	off_t off = 0, end = (off_t)size;
	*done = 0;
	while (off < end && !stopping(p)) {
		off_t d = lseek(fd, off, SEEK_DATA);
		if (d < 0 && errno == ENXIO)
			return 0; /* only a hole is left */
		if (d < 0)
			return err_set(errno, "%s: seek in the cache data file: %s", key, strerror(errno));
		if (d >= end)
			return 0;
		off_t h = lseek(fd, d, SEEK_HOLE);
		if (h < 0 || h > end)
			h = end;
		for (off_t e; d < h && !stopping(p); d = e) {
			e = h - d > PIECE ? d + PIECE : h;
			/* A page short: the last one may be partly past the end. */
			if (cached_bytes(fd, (uint64_t)d, (uint64_t)(e - d)) + (uint64_t)page >= (uint64_t)(e - d))
				continue;
			int rc = read_range(p, fd, d, e, key);
			if (rc < 0)
				return rc;
			*done += (uint64_t)(e - d);
		}
		off = h;
	}
	return 0;
}

static void promote(struct promoter *p, struct tnode *n)
{
	struct thawfs *fs = p->fs;
	struct blob *b;
	if (file_pin(fs, n, &b) < 0) {
		file_promote_done(fs, n, 0);
		return;
	}
	uint64_t t0 = now_ns(), size = blob_size(b), read = 0;
	int ok = 0;
	/* Our own descriptor: its offset is ours to move with SEEK_DATA. */
	char path[64];
	snprintf(path, sizeof path, "/proc/self/fd/%d", blob_cache_fd(b));
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) {
		log_debug("%s: left in cached mode: cannot open its cache data file: %s", n->key, strerror(errno));
	} else {
		uint64_t data = (uint64_t)st.st_blocks * 512, cached = cached_bytes(fd, 0, 0), avail = mem_available();
		uint64_t missing = data > cached ? data - cached : 0;
		if (missing > avail / 2)
			log_debug("%s: left in cached mode: %llu bytes of its data to read back, more than half the "
				  "memory available (%llu)", n->key, (unsigned long long)missing, (unsigned long long)avail);
		else if (read_back(p, fd, size, n->key, &read) < 0)
			log_warn("%s (left in cached mode)", err_msg());
		else
			ok = !stopping(p);
	}
	if (fd >= 0)
		close(fd);
	if (file_promote_done(fs, n, ok)) {
		/* After the switch, so that no cached open refills what is dropped.
		 * ENOENT: the kernel has forgotten the inode, and its pages with it. */
		int e = fuse_lowlevel_notify_inval_inode(fs->se, (fuse_ino_t)n->ino, 0, 0);
		if (e < 0 && e != -ENOENT)
			log_debug("%s: cannot drop FUSE's copy of its pages: %s", n->key, strerror(-e));
		log_debug("%s: opened for passthrough from now on (%llu bytes read back; %.3f s)", n->key,
			  (unsigned long long)read, (double)(now_ns() - t0) / 1e9);
	}
	file_unpin(fs, n);
}

static void *promoter_main(void *arg)
{
	struct promoter *p = arg;
	pthread_mutex_lock(&p->mu);
	while (!p->stop) {
		if (p->head == p->tail) {
			p->head = p->tail = 0;
			pthread_cond_wait(&p->cv, &p->mu);
			continue;
		}
		struct tnode *n = p->q[p->head++];
		pthread_mutex_unlock(&p->mu);
		promote(p, n);
		pthread_mutex_lock(&p->mu);
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

int promoter_add(struct promoter *p, struct tnode *n)
{
	pthread_mutex_lock(&p->mu);
	if (p->tail == p->cap && p->head) {
		memmove(p->q, p->q + p->head, (p->tail - p->head) * sizeof *p->q);
		p->tail -= p->head;
		p->head = 0;
	}
	if (p->tail == p->cap) {
		size_t nc = p->cap ? p->cap * 2 : 16;
		struct tnode **nq = realloc(p->q, nc * sizeof *nq);
		if (!nq) {
			pthread_mutex_unlock(&p->mu);
			return err_set(ENOMEM, "out of memory queueing %s for passthrough", n->key);
		}
		p->q = nq;
		p->cap = nc;
	}
	p->q[p->tail++] = n;
	pthread_cond_signal(&p->cv);
	pthread_mutex_unlock(&p->mu);
	return 0;
}

int promoter_start(struct thawfs *fs, struct promoter **out)
{
	struct promoter *p = calloc(1, sizeof *p);
	if (!p)
		return err_set(ENOMEM, "out of memory");
	p->fs = fs;
	p->buf = malloc(BUF);
	if (!p->buf) {
		free(p);
		return err_set(ENOMEM, "out of memory");
	}
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	int e = pthread_create(&p->thread, NULL, promoter_main, p);
	if (e) {
		free(p->buf);
		free(p);
		return err_set(e, "cannot start the passthrough promoter: %s", strerror(e));
	}
	pthread_setname_np(p->thread, "thaw-promote");
	*out = p;
	return 0;
}

void promoter_stop(struct promoter *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	__atomic_store_n(&p->stop, 1, __ATOMIC_RELEASE);
	pthread_cond_signal(&p->cv);
	pthread_mutex_unlock(&p->mu);
	pthread_join(p->thread, NULL);
	free(p->buf);
	free(p->q);
	free(p);
}
