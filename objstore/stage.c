/* stage.c - write-behind staging of fetched chunks (see stage.h).
 *
 * A slot goes FREE -> FILLING (the fetch copies bytes in, outside the lock:
 * nobody else touches a filling slot) -> QUEUED -> WRITING (the writer, outside
 * the lock) -> WRITTEN -> FREE, or to STUCK when its write failed: a stuck
 * slot keeps serving its bytes and is never freed, since they are nowhere
 * else.  Readers pin slots; a pinned slot is never freed.
 *
 * Memory: each stage maps its pool when it first stages a chunk, and hands
 * out slots from the bottom, so what the process holds is each pool's high
 * water mark, bounded for all stages together by STAGE_BUDGET; a pool that
 * nobody has written or read for IDLE_NS gives back its written slots and,
 * once empty, its memory.  (A reader slower than the fetch reads its chunks
 * from memory as long as it keeps reading.) */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <unistd.h>

#include "../common/err.h"
#include "../common/log.h"
#include "../common/thread.h"
#include "../common/timeutil.h"
#include "stage.h"

#define STAGE_BUDGET (1ull << 30) /* slot memory held by all stages together */
#define IDLE_NS 10000000000ull /* unused that long, a pool lets its written slots go */
#define WRITE_BATCH 64           /* slots one writer turn takes from a stage */
#define CLOSE_WAIT_MS 60000
#define ROOM_MARGIN (4ull << 20) /* disk kept free beyond the staged bytes (metadata, the map) */

enum { S_FREE = 0, S_FILLING, S_QUEUED, S_WRITING, S_WRITTEN, S_STUCK };

struct slot {
	uint64_t idx, sum;
	uint32_t refs;
	uint8_t state, served;
};

struct stage {
	int dio_fd, fd; /* the data file with O_DIRECT, and without (a fallback) */
	uint64_t cs, size, n;
	size_t nslots;
	stage_done_fn done;
	void *arg;

	pthread_mutex_t mu;
	pthread_cond_t cv; /* a write finished */
	uint8_t *pool;     /* nslots * cs bytes, mapped at first use */
	struct slot *sl;
	uint32_t *slot_of; /* per chunk: its slot + 1, 0 for none */
	uint32_t *freel;
	size_t nfree, hwm, inuse;
	uint32_t *q, *wr;  /* rings of nslots: queued slots; written slots, oldest first */
	size_t qhead, qlen, whead, wlen;
	size_t writing;
	int dio_off;       /* an O_DIRECT write failed: stage nothing new */
	uint64_t last_use_ns;

	struct stage *next; /* on the writer's list (wmu) */
	int busy;           /* the writer is on it (wmu) */
};

/* One writer thread for every stage, like the cache's flusher. */
static pthread_mutex_t wmu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wcv = PTHREAD_COND_INITIALIZER;   /* work queued */
static pthread_cond_t wdone = PTHREAD_COND_INITIALIZER; /* the writer left a stage */
static struct stage *wlist;
static int wstarted;
static uint64_t resident; /* bytes of slots below every pool's high water mark (atomic) */
static uint64_t unwritten; /* bytes of slots taken and not yet written, every stage (atomic) */

static uint8_t *slot_mem(const struct stage *s, size_t sl) { return s->pool + sl * s->cs; }

static void free_slot(struct stage *s, size_t sl)
{
	s->slot_of[s->sl[sl].idx] = 0;
	s->sl[sl].state = S_FREE;
	s->freel[s->nfree++] = (uint32_t)sl;
	s->inuse--;
}

/* Free sl if nothing needs it any more (s->mu held). */
static void settle(struct stage *s, size_t sl)
{
	struct slot *x = &s->sl[sl];
	if (x->state == S_WRITTEN && x->served && x->refs == 0)
		free_slot(s, sl);
}

