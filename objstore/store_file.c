/* store_file.c - the file:// store: keys are files under a root directory.
 *
 * It is the embedded default (no server), so it mirrors S3's semantics where
 * thaw relies on them: a PUT is atomic (written to a temporary file in the
 * same directory, then renamed over the key), a GET sees one version of the
 * file, and the ETag changes whenever the file does (inode, size and mtime),
 * so version pinning works the same way as on S3.
 *
 * Operations run on a small pool of worker threads fed from one FIFO queue;
 * cfg.max_inflight bounds the pool. */
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/timeutil.h"
#include "store.h"

#include "../common/fsutil.h"

#define FILE_SINK_PIECE (1u << 20) /* a sink is fed this much at a time */

struct fstore {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct store_op *head, *tail;
	struct store_op *urgent_tail; /* last urgent op in the queue, or NULL */
	int stopping;
	int nthreads;
	pthread_t *threads;
	atomic_uint tmp_seq;
};

static void path_of(struct store *s, const char *key, char *out, size_t n)
{
	snprintf(out, n, "%s/%s", strcmp(s->url.root, "/") ? s->url.root : "", key);
}

static void etag_of(const struct stat *st, char *out, size_t n)
{
	snprintf(out, n, "\"%lx-%llx-%llx\"", (unsigned long)st->st_ino, (unsigned long long)st->st_size,
		 (unsigned long long)st->st_mtim.tv_sec * 1000000000ull + (unsigned long long)st->st_mtim.tv_nsec);
}

static int errno_fail(struct store_op *op, const char *what, const char *path)
{
	int e = errno;
	store_op_fail(op, -e, "%s %s: %s", what, path, strerror(e));
	return -e;
}

static void do_get(struct store *s, struct store_op *op)
{
	char path[8192];
	path_of(s, op->key, path, sizeof path);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		errno_fail(op, "open", path);
		return;
	}
	struct stat st;
	if (fstat(fd, &st) < 0) {
		errno_fail(op, "stat", path);
		close(fd);
		return;
	}
	if (!S_ISREG(st.st_mode)) {
		store_op_fail(op, -EISDIR, "%s is not a regular file", path);
		close(fd);
		return;
	}
	etag_of(&st, op->etag, sizeof op->etag);
	op->obj_size = (uint64_t)st.st_size;
	if (op->if_match[0] && strcmp(op->if_match, op->etag)) {
		store_op_fail(op, -ESTALE, "%s changed while reading (ETag %s, expected %s)", path, op->etag,
			      op->if_match);
		close(fd);
		return;
	}
	uint64_t want = op->off >= op->obj_size ? 0 : op->obj_size - op->off;
	if (want > op->len)
		want = op->len;
	uint64_t got = 0;
	/* A sink gets the range in pieces from a bounce buffer. */
	char *bounce = NULL;
	if (op->sink && want && !(bounce = malloc(want < FILE_SINK_PIECE ? want : FILE_SINK_PIECE))) {
		store_op_fail(op, -ENOMEM, "%s: out of memory for a read buffer", path);
		close(fd);
		return;
	}
	while (got < want) {
		uint64_t ask = want - got;
		if (op->sink && ask > FILE_SINK_PIECE)
			ask = FILE_SINK_PIECE;
		char *dst = op->sink ? bounce : (char *)op->buf + got;
		ssize_t n = pread(fd, dst, ask, (off_t)(op->off + got));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			errno_fail(op, "read", path);
			goto out;
		}
		if (n == 0) {
			store_op_fail(op, -EIO, "%s: file shrank while reading (%llu of %llu bytes)", path,
				      (unsigned long long)got, (unsigned long long)want);
			goto out;
		}
		int rc = op->sink ? op->sink(op, got, dst, (size_t)n) : 0;
		if (rc < 0) {
			store_op_fail(op, rc, "%s", err_msg());
			goto out;
		}
		got += (uint64_t)n;
	}
	op->nread = got;
	atomic_fetch_add(&s->stats.bytes_in, got);
out:
	free(bounce);
	close(fd);
}

static void do_head(struct store *s, struct store_op *op)
{
	char path[8192];
	struct stat st;
	path_of(s, op->key, path, sizeof path);
	if (stat(path, &st) < 0) {
		errno_fail(op, "stat", path);
		return;
	}
	if (!S_ISREG(st.st_mode)) {
		store_op_fail(op, -ENOENT, "%s is not a regular file", path);
		return;
	}
	etag_of(&st, op->etag, sizeof op->etag);
	op->obj_size = (uint64_t)st.st_size;
	op->mtime = st.st_mtim.tv_sec;
}

