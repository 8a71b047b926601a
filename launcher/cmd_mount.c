/* cmd_mount.c - `thaw mount URL MOUNTPOINT` (serve a store location as a lazy
 * FUSE filesystem, fusefs/) and `thaw status MOUNTPOINT` (ask a running mount,
 * over its control socket, what it holds and how fast it is fetching).
 *
 * Unless --foreground, mount forks a daemon and waits on a pipe until the
 * daemon says the mount is up or why it is not, so a script can use the
 * mountpoint as soon as `thaw mount` returns 0. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../common/log.h"
#include "../fusefs/fusefs.h"
#include "cli.h"
#include "../common/fsutil.h"

/* fsu_mkdir_p with the message the user sees. */
static int mkdir_p_named(const char *path)
{
	int rc = fsu_mkdir_p(path, 0700);
	return rc < 0 ? err_set(-rc, "create %s: %s", path, strerror(-rc)) : 0;
}

#define READY_TIMEOUT_MS (300 * 1000) /* listing a big prefix can take a while */

static void mount_usage(FILE *f)
{
	fprintf(f,
		"usage: thaw mount URL MOUNTPOINT [--cache DIR] [--hydrate] [--rw] [--foreground]\n"
		"                  [--allow-other] [--jobs N] [--store-jobs N] [--hydrate-jobs N]\n"
		"                  [--hydrate-rate BYTES/s] [--readahead MAX] [--chunk-size N]\n"
		"                  [--kernel-readahead KB] [--no-passthrough] [--direct-io]\n"
		"                  [--list-ttl SECONDS] [--open-ahead N] [--debug]\n\n"
		"Serve the objects under URL (file:///dir/ or s3://bucket/prefix/) as files at\n"
		"MOUNTPOINT, fetched lazily: a read fetches only the chunks it needs (sequential\n"
		"reads open a readahead window that doubles up to --readahead), concurrent readers\n"
		"of a chunk share one fetch, and every fetched chunk is verified and kept in a\n"
		"persistent cache, so a remount (even after kill -9) fetches nothing twice.\n"
		"A thaw image shows as the file it was pushed from; other objects as they are,\n"
		"pinned to the version seen when first opened (a change under it reads as EIO).\n\n"
		"  --cache DIR        chunk cache (default $XDG_CACHE_HOME/thaw, else ~/.cache/thaw)\n"
		"  --hydrate          pull every file completely in the background; reads go first\n"
		"  --hydrate-jobs N   background fetches in flight (default 8)\n"
		"  --hydrate-rate R   cap background fetching at R bytes/s (e.g. 50M; default none)\n"
		"  --rw               allow writes to existing files, into a local copy-on-write layer\n"
		"                     under the cache (never uploaded; kept across remounts); without\n"
		"                     it the mount is read-only (EROFS)\n"
		"  --foreground       stay in the foreground, log to stderr\n"
		"  --allow-other      let other users see the mount (needs user_allow_other)\n"
		"  --jobs N           fetches in flight per file (default 16)\n"
		"  --store-jobs N     transfers in flight in the store (default 32)\n"
		"  --readahead MAX    readahead window cap (default 256M)\n"
		"  --chunk-size N     least fetch for plain objects (default 64K, doubled above 64 GiB\n"
		"                     so an object has at most 2^20; 16K suits random readers)\n"
		"  --store-timeout MS give up on one store request after MS (default 60000)\n"
		"  --kernel-readahead KB  the kernel's own readahead for this mount (default 1024;\n"
		"                     needs root, 0 leaves the kernel's 128)\n"
		"  --no-passthrough   keep serving files that are wholly cached through the daemon;\n"
		"                     by default (read-only mounts, root, Linux 6.9+) the kernel\n"
		"                     reads such a file straight from the cache (FUSE passthrough)\n"
		"  --list-ttl S       a directory is listed again, to show what changed in the store,\n"
		"                     when a name is looked up that it lacks or when it is read, at\n"
		"                     most every S seconds (default 30; 0 = never: a snapshot).\n"
		"                     Removed objects leave; a replaced one is a new file to new opens,\n"
		"                     while files already open keep their version (under --rw names\n"
		"                     only join: your writes are against the versions mounted)\n"
		"  --open-ahead N     when a directory is read, open its first N files in the\n"
		"                     background (one GET of each file's first 64 KiB, 8 at a time),\n"
		"                     so `ls -l` and `cp -r` do not wait for them one by one\n"
		"                     (default 4096; 0 = open a file only when it is looked up)\n"
		"  --direct-io        read files not wholly cached past FUSE's page cache: each byte\n"
		"                     is then held in memory once (as the cache's data file), not\n"
		"                     twice, and large reads stream faster; but every read(2) is a\n"
		"                     round trip to the daemon, so 4 KiB reads are ~3x slower.\n"
		"                     mmap still works (Linux 6.6+); ignored with --rw\n"
		"  --debug            trace every FUSE request (implies --foreground)\n\n"
		"Unmount with `fusermount3 -u MOUNTPOINT`, or SIGINT/SIGTERM to the daemon.\n"
		"`thaw status MOUNTPOINT` talks to the mount through a Unix socket (mode 0600) in\n"
		"$XDG_RUNTIME_DIR/thaw/ (else /tmp/thaw-UID/), named after the mountpoint; the\n"
		"daemon's log is next to it (mnt-*.log).  THAW_LOG=debug|info|warn sets its level.\n"
		"The first THAW_FUSE_PREOPEN files at the mount's root (default 8, 0 = none) are\n"
		"opened in the background at mount, so a first read does not wait for the probe GET.\n");
}

