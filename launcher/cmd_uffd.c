/* cmd_uffd.c - `thaw uffd-serve`: the command line around uffd/server.c.
 * Parses options, blocks the signals the server takes through a signalfd
 * (before any thread exists, so every thread inherits the mask), runs the
 * server, and turns its errors into one line on stderr. */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/err.h"
#include "../common/log.h"
#include "../uffd/server.h"
#include "cli.h"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: thaw uffd-serve --socket PATH --mem URL [options]\n"
		"\n"
		"Serve a VM's memory on demand: listen on a Unix socket for Firecracker's\n"
		"snapshot-restore UFFD handshake (a JSON list of guest regions plus the\n"
		"userfaultfd), answer page faults from the memory image at URL (a thaw image\n"
		"or a plain object, file:// or s3://), and install the rest in the background\n"
		"until the whole image is in place; then release the userfaultfd.\n"
		"Several clients (VMs) may connect at once; they share one copy of the image.\n"
		"\n"
		"  --socket PATH        Unix socket to listen on (created mode 0600)\n"
		"  --mem URL            the memory image\n"
		"  --record URL         store the working set (chunks in first-touch order) of\n"
		"                       the first client here when its resume is done\n"
		"  --prefetch           fetch and install a recorded working set first; read\n"
		"                       from --prefetch-from, else --record, else URL.ws\n"
		"  --prefetch-from URL  where --prefetch reads the working set\n"
		"  --prefetch-wait      REAP-style: load the whole working set before serving the\n"
		"                       first fault (the guest runs, but its first fault waits\n"
		"                       for the set; later faults inside it are gone)\n"
		"  --push, --no-push    install everything in the background (default: push)\n"
		"  --threads N          fetches in flight (default 16)\n"
		"  --bg-threads N       of which the background transfer may use (default 4)\n"
		"  --push-nice N        nice value of the pusher threads, 0-19 (default 0)\n"
		"  --wait MODE          how the fault thread waits: block, spin, or adaptive\n"
		"                       (spin for --spin-us after each fault, then sleep; default)\n"
		"  --spin-us N          adaptive spin window in microseconds (default 200)\n"
		"  --fault-timeout MS   poison a fault whose chunk has not arrived after MS\n"
		"                       (default 90000; 0 = never)\n"
		"  --handshake-timeout MS  drop a client that has not sent a complete\n"
		"                       handshake after MS (default 5000)\n"
		"  --metrics FILE       write metrics JSON here at exit and on SIGUSR1\n"
		"                       (without it SIGUSR1 prints them on stderr)\n"
		"  --ready-file FILE    write the socket path to FILE once listening\n"
		"  --exit-when-done     exit once the first client has gone (exited), status 0\n"
		"                       if its transfer had completed (always with --no-push),\n"
		"                       1 if it left with pages never installed\n"
		"  -h, --help           this text\n"
		"\n"
		"Logs go to stderr (THAW_LOG=debug|info|warn|error; default info).\n"
		"SIGINT/SIGTERM stop the server cleanly (metrics are written).\n");
}

static int parse_uint(const char *opt, const char *s, uint64_t max, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *end || *s == '-' || v > max) {
		fprintf(stderr, "thaw uffd-serve: %s wants a whole number up to %llu, not '%s'\n", opt,
			(unsigned long long)max, s);
		return -1;
	}
	*out = v;
	return 0;
}

