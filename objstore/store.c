/* store.c - the backend-independent half of the store: opening by scheme,
 * the synchronous wrappers and the shared retry policy. */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/timeutil.h"
#include "store.h"

void store_config_default(struct store_config *cfg)
{
	cfg->max_inflight = 16;
	cfg->max_attempts = 5;
	cfg->max_total_ms = 60000;
	cfg->connect_timeout_ms = 5000;
	cfg->stall_timeout_ms = 10000;
	cfg->part_size = 8u << 20;
}

static void env_u64(const char *name, uint64_t *v)
{
	const char *e = getenv(name);
	if (e && *e)
		*v = strtoull(e, NULL, 10);
}

int store_open(const struct thaw_url *u, const struct store_config *cfg, struct store **out)
{
	struct store *s = calloc(1, sizeof *s);
	if (!s)
		return err_set(ENOMEM, "out of memory opening store");
	s->url = *u;
	s->url.key[0] = 0;
	if (cfg)
		s->cfg = *cfg;
	else
		store_config_default(&s->cfg);
	/* Tests shorten the retry budget through the environment. */
	uint64_t att = (uint64_t)s->cfg.max_attempts;
	env_u64("THAW_STORE_ATTEMPTS", &att);
	s->cfg.max_attempts = att ? (int)att : 1;
	env_u64("THAW_STORE_TOTAL_MS", &s->cfg.max_total_ms);
	env_u64("THAW_STORE_STALL_MS", &s->cfg.stall_timeout_ms);
	const char *here = getenv("THAW_STORE_HERE");
	if (here && !strcmp(here, "0"))
		s->cfg.no_here = 1;
	if (s->cfg.max_inflight < 1)
		s->cfg.max_inflight = 1;
	int rc = u->scheme == URL_S3 ? store_s3_open(s) : store_file_open(s);
	if (rc < 0) {
		free(s);
		return rc;
	}
	/* s3 completions arrive on its single loop thread; run callbacks elsewhere.
	 * (file:// completes on its worker pool, which is already parallel.) */
	if (u->scheme == URL_S3 && (rc = store_deliver_start(s, 2)) < 0) {
		store_close(s);
		return rc;
	}
	*out = s;
	return 0;
}

struct store_deliverer {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct store_op *head, *tail;
	int stop, n;
	pthread_t th[8];
};

static void *deliver_main(void *arg)
{
	struct store_deliverer *d = arg;
	pthread_mutex_lock(&d->mu);
	for (;;) {
		while (!d->head && !d->stop)
			pthread_cond_wait(&d->cv, &d->mu);
		struct store_op *op = d->head;
		if (!op)
			break;
		d->head = op->next;
		if (!d->head)
			d->tail = NULL;
		pthread_mutex_unlock(&d->mu);
		op->done(op);
		pthread_mutex_lock(&d->mu);
	}
	pthread_mutex_unlock(&d->mu);
	return NULL;
}

int store_deliver_start(struct store *s, int nthreads)
{
	struct store_deliverer *d = calloc(1, sizeof *d);
	if (!d)
		return err_set(ENOMEM, "out of memory");
	pthread_mutex_init(&d->mu, NULL);
	pthread_cond_init(&d->cv, NULL);
	if (nthreads > 8)
		nthreads = 8;
	for (d->n = 0; d->n < nthreads; d->n++) {
		if (pthread_create(&d->th[d->n], NULL, deliver_main, d))
			break;
		pthread_setname_np(d->th[d->n], "thaw-deliver");
	}
	if (!d->n) {
		free(d);
		return err_set(EAGAIN, "cannot start store callback threads");
	}
	s->dlv = d;
	return 0;
}

void store_deliver(struct store *s, struct store_op *op)
{
	struct store_deliverer *d = s->dlv;
	if (!d) {
		op->done(op);
		return;
	}
	op->next = NULL;
	pthread_mutex_lock(&d->mu);
	if (d->tail)
		d->tail->next = op;
	else
		d->head = op;
	d->tail = op;
	pthread_cond_signal(&d->cv);
	pthread_mutex_unlock(&d->mu);
}

void store_close(struct store *s)
{
	if (!s)
		return;
	s->impl->close(s);
	/* close() finished or cancelled every op; let their callbacks run out. */
	struct store_deliverer *d = s->dlv;
	if (d) {
		pthread_mutex_lock(&d->mu);
		d->stop = 1;
		pthread_cond_broadcast(&d->cv);
		pthread_mutex_unlock(&d->mu);
		for (int i = 0; i < d->n; i++)
			pthread_join(d->th[i], NULL);
		free(d);
	}
	free(s);
}

