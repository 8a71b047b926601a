/* pusher.c - after resume, install everything the client has not faulted in
 * yet, so that a while later the whole image is in place and the
 * userfaultfd can be released.  Order: the recorded working set first (when
 * prefetching), then the rest in address order.
 *
 * Demand always goes first, at three levels: the blob fetches demand chunks
 * ahead of the pusher's background ones; the pusher installs in pieces of at
 * most PIECE bytes under evlock and steps aside between pieces whenever the
 * connection thread is waiting for the lock; and it never waits on a fetch
 * itself, it sleeps until the blob's listener says a chunk settled. */
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../common/err.h"
#include "../common/log.h"
#include "../common/timeutil.h"
#include "session.h"

/* How much one lock hold may install.  A 4 KiB page costs ~4 us to allocate
 * and copy here, so 256 KiB bounds a demand fault's extra wait to ~0.25 ms. */
#define PIECE (256u << 10)
/* EAGAIN from the kernel means an event is queued; the connection thread
 * reads it within microseconds.  Give up on pushing if it never clears. */
#define EAGAIN_LIMIT_MS 10000

static int stopping(struct session *s) { return __atomic_load_n(&s->pstop, __ATOMIC_RELAXED); }

void pusher_poke(struct session *s)
{
	pthread_mutex_lock(&s->pmu);
	s->pgen++;
	pthread_cond_signal(&s->pcv);
	pthread_mutex_unlock(&s->pmu);
}

/* Sleep until a chunk settles (pgen moves), stop, or ms pass. */
static void nap(struct session *s, uint64_t gen, unsigned ms)
{
	struct timespec dl = deadline_after_ms(ms);
	pthread_mutex_lock(&s->pmu);
	while (s->pgen == gen && !stopping(s))
		if (pthread_cond_timedwait(&s->pcv, &s->pmu, &dl) == ETIMEDOUT)
			break;
	pthread_mutex_unlock(&s->pmu);
}

static uint64_t gen_now(struct session *s)
{
	pthread_mutex_lock(&s->pmu);
	uint64_t g = s->pgen;
	pthread_mutex_unlock(&s->pmu);
	return g;
}

static void lock_ev(struct session *s)
{
	/* Let the connection thread in first if it is queued for the lock. */
	while (__atomic_load_n(&s->evwant, __ATOMIC_ACQUIRE))
		sched_yield();
	pthread_mutex_lock(&s->evlock);
}

/* Install chunk c's range in every extent that maps it.  0 when nothing more
 * can be done for it, -ESRCH when the client is gone, -ECANCELED on stop. */
static int push_chunk(struct session *s, uint64_t c, enum blob_prio prio)
{
	const struct userver_config *cfg = userver_cfg(s->srv);
	struct blob *b = s->blob;
	uint64_t cs = blob_chunk_size(b), lo = c * cs, hi = lo + blob_chunk_len(b, c);
	uint64_t pos = lo, t_wait = 0, t_again = 0, asked = 0;
	for (;;) {
		if (stopping(s))
			return -ECANCELED;
		struct fill_result r;
		uint64_t gen = gen_now(s);
		lock_ev(s);
		int rc = fill_range(s, pos, hi, 0, PIECE, 1, &r);
		int64_t poisoned = 0;
		uint64_t mc = r.missing;
		if (rc == 0 && r.next >= hi && mc != UINT64_MAX) {
			uint64_t f = userver_fail_ns(s->srv, mc);
			int timed_out = t_wait && cfg->fault_timeout_ms && now_ns() - t_wait > cfg->fault_timeout_ms * 1000000ull;
			if ((f && f >= asked) || timed_out) {
				poisoned = fill_poison(s, mc * cs, mc * cs + blob_chunk_len(b, mc));
				if (poisoned > 0)
					log_error("connection %d: chunk %llu of the image %s: poisoned %lld bytes of the "
						  "client's memory instead (SIGBUS if touched)",
						  s->id, (unsigned long long)mc,
						  timed_out ? "did not arrive in time" : "could not be fetched",
						  (long long)poisoned);
				rc = poisoned < 0 ? (int)poisoned : 0;
				mc = UINT64_MAX;
				t_wait = 0;
				pos = lo; /* other pages of this chunk may wait on it too */
				pthread_mutex_unlock(&s->evlock);
				continue;
			}
		}
		pthread_mutex_unlock(&s->evlock);
		metrics_add(&s->m->bytes_push, r.installed + r.zeroed);
		metrics_add(&s->m->bytes_zero, r.zeroed);
		if (rc == -EAGAIN) {
			if (!t_again)
				t_again = now_ns();
			else if (now_ns() - t_again > EAGAIN_LIMIT_MS * 1000000ull)
				return err_set(EAGAIN, "userfaultfd kept refusing installs (EAGAIN) for %d ms",
					       EAGAIN_LIMIT_MS);
			pos = r.next;
			sched_yield();
			continue;
		}
		t_again = 0;
		if (rc == -ESRCH)
			return rc;
		if (rc < 0)
			return err_set(-rc, "installing chunk %llu: %s", (unsigned long long)c, strerror(-rc));
		if (r.next < hi) {
			pos = r.next; /* out of budget: let a fault in, then go on */
			continue;
		}
		if (mc == UINT64_MAX)
			return 0;
		/* A page of this chunk waits for chunk mc (itself, or a neighbour
		 * sharing a huge page): have it fetched and sleep until it settles. */
		if (!asked)
			asked = now_ns();
		if (!t_wait)
			t_wait = now_ns();
		blob_request(b, mc, prio);
		if (!blob_chunk_present(b, mc))
			nap(s, gen, 100);
		pos = lo;
	}
}

