/* file.c - one file of a thaw mount: blob and overlay lifetime, and the
 * read and write paths (see file.h).
 *
 * A read asks for its own chunks first (PRIO_DEMAND), then for the
 * readahead window (PRIO_READAHEAD, fetched in parallel behind it), and only
 * then waits, so the fetches overlap.  Once the bytes are in the persistent
 * cache the reply hands libfuse the cache's file descriptor and offset, and
 * libfuse splices them to the kernel without a copy through this process.
 * Chunks written under --rw come from the overlay instead.
 *
 * A blob opened by a lookup stays open while the kernel remembers the file,
 * and each holds three file descriptors (five with an overlay): `ls -l` of a
 * directory of a few hundred files would use up a default limit of 1024.
 * So open blobs are bounded (fs->blob_cap, from the limit): past the bound,
 * opening one closes the least recently used blob that nobody holds.  Its
 * file keeps its size, and its next lookup or open opens the blob again. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/log.h"
#include "../common/timeutil.h"
#include "file.h"
#include "promote.h"

struct tfile *file_of(struct tnode *n)
{
	struct tfile *f = __atomic_load_n(&n->f, __ATOMIC_ACQUIRE);
	if (f)
		return f;
	f = calloc(1, sizeof *f);
	if (!f)
		return NULL;
	pthread_mutex_init(&f->mu, NULL);
	pthread_mutex_init(&f->wmu, NULL);
	pthread_cond_init(&f->cached_cv, NULL);
	f->data_fd = -1;
	f->size = n->list_size;
	struct tfile *seen = NULL;
	if (!__atomic_compare_exchange_n(&n->f, &seen, f, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
		pthread_mutex_destroy(&f->mu);
		pthread_mutex_destroy(&f->wmu);
		pthread_cond_destroy(&f->cached_cv);
		free(f);
		return seen;
	}
	return f;
}

uint64_t file_size(struct tnode *n)
{
	struct tfile *f = __atomic_load_n(&n->f, __ATOMIC_ACQUIRE);
	return f ? __atomic_load_n(&f->size, __ATOMIC_RELAXED) : n->list_size;
}

int file_size_known(struct tnode *n)
{
	struct tfile *f = __atomic_load_n(&n->f, __ATOMIC_ACQUIRE);
	return f && __atomic_load_n(&f->size_known, __ATOMIC_ACQUIRE);
}

void file_note_error(struct tnode *n, const char *what, const char *msg)
{
	struct tfile *f = file_of(n);
	if (!f)
		return;
	uint64_t now = now_ns();
	pthread_mutex_lock(&f->mu);
	char *e = strdup(msg);
	if (e) {
		free(f->err);
		f->err = e;
	}
	f->nerrors++;
	int say = now - f->last_log_ns >= 1000000000ull;
	uint64_t quiet = f->quiet;
	if (say) {
		f->last_log_ns = now;
		f->quiet = 0;
	} else {
		f->quiet++;
	}
	pthread_mutex_unlock(&f->mu);
	if (say)
		log_error("%s %s: %s%s", what, n->key, msg, quiet ? " (and earlier errors not logged)" : "");
}

/* The cache's data file, so reads can be spliced from it (a dup: the blob
 * owns its own descriptor).  No file, no splice: reads are copied. */
static int open_cache_data(struct blob *b)
{
	int fd = blob_cache_fd(b);
	return fd < 0 ? -1 : fcntl(fd, F_DUPFD_CLOEXEC, 0);
}

/* --- the idle list: files whose blob is open and held by nobody ---
 * Lock order: a file's mu, then fs->idle_mu; a second file's mu is only
 * ever tried (evict_idle), never waited for. */

static void idle_unlink(struct thawfs *fs, struct tfile *f)
{
	if (!f->on_idle)
		return;
	*(f->idle_prev ? &f->idle_prev->idle_next : &fs->idle_head) = f->idle_next;
	*(f->idle_next ? &f->idle_next->idle_prev : &fs->idle_tail) = f->idle_prev;
	f->idle_prev = f->idle_next = NULL;
	f->on_idle = 0;
}