static void do_put(struct store *s, struct store_op *op)
{
	struct fstore *fs = s->priv;
	char path[8192], tmp[8400];
	path_of(s, op->key, path, sizeof path);
	int rc = fsu_mkdir_parents(path, 0755);
	if (rc < 0) {
		store_op_fail(op, rc, "create directories for %s: %s", path, strerror(-rc));
		return;
	}
	char *slash = strrchr(path, '/');
	snprintf(tmp, sizeof tmp, "%.*s/.tmp-thaw-%d-%u", (int)(slash - path), path, getpid(),
		 atomic_fetch_add(&fs->tmp_seq, 1));
	int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0) {
		errno_fail(op, "create", tmp);
		return;
	}
	uint64_t done = 0;
	while (done < op->len) {
		ssize_t n = write(fd, (const char *)op->buf + done, op->len - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			errno_fail(op, "write", tmp);
			close(fd);
			unlink(tmp);
			return;
		}
		done += (uint64_t)n;
	}
	struct stat st;
	if (fstat(fd, &st) < 0 || close(fd) < 0) {
		errno_fail(op, "close", tmp);
		unlink(tmp);
		return;
	}
	if (rename(tmp, path) < 0) {
		errno_fail(op, "rename into", path);
		unlink(tmp);
		return;
	}
	etag_of(&st, op->etag, sizeof op->etag);
	atomic_fetch_add(&s->stats.bytes_out, op->len);
}

static void do_delete(struct store *s, struct store_op *op)
{
	char path[8192];
	path_of(s, op->key, path, sizeof path);
	if (unlink(path) < 0 && errno != ENOENT)
		errno_fail(op, "delete", path);
}

static void *worker(void *arg)
{
	struct store *s = arg;
	struct fstore *fs = s->priv;
	for (;;) {
		pthread_mutex_lock(&fs->mu);
		while (!fs->head && !fs->stopping)
			pthread_cond_wait(&fs->cv, &fs->mu);
		struct store_op *op = fs->head;
		if (!op) {
			pthread_mutex_unlock(&fs->mu);
			return NULL;
		}
		fs->head = op->next;
		if (!fs->head)
			fs->tail = NULL;
		if (fs->urgent_tail == op)
			fs->urgent_tail = NULL;
		pthread_mutex_unlock(&fs->mu);

		op->attempts = 1;
		switch (op->kind) {
		case STORE_GET: atomic_fetch_add(&s->stats.gets, 1); do_get(s, op); break;
		case STORE_HEAD: atomic_fetch_add(&s->stats.heads, 1); do_head(s, op); break;
		case STORE_PUT: atomic_fetch_add(&s->stats.puts, 1); do_put(s, op); break;
		case STORE_DELETE: atomic_fetch_add(&s->stats.deletes, 1); do_delete(s, op); break;
		default: store_op_fail(op, -EINVAL, "unknown store operation %d", op->kind);
		}
		if (op->rc < 0)
			atomic_fetch_add(&s->stats.failures, 1);
		op->done(op);
	}
}

static int f_submit(struct store *s, struct store_op *op)
{
	struct fstore *fs = s->priv;
	op->next = NULL;
	pthread_mutex_lock(&fs->mu);
	if (fs->stopping) {
		pthread_mutex_unlock(&fs->mu);
		return err_set(ECANCELED, "store is closing");
	}
	if (op->urgent) {
		/* After earlier urgent ops, ahead of everything else. */
		struct store_op **pp = fs->urgent_tail ? &fs->urgent_tail->next : &fs->head;
		op->next = *pp;
		*pp = op;
		if (!op->next)
			fs->tail = op;
		fs->urgent_tail = op;
	} else {
		if (fs->tail)
			fs->tail->next = op;
		else
			fs->head = op;
		fs->tail = op;
	}
	pthread_cond_signal(&fs->cv);
	pthread_mutex_unlock(&fs->mu);
	return 0;
}

/* Listing: collect matching entries, sort by key like S3, then call back. */
struct lent {
	char *key;
	struct stat st;
	int is_prefix;
};
struct lvec {
	struct lent *v;
	size_t n, cap;
};

static int lvec_add(struct lvec *l, const char *key, const struct stat *st, int is_prefix)
{
	if (l->n == l->cap) {
		size_t nc = l->cap ? l->cap * 2 : 64;
		struct lent *nv = realloc(l->v, nc * sizeof *nv);
		if (!nv)
			return -ENOMEM;
		l->v = nv;
		l->cap = nc;
	}
	l->v[l->n].key = strdup(key);
	if (!l->v[l->n].key)
		return -ENOMEM;
	l->v[l->n].st = *st;
	l->v[l->n].is_prefix = is_prefix;
	l->n++;
	return 0;
}

/* Walk dir (key prefix rel, "" or ending in '/'), adding keys that start with
 * prefix.  With a delimiter, subdirectories become common prefixes. */