static void *pusher_main(void *arg)
{
	struct session *s = arg;
	struct userver *srv = s->srv;
	const struct userver_config *cfg = userver_cfg(srv);
	size_t nws = 0;
	const uint64_t *ws = cfg->prefetch ? userver_ws(srv, &nws) : NULL;
	uint64_t n = blob_nchunks(s->blob);
	int rc = 0;
	/* On a small machine the pusher's copying competes with the workload and
	 * with demand fetches for CPU: let the scheduler prefer them. */
	if (cfg->push_nice && setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), cfg->push_nice) < 0)
		log_debug("connection %d: pusher nice %d: %s", s->id, cfg->push_nice, strerror(errno));
	metrics_set_time(&s->m->t_push_start, now_ns());
	if (ws) {
		/* REAP: ask for the whole working set at once, ahead of background. */
		for (size_t i = 0; i < nws; i++)
			blob_request(s->blob, ws[i], PRIO_READAHEAD);
		metrics_add(&s->m->ws_prefetch, nws);
	}
	if (cfg->push)
		userver_hydrate_once(srv);
	for (size_t i = 0; ws && i < nws && rc == 0; i++)
		rc = push_chunk(s, ws[i], PRIO_READAHEAD);
	for (uint64_t c = 0; cfg->push && c < n && rc == 0; c++)
		rc = push_chunk(s, c, PRIO_BACKGROUND);
	metrics_set_time(&s->m->t_push_end, now_ns());
	if (rc == -ESRCH)
		log_info("connection %d: pusher stopped: the client's address space is gone", s->id);
	else if (rc == -ECANCELED)
		log_debug("connection %d: pusher stopped", s->id);
	else if (rc < 0)
		log_error("connection %d: pusher stopped: %s", s->id, err_msg());
	else if (cfg->push)
		log_info("connection %d: pusher done: %.1f MiB installed in %.3f s", s->id,
			 (double)metrics_get(&s->m->bytes_push) / 1048576.0,
			 (double)(s->m->t_push_end - s->m->t_push_start) / 1e9);
	__atomic_store_n(&s->push_done, 1, __ATOMIC_RELEASE);
	uint64_t one = 1;
	if (write(s->evfd, &one, sizeof one) < 0)
		log_debug("connection %d: eventfd: %s", s->id, strerror(errno));
	return NULL;
}

int pusher_start(struct session *s)
{
	int rc = pthread_create(&s->pusher, NULL, pusher_main, s);
	if (rc)
		return err_set(rc, "cannot start the pusher thread: %s", strerror(rc));
	s->pusher_started = 1;
	return 0;
}

void pusher_stop(struct session *s)
{
	if (!s->pusher_started)
		return;
	__atomic_store_n(&s->pstop, 1, __ATOMIC_RELAXED);
	pusher_poke(s);
	pthread_join(s->pusher, NULL);
	s->pusher_started = 0;
}
