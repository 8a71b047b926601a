/* mount.c - fusefs_run: set a thaw mount up, serve it, tear it down.
 *
 * Order matters.  The store is opened and the root listed before mounting,
 * so a wrong URL or an unreachable store is reported by `thaw mount` itself
 * rather than by the first `ls`.  SIGINT/SIGTERM/SIGHUP are blocked before
 * any thread starts and unblocked only in this thread around the session
 * loop, so libfuse's handler always runs where it can end the loop (the
 * store's and the blobs' threads never see those signals).  Teardown goes
 * control socket and unmount first (users see the mount go away at once,
 * and may mount it again), then the opens started ahead of lookups, the
 * hydrator, the blobs (flushing their caches) and the store. */
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/log.h"
#include "../common/timeutil.h"
#include "ctl.h"
#include "file.h"
#include "hydrator.h"
#include "promote.h"
#include "prober.h"
#include "status.h"
#include "../common/fsutil.h"

/* fsu_mkdir_p with the message the user sees. */
static int mkdir_p_named(const char *path)
{
	int rc = fsu_mkdir_p(path, 0700);
	return rc < 0 ? err_set(-rc, "create %s: %s", path, strerror(-rc)) : 0;
}

void fusefs_opts_default(struct fusefs_opts *o)
{
	memset(o, 0, sizeof *o);
	o->jobs = 16;
	o->store_jobs = 32;
	o->hydrate_jobs = 8;
	o->readahead_min = 1u << 20;
	/* With 64 MiB GETs (below), a 256 MiB window keeps four in flight.
	 * Fewer, larger GETs cost the server less per byte: against 16 MiB GETs
	 * in a 64 MiB window, 434-490 MB/s against 356-423 in five alternations
	 * (s3rver's CPU 2.0-2.3 s per GiB against 2.3-3.0). */
	o->readahead_max = 256u << 20;
	o->chunk_size = 0; /* the blob's default */
	o->kernel_readahead_kb = 1024;
	o->list_ttl_s = 30;
	o->open_ahead = 4096;
}

/* The mount shows a prefix.  For file:// the store is rooted at that
 * directory, so images there find their chunks beside them. */
static int parse_location(struct thawfs *fs)
{
	int rc = url_parse(fs->o.url, &fs->url);
	if (rc < 0)
		return rc;
	struct thaw_url *u = &fs->url;
	size_t kl = strlen(u->key);
	if (u->scheme == URL_FILE && kl) {
		size_t rl = strlen(u->root);
		if (u->key[kl - 1] == '/')
			u->key[--kl] = 0;
		if (snprintf(u->root + rl, sizeof u->root - rl, "%s%s", strcmp(u->root, "/") ? "/" : "", u->key) >=
		    (int)(sizeof u->root - rl))
			return err_set(ENAMETOOLONG, "%s: path too long", fs->o.url);
		u->key[0] = 0;
	} else if (u->scheme == URL_S3 && kl && u->key[kl - 1] != '/') {
		if (kl + 1 >= sizeof u->key)
			return err_set(ENAMETOOLONG, "%s: key too long", fs->o.url);
		u->key[kl] = '/';
		u->key[kl + 1] = 0;
	}
	return 0;
}

static struct tnode *resolve(struct thawfs *fs, const char *path)
{
	struct tnode *n = fs->tree.root;
	char buf[4096];
	snprintf(buf, sizeof buf, "%s", path);
	char *save = NULL;
	for (char *c = strtok_r(buf, "/", &save); c && n; c = strtok_r(NULL, "/", &save)) {
		if (!strcmp(c, "."))
			continue;
		if (!n->is_dir || tree_list(&fs->tree, n) < 0)
			return NULL;
		n = tree_child(n, c);
	}
	return n;
}

/* --hydrate: names a re-listing finds are hydrated too. */
static void hydrate_new(void *arg, struct tnode *n)
{
	struct thawfs *fs = arg;
	if (hydrator_add(fs->hy, n) < 0)
		log_error("hydrate %s: %s", n->key, err_msg());
}