/* A slot for a new chunk (s->mu held), or -1. */
static long take_slot(struct stage *s)
{
	if (!s->pool) {
		void *p = mmap(NULL, s->nslots * s->cs, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
			       -1, 0);
		if (p == MAP_FAILED)
			return -1;
		/* Fresh memory in 4 KiB pages costs a fault each, and in a VM that
		 * reports free memory to the host, a host fault each too. */
		madvise(p, s->nslots * s->cs, MADV_HUGEPAGE);
		s->pool = p;
	}
	if (s->nfree)
		return s->freel[--s->nfree];
	if (s->hwm < s->nslots && __atomic_add_fetch(&resident, s->cs, __ATOMIC_RELAXED) <= STAGE_BUDGET)
		return (long)s->hwm++;
	if (s->hwm < s->nslots)
		__atomic_sub_fetch(&resident, s->cs, __ATOMIC_RELAXED);
	/* Evict the oldest written slot nobody has pinned: unserved readahead or
	 * hydration, whose bytes are on disk. */
	while (s->wlen) {
		size_t sl = s->wr[s->whead];
		s->whead = (s->whead + 1) % s->nslots;
		s->wlen--;
		if (s->sl[sl].state == S_WRITTEN && s->sl[sl].refs == 0) {
			free_slot(s, sl);
			return s->freel[--s->nfree];
		}
	}
	return -1;
}

static void *writer_main(void *arg);

/* Everything but the pool, for a stage off the writer's list. */
static void stage_free(struct stage *s)
{
	if (s->dio_fd >= 0)
		close(s->dio_fd);
	if (s->fd >= 0)
		close(s->fd);
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->cv);
	free(s->sl);
	free(s->slot_of);
	free(s->freel);
	free(s->q);
	free(s->wr);
	free(s);
}

int stage_open(const char *path, uint64_t cs, uint64_t size, size_t cap, stage_done_fn done, void *arg,
	       struct stage **out)
{
	*out = NULL;
	size_t nslots = cs ? cap / cs : 0;
	if (cs % 4096 || nslots < 4 || size / cs == 0)
		return -EINVAL;
	struct stage *s = calloc(1, sizeof *s);
	if (!s)
		return err_set(ENOMEM, "out of memory");
	s->cs = cs;
	s->size = size;
	s->n = (size + cs - 1) / cs;
	s->nslots = nslots;
	s->done = done;
	s->arg = arg;
	s->dio_fd = open(path, O_WRONLY | O_DIRECT | O_CLOEXEC);
	s->fd = open(path, O_WRONLY | O_CLOEXEC);
	s->sl = calloc(nslots, sizeof *s->sl);
	s->slot_of = calloc(s->n, sizeof *s->slot_of);
	s->freel = calloc(nslots, sizeof *s->freel);
	s->q = calloc(nslots, sizeof *s->q);
	s->wr = calloc(nslots, sizeof *s->wr);
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->cv, NULL);
	if (s->dio_fd < 0 || s->fd < 0 || !s->sl || !s->slot_of || !s->freel || !s->q || !s->wr) {
		int e = s->dio_fd < 0 || s->fd < 0 ? errno : ENOMEM;
		stage_free(s);
		return e == ENOMEM ? err_set(ENOMEM, "out of memory") : -EINVAL;
	}
	pthread_mutex_lock(&wmu);
	if (!wstarted) {
		int rc = thread_start_detached(writer_main, "thaw-stage");
		if (rc < 0) {
			pthread_mutex_unlock(&wmu);
			stage_free(s);
			return rc;
		}
		wstarted = 1;
	}
	s->next = wlist;
	wlist = s;
	pthread_mutex_unlock(&wmu);
	*out = s;
	return 0;
}

/* Whether the disk has room for one more chunk besides every staged chunk
 * not yet written: 0, or -ENOSPC, so that a full disk fails the fetch (with
 * the message a buffered write gives) and not the write behind it.
 * fallocate would say so exactly, but it takes the inode's lock against the
 * writer's O_DIRECT writes, and cost more than the staging saved. */
