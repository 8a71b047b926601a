/* tree.c - the mount's directory tree from store listings (see tree.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "../common/timeutil.h"
#include "tree.h"

#define NAME_MAX_LEN 255 /* what the kernel will ever look up */

static struct tnode *node_new(struct tnode *parent, const char *name, size_t namelen,
			      const char *key, int is_dir)
{
	struct tnode *n = calloc(1, sizeof *n);
	if (!n)
		return NULL;
	n->parent = parent;
	n->name = strndup(name, namelen);
	n->key = strdup(key);
	n->is_dir = is_dir;
	if (!n->name || !n->key) {
		free(n->name);
		free(n->key);
		free(n);
		return NULL;
	}
	return n;
}

static void node_free(struct tnode *n)
{
	free(n->name);
	free(n->key);
	free(n->etag);
	free(n->kids);
	free(n);
}

static const struct kids no_kids = { 0, NULL };

/* A directory as messages name it. */
static const char *dir_label(const struct tnode *dir) { return dir->key[0] ? dir->key : "the mount root"; }

const struct kids *tree_kids(const struct tnode *dir)
{
	const struct kids *k = __atomic_load_n(&dir->kids, __ATOMIC_ACQUIRE);
	return k ? k : &no_kids;
}

static struct kids *kids_new(size_t n)
{
	struct kids *k = malloc(sizeof *k + n * sizeof k->v[0]);
	if (k) {
		k->n = n;
		k->retired = NULL;
	}
	return k;
}

/* Give n an inode number and make it findable.  Called with t->mu held. */
static int publish(struct tree *t, struct tnode *n)
{
	uint64_t ino = t->next_ino;
	uint64_t l1 = ino / TREE_L2, l2 = ino % TREE_L2;
	if (l1 >= TREE_L1)
		return err_set(ENOSPC, "more than %llu files and directories in one mount",
			       (unsigned long long)TREE_L1 * TREE_L2);
	struct tnode **slab = t->tab[l1];
	if (!slab) {
		slab = calloc(TREE_L2, sizeof *slab);
		if (!slab)
			return err_set(ENOMEM, "out of memory for the inode table");
		__atomic_store_n(&t->tab[l1], slab, __ATOMIC_RELEASE);
	}
	n->ino = ino;
	__atomic_store_n(&slab[l2], n, __ATOMIC_RELEASE);
	__atomic_store_n(&t->next_ino, ino + 1, __ATOMIC_RELEASE);
	return 0;
}

int tree_init(struct tree *t, struct store *s, const struct thaw_url *u, const struct store_config *scfg)
{
	memset(t, 0, sizeof *t);
	t->s = s;
	t->url = *u;
	if (scfg)
		t->scfg = *scfg;
	else
		store_config_default(&t->scfg);
	t->per_dir_stores = u->scheme == URL_FILE;
	pthread_mutex_init(&t->mu, NULL);
	t->next_ino = 1; /* FUSE_ROOT_ID */
	t->root = node_new(NULL, "", 0, u->key, 1);
	if (!t->root)
		return err_set(ENOMEM, "out of memory");
	t->root->nlookup = 1;
	return publish(t, t->root);
}

struct tnode *tree_get(struct tree *t, uint64_t ino)
{
	uint64_t l1 = ino / TREE_L2, l2 = ino % TREE_L2;
	if (!ino || l1 >= TREE_L1)
		return NULL;
	struct tnode **slab = __atomic_load_n(&t->tab[l1], __ATOMIC_ACQUIRE);
	return slab ? __atomic_load_n(&slab[l2], __ATOMIC_ACQUIRE) : NULL;
}

uint64_t tree_max_ino(struct tree *t)
{
	return __atomic_load_n(&t->next_ino, __ATOMIC_ACQUIRE) - 1;
}

struct listing {
	struct tree *t;
	struct tnode *dir;
	struct tnode **v;
	size_t n, cap;
	size_t plen;
	int err;
};

