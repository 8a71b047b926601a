/* ops.c - the FUSE low-level requests of a thaw mount.
 *
 * The namespace is the tree (tree.c), a snapshot of the store's listing, so
 * entries and attributes are cached by the kernel for long and a missing
 * name is cached too.  Files are opened with keep_cache: a blob is pinned to
 * one version of its object, so pages the kernel already holds stay right,
 * and a re-read of a hydrated file never reaches this process.  A file that
 * is wholly in the cache, and was not read through the page cache earlier in
 * this mount, is opened for passthrough instead (file_open_mode): the kernel
 * then reads the cache's data file itself.
 *
 * Without --rw every modifying request answers EROFS (the mount is also
 * mounted "ro", so the kernel usually says so first).  With --rw, existing
 * files may be written in place; the namespace and file sizes stay fixed
 * (EPERM), since nothing is ever uploaded. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include "../common/log.h"
#include "file.h"
#include "prober.h"

#define TTL 3600.0 /* the tree never changes under a mount */
#define BLKSIZE (1u << 20)
#define FOPEN_NOFLUSH_BIT (1u << 5) /* the kernel's FOPEN_NOFLUSH */

static struct thawfs *FS(fuse_req_t req) { return fuse_req_userdata(req); }

static void fill_attr(struct thawfs *fs, struct tnode *n, struct stat *st)
{
	memset(st, 0, sizeof *st);
	st->st_ino = n->ino;
	st->st_uid = fs->uid;
	st->st_gid = fs->gid;
	st->st_blksize = BLKSIZE;
	if (n->is_dir) {
		st->st_mode = S_IFDIR | (fs->o.rw ? 0755 : 0555);
		st->st_nlink = 2;
		st->st_mtim.tv_sec = n->mtime ? (time_t)n->mtime : fs->mount_time;
	} else {
		st->st_mode = S_IFREG | (fs->o.rw ? 0644 : 0444);
		st->st_nlink = 1;
		st->st_size = (off_t)file_size(n);
		st->st_blocks = (st->st_size + 511) / 512;
		st->st_mtim.tv_sec = (time_t)n->mtime;
	}
	st->st_ctim = st->st_atim = st->st_mtim;
}

/* A file whose blob would not open shows its listing size, briefly. */
static double ttl_of(struct tnode *n)
{
	return n->is_dir || file_size_known(n) ? TTL : 1.0;
}

static struct tnode *node_or_reply(fuse_req_t req, fuse_ino_t ino)
{
	struct tnode *n = tree_get(&FS(req)->tree, ino);
	if (!n)
		fuse_reply_err(req, ENOENT);
	return n;
}

static void tl_init(void *userdata, struct fuse_conn_info *conn)
{
	struct thawfs *fs = userdata;
	conn->max_read = fs->max_read;
	conn->max_write = BLKSIZE;
	/* mount.c raised this mount's readahead before INIT; the kernel lowers
	 * it to the reply's max_readahead, so ask for as much. */
	if (fs->o.kernel_readahead_kb && conn->max_readahead < fs->o.kernel_readahead_kb << 10)
		conn->max_readahead = fs->o.kernel_readahead_kb << 10;
	/* More of the kernel's readahead requests in flight at once. */
	conn->max_background = 64;
	conn->congestion_threshold = 48;
	conn->time_gran = 1000000000;
	if (fs->splice && (conn->capable & FUSE_CAP_SPLICE_WRITE))
		conn->want |= FUSE_CAP_SPLICE_WRITE; /* not _MOVE: see file_read */
	else
		fs->splice = 0;
	/* Attributes never change under us; don't let a getattr drop pages. */
	conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
	if (conn->capable & FUSE_CAP_ASYNC_READ)
		conn->want |= FUSE_CAP_ASYNC_READ;
}

static void tl_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct thawfs *fs = FS(req);
	struct tnode *p = node_or_reply(req, parent);
	if (!p)
		return;
	if (!p->is_dir) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	if (tree_list(&fs->tree, p) < 0) {
		log_error("lookup of %s: %s", name, err_msg());
		fuse_reply_err(req, EIO);
		return;
	}
	struct fuse_entry_param e;
	memset(&e, 0, sizeof e);
	struct tnode *n = tree_child(p, name);
	if (!n && tree_refresh(&fs->tree, p) > 0)
		n = tree_child(p, name); /* the name may have appeared in the store */
	if (!n) {
		/* A negative entry: the kernel remembers the miss, until the
		 * directory may be listed again. */
		e.entry_timeout = fs->o.list_ttl_s ? (double)fs->o.list_ttl_s : TTL;
		fuse_reply_entry(req, &e);
		return;
	}
	/* Count the reference first, so that a user letting go of the blob
	 * meanwhile (file_maybe_close) sees it and keeps the blob open. */
	uint64_t nl = __atomic_add_fetch(&n->nlookup, 1, __ATOMIC_ACQ_REL);
	log_debug("lookup %s -> ino %llu, nlookup %llu", n->key, (unsigned long long)n->ino, (unsigned long long)nl);
	/* The blob's logical size (an image's), and its progress for status;
	 * a failure shows the listing's size. */
	if (!n->is_dir)
		file_lookup(fs, n);
	e.ino = n->ino;
	e.generation = 1;
	fill_attr(fs, n, &e.attr);
	e.attr_timeout = e.entry_timeout = ttl_of(n);
	if (fuse_reply_entry(req, &e) != 0 && __atomic_sub_fetch(&n->nlookup, 1, __ATOMIC_ACQ_REL) == 0)
		file_maybe_close(fs, n);
}