static int room_for(struct stage *s)
{
	struct statvfs v;
	if (fstatvfs(s->fd, &v) < 0)
		return 0; /* unknown: let the write say */
	uint64_t avail = (uint64_t)(geteuid() == 0 ? v.f_bfree : v.f_bavail) * v.f_frsize;
	uint64_t need = __atomic_add_fetch(&unwritten, s->cs, __ATOMIC_RELAXED) + ROOM_MARGIN;
	if (avail >= need)
		return 0;
	__atomic_sub_fetch(&unwritten, s->cs, __ATOMIC_RELAXED);
	return -ENOSPC;
}

int stage_write(struct stage *s, uint64_t idx, uint64_t at, const void *p, size_t n)
{
	if (idx >= s->n || (idx + 1) * s->cs > s->size) /* the short last chunk: no O_DIRECT */
		return 0;
	pthread_mutex_lock(&s->mu);
	uint32_t v = s->slot_of[idx];
	int fresh = 0;
	if (!v) {
		long sl = at == 0 && !s->dio_off ? take_slot(s) : -1;
		if (sl < 0) {
			pthread_mutex_unlock(&s->mu);
			return 0;
		}
		struct slot *x = &s->sl[sl];
		x->idx = idx;
		x->state = S_FILLING;
		x->served = 0;
		x->refs = 0;
		s->slot_of[idx] = v = (uint32_t)sl + 1;
		s->inuse++;
		fresh = 1;
	} else if (s->sl[v - 1].state != S_FILLING) {
		pthread_mutex_unlock(&s->mu);
		return err_set(EALREADY, "chunk %llu written again while staged", (unsigned long long)idx);
	}
	s->last_use_ns = now_ns();
	pthread_mutex_unlock(&s->mu);
	int e = fresh ? room_for(s) : 0;
	if (e < 0) {
		pthread_mutex_lock(&s->mu);
		free_slot(s, v - 1);
		pthread_mutex_unlock(&s->mu);
		return e;
	}
	memcpy(slot_mem(s, v - 1) + at, p, n);
	return 1;
}

int stage_commit(struct stage *s, uint64_t idx, uint64_t sum)
{
	if (idx >= s->n)
		return 0;
	pthread_mutex_lock(&s->mu);
	uint32_t v = s->slot_of[idx];
	if (!v || s->sl[v - 1].state != S_FILLING) {
		pthread_mutex_unlock(&s->mu);
		return 0;
	}
	s->sl[v - 1].state = S_QUEUED;
	s->sl[v - 1].sum = sum;
	s->q[(s->qhead + s->qlen++) % s->nslots] = v - 1;
	pthread_mutex_unlock(&s->mu);
	pthread_mutex_lock(&wmu);
	pthread_cond_signal(&wcv);
	pthread_mutex_unlock(&wmu);
	return 1;
}

int stage_pin(struct stage *s, uint64_t first, uint64_t last, const uint8_t **ptr, int *unwritten)
{
	int pinned = 0;
	*unwritten = 0;
	pthread_mutex_lock(&s->mu);
	s->last_use_ns = now_ns();
	for (uint64_t k = first; k <= last; k++) {
		uint32_t v = k < s->n ? s->slot_of[k] : 0;
		ptr[k - first] = NULL;
		if (!v)
			continue;
		struct slot *x = &s->sl[v - 1];
		x->refs++;
		ptr[k - first] = slot_mem(s, v - 1);
		if (x->state != S_WRITTEN)
			*unwritten = 1;
		pinned++;
	}
	pthread_mutex_unlock(&s->mu);
	return pinned;
}

void stage_unpin(struct stage *s, uint64_t first, uint64_t last, const uint8_t **ptr)
{
	pthread_mutex_lock(&s->mu);
	for (uint64_t k = first; k <= last; k++) {
		if (ptr && !ptr[k - first])
			continue;
		size_t sl = s->slot_of[k] - 1; /* a pinned slot keeps its chunk */
		s->sl[sl].refs--;
		settle(s, sl);
	}
	pthread_mutex_unlock(&s->mu);
}

