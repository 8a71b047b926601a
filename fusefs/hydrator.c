/* hydrator.c - background hydration of whole files (see hydrator.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "../common/timeutil.h"
#include "file.h"
#include "hydrator.h"

/* A file whose fetches have all settled but is not complete has failed
 * chunks; this long without progress and with nothing in flight means that. */
#define STALL_NS (10ull * 1000000000ull)

struct hydrator {
	struct thawfs *fs;
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct tnode **q;
	size_t head, tail, cap;
	uint64_t nfiles_queued, current, done, failed;
	int stop;
};

static int push(struct hydrator *h, struct tnode *n)
{
	if (h->tail == h->cap) {
		if (h->head) {
			memmove(h->q, h->q + h->head, (h->tail - h->head) * sizeof *h->q);
			h->tail -= h->head;
			h->head = 0;
		} else {
			size_t nc = h->cap ? h->cap * 2 : 64;
			struct tnode **nq = realloc(h->q, nc * sizeof *nq);
			if (!nq)
				return err_set(ENOMEM, "out of memory queueing files to hydrate");
			h->q = nq;
			h->cap = nc;
		}
	}
	h->q[h->tail++] = n;
	if (!n->is_dir) {
		h->nfiles_queued++;
		struct tfile *f = file_of(n);
		if (f)
			__atomic_store_n(&f->hydrate, 1, __ATOMIC_RELAXED);
	}
	return 0;
}

int hydrator_add(struct hydrator *h, struct tnode *n)
{
	pthread_mutex_lock(&h->mu);
	int rc = push(h, n);
	pthread_cond_signal(&h->cv);
	pthread_mutex_unlock(&h->mu);
	return rc;
}

void hydrator_state(struct hydrator *h, uint64_t *queued, uint64_t *current, uint64_t *done, uint64_t *failed)
{
	pthread_mutex_lock(&h->mu);
	*queued = h->nfiles_queued;
	*current = h->current;
	*done = h->done;
	*failed = h->failed;
	pthread_mutex_unlock(&h->mu);
}

static int stopping(struct hydrator *h)
{
	return __atomic_load_n(&h->stop, __ATOMIC_ACQUIRE);
}

/* Hydrate one file; 0 when it is complete. */
static int hydrate_file(struct hydrator *h, struct tnode *n)
{
	struct blob *b;
	int rc = file_pin(h->fs, n, &b);
	if (rc < 0)
		return rc;
	uint64_t t0 = now_ns();
	if (!blob_complete(b))
		rc = blob_hydrate_start(b, NULL, 0);
	uint64_t last_present = 0, last_change = now_ns();
	int failures = 0;
	char first_err[ERR_MSG_MAX] = "";
	while (rc == 0 && !blob_complete(b) && !stopping(h)) {
		int w = blob_hydrate_wait(b, 500);
		if (w == 0)
			break;
		if (w != -ETIMEDOUT) {
			/* One chunk failed; the rest of the file carries on. */
			if (!failures++)
				snprintf(first_err, sizeof first_err, "%s", err_msg());
			continue;
		}
		struct blob_stats st;
		blob_get_stats(b, &st);
		uint64_t now = now_ns();
		if (st.chunks_present != last_present) {
			last_present = st.chunks_present;
			last_change = now;
		} else if (!st.inflight && !st.queued[PRIO_DEMAND] && !st.queued[PRIO_READAHEAD] &&
			   !st.queued[PRIO_BACKGROUND] && now - last_change > STALL_NS) {
			break; /* only failed chunks are left */
		}
	}
	/* Failed chunks get one more bounded try each, at background priority.
	 * The same pass checks chunks reused from the cache, which are otherwise
	 * checked on first read: once all are, the file can be opened for
	 * passthrough (and a bad one has been fetched again). */
	for (uint64_t i = 0; rc == 0 && !stopping(h) && i < blob_nchunks(b); i++) {
		if (blob_chunk_present(b, i))
			continue;
		int e = blob_ensure(b, i, PRIO_BACKGROUND);
		if (e < 0) {
			rc = e;
			snprintf(first_err, sizeof first_err, "%s", err_msg());
		}
	}
	if (rc == 0 && !blob_complete(b) && !stopping(h))
		rc = err_set(EIO, "%s", first_err[0] ? first_err : "hydration incomplete");
	if (rc == 0 && blob_complete(b))
		log_info("hydrated %s (%llu bytes) in %.2f s", n->key, (unsigned long long)blob_size(b),
			 (double)(now_ns() - t0) / 1e9);
	char msg[ERR_MSG_MAX];
	snprintf(msg, sizeof msg, "%s", err_msg());
	file_unpin(h->fs, n);
	if (rc < 0)
		err_set(-rc, "%s", msg);
	return rc;
}

static void *hydrator_main(void *arg)
{
	struct hydrator *h = arg;
	pthread_mutex_lock(&h->mu);
	while (!h->stop) {
		if (h->head == h->tail) {
			pthread_cond_wait(&h->cv, &h->mu);
			continue;
		}
		struct tnode *n = h->q[h->head++];
		if (n->is_dir) {
			pthread_mutex_unlock(&h->mu);
			int rc = tree_list(&h->fs->tree, n);
			if (rc < 0)
				log_error("hydrate: %s", err_msg());
			pthread_mutex_lock(&h->mu);
			const struct kids *k = tree_kids(n);
			for (size_t i = 0; rc == 0 && i < k->n; i++)
				if (push(h, k->v[i]) < 0)
					log_error("hydrate: %s", err_msg());
			continue;
		}
		h->nfiles_queued--;
		h->current = n->ino;
		pthread_mutex_unlock(&h->mu);
		int rc = hydrate_file(h, n);
		struct tfile *f = file_of(n);
		if (rc < 0 && !stopping(h))
			file_note_error(n, "hydrate", err_msg());
		if (f && !stopping(h))
			__atomic_store_n(&f->hydrate, rc < 0 ? 3 : 2, __ATOMIC_RELAXED);
		pthread_mutex_lock(&h->mu);
		h->current = 0;
		if (rc < 0)
			h->failed++;
		else
			h->done++;
	}
	pthread_mutex_unlock(&h->mu);
	return NULL;
}

int hydrator_start(struct thawfs *fs, struct hydrator **out)
{
	struct hydrator *h = calloc(1, sizeof *h);
	if (!h)
		return err_set(ENOMEM, "out of memory");
	h->fs = fs;
	pthread_mutex_init(&h->mu, NULL);
	pthread_cond_init(&h->cv, NULL);
	if (pthread_create(&h->thread, NULL, hydrator_main, h)) {
		free(h);
		return err_set(EAGAIN, "cannot start the hydrator thread");
	}
	*out = h;
	return 0;
}

void hydrator_stop(struct hydrator *h)
{
	if (!h)
		return;
	pthread_mutex_lock(&h->mu);
	__atomic_store_n(&h->stop, 1, __ATOMIC_RELEASE);
	pthread_cond_signal(&h->cv);
	pthread_mutex_unlock(&h->mu);
	pthread_join(h->thread, NULL);
	free(h->q);
	free(h);
}