static int on_entry(const struct store_entry *e, void *arg)
{
	struct listing *l = arg;
	const char *name = e->key + l->plen;
	size_t len = strlen(name);
	if (strncmp(e->key, l->dir->key, l->plen))
		return 0; /* not ours (a store that over-answers) */
	if (e->is_prefix) {
		if (len && name[len - 1] == '/')
			len--;
		if (len == 5 && !strncmp(name, ".thaw", 5))
			return 0; /* thaw's chunk store */
	}
	if (!len || memchr(name, '/', len) || (len == 1 && name[0] == '.') || (len == 2 && !strncmp(name, "..", 2)))
		return 0; /* a "directory marker" object, or a name no path can reach */
	if (len > NAME_MAX_LEN) {
		log_warn("skipping %s: its name is longer than %d bytes", e->key, NAME_MAX_LEN);
		return 0;
	}
	if (l->n == l->cap) {
		size_t nc = l->cap ? l->cap * 2 : 64;
		struct tnode **nv = realloc(l->v, nc * sizeof *nv);
		if (!nv)
			return l->err = -ENOMEM;
		l->v = nv;
		l->cap = nc;
	}
	struct tnode *n = node_new(l->dir, name, len, e->key, e->is_prefix);
	if (!n)
		return l->err = -ENOMEM;
	n->list_size = e->size;
	n->mtime = e->mtime;
	if (e->etag && e->etag[0] && !(n->etag = strdup(e->etag))) {
		node_free(n);
		return l->err = -ENOMEM;
	}
	l->v[l->n++] = n;
	return 0;
}

static int by_name(const void *a, const void *b)
{
	const struct tnode *x = *(struct tnode *const *)a, *y = *(struct tnode *const *)b;
	int c = strcmp(x->name, y->name);
	/* Directories first, so the duplicate we drop is the file. */
	return c ? c : y->is_dir - x->is_dir;
}

/* List dir into a sorted array of new, unpublished nodes (one per name: a
 * name that is both an object and a prefix shows as the directory).  Called
 * with t->mu held.  0, or <0 + err_msg with nothing left allocated. */
static int list_dir(struct tree *t, struct tnode *dir, struct listing *l)
{
	memset(l, 0, sizeof *l);
	l->t = t;
	l->dir = dir;
	l->plen = strlen(dir->key);
	int rc = store_list(t->s, dir->key, "/", on_entry, l);
	if (l->err)
		rc = err_set(ENOMEM, "out of memory listing %s", dir_label(dir));
	else if (rc < 0)
		rc = err_wrap(rc, "list '%s'", dir->key);
	if (rc < 0) {
		for (size_t i = 0; i < l->n; i++)
			node_free(l->v[i]);
		free(l->v);
		l->v = NULL;
		l->n = 0;
		return rc;
	}
	if (l->n)
		qsort(l->v, l->n, sizeof *l->v, by_name);
	size_t w = 0;
	for (size_t i = 0; i < l->n; i++) {
		if (w && !strcmp(l->v[w - 1]->name, l->v[i]->name)) {
			log_warn("%s is both an object and a prefix; showing the directory", l->v[i]->key);
			node_free(l->v[i]);
			continue;
		}
		l->v[w++] = l->v[i];
	}
	l->n = w;
	return 0;
}

/* Give the nodes v[0..n) numbers; on failure those numbered stay (reachable
 * by number) and the rest are freed, and *n says how many are kept. */
static int publish_all(struct tree *t, struct tnode **v, size_t *n)
{
	int rc = 0;
	size_t i = 0;
	for (; rc == 0 && i < *n; i++)
		rc = publish(t, v[i]);
	if (rc == 0)
		return 0;
	size_t w = 0;
	for (size_t j = 0; j < *n; j++) {
		if (v[j]->ino)
			v[w++] = v[j];
		else
			node_free(v[j]);
	}
	*n = w;
	return rc;
}