void stage_served(struct stage *s, uint64_t first, uint64_t last)
{
	pthread_mutex_lock(&s->mu);
	for (uint64_t k = first; k <= last && k < s->n; k++) {
		uint32_t v = s->slot_of[k];
		if (v && s->sl[v - 1].state != S_FILLING) {
			s->sl[v - 1].served = 1;
			settle(s, v - 1);
		}
	}
	pthread_mutex_unlock(&s->mu);
}

int stage_drain(struct stage *s, int timeout_ms)
{
	struct timespec dl = deadline_after_ms((uint64_t)timeout_ms);
	int rc = 0;
	pthread_mutex_lock(&s->mu);
	while (s->qlen + s->writing > 0 && rc == 0)
		if (pthread_cond_timedwait(&s->cv, &s->mu, &dl) == ETIMEDOUT)
			rc = -ETIMEDOUT;
	if (s->qlen + s->writing == 0)
		rc = 0;
	pthread_mutex_unlock(&s->mu);
	return rc;
}

/* Write slots sl[0..n-1], chunks first.., adjacent in the file: 0 or -errno. */
static int write_run(struct stage *s, int fd, const size_t *sl, size_t n, uint64_t first)
{
	struct iovec iov[WRITE_BATCH];
	for (size_t i = 0; i < n; i++)
		iov[i] = (struct iovec){ slot_mem(s, sl[i]), s->cs };
	size_t done = 0, total = n * s->cs;
	while (done < total) {
		size_t i = done / s->cs, in = done % s->cs;
		iov[i].iov_base = slot_mem(s, sl[i]) + in;
		iov[i].iov_len = s->cs - in;
		ssize_t w = pwritev(fd, iov + i, (int)(n - i), (off_t)(first * s->cs + done));
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return w < 0 ? -errno : -EIO;
		done += (size_t)w;
	}
	return 0;
}

static int by_chunk(const void *a, const void *b, void *arg)
{
	const struct stage *s = arg;
	uint64_t x = s->sl[*(const size_t *)a].idx, y = s->sl[*(const size_t *)b].idx;
	return x < y ? -1 : x > y;
}

/* One writer turn on s: up to WRITE_BATCH queued slots, in runs of adjacent chunks. */
static void write_batch(struct stage *s)
{
	size_t sl[WRITE_BATCH], n = 0;
	int err[WRITE_BATCH];
	pthread_mutex_lock(&s->mu);
	while (s->qlen && n < WRITE_BATCH) {
		sl[n] = s->q[s->qhead];
		s->qhead = (s->qhead + 1) % s->nslots;
		s->qlen--;
		s->sl[sl[n++]].state = S_WRITING;
	}
	s->writing += n;
	int dio = !s->dio_off;
	pthread_mutex_unlock(&s->mu);
	qsort_r(sl, n, sizeof *sl, by_chunk, s);
	for (size_t i = 0, j; i < n; i = j) {
		for (j = i + 1; j < n && s->sl[sl[j]].idx == s->sl[sl[j - 1]].idx + 1; j++)
			;
		int rc = dio ? write_run(s, s->dio_fd, sl + i, j - i, s->sl[sl[i]].idx) : -EINVAL;
		if (rc < 0 && dio && rc != -ENOSPC && rc != -EIO) {
			/* O_DIRECT refused (alignment, a file system that only
			 * pretends): write through the page cache, and stage no more. */
			log_warn("cache writer: O_DIRECT write failed (%s); writing through the page cache", strerror(-rc));
			dio = 0;
			__atomic_store_n(&s->dio_off, 1, __ATOMIC_RELAXED);
		}
		if (rc < 0)
			rc = write_run(s, s->fd, sl + i, j - i, s->sl[sl[i]].idx);
		for (size_t k = i; k < j; k++)
			err[k] = rc;
	}
	__atomic_sub_fetch(&unwritten, n * s->cs, __ATOMIC_RELAXED);
	pthread_mutex_lock(&s->mu);
	for (size_t i = 0; i < n; i++) {
		struct slot *x = &s->sl[sl[i]];
		x->state = err[i] < 0 ? S_STUCK : S_WRITTEN;
		if (err[i] == 0) {
			if (s->wlen == s->nslots) { /* full of stale entries: drop the oldest */
				s->whead = (s->whead + 1) % s->nslots;
				s->wlen--;
			}
			s->wr[(s->whead + s->wlen++) % s->nslots] = (uint32_t)sl[i];
		}
	}
	pthread_mutex_unlock(&s->mu);
	for (size_t i = 0; i < n; i++) {
		if (err[i] < 0)
			log_error("cache write of chunk %llu: %s (kept in memory, not recorded)",
				  (unsigned long long)s->sl[sl[i]].idx, strerror(-err[i]));
		s->done(s->arg, s->sl[sl[i]].idx, s->sl[sl[i]].sum, err[i]);
	}
	pthread_mutex_lock(&s->mu);
	for (size_t i = 0; i < n; i++)
		settle(s, sl[i]);
	s->writing -= n;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
}