/* With f->mu held: f goes to (or moves to) the young end if idle, else off. */
static void idle_update(struct thawfs *fs, struct tfile *f)
{
	pthread_mutex_lock(&fs->idle_mu);
	idle_unlink(fs, f);
	if (f->b && !f->users) {
		f->idle_prev = fs->idle_tail;
		*(fs->idle_tail ? &fs->idle_tail->idle_next : &fs->idle_head) = f;
		fs->idle_tail = f;
		f->on_idle = 1;
	}
	pthread_mutex_unlock(&fs->idle_mu);
}

static void close_blob(struct thawfs *fs, struct tfile *f);

/* Before self (whose mu is held) opens a blob: close idle ones until there
 * is room.  One whose mu is taken (being opened, read for status, closed)
 * is passed over; with none to close, the open goes ahead and may fail
 * with EMFILE, which its reader sees as an error naming the file. */
static void evict_idle(struct thawfs *fs, struct tfile *self)
{
	while (__atomic_load_n(&fs->nblobs, __ATOMIC_RELAXED) >= fs->blob_cap) {
		struct tfile *v;
		pthread_mutex_lock(&fs->idle_mu);
		for (v = fs->idle_head; v; v = v->idle_next)
			if (v != self && pthread_mutex_trylock(&v->mu) == 0)
				break;
		if (v)
			idle_unlink(fs, v);
		pthread_mutex_unlock(&fs->idle_mu);
		if (!v)
			return;
		if (v->b && !v->users)
			close_blob(fs, v);
		pthread_mutex_unlock(&v->mu);
	}
}

/* Open the blob (and overlay) of n.  Called with f->mu held. */
static int open_blob(struct thawfs *fs, struct tnode *n, struct tfile *f)
{
	evict_idle(fs, f);
	struct store *s;
	char key[STORE_KEY_MAX];
	struct blob *b = NULL;
	int rc = tree_file_location(&fs->tree, n, &s, key, sizeof key);
	if (rc == 0)
		rc = blob_open(s, key, &fs->bo, &b);
	if (rc == 0 && f->kernel_etag && strcmp(f->kernel_etag, blob_etag(b)))
		rc = err_set(EIO,
			     "%s changed in the store (ETag %s, was %s) while the kernel still holds the old version's "
			     "size and pages: unmount and mount again to read the new one",
			     key, blob_etag(b), f->kernel_etag);
	if (rc == 0) {
		char loc[8192];
		url_format(&s->url, loc, sizeof loc);
		size_t l = strlen(loc);
		snprintf(loc + l, sizeof loc - l, "%s", key);
		rc = overlay_open(fs->overlay_root, loc, blob_etag(b), blob_size(b), blob_chunk_size(b), fs->o.rw,
				  &f->ov);
	}
	if (rc < 0) {
		if (b)
			blob_close(b);
		return rc;
	}
	if (f->checked_etag && !strcmp(f->checked_etag, blob_etag(b)))
		blob_trust_cached(b);
	f->b = b;
	__atomic_store_n(&f->size, blob_size(b), __ATOMIC_RELAXED);
	__atomic_store_n(&f->size_known, 1, __ATOMIC_RELEASE);
	f->data_fd = fs->splice && blob_size(b) ? open_cache_data(b) : -1;
	f->fd_checked = 0;
	f->rate_t_ns = now_ns();
	f->rate_bytes = f->fetched_before;
	__atomic_add_fetch(&fs->nblobs, 1, __ATOMIC_RELAXED);
	return 0;
}