int tree_list(struct tree *t, struct tnode *dir)
{
	if (__atomic_load_n(&dir->listed, __ATOMIC_ACQUIRE))
		return 0;
	if (!dir->is_dir)
		return err_set(ENOTDIR, "%s is not a directory", dir->key);
	pthread_mutex_lock(&t->mu);
	if (dir->listed) {
		pthread_mutex_unlock(&t->mu);
		return 0;
	}
	struct listing l;
	int rc = list_dir(t, dir, &l);
	struct kids *k = NULL;
	if (rc == 0 && (rc = publish_all(t, l.v, &l.n)) < 0)
		l.n = 0; /* numbered nodes stay reachable by number; the listing is retried */
	if (rc == 0 && !(k = kids_new(l.n)))
		rc = err_set(ENOMEM, "out of memory listing %s", dir_label(dir));
	/* Every node left in l.v has a number (and so is freed with the table). */
	if (rc == 0) {
		memcpy(k->v, l.v, l.n * sizeof *l.v);
		dir->listed_ns = now_ns();
		__atomic_store_n(&dir->kids, k, __ATOMIC_RELEASE);
		__atomic_store_n(&dir->listed, 1, __ATOMIC_RELEASE);
	}
	free(l.v);
	pthread_mutex_unlock(&t->mu);
	return rc;
}

/* Whether a node of a new listing stands for the same thing as an old one:
 * a directory still a directory, a file of the same ETag (or, from a store
 * that lists none, the same size and mtime). */
static int same_thing(const struct tnode *o, const struct tnode *n)
{
	if (o->is_dir != n->is_dir)
		return 0;
	if (o->is_dir)
		return 1;
	if (o->etag && n->etag)
		return !strcmp(o->etag, n->etag);
	return o->list_size == n->list_size && o->mtime == n->mtime;
}

int tree_refresh(struct tree *t, struct tnode *dir)
{
	if (!__atomic_load_n(&dir->listed, __ATOMIC_ACQUIRE))
		return tree_list(t, dir);
	if (!t->list_ttl_ns)
		return 0;
	pthread_mutex_lock(&t->mu);
	uint64_t now = now_ns();
	if (now - dir->listed_ns < t->list_ttl_ns) {
		pthread_mutex_unlock(&t->mu);
		return 0;
	}
	dir->listed_ns = now; /* a failure, too, waits for the next TTL */
	struct listing l;
	if (list_dir(t, dir, &l) < 0) {
		log_warn("keeping the old listing: %s", err_msg());
		pthread_mutex_unlock(&t->mu);
		return 0;
	}
	/* Walk the old children and the listing together, both sorted: a name
	 * in both keeps its node if it is the same thing, else gets the new one;
	 * an old name missing from the listing leaves (or stays, keep_names). */
	struct kids *old = dir->kids;
	struct kids *k = kids_new(l.n + old->n);
	struct tnode **fresh = malloc((l.n + 1) * sizeof *fresh);
	struct tnode **gone = malloc((old->n + 1) * sizeof *gone);
	if (!k || !fresh || !gone) {
		log_warn("out of memory listing %s again; keeping the old listing", dir_label(dir));
		for (size_t i = 0; i < l.n; i++)
			node_free(l.v[i]);
		free(l.v);
		free(k);
		free(fresh);
		free(gone);
		pthread_mutex_unlock(&t->mu);
		return 0;
	}
	size_t w = 0, nfresh = 0, ngone = 0, a = 0, nfail = 0;
	for (size_t i = 0; i <= l.n; i++) {
		struct tnode *n = i < l.n ? l.v[i] : NULL;
		for (; a < old->n && (!n || strcmp(old->v[a]->name, n->name) < 0); a++) {
			if (t->keep_names)
				k->v[w++] = old->v[a];
			else
				gone[ngone++] = old->v[a];
		}
		if (!n)
			break;
		struct tnode *o = a < old->n && !strcmp(old->v[a]->name, n->name) ? old->v[a++] : NULL;
		if (o && (t->keep_names || same_thing(o, n))) {
			k->v[w++] = o;
			node_free(n);
			continue;
		}
		if (publish(t, n) < 0) {
			/* Out of numbers or memory: what was there stays. */
			nfail++;
			node_free(n);
			if (o)
				k->v[w++] = o;
			continue;
		}
		k->v[w++] = n;
		fresh[nfresh++] = n;
		if (o)
			gone[ngone++] = o;
	}
	k->n = w;
	if (nfail)
		log_warn("%s: %zu name%s not taken in: %s", dir_label(dir), nfail, nfail == 1 ? "" : "s", err_msg());
	if (nfresh || ngone) {
		for (size_t i = 0; i < ngone; i++)
			__atomic_store_n(&gone[i]->gone, 1, __ATOMIC_RELEASE);
		old->retired = t->retired;
		t->retired = old;
		__atomic_store_n(&dir->kids, k, __ATOMIC_RELEASE);
		__atomic_add_fetch(&dir->gen, 1, __ATOMIC_RELEASE);
		log_info("%s: %zu new name%s or version%s in the store, %zu gone", dir_label(dir), nfresh,
			 nfresh == 1 ? "" : "s", nfresh == 1 ? "" : "s", ngone);
	} else {
		free(k);
	}
	pthread_mutex_unlock(&t->mu);
	for (size_t i = 0; t->on_gone && i < ngone; i++)
		t->on_gone(t->on_gone_arg, dir, gone[i]);
	for (size_t i = 0; t->on_new && i < nfresh; i++)
		t->on_new(t->on_new_arg, fresh[i]);
	free(fresh);
	free(gone);
	free(l.v);
	return nfresh ? 1 : 0;
}

