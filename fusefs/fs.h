/* fs.h - the state of one thaw mount, shared by the parts of fusefs/:
 * ops.c (the FUSE requests), file.c (per-file blob and overlay), tree.c (the
 * namespace), hydrator.c, promote.c, ctl.c and status.c (the control channel), mount.c
 * (setting it all up and tearing it down). */
#ifndef THAW_FUSEFS_FS_H
#define THAW_FUSEFS_FS_H

#define FUSE_USE_VERSION FUSE_MAKE_VERSION(3, 12)
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <time.h>

#include "../objstore/blob.h"
#include "fusefs.h"
#include "passthrough.h"
#include "tree.h"

struct hydrator;
struct promoter;
struct prober;
struct ctl_server;

struct thawfs {
	struct fusefs_opts o;
	char url_text[4200];      /* the URL as given, for messages and status */
	struct thaw_url url;
	char cache_root[4096];
	char overlay_root[4200];
	char mnt_abs[4096];
	char sock_path[4300], log_path[4300];

	struct store *s;
	struct store_config scfg;
	struct tree tree;
	struct blob_opts bo;      /* every file's blob opens with these */
	struct fuse_session *se;
	struct hydrator *hy;
	struct promoter *pr;      /* complete files read through the page cache -> passthrough */
	struct prober *prober;    /* files' blobs opened ahead of their lookups */
	struct ctl_server *ctl;

	uid_t uid;
	gid_t gid;
	uint64_t t0_ns;
	time_t mount_time;        /* directories without an mtime show this */
	int splice;               /* reply with file descriptors (splice) where we can */
	size_t splice_max;        /* largest reply libfuse can splice (its pipe's size) */
	unsigned max_read;        /* largest read the kernel sends */
	struct pt_state pt;       /* FUSE passthrough (passthrough.c) */

	/* Open blobs, bounded by the file descriptors this process may hold
	 * (each holds 3, 5 with an overlay): beyond blob_cap the least recently
	 * used idle one is closed (file.c).  nblobs is atomic. */
	size_t nblobs, blob_cap;
	pthread_mutex_t idle_mu;
	struct tfile *idle_head, *idle_tail;

	/* The 1 Hz ticker: rates for status, overlay syncs. */
	pthread_t ticker;
	int ticker_running, stopping;
	pthread_mutex_t tick_mu;
	pthread_cond_t tick_cv;
};

void fs_ops_init(struct fuse_lowlevel_ops *ops);

#endif