/* The control channel's requests (protocol in fusefs.h). */
static void ctl_handle(void *arg, const char *req, FILE *out)
{
	struct thawfs *fs = arg;
	if (!strcmp(req, "status json")) {
		status_write(fs, out, 1, 0);
	} else if (!strncmp(req, "status text", 11)) {
		int w = atoi(req + 11);
		status_write(fs, out, 0, w >= 40 ? w : 100);
	} else if (!strncmp(req, "hydrate", 7) && (!req[7] || req[7] == ' ')) {
		const char *path = req[7] ? req + 8 : "";
		struct tnode *n = resolve(fs, path);
		if (!n) {
			fprintf(out, "ERR no such file or directory in the mount: %s\n", path);
			return;
		}
		if (!fs->hy && hydrator_start(fs, &fs->hy) < 0) {
			fprintf(out, "ERR %s\n", err_msg());
			return;
		}
		if (hydrator_add(fs->hy, n) < 0)
			fprintf(out, "ERR %s\n", err_msg());
		else
			fprintf(out, "OK queued /%s\n", path);
	} else {
		fprintf(out, "ERR unknown request '%s'\n", req);
	}
}

/* Opening a file's blob costs a GET (an image's index may take a second),
 * then creating its cache, and the kernel's LOOKUP waits for all of it.  The
 * first reader of a fresh mount usually comes within milliseconds of `thaw
 * mount` returning, for one of the few files at the root: so the first
 * THAW_FUSE_PREOPEN of those (default 8, 0 = none) are opened by the prober
 * from the moment the root is listed, their first chunk asked for at
 * readahead priority (a first read usually starts at 0; a plain object's
 * first 64 KiB come with its open anyway, an image's first chunk costs one
 * more GET), and the GET overlaps the mounting and the reader's own start. */
#define PREOPEN_DEFAULT 8

/* tree.on_gone: a re-listing took n out of dir (removed or replaced). */
static void forget_name(void *arg, struct tnode *dir, struct tnode *n)
{
	struct thawfs *fs = arg;
	prober_forget(fs->prober, dir, n);
}

static void preopen_root(struct thawfs *fs)
{
	long max = PREOPEN_DEFAULT;
	const char *e = getenv("THAW_FUSE_PREOPEN");
	if (e)
		max = atol(e);
	const struct kids *k = tree_kids(fs->tree.root);
	for (size_t i = 0, n = 0; i < k->n && (long)n < max; i++)
		if (!k->v[i]->is_dir) {
			prober_add(fs->prober, k->v[i], 1);
			n++;
		}
}

/* How many blobs may be open at once.  The soft limit on file descriptors
 * goes up to the hard one first (1024 is a common default, and the kernel
 * remembers files by the thousand after an `ls -l`); what the store's
 * connections, the FUSE device, the log and the control socket need is kept
 * aside, and each blob gets the three descriptors it holds (five with an
 * overlay under --rw), plus one to spare. */
static size_t blob_cap_from_limits(int rw)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return 64;
	if (rl.rlim_cur < rl.rlim_max) {
		rlim_t want = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > (1u << 20) ? (1u << 20) : rl.rlim_max;
		if (want > rl.rlim_cur) {
			struct rlimit up = { want, rl.rlim_max };
			if (setrlimit(RLIMIT_NOFILE, &up) == 0)
				rl.rlim_cur = want;
		}
	}
	rlim_t n = rl.rlim_cur == RLIM_INFINITY ? (1u << 20) : rl.rlim_cur;
	rlim_t reserve = 64 + n / 8;
	size_t cap = n > reserve ? (size_t)((n - reserve) / (rw ? 6 : 4)) : 0;
	return cap < 8 ? 8 : cap;
}

static void *ticker_main(void *arg)
{
	struct thawfs *fs = arg;
	pthread_mutex_lock(&fs->tick_mu);
	while (!fs->stopping) {
		struct timespec dl = deadline_after_ms(1000);
		pthread_cond_timedwait(&fs->tick_cv, &fs->tick_mu, &dl);
		if (fs->stopping)
			break;
		pthread_mutex_unlock(&fs->tick_mu);
		uint64_t now = now_ns(), max = tree_max_ino(&fs->tree);
		for (uint64_t ino = 1; ino <= max; ino++) {
			struct tnode *n = tree_get(&fs->tree, ino);
			if (n && !n->is_dir)
				file_tick(n, now);
		}
		pthread_mutex_lock(&fs->tick_mu);
	}
	pthread_mutex_unlock(&fs->tick_mu);
	return NULL;
}

