/* cmd_demo.c - `thaw demo`: the main job on the embedded default.
 *
 * Everything happens in a temporary directory with a file:// store, no server:
 * make a memory image (random pages, zero runs, repeated pages), push it, then
 * resume it three ways under the test VMM (tests/tools/fcvm, a real KVM vCPU
 * when /dev/kvm is there, reading every page and checking a checksum):
 *   1. lazily, through `thaw uffd-serve` (post-copy: faults + background push),
 *   2. stop-and-copy: `thaw pull` the whole image, then start (Tdown = Vm/R),
 *   3. lazily again, prefetching the working set recorded by run 1.
 * and print what each cost.  The programs run as child processes exactly as a
 * user would run them; the demo only times them and reads their JSON. */
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../common/progress.h"
#include "../common/timeutil.h"
#include "cli.h"

static char self[PATH_MAX], fcvm[PATH_MAX], dir[PATH_MAX];

/* Run argv with stdout to out_path (NULL: inherit) and stderr to err_path; wait
 * at most timeout_s.  Returns the exit status, or -1 (and kills it) on timeout. */
static int run(char *const argv[], const char *out_path, const char *err_path, int timeout_s, pid_t *bg)
{
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		if (out_path) {
			int fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
			if (fd >= 0)
				dup2(fd, 1);
		}
		if (err_path) {
			int fd = open(err_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
			if (fd >= 0)
				dup2(fd, 2);
		}
		execv(argv[0], argv);
		fprintf(stderr, "thaw demo: cannot run %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	if (bg) {
		*bg = pid;
		return 0;
	}
	uint64_t until = now_ns() + (uint64_t)timeout_s * 1000000000ull;
	for (;;) {
		int st;
		pid_t r = waitpid(pid, &st, WNOHANG);
		if (r == pid)
			return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
		if (now_ns() > until) {
			kill(pid, SIGKILL);
			waitpid(pid, &st, 0);
			return -1;
		}
		usleep(2000);
	}
}

static int wait_pid(pid_t pid, int timeout_s)
{
	uint64_t until = now_ns() + (uint64_t)timeout_s * 1000000000ull;
	int st;
	while (waitpid(pid, &st, WNOHANG) != pid) {
		if (now_ns() > until) {
			kill(pid, SIGTERM);
			usleep(200000);
			kill(pid, SIGKILL);
			waitpid(pid, &st, 0);
			return -1;
		}
		usleep(5000);
	}
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static char *slurp(const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return NULL;
	char *buf = malloc(1 << 20);
	size_t n = buf ? fread(buf, 1, (1 << 20) - 1, f) : 0;
	fclose(f);
	if (buf)
		buf[n] = 0;
	return buf;
}

/* The number after "k2": following the first "k1": (k1 may be NULL); NAN if absent. */
static double jnum(const char *js, const char *k1, const char *k2)
{
	char pat[128];
	if (!js)
		return 0.0 / 0.0;
	const char *p = js;
	if (k1) {
		snprintf(pat, sizeof pat, "\"%s\":", k1);
		p = strstr(p, pat);
		if (!p)
			return 0.0 / 0.0;
	}
	snprintf(pat, sizeof pat, "\"%s\":", k2);
	p = strstr(p, pat);
	if (!p)
		return 0.0 / 0.0;
	return strtod(p + strlen(pat), NULL);
}

static void path(char *out, const char *name) { snprintf(out, PATH_MAX, "%s/%s", dir, name); }

struct lazy_run {
	double first_insn_ms, guest_s, complete_ms, p50_us, p99_us;
	double faults, f_store, f_mem, f_zero, prefetched;
	int ok;
};

/* One lazy resume: start uffd-serve, run the VMM against it, read both reports. */
static int lazy_resume(const char *url, int n, int prefetch, int kvm, struct lazy_run *r)
{
	char sock[PATH_MAX], ready[PATH_MAX], metrics[PATH_MAX], ws[PATH_MAX + 8], fcout[PATH_MAX], log[PATH_MAX],
		check[PATH_MAX];
	char name[64];
	snprintf(name, sizeof name, "uffd%d.sock", n);
	path(sock, name);
	snprintf(name, sizeof name, "ready%d", n);
	path(ready, name);
	snprintf(name, sizeof name, "metrics%d.json", n);
	path(metrics, name);
	snprintf(name, sizeof name, "vmm%d.json", n);
	path(fcout, name);
	path(log, "demo.log");
	path(check, "vm.mem");
	snprintf(ws, sizeof ws, "%s.ws", url);
	char *sargv[18];
	int k = 0;
	sargv[k++] = self;
	sargv[k++] = "uffd-serve";
	sargv[k++] = "--socket";
	sargv[k++] = sock;
	sargv[k++] = "--mem";
	sargv[k++] = (char *)url;
	sargv[k++] = prefetch ? "--prefetch-from" : "--record";
	sargv[k++] = ws;
	if (prefetch)
		sargv[k++] = "--prefetch-wait"; /* REAP: the set is in before a fault is answered */
	sargv[k++] = "--metrics";
	sargv[k++] = metrics;
	sargv[k++] = "--exit-when-done";
	sargv[k++] = "--ready-file";
	sargv[k++] = ready;
	sargv[k] = NULL;
	pid_t srv;
	run(sargv, NULL, log, 0, &srv);
	uint64_t until = now_ns() + 10000000000ull;
	struct stat st;
	while (stat(ready, &st) < 0) {
		if (now_ns() > until || waitpid(srv, NULL, WNOHANG) == srv) {
			kill(srv, SIGKILL);
			waitpid(srv, NULL, 0);
			return err_set(EIO, "uffd-serve did not start (see %s)", log);
		}
		usleep(2000);
	}
	char *vargv[] = { fcvm, "--socket", sock, kvm ? "--kvm" : "--touch", kvm ? "--check" : "random",
			  kvm ? check : "--check", kvm ? "--quiet" : check, kvm ? NULL : "--quiet", NULL };
	int rc = run(vargv, fcout, log, 120, NULL);
	int src = wait_pid(srv, 60);
	char *vj = slurp(fcout), *mj = slurp(metrics);
	if (rc != 0 || src != 0 || !vj || !mj) {
		free(vj);
		free(mj);
		return err_set(EIO, "lazy resume %d failed (VMM exit %d, server exit %d; see %s)", n, rc, src, log);
	}
	r->first_insn_ms = jnum(vj, NULL, kvm ? "launch_to_first_insn_us" : "launch_to_first_touch_us") / 1e3;
	r->guest_s = jnum(vj, NULL, "launch_to_end_s");
	r->complete_ms = jnum(mj, "connections", "complete_ms");
	r->faults = jnum(mj, "faults", "total");
	r->f_store = jnum(mj, "faults", "store");
	r->f_mem = jnum(mj, "faults", "memory");
	r->f_zero = jnum(mj, "faults", "zero");
	r->p50_us = jnum(mj, "latency", "p50_us");
	r->p99_us = jnum(mj, "latency", "p99_us");
	r->prefetched = jnum(mj, "prefetch", "chunks");
	r->ok = 1;
	free(vj);
	free(mj);
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: thaw demo [--size N] [--keep] [--no-kvm]\n\n"
		   "Resume a memory image three ways on a file:// store in a temporary directory:\n"
		   "lazily through userfaultfd (thaw uffd-serve), by stop-and-copy (thaw pull, then\n"
		   "start), and lazily with the working set recorded by the first run loaded before the first fault\n"
		   "is answered (REAP-style, --prefetch-wait).\n"
		   "The workload is a KVM guest reading every page (a user-space toucher with\n"
		   "--no-kvm or without /dev/kvm); every byte is checked.\n\n"
		   "  --size N   memory image size (default 256M)\n"
		   "  --keep     keep the temporary directory (logs, metrics JSON)\n");
}

int cmd_demo(int argc, char **argv)
{
	uint64_t size = 256ull << 20;
	int keep = 0, kvm = access("/dev/kvm", R_OK | W_OK) == 0;
	static const struct option opts[] = { { "size", 1, 0, 's' }, { "keep", 0, 0, 'k' }, { "no-kvm", 0, 0, 'n' },
					      { "help", 0, 0, 'h' }, { 0, 0, 0, 0 } };
	int c;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			if (cli_parse_size(optarg, &size) < 0 || size < (1 << 20) || size % 4096)
				return fprintf(stderr, "thaw demo: --size must be at least 1M, a multiple of 4K\n"), 2;
			break;
		case 'k': keep = 1; break;
		case 'n': kvm = 0; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
	if (n < 0)
		return fprintf(stderr, "thaw demo: cannot find my own binary\n"), 1;
	self[n] = 0;
	snprintf(fcvm, sizeof fcvm, "%.*s/tools/fcvm", (int)(strrchr(self, '/') - self), self);
	if (access(fcvm, X_OK) < 0)
		return fprintf(stderr, "thaw demo: the test VMM %s is missing (run 'make')\n", fcvm), 1;
	snprintf(dir, sizeof dir, "/tmp/thaw-demo.XXXXXX");
	if (!mkdtemp(dir))
		return fprintf(stderr, "thaw demo: mkdtemp: %s\n", strerror(errno)), 1;
	char img[PATH_MAX], url[PATH_MAX + 16], pulled[PATH_MAX], log[PATH_MAX], sz[32], buf[64];
	path(img, "vm.mem");
	path(pulled, "pulled.mem");
	path(log, "demo.log");
	snprintf(url, sizeof url, "file://%s/store/vm.mem", dir);
	snprintf(sz, sizeof sz, "%llu", (unsigned long long)size);
	fmt_bytes((double)size, buf, sizeof buf);
	printf("thaw demo: a %s memory image on the embedded file:// store in %s\n", buf, dir);
	printf("workload: %s reading every page of guest memory, every byte checked\n\n",
	       kvm ? "a KVM vCPU (faults come from the kernel's KVM, not user space)" : "two threads touching pages at random");
	fflush(stdout);

	int rc = 1;
	char *mk[] = { fcvm, "--make-image", img, "--size", sz, NULL };
	char *push[] = { self, "push", img, url, NULL };
	if (run(mk, "/dev/null", log, 120, NULL) != 0 || run(push, NULL, log, 300, NULL) != 0) {
		fprintf(stderr, "thaw demo: making or pushing the image failed (see %s)\n", log);
		goto out;
	}

	struct lazy_run lazy = { 0 }, pre = { 0 };
	printf("\n[1/3] lazy resume through userfaultfd ...\n");
	fflush(stdout);
	if (lazy_resume(url, 1, 0, kvm, &lazy) < 0)
		goto fail;

	printf("[2/3] stop-and-copy: thaw pull, then start ...\n");
	fflush(stdout);
	char *pull[] = { self, "pull", url, pulled, NULL };
	uint64_t t0 = now_ns();
	if (run(pull, "/dev/null", log, 300, NULL) != 0) {
		fprintf(stderr, "thaw demo: pull failed (see %s)\n", log);
		goto out;
	}
	double pull_s = (double)(now_ns() - t0) / 1e9;
	char sc_out[PATH_MAX];
	path(sc_out, "vmm-stop-and-copy.json");
	char *sc_argv[] = { fcvm, "--no-uffd", kvm ? "--kvm" : "--touch", kvm ? "--check" : "random",
			    kvm ? pulled : "--check", kvm ? "--quiet" : pulled, kvm ? NULL : "--quiet", NULL };
	if (run(sc_argv, sc_out, log, 120, NULL) != 0) {
		fprintf(stderr, "thaw demo: stop-and-copy start failed (see %s)\n", log);
		goto out;
	}
	char *sj = slurp(sc_out);
	const char *first_key = kvm ? "launch_to_first_insn_us" : "launch_to_first_touch_us";
	double sc_first_ms = pull_s * 1e3 + jnum(sj, NULL, first_key) / 1e3;
	double sc_end_s = pull_s + jnum(sj, NULL, "launch_to_end_s");
	free(sj);

	printf("[3/3] lazy resume again, prefetching the working set recorded by [1] ...\n\n");
	fflush(stdout);
	if (lazy_resume(url, 3, 1, kvm, &pre) < 0)
		goto fail;

	double R = (double)size / pull_s;
	char rate[32];
	fmt_bytes(R, rate, sizeof rate);
	printf("%-34s %16s %16s %16s\n", "", "lazy (thaw)", "stop-and-copy", "lazy+prefetch");
	printf("%-34s %13.1f ms %13.1f ms %13.1f ms\n",
	       kvm ? "launch -> first guest instruction" : "launch -> first page touched", lazy.first_insn_ms, sc_first_ms,
	       pre.first_insn_ms);
	printf("%-34s %14.2f s %14.2f s %14.2f s\n", "launch -> workload done", lazy.guest_s, sc_end_s, pre.guest_s);
	printf("%-34s %14.2f s %14.2f s %14.2f s\n", "whole image local", lazy.complete_ms / 1e3, pull_s,
	       pre.complete_ms / 1e3);
	printf("%-34s %16.0f %16s %16.0f\n", "faults", lazy.faults, "-", pre.faults);
	printf("%-34s %16.0f %16s %16.0f\n", "  waited for the store", lazy.f_store, "-", pre.f_store);
	printf("%-34s %16.0f %16s %16.0f\n", "  served from memory", lazy.f_mem, "-", pre.f_mem);
	printf("%-34s %16.0f %16s %16.0f\n", "  zero pages", lazy.f_zero, "-", pre.f_zero);
	printf("%-34s %13.1f us %16s %13.1f us\n", "fault latency p50", lazy.p50_us, "-", pre.p50_us);
	printf("%-34s %13.1f us %16s %13.1f us\n", "fault latency p99", lazy.p99_us, "-", pre.p99_us);
	printf("%-34s %16s %16s %16.0f\n", "working-set chunks prefetched", "-", "-", pre.prefetched);
	printf("\nstop-and-copy: Tdown = Tmig = Vm/R = %s / %s/s = %.2f s (R measured by the pull above)\n", buf, rate,
	       pull_s);
	if (lazy.first_insn_ms > 0)
		printf("post-copy: the guest ran after %.1f ms, %.0fx sooner; the rest arrived in the background\n",
		       lazy.first_insn_ms, sc_first_ms / lazy.first_insn_ms);
	printf("\n(metrics JSON, VMM reports and logs: %s%s)\n", dir, keep ? "" : ", removed now; --keep keeps them");
	rc = 0;
	goto out;
fail:
	fprintf(stderr, "thaw demo: %s\n", err_msg());
out:
	if (!keep && rc == 0) {
		char *rm[] = { "/bin/rm", "-rf", dir, NULL };
		run(rm, NULL, NULL, 60, NULL);
	} else if (rc != 0) {
		fprintf(stderr, "thaw demo: kept %s for inspection\n", dir);
	}
	return rc;
}
