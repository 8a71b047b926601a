/* fusefs.h - `thaw mount`: a store location served as a lazy FUSE filesystem,
 * and the client side of its control channel (`thaw status`).
 *
 * The control channel is a Unix socket owned by the mount (mode 0600, in a
 * 0700 directory): $XDG_RUNTIME_DIR/thaw/ when that is set, else
 * /tmp/thaw-<uid>/, named mnt-<xxh64 of the mountpoint's absolute path>.sock,
 * with the daemon's log beside it (.log).  A client connects, sends one line
 * and reads the answer until EOF:
 *   status json          one JSON object: the mount, its store, every file
 *   status text WIDTH    the same as a table with progress bars
 *   hydrate PATH         queue a file or directory (relative to the mount
 *                        root, "" = everything) for background hydration */
#ifndef THAW_FUSEFS_H
#define THAW_FUSEFS_H

#include <stddef.h>
#include <stdint.h>

struct fusefs_opts {
	const char *url;          /* a prefix: file:///dir/ or s3://bucket/prefix/ */
	const char *mountpoint;
	const char *cache_dir;    /* persistent cache root (required) */
	int hydrate;              /* pull everything in the background */
	int rw;                   /* copy-on-write layer; else read-only (EROFS) */
	int allow_other;
	int debug;                /* libfuse request tracing */
	int jobs;                 /* fetches in flight per file (default 16) */
	int store_jobs;           /* transfers in flight in the store (default 32) */
	int hydrate_jobs;         /* background fetches in flight per file (default 8) */
	uint64_t hydrate_rate;    /* background bytes/s cap, 0 = none */
	uint64_t readahead_max;   /* readahead window cap (default 256 MiB) */
	uint64_t readahead_min;   /* first readahead window (default 1 MiB) */
	uint64_t chunk_size;      /* chunk size for plain objects (0: the blob's, 64 KiB or more by size) */
	uint64_t store_timeout_ms;/* give up on one store request after this (0 = store default) */
	unsigned kernel_readahead_kb; /* the kernel's readahead for this mount (root only; 0 = leave it) */
	int direct_io;            /* read files not wholly cached past FUSE's page cache */
	int no_passthrough;       /* serve complete files through this process, not FUSE passthrough */
	unsigned list_ttl_s;      /* re-list a directory at most this often, on a miss or opendir (0 = never) */
	unsigned open_ahead;      /* files of a directory opened when it is read (default 4096, 0 = none) */
};

void fusefs_opts_default(struct fusefs_opts *o);

/* Mount and serve until unmounted or signalled (SIGINT, SIGTERM, SIGHUP).
 * ready_fd >= 0: once the mount is up, "OK\n" is written to it, or one error
 * line if it could not be set up; then it is closed.  Returns 0 after a clean
 * unmount, <0 + err_msg() on failure. */
int fusefs_run(const struct fusefs_opts *o, int ready_fd);

/* Where the control socket and the log of a mount at mountpoint live (the
 * first candidate directory); 0 or <0 + err_msg. */
int fusefs_ctl_paths(const char *mountpoint, char *sock, size_t socklen, char *log, size_t loglen);
/* Send one request to the mount at mountpoint; *resp is malloc'd and
 * NUL-terminated.  Bounded by timeout_ms. */
int fusefs_ctl_request(const char *mountpoint, const char *req, unsigned timeout_ms, char **resp);

#endif