/* The kernel reads ahead of a FUSE file only 128 KiB at a time (its default
 * for a new bdi), so a sequential reader costs one round trip per 128 KiB.
 * Root may raise it for this mount: find the mount's device in mountinfo (a
 * stat of the mountpoint would wait for this very daemon) and write the bdi's
 * read_ahead_kb.  Best effort.  It must happen after mounting and before INIT
 * is answered: the INIT reply lowers the bdi's value to its max_readahead
 * (which tl_init raises to match), and a file opened before the raise keeps
 * 128 KiB for as long as it is open: a reader that starts the moment `thaw
 * mount` returns would pay 4x the READ round trips. */
static void raise_kernel_readahead(const char *mnt, unsigned kb)
{
	FILE *f = fopen("/proc/self/mountinfo", "r");
	if (!f)
		return;
	char line[8192], dev[64] = "";
	while (fgets(line, sizeof line, f)) {
		/* id parent major:minor root mountpoint ... ("\040" etc. for odd bytes) */
		char majmin[64], root[4096], mp[4096];
		if (sscanf(line, "%*s %*s %63s %4095s %4095s", majmin, root, mp) != 3)
			continue;
		char un[4096];
		size_t j = 0;
		for (size_t i = 0; mp[i] && j + 1 < sizeof un; i++) {
			if (mp[i] == '\\' && mp[i + 1] >= '0' && mp[i + 1] <= '3' && mp[i + 2] && mp[i + 3]) {
				un[j++] = (char)((mp[i + 1] - '0') * 64 + (mp[i + 2] - '0') * 8 + (mp[i + 3] - '0'));
				i += 3;
			} else {
				un[j++] = mp[i];
			}
		}
		un[j] = 0;
		if (!strcmp(un, mnt) && strstr(line, " - fuse.thaw "))
			snprintf(dev, sizeof dev, "%s", majmin); /* the last one is the newest */
	}
	fclose(f);
	if (!dev[0])
		return;
	char p[128];
	snprintf(p, sizeof p, "/sys/class/bdi/%s/read_ahead_kb", dev);
	FILE *w = fopen(p, "w");
	if (!w) {
		log_debug("cannot raise the kernel's readahead (%s: %s)", p, strerror(errno));
		return;
	}
	fprintf(w, "%u\n", kb);
	if (fclose(w) == 0)
		log_debug("kernel readahead for %s set to %u KiB", mnt, kb);
}

/* libfuse splices a reply through a per-thread pipe that must hold all of
 * it; without CAP_SYS_RESOURCE a pipe stops at fs.pipe-max-size (1 MiB by
 * default), and then libfuse quietly copies instead - through a fresh buffer
 * per reply, worse than our own copy.  So find the largest reply that can
 * really be spliced, and copy anything bigger ourselves. */
static size_t splice_limit(void)
{
	int p[2];
	if (pipe2(p, O_CLOEXEC) < 0)
		return 0;
	long want = 4l << 20, got = fcntl(p[0], F_SETPIPE_SZ, want);
	if (got < want) {
		FILE *f = fopen("/proc/sys/fs/pipe-max-size", "r");
		got = 0;
		if (f) {
			if (fscanf(f, "%ld", &got) != 1)
				got = 0;
			fclose(f);
		}
	}
	close(p[0]);
	close(p[1]);
	/* Room for the reply header (and libfuse rounds to pages). */
	return got > 8192 ? (size_t)got - 4096 : 0;
}

static void report(int *ready_fd, const char *what)
{
	if (*ready_fd < 0)
		return;
	char line[ERR_MSG_MAX + 8];
	int n = snprintf(line, sizeof line, "%s\n", what);
	if (write(*ready_fd, line, (size_t)n) != n)
		log_warn("cannot tell the parent process how the mount went: %s", strerror(errno));
	close(*ready_fd);
	*ready_fd = -1;
}