static void op_reset(struct store *s, struct store_op *op)
{
	op->rc = 0;
	op->errmsg[0] = 0;
	op->nread = 0;
	op->attempts = 0;
	op->t_start_ns = now_ns();
	op->t_deadline_ns = op->t_start_ns + s->cfg.max_total_ms * 1000000ull;
}

int store_submit(struct store *s, struct store_op *op)
{
	op_reset(s, op);
	return s->impl->submit(s, op);
}

int store_submit_here(struct store *s, struct store_op *op)
{
	op_reset(s, op);
	if (s->impl->submit_here && !s->cfg.no_here && op->kind == STORE_GET && op->len)
		return s->impl->submit_here(s, op);
	return s->impl->submit(s, op);
}

struct sync_wait {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int done;
};

static void sync_done(struct store_op *op)
{
	struct sync_wait *w = op->arg;
	pthread_mutex_lock(&w->mu);
	w->done = 1;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

int store_run(struct store *s, struct store_op *op)
{
	struct sync_wait w = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0 };
	op->done = sync_done;
	op->arg = &w;
	int rc = store_submit(s, op);
	if (rc < 0)
		return rc;
	/* The store guarantees completion within max_total_ms (plus one stall);
	 * the wait itself is unbounded only because done() always comes. */
	pthread_mutex_lock(&w.mu);
	while (!w.done)
		pthread_cond_wait(&w.cv, &w.mu);
	pthread_mutex_unlock(&w.mu);
	if (op->rc < 0)
		return err_set(-op->rc, "%s", op->errmsg);
	return 0;
}

static void op_init(struct store_op *op, enum store_op_kind kind, const char *key)
{
	memset(op, 0, sizeof *op);
	op->kind = kind;
	snprintf(op->key, sizeof op->key, "%s", key);
}

int store_get(struct store *s, const char *key, uint64_t off, uint64_t len, void *buf,
	      const char *if_match, uint64_t *nread, uint64_t *obj_size, char *etag_out)
{
	struct store_op *op = malloc(sizeof *op);
	if (!op)
		return err_set(ENOMEM, "out of memory");
	op_init(op, STORE_GET, key);
	op->off = off;
	op->len = len;
	op->buf = buf;
	if (if_match)
		snprintf(op->if_match, sizeof op->if_match, "%s", if_match);
	int rc = store_run(s, op);
	if (rc == 0) {
		if (nread)
			*nread = op->nread;
		if (obj_size)
			*obj_size = op->obj_size;
		if (etag_out)
			strcpy(etag_out, op->etag);
	}
	free(op);
	return rc;
}

int store_head(struct store *s, const char *key, uint64_t *size, char *etag_out, int64_t *mtime)
{
	struct store_op *op = malloc(sizeof *op);
	if (!op)
		return err_set(ENOMEM, "out of memory");
	op_init(op, STORE_HEAD, key);
	int rc = store_run(s, op);
	if (rc == 0) {
		if (size)
			*size = op->obj_size;
		if (etag_out)
			strcpy(etag_out, op->etag);
		if (mtime)
			*mtime = op->mtime;
	}
	free(op);
	return rc;
}

int store_put(struct store *s, const char *key, const void *buf, uint64_t len)
{
	struct store_op *op = malloc(sizeof *op);
	if (!op)
		return err_set(ENOMEM, "out of memory");
	op_init(op, STORE_PUT, key);
	op->buf = (void *)buf;
	op->len = len;
	int rc = store_run(s, op);
	free(op);
	return rc;
}

int store_delete(struct store *s, const char *key)
{
	struct store_op *op = malloc(sizeof *op);
	if (!op)
		return err_set(ENOMEM, "out of memory");
	op_init(op, STORE_DELETE, key);
	int rc = store_run(s, op);
	free(op);
	return rc;
}

int store_list(struct store *s, const char *prefix, const char *delim, store_list_cb cb, void *arg)
{
	atomic_fetch_add(&s->stats.lists, 1);
	return s->impl->list(s, prefix ? prefix : "", delim, cb, arg);
}

uint64_t store_backoff_ms(int attempt)
{
	/* 50 ms doubling to a 2 s cap; "equal jitter" (half fixed, half random)
	 * spreads retries from many
	 * transfers that failed together (the AWS architecture-blog scheme). */
	uint64_t cap = 50ull << (attempt > 6 ? 6 : attempt - 1);
	if (cap > 2000)
		cap = 2000;
	static __thread unsigned seed;
	if (!seed)
		seed = (unsigned)now_ns() ^ (unsigned)(uintptr_t)&seed;
	return cap / 2 + (uint64_t)rand_r(&seed) % (cap / 2 + 1);
}

void store_op_fail(struct store_op *op, int rc, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(op->errmsg, sizeof op->errmsg, fmt, ap);
	va_end(ap);
	op->rc = rc;
}