/* A pool idle for a second: free its written slots, and its memory once empty. */
static void trim_idle(struct stage *s, uint64_t now)
{
	pthread_mutex_lock(&s->mu);
	if (s->hwm && s->qlen + s->writing == 0 && now - s->last_use_ns > IDLE_NS) {
		for (size_t i = 0; i < s->hwm; i++)
			if (s->sl[i].state == S_WRITTEN && s->sl[i].refs == 0)
				free_slot(s, i);
		if (s->inuse == 0) {
			madvise(s->pool, s->hwm * s->cs, MADV_DONTNEED);
			__atomic_sub_fetch(&resident, s->hwm * s->cs, __ATOMIC_RELAXED);
			s->hwm = s->nfree = 0;
			s->wlen = 0;
		}
	}
	pthread_mutex_unlock(&s->mu);
}

static void *writer_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&wmu);
	for (;;) {
		struct stage *s = wlist;
		for (; s; s = s->next)
			if (__atomic_load_n(&s->qlen, __ATOMIC_RELAXED))
				break;
		if (!s) {
			struct timespec dl = deadline_after_ms(1000);
			if (pthread_cond_timedwait(&wcv, &wmu, &dl) == ETIMEDOUT) {
				uint64_t now = now_ns();
				for (struct stage *t = wlist; t; t = t->next)
					trim_idle(t, now);
			}
			continue;
		}
		s->busy = 1;
		pthread_mutex_unlock(&wmu);
		write_batch(s);
		pthread_mutex_lock(&wmu);
		s->busy = 0;
		/* Move it to the end, so that one busy stage does not starve the rest. */
		if (s->next) {
			struct stage **pp = &wlist;
			while (*pp != s)
				pp = &(*pp)->next;
			*pp = s->next;
			struct stage *t = *pp;
			while (t->next)
				t = t->next;
			t->next = s;
			s->next = NULL;
		}
		pthread_cond_broadcast(&wdone);
	}
	return NULL;
}

void stage_close(struct stage *s)
{
	if (!s)
		return;
	if (stage_drain(s, CLOSE_WAIT_MS) < 0)
		log_error("cache writer: chunks still unwritten after %d s; they stay unrecorded", CLOSE_WAIT_MS / 1000);
	pthread_mutex_lock(&wmu);
	while (s->busy)
		pthread_cond_wait(&wdone, &wmu);
	for (struct stage **pp = &wlist; *pp; pp = &(*pp)->next)
		if (*pp == s) {
			*pp = s->next;
			break;
		}
	pthread_mutex_unlock(&wmu);
	for (size_t i = 0; i < s->hwm; i++) /* never written: no longer waiting for room */
		if (s->sl[i].state == S_FILLING || s->sl[i].state == S_QUEUED)
			__atomic_sub_fetch(&unwritten, s->cs, __ATOMIC_RELAXED);
	if (s->pool) {
		munmap(s->pool, s->nslots * s->cs);
		__atomic_sub_fetch(&resident, s->hwm * s->cs, __ATOMIC_RELAXED);
	}
	stage_free(s);
}