/* Called with f->mu held. */
static void close_blob(struct thawfs *fs, struct tfile *f)
{
	if (!f->b)
		return;
	pthread_mutex_lock(&fs->idle_mu);
	idle_unlink(fs, f);
	pthread_mutex_unlock(&fs->idle_mu);
	struct blob_stats st;
	blob_get_stats(f->b, &st);
	f->fetched_before += st.bytes_fetched;
	free(f->checked_etag);
	f->checked_etag = blob_complete_checked(f->b) ? strdup(blob_etag(f->b)) : NULL;
	overlay_close(f->ov);
	f->ov = NULL;
	if (f->data_fd >= 0)
		close(f->data_fd);
	f->data_fd = -1;
	blob_close(f->b);
	f->b = NULL;
	__atomic_sub_fetch(&fs->nblobs, 1, __ATOMIC_RELAXED);
}

/* pin: count a user; seen: a lookup will answer with this version's size. */
static int acquire(struct thawfs *fs, struct tnode *n, int pin, int seen, struct blob **out)
{
	struct tfile *f = file_of(n);
	if (!f)
		return err_set(ENOMEM, "out of memory");
	pthread_mutex_lock(&f->mu);
	int rc = f->b ? 0 : open_blob(fs, n, f);
	if (rc == 0 && pin)
		f->users++;
	if (rc == 0 && seen && !f->kernel_etag)
		f->kernel_etag = strdup(blob_etag(f->b)); /* out of memory: no check, as before */
	if (rc == 0)
		idle_update(fs, f);
	if (rc == 0 && out)
		*out = f->b;
	pthread_mutex_unlock(&f->mu);
	if (rc < 0)
		file_note_error(n, "open", err_msg());
	return rc;
}

int file_probe(struct thawfs *fs, struct tnode *n) { return acquire(fs, n, 0, 0, NULL); }
int file_lookup(struct thawfs *fs, struct tnode *n) { return acquire(fs, n, 0, 1, NULL); }
int file_pin(struct thawfs *fs, struct tnode *n, struct blob **b) { return acquire(fs, n, 1, 0, b); }

void file_prefetch_head(struct tnode *n)
{
	struct tfile *f = __atomic_load_n(&n->f, __ATOMIC_ACQUIRE);
	if (!f)
		return;
	pthread_mutex_lock(&f->mu);
	if (f->b && blob_nchunks(f->b))
		blob_request(f->b, 0, PRIO_READAHEAD);
	pthread_mutex_unlock(&f->mu);
}

void file_maybe_close(struct thawfs *fs, struct tnode *n)
{
	struct tfile *f = __atomic_load_n(&n->f, __ATOMIC_ACQUIRE);
	if (!f)
		return;
	pthread_mutex_lock(&f->mu);
	if (!f->users && !__atomic_load_n(&n->nlookup, __ATOMIC_ACQUIRE)) {
		close_blob(fs, f);
		/* The kernel forgot the inode: a later lookup reports the version it finds. */
		free(f->kernel_etag);
		f->kernel_etag = NULL;
	}
	pthread_mutex_unlock(&f->mu);
}

void file_unpin(struct thawfs *fs, struct tnode *n)
{
	struct tfile *f = file_of(n);
	pthread_mutex_lock(&f->mu);
	if (--f->users == 0)
		idle_update(fs, f);
	pthread_mutex_unlock(&f->mu);
	file_maybe_close(fs, n);
}

/* A per-thread reply buffer: FUSE worker threads live long, and a fresh
 * 1 MiB malloc per read would be an mmap and 256 page faults each time. */
struct tbuf {
	size_t cap;
	uint8_t *p;
};
static pthread_key_t tbuf_key;
static pthread_once_t tbuf_once = PTHREAD_ONCE_INIT;

static void tbuf_free(void *arg)
{
	struct tbuf *t = arg;
	free(t->p);
	free(t);
}

static void tbuf_init(void) { pthread_key_create(&tbuf_key, tbuf_free); }

