/* prober.c - opening files' blobs ahead of their lookups (see prober.h). */
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "file.h"
#include "prober.h"

#define PROBE_THREADS 8
#define PROBE_QUEUE_MAX 16384

struct item {
	struct tnode *n;
	int head;
	struct tnode *gone_from; /* not an open: the kernel is to drop n's name in this directory */
};

struct prober {
	struct thawfs *fs;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct item q[PROBE_QUEUE_MAX]; /* a ring */
	size_t first, len;
	int stop;
	pthread_t th[PROBE_THREADS];
	int nth;
};

static void *prober_main(void *arg)
{
	struct prober *p = arg;
	pthread_mutex_lock(&p->mu);
	for (;;) {
		while (!p->len && !p->stop)
			pthread_cond_wait(&p->cv, &p->mu);
		if (p->stop)
			break;
		struct item it = p->q[p->first];
		p->first = (p->first + 1) % PROBE_QUEUE_MAX;
		p->len--;
		pthread_mutex_unlock(&p->mu);
		if (it.gone_from) {
			/* Waits for the directory's lock in the kernel, which a request
			 * on it may hold: so here, never on a request's own path. */
			int rc = fuse_lowlevel_notify_inval_entry(p->fs->se, it.gone_from->ino, it.n->name,
								  strlen(it.n->name));
			if (rc < 0 && rc != -ENOENT)
				log_debug("dropping the name %s: %s", it.n->key, strerror(-rc));
		} else if ((it.head || !file_size_known(it.n)) && file_probe(p->fs, it.n) == 0 && it.head) {
			/* A failure is noted on the file (thaw status); its lookup tries again. */
			file_prefetch_head(it.n);
		}
		pthread_mutex_lock(&p->mu);
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

int prober_start(struct thawfs *fs, struct prober **out)
{
	struct prober *p = calloc(1, sizeof *p);
	if (!p)
		return err_set(ENOMEM, "out of memory for the prober");
	p->fs = fs;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	while (p->nth < PROBE_THREADS) {
		if (pthread_create(&p->th[p->nth], NULL, prober_main, p)) {
			log_warn("cannot start a thread to open files ahead of their lookups");
			break;
		}
		pthread_setname_np(p->th[p->nth], "thaw-probe");
		p->nth++;
	}
	*out = p;
	return 0;
}

static int push(struct prober *p, struct tnode *n, int head, struct tnode *gone_from)
{
	if (p->len == PROBE_QUEUE_MAX || !p->nth)
		return -1;
	p->q[(p->first + p->len) % PROBE_QUEUE_MAX] = (struct item){ n, head, gone_from };
	p->len++;
	return 0;
}

/* Queue one item and wake a thread; <0 if the queue is full. */
static int enqueue(struct prober *p, struct tnode *n, int head, struct tnode *gone_from)
{
	pthread_mutex_lock(&p->mu);
	int rc = push(p, n, head, gone_from);
	if (rc == 0)
		pthread_cond_signal(&p->cv);
	pthread_mutex_unlock(&p->mu);
	return rc;
}

void prober_add(struct prober *p, struct tnode *n, int head)
{
	if (p)
		enqueue(p, n, head, NULL);
}

void prober_forget(struct prober *p, struct tnode *dir, struct tnode *n)
{
	if (p && enqueue(p, n, 0, dir) < 0)
		log_debug("queue full: the kernel keeps the name %s until its entry times out", n->key);
}

void prober_dir(struct prober *p, struct tnode *dir)
{
	if (!p || !p->fs->o.open_ahead)
		return;
	/* Once per listing: gen counts the listings that changed the children. */
	uint64_t mark = __atomic_load_n(&dir->gen, __ATOMIC_ACQUIRE) + 1;
	if (__atomic_exchange_n(&dir->gen_probed, mark, __ATOMIC_ACQ_REL) == mark)
		return;
	const struct kids *k = tree_kids(dir);
	/* Past half the bound on open blobs, opening more would close ones
	 * opened here before their lookups came. */
	size_t max = p->fs->blob_cap / 2 < p->fs->o.open_ahead ? p->fs->blob_cap / 2 : p->fs->o.open_ahead;
	size_t queued = 0;
	pthread_mutex_lock(&p->mu);
	for (size_t i = 0; i < k->n && queued < max; i++) {
		struct tnode *n = k->v[i];
		if (n->is_dir || file_size_known(n))
			continue;
		if (push(p, n, 0, NULL) < 0)
			break;
		queued++;
	}
	if (queued)
		pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
}

void prober_stop(struct prober *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	p->stop = 1;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	for (int i = 0; i < p->nth; i++)
		pthread_join(p->th[i], NULL);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->cv);
	free(p);
}