static void forget_one(struct thawfs *fs, fuse_ino_t ino, uint64_t nlookup)
{
	struct tnode *n = tree_get(&fs->tree, ino);
	if (!n || ino == FUSE_ROOT_ID)
		return;
	log_debug("forget %s (ino %llu) by %llu", n->key, (unsigned long long)ino, (unsigned long long)nlookup);
	if (__atomic_sub_fetch(&n->nlookup, nlookup, __ATOMIC_ACQ_REL) == 0 && !n->is_dir)
		file_maybe_close(fs, n);
}

static void tl_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	forget_one(FS(req), ino, nlookup);
	fuse_reply_none(req);
}

static void tl_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	for (size_t i = 0; i < count; i++)
		forget_one(FS(req), forgets[i].ino, forgets[i].nlookup);
	fuse_reply_none(req);
}

static void tl_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)fi;
	struct tnode *n = node_or_reply(req, ino);
	if (!n)
		return;
	struct stat st;
	fill_attr(FS(req), n, &st);
	fuse_reply_attr(req, &st, ttl_of(n));
}

static void tl_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi)
{
	(void)fi;
	struct thawfs *fs = FS(req);
	struct tnode *n = node_or_reply(req, ino);
	if (!n)
		return;
	if (!fs->o.rw) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if ((to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) ||
	    ((to_set & FUSE_SET_ATTR_SIZE) && (n->is_dir || (uint64_t)attr->st_size != file_size(n)))) {
		/* Only the bytes of existing files can change; times are accepted and not kept. */
		fuse_reply_err(req, EPERM);
		return;
	}
	struct stat st;
	fill_attr(fs, n, &st);
	fuse_reply_attr(req, &st, ttl_of(n));
}

static void tl_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct thawfs *fs = FS(req);
	struct tnode *n = node_or_reply(req, ino);
	if (!n)
		return;
	if (n->is_dir) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	int writable = (fi->flags & O_ACCMODE) != O_RDONLY;
	if (writable && !fs->o.rw) {
		fuse_reply_err(req, EROFS);
		return;
	}
	struct fhandle *h = calloc(1, sizeof *h);
	if (!h) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	if (file_pin(fs, n, NULL) < 0) {
		free(h);
		fuse_reply_err(req, EIO);
		return;
	}
	h->n = n;
	h->writable = writable;
	pthread_mutex_init(&h->mu, NULL);
	ra_init(&h->ra, fs->o.readahead_min, fs->o.readahead_max);
	int direct = 0;
	h->pt_id = file_open_mode(fs, n, writable, &direct);
	fi->fh = (uintptr_t)h;
	fi->keep_cache = 1;
	fi->direct_io = direct;
	/* FLUSH would only be answered 0 (writes land in the overlay as they
	 * come; fsync and release make them durable): spare every close(2) the
	 * round trip. */
	fi->noflush = 1;
	int sent = h->pt_id > 0 ? pt_reply_open(req, fi->fh, FOPEN_NOFLUSH_BIT, h->pt_id) : fuse_reply_open(req, fi);
	if (sent != 0) {
		/* Interrupted: no release will come for this handle. */
		file_open_done(fs, n, h->pt_id);
		file_unpin(fs, n);
		pthread_mutex_destroy(&h->mu);
		free(h);
	}
}

static void tl_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	(void)ino;
	file_read(FS(req), (struct fhandle *)(uintptr_t)fi->fh, req, size, (uint64_t)off);
}

static void tl_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	(void)ino;
	file_write(FS(req), (struct fhandle *)(uintptr_t)fi->fh, req, buf, size, (uint64_t)off);
}

static void tl_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	fuse_reply_err(req, 0);
}

static void tl_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	struct fhandle *h = (struct fhandle *)(uintptr_t)fi->fh;
	if (h->writable)
		file_sync(h->n); /* errors are logged; close(2) has already returned */
	file_open_done(FS(req), h->n, h->pt_id);
	file_unpin(FS(req), h->n);
	pthread_mutex_destroy(&h->mu);
	free(h);
	fuse_reply_err(req, 0);
}

static void tl_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	(void)datasync;
	(void)fi;
	struct tnode *n = node_or_reply(req, ino);
	if (n)
		fuse_reply_err(req, !n->is_dir && file_sync(n) < 0 ? EIO : 0);
}