static uint8_t *thread_buf(size_t len)
{
	pthread_once(&tbuf_once, tbuf_init);
	struct tbuf *t = pthread_getspecific(tbuf_key);
	if (!t) {
		t = calloc(1, sizeof *t);
		if (!t || pthread_setspecific(tbuf_key, t)) {
			free(t);
			return NULL;
		}
	}
	if (t->cap < len) {
		free(t->p);
		t->cap = len < (1u << 20) ? 1u << 20 : len;
		t->p = malloc(t->cap);
		if (!t->p) {
			t->cap = 0;
			return NULL;
		}
	}
	return t->p;
}

/* Read [off, off+len) when some of it is in the overlay: chunk by chunk. */
static int read_mixed(struct tfile *f, uint8_t *buf, size_t len, uint64_t off)
{
	uint64_t cs = blob_chunk_size(f->b), pos = off, end = off + len;
	while (pos < end) {
		uint64_t idx = pos / cs;
		int dirty = overlay_dirty(f->ov, idx);
		/* Extend over following chunks from the same side. */
		uint64_t stop = (idx + 1) * cs;
		while (stop < end && overlay_dirty(f->ov, stop / cs) == dirty)
			stop += cs;
		if (stop > end)
			stop = end;
		if (dirty) {
			int rc = overlay_read(f->ov, buf + (pos - off), stop - pos, pos);
			if (rc < 0)
				return rc;
		} else {
			ssize_t n = blob_read(f->b, buf + (pos - off), stop - pos, pos, PRIO_DEMAND);
			if (n < 0)
				return (int)n;
			if ((uint64_t)n != stop - pos)
				return err_set(EIO, "short read of %s at %llu", "blob", (unsigned long long)pos);
		}
		pos = stop;
	}
	return 0;
}

/* The kernel drops an inode's cached mode when close(2) returns, but sends
 * us the RELEASE in the background: `cat f; cat f` would find the first
 * open still counted.  So a complete file waits a little for cached opens
 * to end, once: if one is really held (an mmap, a long reader), later opens
 * do not wait again until it ends. */
#define RELEASE_WAIT_MS 10
/* How long an open waits for a promotion under way (promote.h). */
#define PROMOTE_WAIT_MS 300

static int pt_possible(struct thawfs *fs, struct tfile *f, int writable)
{
	return !writable && !fs->o.rw && f->b && blob_size(f->b) && blob_complete_checked(f->b) &&
	       (!f->ov || overlay_ndirty(f->ov) == 0) && __atomic_load_n(&fs->pt.on, __ATOMIC_ACQUIRE);
}

/* A file read through FUSE's page cache in this mount stays there until
 * promoted: the kernel may hold its bytes there and not in the cache's data
 * file (drop_durable), and a passthrough open would read them again from
 * disk; promote.c first makes sure the data file holds them in memory. */
static int pt_eligible(struct thawfs *fs, struct tfile *f, int writable)
{
	return !f->paged && pt_possible(fs, f, writable);
}