static int default_cache(char *out, size_t n)
{
	const char *x = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
	if (x && *x)
		snprintf(out, n, "%s/thaw", x);
	else if (home && *home)
		snprintf(out, n, "%s/.cache/thaw", home);
	else
		return err_set(EINVAL, "no --cache given and neither XDG_CACHE_HOME nor HOME is set");
	return 0;
}

/* Wait for the daemon's one line on fd; 0 if it said OK. */
static int wait_ready(int fd, pid_t pid, const char *log)
{
	char line[1024];
	size_t n = 0;
	struct pollfd p = { .fd = fd, .events = POLLIN };
	while (n < sizeof line - 1) {
		int pr = poll(&p, 1, READY_TIMEOUT_MS);
		if (pr < 0 && errno == EINTR)
			continue;
		if (pr == 0)
			return err_set(ETIMEDOUT, "the mount daemon (pid %d) did not report within %d s; see %s", (int)pid,
				       READY_TIMEOUT_MS / 1000, log);
		ssize_t r = read(fd, line + n, sizeof line - 1 - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		n += (size_t)r;
		if (memchr(line, '\n', n))
			break;
	}
	line[n] = 0;
	line[strcspn(line, "\n")] = 0;
	if (!strcmp(line, "OK"))
		return 0;
	if (!strncmp(line, "ERR ", 4))
		return err_set(EIO, "%s", line + 4);
	int st = 0;
	waitpid(pid, &st, 0);
	if (WIFSIGNALED(st))
		return err_set(EIO, "the mount daemon was killed by signal %d before the mount was ready; see %s",
			       WTERMSIG(st), log);
	return err_set(EIO, "the mount daemon exited (status %d) before the mount was ready; see %s",
		       WIFEXITED(st) ? WEXITSTATUS(st) : -1, log);
}

int cmd_mount(int argc, char **argv)
{
	struct fusefs_opts o;
	fusefs_opts_default(&o);
	int foreground = 0;
	char cache[4096] = "";
	static const struct option opts[] = {
		{ "cache", 1, 0, 'c' },       { "hydrate", 0, 0, 'H' },       { "rw", 0, 0, 'w' },
		{ "foreground", 0, 0, 'f' },  { "allow-other", 0, 0, 'A' },   { "jobs", 1, 0, 'j' },
		{ "store-jobs", 1, 0, 'S' },  { "hydrate-jobs", 1, 0, 'J' },  { "hydrate-rate", 1, 0, 'R' },
		{ "readahead", 1, 0, 'r' },   { "chunk-size", 1, 0, 'C' },    { "store-timeout", 1, 0, 'T' },
		{ "debug", 0, 0, 'd' },       { "help", 0, 0, 'h' },          { "kernel-readahead", 1, 0, 'K' },
		{ "no-passthrough", 0, 0, 'P' }, { "direct-io", 0, 0, 'D' },
		{ "list-ttl", 1, 0, 'L' },    { "open-ahead", 1, 0, 'O' },
		{ 0, 0, 0, 0 },
	};
	int c;
	uint64_t v;
	while ((c = getopt_long(argc, argv, "c:fh", opts, NULL)) != -1) {
		switch (c) {
		case 'c': snprintf(cache, sizeof cache, "%s", optarg); break;
		case 'H': o.hydrate = 1; break;
		case 'w': o.rw = 1; break;
		case 'P': o.no_passthrough = 1; break;
		case 'D': o.direct_io = 1; break;
		case 'f': foreground = 1; break;
		case 'A': o.allow_other = 1; break;
		case 'd': o.debug = foreground = 1; break;
		case 'j': case 'S': case 'J': case 'T':
			if (cli_parse_size(optarg, &v) < 0 || v < 1 || v > (c == 'T' ? 86400000 : 1024))
				return fprintf(stderr, "thaw mount: bad --%s '%s'\n",
					       c == 'j' ? "jobs" : c == 'S' ? "store-jobs" : c == 'J' ? "hydrate-jobs"
												: "store-timeout",
					       optarg), 2;
			if (c == 'j') o.jobs = (int)v;
			else if (c == 'S') o.store_jobs = (int)v;
			else if (c == 'J') o.hydrate_jobs = (int)v;
			else o.store_timeout_ms = v;
			break;
		case 'L':
			if (cli_parse_size(optarg, &v) < 0 || v > 86400 * 365)
				return fprintf(stderr, "thaw mount: bad --list-ttl '%s' (seconds, 0 = never)\n", optarg), 2;
			o.list_ttl_s = (unsigned)v;
			break;
		case 'O':
			if (cli_parse_size(optarg, &v) < 0 || v > 1u << 20)
				return fprintf(stderr, "thaw mount: bad --open-ahead '%s' (files, 0 = none)\n", optarg), 2;
			o.open_ahead = (unsigned)v;
			break;
		case 'K':
			if (cli_parse_size(optarg, &v) < 0 || v > 1048576)
				return fprintf(stderr, "thaw mount: bad --kernel-readahead '%s'\n", optarg), 2;
			o.kernel_readahead_kb = (unsigned)v;
			break;
		case 'R': case 'r': case 'C':
			if (cli_parse_size(optarg, &v) < 0)
				return cli_fail("mount"), 2;
			if (c == 'R') o.hydrate_rate = v;
			else if (c == 'r') o.readahead_max = v;
			else o.chunk_size = v;
			break;
		case 'h': mount_usage(stdout); return 0;
		default: mount_usage(stderr); return 2;
		}
	}
	if (argc - optind != 2) {
		mount_usage(stderr);
		return 2;
	}
	o.url = argv[optind];
	o.mountpoint = argv[optind + 1];
	if (o.chunk_size && (o.chunk_size & (o.chunk_size - 1) || o.chunk_size < 4096 || o.chunk_size > (64u << 20))) {
		fprintf(stderr, "thaw mount: --chunk-size must be a power of two from 4K to 64M\n");
		return 2;
	}
	struct stat st;
	if (stat(o.mountpoint, &st) < 0 || !S_ISDIR(st.st_mode)) {
		fprintf(stderr, "thaw mount: mountpoint %s: %s\n", o.mountpoint,
			S_ISDIR(st.st_mode) || errno != 0 ? strerror(errno) : "not a directory");
		return 1;
	}
	if (!cache[0] && default_cache(cache, sizeof cache) < 0)
		return cli_fail("mount");
	/* The daemon runs from /, so make every path absolute first. */
	char cache_abs[4096];
	if (mkdir_p_named(cache) < 0)
		return cli_fail("mount");
	if (!realpath(cache, cache_abs)) {
		fprintf(stderr, "thaw mount: cache directory %s: %s\n", cache, strerror(errno));
		return 1;
	}
	o.cache_dir = cache_abs;
	char sock[4300], logp[4300];
	if (fusefs_ctl_paths(o.mountpoint, sock, sizeof sock, logp, sizeof logp) < 0)
		return cli_fail("mount");
	char mnt_abs[4096];
	if (!realpath(o.mountpoint, mnt_abs)) {
		fprintf(stderr, "thaw mount: mountpoint %s: %s\n", o.mountpoint, strerror(errno));
		return 1;
	}
	o.mountpoint = mnt_abs;

	if (foreground) {
		log_init_from_env(LOG_INFO);
		if (fusefs_run(&o, -1) < 0)
			return cli_fail("mount");
		return 0;
	}

	char dir[4300];
	snprintf(dir, sizeof dir, "%s", logp);
	*strrchr(dir, '/') = 0;
	if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
		fprintf(stderr, "thaw mount: create %s: %s\n", dir, strerror(errno));
		return 1;
	}
	int logfd = open(logp, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (logfd < 0) {
		fprintf(stderr, "thaw mount: open log %s: %s\n", logp, strerror(errno));
		return 1;
	}
	int p[2];
	if (pipe2(p, O_CLOEXEC) < 0) {
		fprintf(stderr, "thaw mount: pipe: %s\n", strerror(errno));
		return 1;
	}
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		fprintf(stderr, "thaw mount: fork: %s\n", strerror(errno));
		return 1;
	}
	if (pid == 0) {
		close(p[0]);
		setsid();
		if (chdir("/") < 0)
			_exit(1);
		int null = open("/dev/null", O_RDWR);
		if (null >= 0) {
			dup2(null, 0);
			dup2(null, 1);
			close(null);
		}
		dup2(logfd, 2);
		close(logfd);
		log_init_from_env(LOG_INFO);
		time_t t = time(NULL);
		fprintf(stderr, "---- thaw mount %s %s (pid %d) %s", argv[optind], mnt_abs, (int)getpid(), ctime(&t));
		int rc = fusefs_run(&o, p[1]);
		if (rc < 0)
			fprintf(stderr, "thaw mount: %s\n", err_msg());
		exit(rc < 0 ? 1 : 0); /* not _exit: stdio was flushed before fork, and the sanitizers report at exit */
	}
	close(p[1]);
	close(logfd);
	int rc = wait_ready(p[0], pid, logp);
	close(p[0]);
	if (rc < 0)
		return cli_fail("mount");
	fprintf(stderr, "thaw: mounted %s at %s (daemon pid %d, log %s)\n", argv[optind], mnt_abs, (int)pid, logp);
	return 0;
}