static void tl_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct tnode *n = node_or_reply(req, ino);
	if (!n)
		return;
	if (!n->is_dir) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	if (tree_refresh(&FS(req)->tree, n) < 0) {
		log_error("opendir: %s", err_msg());
		fuse_reply_err(req, EIO);
		return;
	}
	prober_dir(FS(req)->prober, n);
	/* The handle reads the children as they are now (a later re-listing
	 * cannot shift its offsets); the kernel keeps its cached entries unless
	 * they changed since it last opened the directory. */
	uint64_t gen = __atomic_load_n(&n->gen, __ATOMIC_ACQUIRE);
	fi->fh = (uintptr_t)tree_kids(n);
	fi->cache_readdir = 1;
	fi->keep_cache = __atomic_exchange_n(&n->gen_opened, gen, __ATOMIC_ACQ_REL) == gen;
	fuse_reply_open(req, fi);
}

static void tl_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	struct tnode *n = node_or_reply(req, ino);
	const struct kids *kids = (const struct kids *)(uintptr_t)fi->fh;
	if (!n)
		return;
	char *buf = malloc(size);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	size_t pos = 0;
	for (uint64_t i = (uint64_t)off; i < kids->n + 2; i++) {
		struct stat st;
		memset(&st, 0, sizeof st);
		const char *name;
		if (i < 2) {
			name = i ? ".." : ".";
			st.st_ino = i && n->parent ? n->parent->ino : n->ino;
			st.st_mode = S_IFDIR;
		} else {
			struct tnode *k = kids->v[i - 2];
			name = k->name;
			st.st_ino = k->ino;
			st.st_mode = k->is_dir ? S_IFDIR : S_IFREG;
		}
		size_t need = fuse_add_direntry(req, buf + pos, size - pos, name, &st, (off_t)(i + 1));
		if (need > size - pos)
			break;
		pos += need;
	}
	fuse_reply_buf(req, buf, pos);
	free(buf);
}

static void tl_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	fuse_reply_err(req, 0);
}

static void tl_statfs(fuse_req_t req, fuse_ino_t ino)
{
	(void)ino;
	struct statvfs sv;
	memset(&sv, 0, sizeof sv);
	sv.f_bsize = sv.f_frsize = 4096;
	sv.f_namemax = 255;
	fuse_reply_statfs(req, &sv);
}

/* The namespace is fixed: read-only mounts say EROFS, --rw mounts EPERM. */
static int ns_err(fuse_req_t req) { return FS(req)->o.rw ? EPERM : EROFS; }

static void tl_mknod(fuse_req_t req, fuse_ino_t p, const char *name, mode_t mode, dev_t rdev)
{
	(void)p, (void)name, (void)mode, (void)rdev;
	fuse_reply_err(req, ns_err(req));
}
static void tl_mkdir(fuse_req_t req, fuse_ino_t p, const char *name, mode_t mode)
{
	(void)p, (void)name, (void)mode;
	fuse_reply_err(req, ns_err(req));
}
static void tl_unlink(fuse_req_t req, fuse_ino_t p, const char *name)
{
	(void)p, (void)name;
	fuse_reply_err(req, ns_err(req));
}
static void tl_rename(fuse_req_t req, fuse_ino_t p, const char *name, fuse_ino_t np, const char *nn,
		      unsigned int flags)
{
	(void)p, (void)name, (void)np, (void)nn, (void)flags;
	fuse_reply_err(req, ns_err(req));
}
static void tl_symlink(fuse_req_t req, const char *link, fuse_ino_t p, const char *name)
{
	(void)link, (void)p, (void)name;
	fuse_reply_err(req, ns_err(req));
}
static void tl_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t p, const char *name)
{
	(void)ino, (void)p, (void)name;
	fuse_reply_err(req, ns_err(req));
}
static void tl_create(fuse_req_t req, fuse_ino_t p, const char *name, mode_t mode, struct fuse_file_info *fi)
{
	(void)p, (void)name, (void)mode, (void)fi;
	fuse_reply_err(req, ns_err(req));
}

void fs_ops_init(struct fuse_lowlevel_ops *ops)
{
	memset(ops, 0, sizeof *ops);
	ops->init = tl_init;
	ops->lookup = tl_lookup;
	ops->forget = tl_forget;
	ops->forget_multi = tl_forget_multi;
	ops->getattr = tl_getattr;
	ops->setattr = tl_setattr;
	ops->open = tl_open;
	ops->read = tl_read;
	ops->write = tl_write;
	ops->flush = tl_flush;
	ops->release = tl_release;
	ops->fsync = tl_fsync;
	ops->opendir = tl_opendir;
	ops->readdir = tl_readdir;
	ops->releasedir = tl_releasedir;
	ops->statfs = tl_statfs;
	ops->mknod = tl_mknod;
	ops->mkdir = tl_mkdir;
	ops->unlink = tl_unlink;
	ops->rmdir = tl_unlink;
	ops->rename = tl_rename;
	ops->symlink = tl_symlink;
	ops->link = tl_link;
	ops->create = tl_create;
}