int file_open_mode(struct thawfs *fs, struct tnode *n, int writable, int *direct)
{
	struct tfile *f = n->f; /* pinned by the caller */
	int id = 0;
	pthread_mutex_lock(&f->mu);
	int possible = pt_possible(fs, f, writable);
	int promotable = possible && f->paged && f->promote != PROMOTE_DONE && fs->pr;
	if (f->pt_opens == 0 && f->cached_opens > 0 && !f->cached_held && possible && (!f->paged || promotable)) {
		struct timespec dl = deadline_after_ms(RELEASE_WAIT_MS);
		while (f->cached_opens > 0 && f->pt_opens == 0)
			if (pthread_cond_timedwait(&f->cached_cv, &f->mu, &dl) == ETIMEDOUT) {
				f->cached_held = f->cached_opens > 0;
				break;
			}
	}
	/* The last close queued the file for passthrough: that is quick when
	 * its bytes are in the data file's pages (a sequential read leaves them
	 * there), so wait for it rather than open in cached mode and hold it
	 * off until this open closes. */
	if (f->cached_opens == 0 && f->promote == PROMOTE_QUEUED && promotable) {
		struct timespec dl = deadline_after_ms(PROMOTE_WAIT_MS);
		while (f->promote == PROMOTE_QUEUED && f->cached_opens == 0)
			if (pthread_cond_timedwait(&f->cached_cv, &f->mu, &dl) == ETIMEDOUT)
				break;
	}
	if (f->pt_opens > 0) {
		id = f->pt_id;
		f->pt_opens++;
		f->pt_total++;
	} else if (f->cached_opens == 0 && pt_eligible(fs, f, writable)) {
		id = pt_backing_open(fs, blob_cache_fd(f->b));
		if (id > 0) {
			f->pt_id = id;
			f->pt_opens = 1;
			f->pt_total++;
		} else {
			log_debug("%s: served by this process: %s", n->key, err_msg());
			id = 0;
		}
	}
	/* --direct-io: a file not wholly cached is read past FUSE's page cache.
	 * Its bytes are in the page cache once already, as the cache's data
	 * file that replies are spliced from; a second copy doubles the memory
	 * and the copying of a cold read (where first touching a page is
	 * costly, as in a VM whose free memory goes back to the host, that is
	 * a quarter of the speed).  The price: no kernel readahead, so every
	 * read(2) is a round trip here, which small reads feel.  Once complete,
	 * the file is opened for passthrough instead. */
	*direct = id == 0 && !writable && __atomic_load_n(&fs->pt.dio_on, __ATOMIC_ACQUIRE);
	if (id == 0) {
		f->cached_opens++;
		if (!*direct)
			f->paged = 1;
	}
	pthread_mutex_unlock(&f->mu);
	return id;
}

void file_open_done(struct thawfs *fs, struct tnode *n, int pt_id)
{
	struct tfile *f = n->f;
	pthread_mutex_lock(&f->mu);
	if (pt_id > 0) {
		if (--f->pt_opens == 0) {
			pt_backing_close(fs, f->pt_id);
			f->pt_id = 0;
		}
	} else if (--f->cached_opens == 0) {
		f->cached_held = 0;
		pthread_cond_broadcast(&f->cached_cv);
		if (f->paged && f->promote == PROMOTE_NONE && fs->pr && pt_possible(fs, f, 0)) {
			f->promote = PROMOTE_QUEUED;
			if (promoter_add(fs->pr, n) < 0) {
				f->promote = PROMOTE_NONE; /* stays cached; tried again at its next close */
				log_warn("%s", err_msg());
			}
		}
	}
	pthread_mutex_unlock(&f->mu);
}

int file_promote_done(struct thawfs *fs, struct tnode *n, int ok)
{
	struct tfile *f = n->f;
	pthread_mutex_lock(&f->mu);
	int flip = ok && f->cached_opens == 0 && pt_possible(fs, f, 0);
	if (flip)
		f->paged = 0;
	f->promote = flip ? PROMOTE_DONE : PROMOTE_NONE;
	pthread_cond_broadcast(&f->cached_cv); /* opens waiting for it */
	pthread_mutex_unlock(&f->mu);
	return flip;
}

/* Compare the derived cache data file with what the blob reads, once. */
static int check_data_fd(struct tfile *f, uint64_t off, size_t len)
{
	uint8_t a[512], b[512];
	size_t n = len < sizeof a ? len : sizeof a;
	ssize_t got = blob_read(f->b, a, n, off, PRIO_DEMAND);
	if (got != (ssize_t)n || pread(f->data_fd, b, n, (off_t)off) != (ssize_t)n || memcmp(a, b, n)) {
		log_warn("cache data file does not match the blob; not splicing this file");
		return -1;
	}
	return 0;
}

/* A sequential stream through FUSE's page cache, on a mount that hands
 * complete files over to passthrough (promote.h), keeps its bytes in the
 * cache's data file, not in FUSE's page cache: the data file's pages are not
 * marked served (so they are not dropped), and FUSE's are dropped behind the
 * reader.  Each byte is still held once, and the file, once complete and
 * closed, is opened for passthrough with its bytes already in memory.
 * Random reads keep the other way round: FUSE's page cache holds what they
 * read.  Returns whether this read is such a stream's, and in [*from, *to)
 * what to drop (empty if nothing yet): decided before the reply, after which
 * the handle may be released and freed at any time. */