static int term_width(void)
{
	struct winsize ws;
	if (ioctl(1, TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 40)
		return ws.ws_col;
	return 120;
}

static void status_usage(FILE *f)
{
	fprintf(f,
		"usage: thaw status MOUNTPOINT [--json] [--once] [--hydrate [PATH...]]\n\n"
		"Per file the mount has opened: size, percent present locally, bytes fetched,\n"
		"current fetch rate and ETA to complete, plus the store's counters and what the\n"
		"hydrator is doing.  On a terminal the table refreshes until hydration is idle.\n\n"
		"  --json       one JSON object, for scripts\n"
		"  --once       print once even on a terminal\n"
		"  --hydrate    queue PATHs (relative to the mount root; none = everything) for\n"
		"               background hydration first\n\n"
		"The mount answers on a Unix socket in $XDG_RUNTIME_DIR/thaw/ or /tmp/thaw-UID/\n"
		"(see thaw mount --help).\n");
}

int cmd_status(int argc, char **argv)
{
	int json = 0, once = 0, hydrate = 0;
	static const struct option opts[] = { { "json", 0, 0, 'J' }, { "once", 0, 0, '1' }, { "hydrate", 0, 0, 'H' },
					      { "help", 0, 0, 'h' }, { 0, 0, 0, 0 } };
	int c;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'J': json = 1; break;
		case '1': once = 1; break;
		case 'H': hydrate = 1; break;
		case 'h': status_usage(stdout); return 0;
		default: status_usage(stderr); return 2;
		}
	}
	if (argc - optind < 1 || (!hydrate && argc - optind != 1)) {
		status_usage(stderr);
		return 2;
	}
	const char *mp = argv[optind];
	char *resp;
	int npaths = argc - optind - 1;
	for (int i = 0; hydrate && i < (npaths ? npaths : 1); i++) {
		char req[4200];
		const char *path = npaths ? argv[optind + 1 + i] : "";
		while (*path == '/')
			path++;
		snprintf(req, sizeof req, "hydrate %s", path);
		if (fusefs_ctl_request(mp, req, 10000, &resp) < 0)
			return cli_fail("status");
		if (strncmp(resp, "OK", 2)) {
			fprintf(stderr, "thaw status: %s", strncmp(resp, "ERR ", 4) ? resp : resp + 4);
			free(resp);
			return 1;
		}
		free(resp);
	}
	if (json) {
		if (fusefs_ctl_request(mp, "status json", 10000, &resp) < 0)
			return cli_fail("status");
		fputs(resp, stdout);
		free(resp);
		return 0;
	}
	int live = !once && isatty(1), lines = 0;
	for (;;) {
		char req[64];
		snprintf(req, sizeof req, "status text %d", term_width());
		if (fusefs_ctl_request(mp, req, 10000, &resp) < 0)
			return cli_fail("status");
		int idle = !strncmp(resp, "# idle 1", 8);
		char *body = strchr(resp, '\n');
		body = body ? body + 1 : resp;
		if (live && lines)
			printf("\033[%dA\033[J", lines);
		fputs(body, stdout);
		fflush(stdout);
		lines = 0;
		for (char *s = body; *s; s++)
			lines += *s == '\n';
		free(resp);
		if (!live || idle)
			return 0;
		usleep(500 * 1000);
	}
}

/* `thaw hydrate MOUNTPOINT [PATH...]`: `thaw status --hydrate` under its own name. */
int cmd_hydrate(int argc, char **argv)
{
	if (cli_wants_help(argc, argv)) {
		printf("usage: thaw hydrate MOUNTPOINT [PATH...] [--json] [--once]\n\n"
		       "Pull PATHs (files or directories, relative to the mount root; none = all)\n"
		       "completely into the mount's cache in the background; reads still go first.\n"
		       "Then shows `thaw status` (live on a terminal, until hydration is idle).\n");
		return 0;
	}
	char **v = calloc((size_t)argc + 2, sizeof *v);
	if (!v)
		return fprintf(stderr, "thaw hydrate: out of memory\n"), 1;
	v[0] = "status";
	v[1] = "--hydrate";
	for (int i = 1; i < argc; i++)
		v[i + 1] = argv[i];
	optind = 1;
	int rc = cmd_status(argc + 1, v);
	free(v);
	return rc;
}