int tree_gone(const struct tnode *n)
{
	for (; n; n = n->parent)
		if (__atomic_load_n(&n->gone, __ATOMIC_ACQUIRE))
			return 1;
	return 0;
}

struct tnode *tree_child(const struct tnode *dir, const char *name)
{
	const struct kids *k = tree_kids(dir);
	size_t lo = 0, hi = k->n;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		int c = strcmp(name, k->v[mid]->name);
		if (!c)
			return k->v[mid];
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

int tree_file_location(struct tree *t, struct tnode *file, struct store **s, char *key, size_t keylen)
{
	if (!t->per_dir_stores || file->parent == t->root) {
		*s = t->s;
		snprintf(key, keylen, "%s", t->per_dir_stores ? file->name : file->key);
		return 0;
	}
	/* file:// keeps an image's chunks in the directory that holds it (the
	 * directory plays the bucket), so each directory needs its own store. */
	struct tnode *dir = file->parent;
	pthread_mutex_lock(&t->mu);
	int rc = 0;
	if (!dir->dstore) {
		struct thaw_url u = t->url;
		size_t klen = strlen(dir->key);
		int n = snprintf(u.root, sizeof u.root, "%s/%.*s", t->url.root, (int)(klen ? klen - 1 : 0), dir->key);
		u.key[0] = 0;
		if (n >= (int)sizeof u.root)
			rc = err_set(ENAMETOOLONG, "path of directory %s is too long", dir->key);
		else
			rc = store_open(&u, &t->scfg, &dir->dstore);
	}
	if (rc == 0) {
		*s = dir->dstore;
		snprintf(key, keylen, "%s", file->name);
	}
	pthread_mutex_unlock(&t->mu);
	return rc;
}

void tree_path(const struct tnode *n, char *buf, size_t len)
{
	/* Walk up collecting names, then write them root first. */
	const struct tnode *chain[512];
	int depth = 0;
	for (const struct tnode *p = n; p && p->parent && depth < 512; p = p->parent)
		chain[depth++] = p;
	size_t off = 0;
	buf[0] = 0;
	for (int i = depth - 1; i >= 0 && off < len; i--)
		off += (size_t)snprintf(buf + off, len - off, "%s%s", chain[i]->name, i ? "/" : "");
}

void tree_destroy(struct tree *t)
{
	uint64_t max = tree_max_ino(t);
	for (uint64_t ino = 1; ino <= max; ino++) {
		struct tnode *n = tree_get(t, ino);
		if (!n)
			continue;
		if (n->dstore)
			store_close(n->dstore);
		node_free(n);
	}
	for (size_t i = 0; i < TREE_L1; i++)
		free(t->tab[i]);
	while (t->retired) {
		struct kids *k = t->retired;
		t->retired = k->retired;
		free(k);
	}
	pthread_mutex_destroy(&t->mu);
}