#define DROP_LAG (16u << 20)  /* what a reader left this far behind is dropped, */
#define DROP_STEP (32u << 20) /* in steps of at least this: a reader going back a
                               * little, or the kernel's readahead, still finds it */

static int handoff(struct thawfs *fs, struct fhandle *h, uint64_t off, uint64_t *from, uint64_t *to)
{
	*from = *to = 0;
	if (!fs->pr || fs->o.direct_io || !__atomic_load_n(&fs->pt.on, __ATOMIC_ACQUIRE))
		return 0;
	pthread_mutex_lock(&h->mu);
	int seq = h->ra.reads > 1 || off == 0;
	if (seq && h->ra.next >= h->dropped + DROP_LAG + DROP_STEP) {
		*from = h->dropped;
		*to = h->ra.next - DROP_LAG;
		h->dropped = *to;
	}
	pthread_mutex_unlock(&h->mu);
	return seq;
}

/* Drop [from, to) of n from FUSE's page cache.  The kernel waits for each
 * page it drops to be unlocked, and a page is locked while a READ for it is
 * pending: one that no thread will answer once the session is stopping.  So
 * only while one cached open is left (the reader's own: the pages behind it
 * have no READ pending, and an mmap holds an open). */
static void drop_behind(struct thawfs *fs, struct tnode *n, uint64_t from, uint64_t to)
{
	struct tfile *f = n->f;
	pthread_mutex_lock(&f->mu);
	int alone = f->cached_opens == 1;
	pthread_mutex_unlock(&f->mu);
	if (!alone)
		return;
	int e = fuse_lowlevel_notify_inval_inode(fs->se, (fuse_ino_t)n->ino, (off_t)from, (off_t)(to - from));
	if (e < 0 && e != -ENOENT)
		log_debug("%s: cannot drop pages behind the reader: %s", n->key, strerror(-e));
}

/* Once a reply is sent the handle may be released and, the kernel having
 * forgotten the inode, the blob closed: a pin keeps the blob for what comes
 * after the reply. */
static void hold(struct tfile *f)
{
	pthread_mutex_lock(&f->mu);
	f->users++;
	pthread_mutex_unlock(&f->mu);
}