static int walk(const char *root, const char *rel, const char *prefix, int delim, struct lvec *out)
{
	char dpath[8192];
	snprintf(dpath, sizeof dpath, "%s/%s", root, rel);
	DIR *d = opendir(dpath);
	if (!d)
		return errno == ENOENT || errno == ENOTDIR ? 0 : err_set(errno, "list %s: %s", dpath, strerror(errno));
	struct dirent *de;
	int rc = 0;
	size_t plen = strlen(prefix);
	while (rc == 0 && (de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..") || !strncmp(de->d_name, ".tmp-thaw-", 10))
			continue;
		char key[STORE_KEY_MAX + 256];
		snprintf(key, sizeof key, "%s%s", rel, de->d_name);
		struct stat st;
		char full[8192 + 512];
		snprintf(full, sizeof full, "%s/%s", root, key);
		if (lstat(full, &st) < 0)
			continue; /* vanished under us: S3 would not list it either */
		size_t klen = strlen(key);
		if (S_ISDIR(st.st_mode)) {
			strcat(key, "/");
			klen++;
			/* Descend only where the prefix can still match. */
			size_t m = klen < plen ? klen : plen;
			if (strncmp(key, prefix, m))
				continue;
			if (delim && klen > plen)
				rc = lvec_add(out, key, &st, 1);
			else
				rc = walk(root, key, prefix, delim, out);
		} else if (S_ISREG(st.st_mode)) {
			if (klen >= plen && !strncmp(key, prefix, plen))
				rc = lvec_add(out, key, &st, 0);
		}
	}
	closedir(d);
	return rc < 0 ? err_set(-rc, "list %s: out of memory", dpath) : rc;
}

static int lent_cmp(const void *a, const void *b)
{
	return strcmp(((const struct lent *)a)->key, ((const struct lent *)b)->key);
}

static int f_list(struct store *s, const char *prefix, const char *delim, store_list_cb cb, void *arg)
{
	if (delim && *delim && strcmp(delim, "/"))
		return err_set(EINVAL, "file:// store lists only with the '/' delimiter");
	int use_delim = delim && *delim;
	struct lvec l = { 0 };
	/* Start the walk at the deepest directory the prefix names. */
	char start[STORE_KEY_MAX];
	snprintf(start, sizeof start, "%s", prefix);
	char *slash = strrchr(start, '/');
	if (slash)
		slash[1] = 0;
	else
		start[0] = 0;
	const char *root = strcmp(s->url.root, "/") ? s->url.root : "";
	int rc = walk(root, start, prefix, use_delim, &l);
	if (rc == 0) {
		struct stat rst;
		if (stat(s->url.root, &rst) < 0)
			rc = err_set(ENOENT, "file store %s does not exist", s->url.root);
	}
	if (rc == 0 && l.n)
		qsort(l.v, l.n, sizeof *l.v, lent_cmp);
	for (size_t i = 0; rc == 0 && i < l.n; i++) {
		char etag[STORE_ETAG_MAX];
		etag_of(&l.v[i].st, etag, sizeof etag);
		struct store_entry e = {
			.key = l.v[i].key,
			.size = l.v[i].is_prefix ? 0 : (uint64_t)l.v[i].st.st_size,
			.mtime = l.v[i].st.st_mtim.tv_sec,
			.etag = l.v[i].is_prefix ? "" : etag,
			.is_prefix = l.v[i].is_prefix,
		};
		rc = cb(&e, arg);
	}
	for (size_t i = 0; i < l.n; i++)
		free(l.v[i].key);
	free(l.v);
	return rc;
}

static void f_close(struct store *s)
{
	struct fstore *fs = s->priv;
	pthread_mutex_lock(&fs->mu);
	fs->stopping = 1;
	pthread_cond_broadcast(&fs->cv);
	pthread_mutex_unlock(&fs->mu);
	/* Workers drain the queue before they see an empty head and stop. */
	for (int i = 0; i < fs->nthreads; i++)
		pthread_join(fs->threads[i], NULL);
	free(fs->threads);
	free(fs);
}

static const struct store_impl file_impl = {
	.name = "file",
	.submit = f_submit,
	.list = f_list,
	.close = f_close,
};

int store_file_open(struct store *s)
{
	struct fstore *fs = calloc(1, sizeof *fs);
	if (!fs)
		return err_set(ENOMEM, "out of memory");
	pthread_mutex_init(&fs->mu, NULL);
	pthread_cond_init(&fs->cv, NULL);
	/* Local I/O saturates with few threads; more only adds contention. */
	fs->nthreads = s->cfg.max_inflight < 8 ? s->cfg.max_inflight : 8;
	fs->threads = calloc((size_t)fs->nthreads, sizeof *fs->threads);
	if (!fs->threads) {
		free(fs);
		return err_set(ENOMEM, "out of memory");
	}
	s->priv = fs;
	s->impl = &file_impl;
	for (int i = 0; i < fs->nthreads; i++) {
		if (pthread_create(&fs->threads[i], NULL, worker, s)) {
			fs->nthreads = i;
			f_close(s);
			return err_set(EAGAIN, "cannot start file store threads");
		}
	}
	return 0;
}