int cmd_uffd_serve(int argc, char **argv)
{
	enum { O_SOCKET = 256, O_MEM, O_RECORD, O_PREFETCH, O_PREFETCH_FROM, O_PREFETCH_WAIT, O_PUSH, O_NOPUSH, O_THREADS, O_WAIT,
	       O_SPIN, O_FTIMEOUT, O_BGTHREADS, O_NICE, O_HTIMEOUT, O_METRICS, O_READY, O_EXIT };
	static const struct option opts[] = {
		{ "socket", 1, 0, O_SOCKET },         { "mem", 1, 0, O_MEM },
		{ "record", 1, 0, O_RECORD },         { "prefetch", 0, 0, O_PREFETCH },
		{ "prefetch-from", 1, 0, O_PREFETCH_FROM }, { "prefetch-wait", 0, 0, O_PREFETCH_WAIT },
		{ "push", 0, 0, O_PUSH },             { "no-push", 0, 0, O_NOPUSH },
		{ "threads", 1, 0, O_THREADS },       { "bg-threads", 1, 0, O_BGTHREADS },
		{ "wait", 1, 0, O_WAIT },             { "push-nice", 1, 0, O_NICE },
		{ "handshake-timeout", 1, 0, O_HTIMEOUT },
		{ "spin-us", 1, 0, O_SPIN },          { "fault-timeout", 1, 0, O_FTIMEOUT },
		{ "metrics", 1, 0, O_METRICS },       { "ready-file", 1, 0, O_READY },
		{ "exit-when-done", 0, 0, O_EXIT },   { "help", 0, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	struct userver_config cfg;
	userver_config_default(&cfg);
	uint64_t v;
	int c;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case O_SOCKET: cfg.socket_path = optarg; break;
		case O_MEM: cfg.mem_url = optarg; break;
		case O_RECORD: cfg.record_url = optarg; break;
		case O_PREFETCH: cfg.prefetch = 1; break;
		case O_PREFETCH_FROM: cfg.prefetch = 1; cfg.prefetch_url = optarg; break;
		case O_PREFETCH_WAIT: cfg.prefetch = 1; cfg.prefetch_wait = 1; break;
		case O_PUSH: cfg.push = 1; break;
		case O_NOPUSH: cfg.push = 0; break;
		case O_THREADS:
			if (parse_uint("--threads", optarg, 256, &v) < 0 || !v)
				return v ? 2 : (fprintf(stderr, "thaw uffd-serve: --threads must be at least 1\n"), 2);
			cfg.jobs = (int)v;
			break;
		case O_BGTHREADS:
			if (parse_uint("--bg-threads", optarg, 256, &v) < 0 || !v)
				return v ? 2 : (fprintf(stderr, "thaw uffd-serve: --bg-threads must be at least 1\n"), 2);
			cfg.bg_jobs = (int)v;
			break;
		case O_NICE:
			if (parse_uint("--push-nice", optarg, 19, &v) < 0)
				return 2;
			cfg.push_nice = (int)v;
			break;
		case O_WAIT:
			if (!strcmp(optarg, "block"))
				cfg.wait = WAIT_BLOCK;
			else if (!strcmp(optarg, "spin"))
				cfg.wait = WAIT_SPIN;
			else if (!strcmp(optarg, "adaptive"))
				cfg.wait = WAIT_ADAPTIVE;
			else {
				fprintf(stderr, "thaw uffd-serve: --wait is block, spin or adaptive, not '%s'\n", optarg);
				return 2;
			}
			break;
		case O_SPIN:
			if (parse_uint("--spin-us", optarg, 1000000, &v) < 0)
				return 2;
			cfg.spin_us = (unsigned)v;
			break;
		case O_FTIMEOUT:
			if (parse_uint("--fault-timeout", optarg, 86400000, &v) < 0)
				return 2;
			cfg.fault_timeout_ms = v;
			break;
		case O_HTIMEOUT:
			if (parse_uint("--handshake-timeout", optarg, 3600000, &v) < 0 || !v)
				return v ? 2 : (fprintf(stderr, "thaw uffd-serve: --handshake-timeout must be at least 1\n"), 2);
			cfg.handshake_timeout_ms = (int)v;
			break;
		case O_METRICS: cfg.metrics_path = optarg; break;
		case O_READY: cfg.ready_file = optarg; break;
		case O_EXIT: cfg.exit_when_done = 1; break;
		case 'h': usage(stdout); return 0;
		default:
			fprintf(stderr, "thaw uffd-serve: unknown or incomplete option '%s' (try --help)\n",
				argv[optind - 1]);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "thaw uffd-serve: unexpected argument '%s' (try --help)\n", argv[optind]);
		return 2;
	}
	if (!cfg.socket_path || !cfg.mem_url) {
		fprintf(stderr, "thaw uffd-serve: --socket PATH and --mem URL are required (try --help)\n");
		return 2;
	}
	/* A daemon says what it is doing unless told otherwise. */
	log_init_from_env(LOG_INFO);

	/* Before any thread exists: the server takes these through a signalfd. */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);

	struct userver *srv;
	if (userver_open(&cfg, &srv) < 0)
		return cli_fail("uffd-serve");
	int rc = userver_run(srv);
	userver_close(srv);
	return rc;
}