void file_read(struct thawfs *fs, struct fhandle *h, fuse_req_t req, size_t size, uint64_t off)
{
	struct tfile *f = h->n->f; /* pinned by the handle: blob and overlay stay */
	struct blob *b = f->b;
	__atomic_add_fetch(&f->reads, 1, __ATOMIC_RELAXED);
	uint64_t fsize = blob_size(b);
	if (off >= fsize || !size) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	if (size > fsize - off)
		size = fsize - off;
	uint64_t cs = blob_chunk_size(b), first = off / cs, last = (off + size - 1) / cs;
	int mixed = 0;
	for (uint64_t i = first; f->ov && i <= last; i++)
		mixed |= overlay_dirty(f->ov, i);
	uint64_t from, to;
	pthread_mutex_lock(&h->mu);
	int ra = ra_advance(&h->ra, off, size, fsize, &from, &to);
	pthread_mutex_unlock(&h->mu);
	uint64_t ra_first = 1, ra_last = 0; /* none */
	if (ra) {
		ra_first = from / cs;
		ra_last = (to - 1) / cs;
	}
	/* Demand and window are queued together, so that (for a plain object)
	 * the demand's GET runs on through the window.  Chunks written under
	 * --rw come from the overlay and are never fetched. */
	if (!f->ov) {
		blob_request_read(b, first, last, ra_first, ra_last);
	} else {
		for (uint64_t i = ra_first; i <= ra_last; i++)
			if (!overlay_dirty(f->ov, i))
				blob_request(b, i, PRIO_READAHEAD);
		for (uint64_t i = first; i <= last; i++)
			if (!blob_chunk_present(b, i) && !overlay_dirty(f->ov, i))
				blob_request(b, i, PRIO_DEMAND);
	}

	int rc = 0;
	if (!mixed && f->data_fd >= 0 && size <= fs->splice_max && __atomic_load_n(&f->fd_checked, __ATOMIC_ACQUIRE) >= 0) {
		/* The last chunk first: a GET publishes its chunks in order, so
		 * the others are then mostly there, and this thread is woken once
		 * for the read rather than once for each chunk it spans. */
		rc = blob_wait_requested(b, last);
		for (uint64_t i = first; rc == 0 && i < last; i++)
			rc = blob_wait_requested(b, i);
		if (rc == 0 && !__atomic_load_n(&f->fd_checked, __ATOMIC_ACQUIRE)) {
			pthread_mutex_lock(&f->mu);
			if (!f->fd_checked)
				__atomic_store_n(&f->fd_checked, check_data_fd(f, off, size) < 0 ? -1 : 1,
						 __ATOMIC_RELEASE);
			pthread_mutex_unlock(&f->mu);
		}
		if (rc == 0 && __atomic_load_n(&f->fd_checked, __ATOMIC_ACQUIRE) > 0) {
			struct fuse_bufvec bv = FUSE_BUFVEC_INIT(size);
			bv.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
			bv.buf[0].fd = f->data_fd;
			bv.buf[0].pos = (off_t)off;
			/* No SPLICE_F_MOVE: FUSE would try to steal each page of
			 * the data file, which holds large folios that it then
			 * refuses, after locking them, waiting out their writeback
			 * and taking them out of the data file's page cache; it
			 * copies anyway.  Without the attempt a cold 1 GiB read ran
			 * 400-460 MB/s against 389-463, 7 of 8 pairs faster. */
			uint64_t from, to;
			struct tnode *n = h->n; /* the tree's: outlives the handle */
			int ho = handoff(fs, h, off, &from, &to);
			hold(f);
			if (fuse_reply_data(req, &bv, 0) == 0) {
				if (!ho)
					blob_served(b, off, size);
				else if (to > from)
					drop_behind(fs, n, from, to);
			}
			file_unpin(fs, n);
			return;
		}
	}
	uint8_t *buf = rc == 0 ? thread_buf(size) : NULL;
	if (rc == 0 && !buf)
		rc = err_set(ENOMEM, "out of memory for a %zu-byte read", size);
	if (rc == 0 && mixed) {
		rc = read_mixed(f, buf, size, off);
	} else if (rc == 0) {
		ssize_t n = blob_read(b, buf, size, off, PRIO_DEMAND);
		rc = n < 0 ? (int)n : 0;
		if (n >= 0)
			size = (size_t)n;
	}
	if (rc < 0) {
		file_note_error(h->n, "read of", err_msg());
		fuse_reply_err(req, rc == -ENOMEM ? ENOMEM : EIO);
		return;
	}
	struct tnode *n = h->n;
	hold(f);
	if (fuse_reply_buf(req, (const char *)buf, size) == 0 && !mixed)
		blob_served(b, off, size);
	file_unpin(fs, n);
}

