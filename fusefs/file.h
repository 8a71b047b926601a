/* file.h - one file of a thaw mount: its lazy blob, its copy-on-write
 * overlay (--rw), the open handles' readahead, and the read/write paths that
 * answer the kernel.
 *
 * A file's blob is opened on first lookup (so stat shows an image's logical
 * size, not its index's), or for the files at the mount's root already in
 * the background at mount (mount.c), and stays open while the kernel
 * remembers the inode or anyone uses it (an open handle, the hydrator); then
 * it is closed, and the next lookup opens it again - from the persistent
 * cache, whose chunks are checked on first use. */
#ifndef THAW_FUSEFS_FILE_H
#define THAW_FUSEFS_FILE_H

#include "fs.h"
#include "overlay.h"
#include "readahead.h"

struct tfile {
	pthread_mutex_t mu;     /* blob/overlay lifetime, users, status fields */
	pthread_mutex_t wmu;    /* serialises copy-ups into the overlay */
	struct blob *b;
	struct overlay *ov;
	uint64_t size;          /* logical size once the blob has opened */
	int size_known;
	int users;              /* open handles + hydrator pins */
	/* On fs->idle (its blob open, no users) between these, oldest first. */
	struct tfile *idle_prev, *idle_next;
	int on_idle;
	int data_fd;            /* the cache's data file for splicing, or -1 */
	int fd_checked;         /* data_fd vs blob_read: 0 not yet, 1 same bytes, -1 differ */
	/* The kernel keeps an inode either in passthrough or in cached mode while
	 * it is open, never both (an open asking for the other mode fails). */
	int pt_id;              /* backing id while pt_opens > 0 */
	int pt_opens, cached_opens;
	pthread_cond_t cached_cv;  /* signalled when cached_opens drops to 0 */
	int cached_held;        /* a wait for cached opens to end timed out: do not wait again until they do */
	int paged;              /* opened through FUSE's page cache in this mount: no passthrough
	                         * until promoted (promote.c) */
	int promote;            /* PROMOTE_* */
	uint64_t pt_total;      /* opens answered with passthrough, ever */
	uint64_t reads;         /* READ requests answered (atomic) */
	/* The ETag of the version whose cache a closed blob of this file had
	 * wholly checked: reopened in this process, it need not be checked again
	 * (so it goes straight to passthrough); NULL if none.  Both strings are
	 * malloc'd: a mount may hold a tfile for every file it has listed and
	 * opened, and inline buffers made each 1 KiB. */
	char *checked_etag;

	/* for `thaw status` */
	uint64_t fetched_before;/* bytes fetched by blobs of this file since closed */
	uint64_t rate_t_ns, rate_bytes;
	double rate;            /* bytes/s fetched, smoothed */
	int hydrate;            /* 0 no, 1 queued or running, 2 done, 3 failed */
	char *err;              /* the last error a reader or the hydrator saw, or NULL */
	/* The ETag of the version the kernel's view of the file (its size, its
	 * page cache) comes from, while the kernel holds the inode: a blob
	 * closed to make room and opened again must find the same version. */
	char *kernel_etag;
	uint64_t nerrors;
	uint64_t last_log_ns, quiet; /* log at most one error a second per file */
};

enum { PROMOTE_NONE, PROMOTE_QUEUED, PROMOTE_DONE };

/* One open() of a file. */
struct fhandle {
	struct tnode *n;
	pthread_mutex_t mu;
	struct ra ra;
	int writable;
	int pt_id;              /* > 0: opened for passthrough (no READ comes) */
	uint64_t dropped;       /* FUSE's page cache dropped below this (drop_behind) */
};

/* The file state of n (created on first use), or NULL if out of memory. */
struct tfile *file_of(struct tnode *n);
/* Open n's blob if it is not open; 0 or <0 + err_msg. */
int file_probe(struct thawfs *fs, struct tnode *n);
/* Like file_probe, for a lookup about to answer with n's size: until the
 * kernel forgets n, a reopened blob of n must be of the same version. */
int file_lookup(struct thawfs *fs, struct tnode *n);
/* Ask, in the background, for the first chunk of n's open blob: what a
 * first read wants (a header, a partition table).  Opening a plain object
 * brings it anyway; an image's comes from its own GET. */
void file_prefetch_head(struct tnode *n);
/* Like file_probe, and count a user (open handle, hydrator) until file_unpin. */
int file_pin(struct thawfs *fs, struct tnode *n, struct blob **b);
void file_unpin(struct thawfs *fs, struct tnode *n);
/* Close the blob if neither the kernel nor anyone else holds the file. */
void file_maybe_close(struct thawfs *fs, struct tnode *n);
/* The size to report: the blob's logical size, or the listing's until known. */
uint64_t file_size(struct tnode *n);
/* Whether a blob of n has opened once (its logical size is known). */
int file_size_known(struct tnode *n);
/* Remember an error a reader or the hydrator got (and log it, rate-limited). */
void file_note_error(struct tnode *n, const char *what, const char *msg);

/* Decide how an open of n is served: a backing id (> 0) for passthrough,
 * or 0 for reads through this process, with *direct set for one that
 * bypasses FUSE's page cache (--direct-io).  Passthrough needs the whole
 * file checked in the cache, nothing written over it, no open of it in the
 * other mode, no open of it through the page cache earlier in this mount
 * unless promoted since (promote.h), and a read-only open of a read-only
 * mount.  Every call is matched by one file_open_done with what it returned;
 * the last cached open of such a complete file to close queues it for
 * promotion. */
int file_open_mode(struct thawfs *fs, struct tnode *n, int writable, int *direct);
void file_open_done(struct thawfs *fs, struct tnode *n, int pt_id);
/* The promoter's end of a promotion: with ok, and no cached open held now,
 * later opens may go passthrough (returns 1); otherwise the file stays
 * cached and its next last cached close queues it again (returns 0). */
int file_promote_done(struct thawfs *fs, struct tnode *n, int ok);

/* Answer a FUSE read / write / fsync on an open handle (replies itself). */
void file_read(struct thawfs *fs, struct fhandle *h, fuse_req_t req, size_t size, uint64_t off);
void file_write(struct thawfs *fs, struct fhandle *h, fuse_req_t req, const char *buf, size_t size,
		uint64_t off);
int file_sync(struct tnode *n);

/* Status sampling (the 1 Hz ticker) and teardown. */
void file_tick(struct tnode *n, uint64_t now);
void file_close_all(struct thawfs *fs);

#endif