/* Keep ',' and '\' out of the fsname mount option, where they are syntax. */
static void fsname_of(const char *url, char *out, size_t n)
{
	size_t j = 0;
	for (size_t i = 0; url[i] && j + 1 < n; i++)
		out[j++] = url[i] == ',' || url[i] == '\\' ? '_' : url[i];
	out[j] = 0;
}

int fusefs_run(const struct fusefs_opts *o, int ready_fd)
{
	struct thawfs *fs = calloc(1, sizeof *fs);
	if (!fs) {
		report(&ready_fd, "ERR out of memory");
		return err_set(ENOMEM, "out of memory");
	}
	fs->o = *o;
	if (fs->o.jobs < 1)
		fs->o.jobs = 16;
	if (fs->o.store_jobs < 1)
		fs->o.store_jobs = 32;
	if (!fs->o.readahead_min)
		fs->o.readahead_min = 1u << 20;
	if (fs->o.readahead_max < fs->o.readahead_min)
		fs->o.readahead_max = fs->o.readahead_min;
	fs->uid = getuid();
	fs->gid = getgid();
	fs->t0_ns = now_ns();
	fs->mount_time = time(NULL);
	pthread_mutex_init(&fs->tick_mu, NULL);
	pthread_cond_init(&fs->tick_cv, NULL);
	pthread_mutex_init(&fs->idle_mu, NULL);
	fs->blob_cap = blob_cap_from_limits(fs->o.rw);
	log_debug("at most %zu blobs open at once", fs->blob_cap);
	/* Chunk buffers (1 MiB and up) come and go at the fetch rate; keep them
	 * in the heap rather than a fresh mmap each, which costs page faults and
	 * zeroing for every chunk. */
	if (!getenv("THAW_FUSE_MALLOC_DEFAULT")) {
		mallopt(M_MMAP_THRESHOLD, 64 << 20);
		mallopt(M_TRIM_THRESHOLD, 256 << 20);
	}
	const char *nosplice = getenv("THAW_FUSE_SPLICE");
	fs->splice = !(nosplice && !strcmp(nosplice, "0"));
	fs->splice_max = splice_limit();
	/* Reads as large as can still be spliced (the kernel asks for up to
	 * max_read at a time): 1 MiB when pipes may grow, else 512 KiB, which
	 * measured faster here than 1 MiB copied (1.3-1.5 vs 1.2 GB/s from the
	 * cache, and less CPU when cold). */
	fs->max_read = 1u << 20;
	while (fs->splice && fs->max_read > (128u << 10) && fs->max_read > fs->splice_max)
		fs->max_read /= 2;
	const char *mr = getenv("THAW_FUSE_MAX_READ");
	if (mr && atoi(mr) >= 4096 && atoi(mr) <= (1 << 20))
		fs->max_read = (unsigned)atoi(mr);
	snprintf(fs->url_text, sizeof fs->url_text, "%s", o->url);

	sigset_t sigs, old;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &sigs, &old);

	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	int rc = parse_location(fs);
	if (rc == 0)
		rc = ctl_canon_mountpoint(o->mountpoint, fs->mnt_abs, sizeof fs->mnt_abs);
	if (rc == 0)
		rc = fusefs_ctl_paths(fs->mnt_abs, fs->sock_path, sizeof fs->sock_path, fs->log_path,
				      sizeof fs->log_path);
	if (rc == 0 && !o->cache_dir)
		rc = err_set(EINVAL, "no cache directory given");
	if (rc == 0) {
		snprintf(fs->cache_root, sizeof fs->cache_root, "%s", o->cache_dir);
		snprintf(fs->overlay_root, sizeof fs->overlay_root, "%s/overlay", fs->cache_root);
		rc = mkdir_p_named(fs->cache_root);
		if (rc < 0)
			rc = err_wrap(rc, "cache directory");
	}
	if (rc == 0) {
		store_config_default(&fs->scfg);
		fs->scfg.max_inflight = fs->o.store_jobs;
		if (o->store_timeout_ms)
			fs->scfg.max_total_ms = o->store_timeout_ms;
		rc = store_open(&fs->url, &fs->scfg, &fs->s);
	}
	int tree_ok = 0;
	if (rc == 0 && (rc = tree_init(&fs->tree, fs->s, &fs->url, &fs->scfg)) == 0) {
		fs->tree.list_ttl_ns = (uint64_t)fs->o.list_ttl_s * 1000000000ull;
		fs->tree.keep_names = fs->o.rw;
		tree_ok = 1;
		rc = tree_list(&fs->tree, fs->tree.root);
		if (rc < 0)
			rc = err_wrap(rc, "cannot list %s", o->url);
	}
	if (rc == 0) {
		blob_opts_default(&fs->bo);
		fs->bo.jobs = fs->o.jobs;
		if (fs->o.chunk_size)
			fs->bo.plain_chunk_size = fs->o.chunk_size;
		fs->bo.cache_dir = fs->cache_root;
		fs->bo.bg_jobs = fs->o.hydrate_jobs > 0 && fs->o.hydrate_jobs < fs->o.jobs ? fs->o.hydrate_jobs : 0;
		fs->bo.bg_bytes_per_sec = fs->o.hydrate_rate;
		/* Read through FUSE's page cache, a file's bytes are held there;
		 * the cache's data file need not hold them in memory as well.
		 * With --direct-io the data file's pages are the only copy. */
		fs->bo.drop_durable = !(fs->o.direct_io && !fs->o.rw);
		/* A file's reads are as small as a page: fetch an image's sub-blocks. */
		fs->bo.image_sub_blocks = 1;
		/* A GET is streamed and each chunk published as it lands, so a
		 * large one delays nobody; fewer requests cost the server less. */
		fs->bo.coalesce_bytes = 64u << 20;
		if (prober_start(fs, &fs->prober) == 0) {
			preopen_root(fs);
			fs->tree.on_gone = forget_name;
			fs->tree.on_gone_arg = fs;
		}
		rc = ctl_server_start(fs->sock_path, ctl_handle, fs, &fs->ctl);
	}
	if (rc == 0) {
		char fsname[4300], opt[4600];
		fsname_of(o->url, fsname, sizeof fsname);
		snprintf(opt, sizeof opt, "fsname=%s,subtype=thaw,default_permissions,max_read=%u%s%s", fsname,
			 fs->max_read, o->rw ? "" : ",ro", o->allow_other ? ",allow_other" : "");
		if (fuse_opt_add_arg(&args, "thaw") || fuse_opt_add_arg(&args, "-o") || fuse_opt_add_arg(&args, opt) ||
		    (o->debug && fuse_opt_add_arg(&args, "-d")))
			rc = err_set(ENOMEM, "out of memory");
	}
	struct fuse_lowlevel_ops ops;
	fs_ops_init(&ops);
	if (rc == 0) {
		fs->se = fuse_session_new(&args, &ops, sizeof ops, fs);
		if (!fs->se)
			rc = err_set(EINVAL, "cannot create the FUSE session (see the log above)");
	}
	/* libfuse leaves an ignored signal ignored, and a shell starts background
	 * jobs with SIGINT ignored; we want Ctrl-C/kill -INT to unmount. */
	signal(SIGINT, SIG_DFL);
	signal(SIGTERM, SIG_DFL);
	signal(SIGHUP, SIG_DFL);
	if (rc == 0 && fuse_set_signal_handlers(fs->se) < 0)
		rc = err_set(EINVAL, "cannot install signal handlers");
	int mounted = 0;
	if (rc == 0) {
		if (fuse_session_mount(fs->se, fs->mnt_abs) < 0)
			rc = err_set(EIO, "cannot mount at %s (is it an existing, empty directory, and /dev/fuse usable?)",
				     fs->mnt_abs);
		else
			mounted = 1;
	}
	/* The session loop has not started: INIT is still unanswered. */
	const char *pte = getenv("THAW_FUSE_PASSTHROUGH");
	fs->pt.want = !o->rw && !o->no_passthrough && !(pte && !strcmp(pte, "0"));
	fs->pt.dio_want = !o->rw && o->direct_io;
	if (rc == 0 && (fs->pt.want || fs->pt.dio_want) && pt_install(fs) < 0) {
		log_warn("%s; complete files are served by this process, through the page cache", err_msg());
		fs->pt.want = fs->pt.dio_want = 0;
		rc = 0;
	}
	if (rc == 0 && fs->pt.want && promoter_start(fs, &fs->pr) < 0) {
		log_warn("%s; files read through the page cache stay in cached mode", err_msg());
		fs->pr = NULL;
	}
	if (rc == 0 && fs->o.kernel_readahead_kb)
		raise_kernel_readahead(fs->mnt_abs, fs->o.kernel_readahead_kb);
	if (rc == 0 && pthread_create(&fs->ticker, NULL, ticker_main, fs) == 0)
		fs->ticker_running = 1;
	if (rc == 0 && o->hydrate) {
		rc = hydrator_start(fs, &fs->hy);
		if (rc == 0)
			rc = hydrator_add(fs->hy, fs->tree.root);
		if (rc == 0) {
			fs->tree.on_new = hydrate_new;
			fs->tree.on_new_arg = fs;
		}
	}

	if (rc == 0) {
		log_info("mounted %s at %s (%s; cache %s; control %s)", o->url, fs->mnt_abs,
			 o->rw ? "read-write overlay" : "read-only", fs->cache_root, fs->sock_path);
		report(&ready_fd, "OK");
		struct fuse_loop_config *cfg = fuse_loop_cfg_create();
		if (!cfg) {
			rc = err_set(ENOMEM, "out of memory");
		} else {
			/* Readers block in these threads while chunks arrive, so allow
			 * many: one slow object must not starve reads of the others. */
			fuse_loop_cfg_set_max_threads(cfg, 64);
			fuse_loop_cfg_set_idle_threads(cfg, 8);
			pthread_sigmask(SIG_SETMASK, &old, NULL);
			int lr = fuse_session_loop_mt(fs->se, cfg);
			pthread_sigmask(SIG_BLOCK, &sigs, NULL);
			fuse_loop_cfg_destroy(cfg);
			if (lr < 0)
				rc = err_set(-lr, "FUSE session failed: %s", strerror(-lr));
			else
				log_info("unmounting %s%s", fs->mnt_abs, lr > 0 ? " (signal)" : "");
		}
	} else {
		char msg[ERR_MSG_MAX + 8];
		snprintf(msg, sizeof msg, "ERR %s", err_msg());
		report(&ready_fd, msg);
	}
	char keep[ERR_MSG_MAX];
	err_copy(keep, sizeof keep);

	/* The mount is gone (or never was): stop answering for it first, so a
	 * new mount of the same mountpoint can take the socket at once. */
	ctl_server_stop(fs->ctl);
	fs->ctl = NULL;
	promoter_stop(fs->pr); /* it tells the session to drop pages */
	fs->pr = NULL;
	if (fs->se) {
		fuse_remove_signal_handlers(fs->se);
		if (mounted)
			fuse_session_unmount(fs->se);
	}
	/* The prober tells the session of names gone: stopped before the
	 * session goes, and after the unmount, which ends any wait of a
	 * notification for a directory's lock held by a request now unanswered. */
	prober_stop(fs->prober);
	fs->prober = NULL;
	if (fs->se)
		fuse_session_destroy(fs->se);
	fuse_opt_free_args(&args);
	hydrator_stop(fs->hy);
	if (fs->ticker_running) {
		pthread_mutex_lock(&fs->tick_mu);
		fs->stopping = 1;
		pthread_cond_broadcast(&fs->tick_cv);
		pthread_mutex_unlock(&fs->tick_mu);
		pthread_join(fs->ticker, NULL);
	}
	if (tree_ok) {
		file_close_all(fs);
		tree_destroy(&fs->tree);
	}
	if (fs->s)
		store_close(fs->s);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	free(fs);
	if (rc < 0)
		err_set(-rc, "%s", keep);
	return rc;
}