void file_write(struct thawfs *fs, struct fhandle *h, fuse_req_t req, const char *buf, size_t size,
		uint64_t off)
{
	(void)fs;
	struct tfile *f = h->n->f;
	struct blob *b = f->b;
	uint64_t fsize = blob_size(b);
	if (!f->ov || !h->writable) {
		fuse_reply_err(req, f->ov ? EBADF : EROFS);
		return;
	}
	if (off >= fsize && size) {
		/* Disk images keep their size; growing a file is not supported. */
		fuse_reply_err(req, EFBIG);
		return;
	}
	if (size > fsize - off)
		size = fsize - off;
	uint64_t cs = blob_chunk_size(b), pos = off, end = off + size;
	int rc = 0;
	while (rc == 0 && pos < end) {
		uint64_t idx = pos / cs, cstart = idx * cs, clen = blob_chunk_len(b, idx);
		uint64_t piece = (end < cstart + clen ? end : cstart + clen) - pos;
		if (!overlay_dirty(f->ov, idx)) {
			pthread_mutex_lock(&f->wmu);
			if (!overlay_dirty(f->ov, idx)) {
				/* Copy-up: the chunk's base bytes with this write applied. */
				uint8_t *chunk = malloc(clen);
				if (!chunk) {
					rc = err_set(ENOMEM, "out of memory for a chunk copy");
				} else {
					if (piece != clen) {
						ssize_t n = blob_read(b, chunk, clen, cstart, PRIO_DEMAND);
						if (n >= 0 && (uint64_t)n != clen)
							n = err_set(EIO, "short read of chunk %llu",
								    (unsigned long long)idx);
						rc = n < 0 ? (int)n : 0;
					}
					if (rc == 0) {
						memcpy(chunk + (pos - cstart), buf + (pos - off), piece);
						rc = overlay_install(f->ov, idx, chunk, clen);
					}
					free(chunk);
				}
				pthread_mutex_unlock(&f->wmu);
				pos += piece;
				continue;
			}
			pthread_mutex_unlock(&f->wmu);
		}
		rc = overlay_write(f->ov, buf + (pos - off), piece, pos);
		pos += piece;
	}
	if (rc < 0) {
		file_note_error(h->n, "write to", err_msg());
		fuse_reply_err(req, rc == -ENOSPC || rc == -ENOMEM || rc == -EDQUOT ? -rc : EIO);
		return;
	}
	fuse_reply_write(req, size);
}

int file_sync(struct tnode *n)
{
	struct tfile *f = __atomic_load_n(&n->f, __ATOMIC_ACQUIRE);
	if (!f)
		return 0;
	pthread_mutex_lock(&f->mu);
	int rc = f->ov ? overlay_sync(f->ov) : 0;
	pthread_mutex_unlock(&f->mu);
	if (rc < 0)
		file_note_error(n, "fsync of", err_msg());
	return rc;
}

void file_tick(struct tnode *n, uint64_t now)
{
	struct tfile *f = __atomic_load_n(&n->f, __ATOMIC_ACQUIRE);
	if (!f || pthread_mutex_trylock(&f->mu))
		return;
	if (f->b) {
		struct blob_stats st;
		blob_get_stats(f->b, &st);
		uint64_t bytes = f->fetched_before + st.bytes_fetched;
		double dt = (double)(now - f->rate_t_ns) / 1e9;
		if (dt >= 0.9) {
			double inst = (double)(bytes - f->rate_bytes) / dt;
			/* Smooth over a few seconds, but let a stall show quickly. */
			f->rate = inst == 0 ? 0 : f->rate ? 0.5 * f->rate + 0.5 * inst : inst;
			f->rate_t_ns = now;
			f->rate_bytes = bytes;
		}
		if (f->ov && overlay_sync(f->ov) < 0)
			log_error("%s", err_msg());
	}
	pthread_mutex_unlock(&f->mu);
}

void file_close_all(struct thawfs *fs)
{
	uint64_t max = tree_max_ino(&fs->tree);
	for (uint64_t ino = 1; ino <= max; ino++) {
		struct tnode *n = tree_get(&fs->tree, ino);
		if (!n || !n->f)
			continue;
		pthread_mutex_lock(&n->f->mu);
		close_blob(fs, n->f);
		pthread_mutex_unlock(&n->f->mu);
		pthread_mutex_destroy(&n->f->mu);
		pthread_mutex_destroy(&n->f->wmu);
		free(n->f->err);
		free(n->f->checked_etag);
		free(n->f->kernel_etag);
		free(n->f);
		n->f = NULL;
	}
}
