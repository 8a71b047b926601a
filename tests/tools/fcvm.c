/* fcvm.c - a test VMM that plays Firecracker's side of the userfaultfd
 * snapshot-restore handshake, byte for byte, and then makes guest memory fault
 * the way a resumed microVM would.
 *
 * It owns four things:
 *  - the handshake, as each Firecracker line sends it: regions mmapped
 *    MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE (plus MAP_HUGETLB|MAP_HUGE_2MB),
 *    a userfaultfd opened the way the userfaultfd crate opens it, UFFDIO_API
 *    asking for EVENT_REMOVE only, every region registered MISSING, then one
 *    sendmsg carrying serde_json's compact array and the fd in SCM_RIGHTS;
 *  - the workloads the uffd tests and benchmarks drive: user-space touches with
 *    per-page latency, a KVM guest whose faults come from the kernel (GUP), a
 *    balloon inflate (MADV_DONTNEED -> UFFD_EVENT_REMOVE), an abrupt exit, and
 *    pages the server poisoned (SIGBUS); and the same workloads with no server
 *    at all (--no-uffd), the local baseline;
 *  - the check that guest memory equals the image, byte for byte;
 *  - --make-image, the deterministic memory images those tests serve.
 *
 * Anything a broken server could make us wait on runs under one watchdog
 * (--timeout): it names what we were waiting for and exits 124, so a test never
 * hangs.  Everything lives in this one file because every .c file in tests/tools
 * becomes a binary and the Makefile does not track a tool's headers.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/kvm.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "../../common/err.h"
#include "../../common/json.h"
#include "../../common/timeutil.h"

#ifndef MAP_HUGE_2MB
#define MAP_HUGE_2MB (21 << MAP_HUGE_SHIFT)
#endif

#define PAGE_4K 4096ull
#define HUGE_2M (2ull << 20)
#define MAX_REGIONS 64
#define MAX_THREADS 64
#define EXIT_TIMEOUT 124

/* ---------------------------------------------------------------- options */

enum uffd_src { UFFD_AUTO, UFFD_SYSCALL, UFFD_DEV };
enum order { ORDER_SEQ, ORDER_RANDOM };

static struct {
	const char *socket;
	uint64_t mem_size;
	int regions;
	uint64_t offset_gap;
	int hugepages;
	int fc_minor; /* Firecracker 1.x */
	enum uffd_src uffd_src;
	const char *raw_json;
	int no_fd;
	double connect_retry;
	double timeout;

	int touch; /* a touch workload was asked for (explicitly or implied) */
	enum order order;
	int threads;
	uint64_t stride;
	uint64_t seed;
	const char *check;
	int kvm;
	uint64_t span;
	int balloon;
	uint64_t balloon_off, balloon_len;
	uint64_t disconnect_after; /* 0: off */
	int expect_sigbus;
	int expect_close;
	double hold;
	int quiet;
	int no_uffd;

	const char *make_image;
	uint64_t image_size;
} opt = {
	.regions = 1,
	.fc_minor = 12,
	.uffd_src = UFFD_AUTO,
	.connect_retry = 5,
	.timeout = 60,
	.threads = 1,
	.seed = 1,
};

/* ------------------------------------------------------------ guest state */

struct region {
	uint8_t *base;
	uint64_t size;
	uint64_t offset; /* in the memory image */
	uint64_t goff;	 /* in guest memory: regions laid end to end */
};

static struct region regs[MAX_REGIONS];
static int nregs;
static uint64_t unit;  /* page size: 4 KiB, or 2 MiB with --hugepages */
static uint64_t total; /* guest memory bytes */
static int uffd = -1, sock = -1;
static uint64_t uffd_features, uffd_range_ioctls;
static const char *uffd_how;
static int img_fd = -1;
static uint64_t img_size;
static uint64_t t_begin, t_connect, t_sent;
static char *handshake_json;
static uint64_t preload_ns;

static void die(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void die(int code, const char *fmt, ...)
{
	va_list ap;
	fputs("fcvm: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(code);
}

static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void note(const char *fmt, ...)
{
	va_list ap;
	if (opt.quiet)
		return;
	fputs("fcvm: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static struct region *region_of(uint64_t goff)
{
	int lo = 0, hi = nregs - 1;
	while (lo < hi) {
		int mid = (lo + hi + 1) / 2;
		if (regs[mid].goff <= goff)
			lo = mid;
		else
			hi = mid - 1;
	}
	return &regs[lo];
}

static uint8_t *guest_ptr(uint64_t goff)
{
	struct region *r = region_of(goff);
	return r->base + (goff - r->goff);
}

static uint64_t image_off(uint64_t goff)
{
	struct region *r = region_of(goff);
	return r->offset + (goff - r->goff);
}

/* --------------------------------------------------------------- helpers */

/* splitmix64: tiny, fast, and the same everywhere, so images and random
 * orders are reproducible from a seed. */
static uint64_t sm64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static int parse_u64(const char *s, uint64_t *out, int sizes)
{
	char *end;
	errno = 0;
	if (!s || !*s || *s == '-')
		return -1;
	unsigned long long v = strtoull(s, &end, 0);
	if (errno)
		return -1;
	uint64_t mul = 1;
	if (sizes && *end) {
		switch (*end) {
		case 'k': case 'K': mul = 1ull << 10; break;
		case 'm': case 'M': mul = 1ull << 20; break;
		case 'g': case 'G': mul = 1ull << 30; break;
		case 't': case 'T': mul = 1ull << 40; break;
		default: return -1;
		}
		end++;
		if (*end == 'i')
			end++;
		if (*end == 'B' || *end == 'b')
			end++;
	}
	if (*end)
		return -1;
	if (v && mul > UINT64_MAX / v)
		return -1;
	*out = v * mul;
	return 0;
}

static uint64_t need_size(const char *flag, const char *val)
{
	uint64_t v;
	if (parse_u64(val, &v, 1) < 0)
		die(2, "%s wants a byte count like 4096, 64K, 256M or 1G, not '%s'", flag, val ? val : "");
	return v;
}

static uint64_t need_num(const char *flag, const char *val)
{
	uint64_t v;
	if (parse_u64(val, &v, 0) < 0)
		die(2, "%s wants a number, not '%s'", flag, val ? val : "");
	return v;
}

static double need_secs(const char *flag, const char *val)
{
	char *end;
	double v = val ? strtod(val, &end) : -1;
	if (!val || end == val || *end || v < 0)
		die(2, "%s wants seconds, not '%s'", flag, val ? val : "");
	return v;
}

static double us(uint64_t ns) { return (double)ns / 1e3; }

/* -------------------------------------------------------------- watchdog */

/* What the process is waiting on, for the timeout message.  Touch workers
 * publish the item they are on; the watchdog reads it without locks. */
enum phase { PH_SETUP, PH_CONNECT, PH_SEND, PH_TOUCH, PH_CHECK, PH_MADVISE, PH_KVM, PH_CLOSE, PH_HOLD };
static _Atomic int phase = PH_SETUP;
static _Atomic uint64_t check_goff;

struct worker {
	pthread_t th;
	int id;
	uint64_t from, to;   /* positions in the touch order */
	_Atomic uint64_t at; /* position being touched now */
	_Atomic int done;
	uint64_t t_start, t_first, t_end;
	uint64_t sigbus;
	uint64_t first_sigbus_goff;
	uintptr_t first_sigbus_addr;
	int first_sigbus_code; /* si_code: a poisoned page gave 2 (BUS_ADRERR) here, 4 via KVM */
};
static struct worker workers[MAX_THREADS];
static int nworkers;
static uint64_t *order;	  /* touch order (item numbers), NULL = sequential */
static uint64_t *lat;	  /* ns blocked on the first access, per position */
static uint64_t nitems;	  /* touch points */
static uint64_t step;	  /* guest bytes between touch points */
static uint64_t item_goff(uint64_t pos) { return (order ? order[pos] : pos) * step; }

static void *watchdog(void *arg)
{
	(void)arg;
	uint64_t deadline = t_begin + (uint64_t)(opt.timeout * 1e9);
	struct timespec ts = { (time_t)(deadline / 1000000000ull), (long)(deadline % 1000000000ull) };
	for (;;) {
		while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
			;
		if (atomic_load(&phase) != PH_HOLD) /* --hold is deliberate, not a wait */
			break;
		ts.tv_sec++;
	}
	char what[256];
	int p = atomic_load(&phase);
	switch (p) {
	case PH_CONNECT: snprintf(what, sizeof what, "connecting to %s", opt.socket); break;
	case PH_SEND: snprintf(what, sizeof what, "sending the handshake to %s", opt.socket); break;
	case PH_TOUCH: {
		snprintf(what, sizeof what, "touching guest memory");
		for (int i = 0; i < nworkers; i++) {
			struct worker *w = &workers[i];
			if (atomic_load(&w->done))
				continue;
			uint64_t pos = atomic_load(&w->at), g = item_goff(pos);
			snprintf(what, sizeof what,
				 "touching page %p (guest offset 0x%" PRIx64 ", image offset 0x%" PRIx64
				 ", item %" PRIu64 " of %" PRIu64 ", thread %d)",
				 (void *)guest_ptr(g), g, image_off(g), pos, nitems, i);
			break;
		}
		break;
	}
	case PH_CHECK: {
		uint64_t g = atomic_load(&check_goff);
		snprintf(what, sizeof what, "checking page %p (guest offset 0x%" PRIx64 ", image offset 0x%" PRIx64 ")",
			 (void *)guest_ptr(g), g, image_off(g));
		break;
	}
	case PH_MADVISE:
		snprintf(what, sizeof what, "in madvise(MADV_DONTNEED): the server never read UFFD_EVENT_REMOVE");
		break;
	case PH_KVM: snprintf(what, sizeof what, "in KVM_RUN: the guest is waiting on a page"); break;
	case PH_CLOSE: snprintf(what, sizeof what, "waiting for the server to close the socket"); break;
	case PH_HOLD: snprintf(what, sizeof what, "holding (--hold)"); break;
	default: snprintf(what, sizeof what, "setting up"); break;
	}
	dprintf(2, "fcvm: timed out after %g s %s\n", opt.timeout, what);
	_exit(EXIT_TIMEOUT);
}

/* ---------------------------------------------------------------- SIGBUS */

/* A page the server poisons (UFFDIO_POISON) raises SIGBUS on access.  Where we
 * expect that, the access is wrapped in sigsetjmp; anywhere else SIGBUS is a
 * plain failure.  SA_NODEFER lets us jump out without restoring the mask. */
static __thread sigjmp_buf bus_jb;
static __thread volatile int bus_armed;
static __thread volatile uintptr_t bus_addr;
static __thread volatile int bus_code;

static void fmt_hex(char *p, uintptr_t v)
{
	static const char hex[] = "0123456789abcdef";
	for (int i = 15; i >= 0; i--, v >>= 4)
		p[i] = hex[v & 15];
}

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	if (bus_armed) {
		bus_armed = 0;
		bus_addr = (uintptr_t)si->si_addr;
		bus_code = si->si_code;
		siglongjmp(bus_jb, 1);
	}
	char msg[] = "fcvm: SIGBUS at 0x0000000000000000: the server poisoned this page or could not serve it\n";
	fmt_hex(msg + 18, (uintptr_t)si->si_addr);
	ssize_t rc = write(2, msg, sizeof msg - 1);
	(void)rc;
	_exit(1);
}

static void install_sigbus(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = on_sigbus;
	sa.sa_flags = SA_SIGINFO | SA_NODEFER;
	sigaction(SIGBUS, &sa, NULL);
}

/* Read one byte; 0 on success, -1 if the page raised SIGBUS. */
static int read_guarded(const uint8_t *p)
{
	if (sigsetjmp(bus_jb, 0))
		return -1;
	bus_armed = 1;
	(void)*(const volatile uint8_t *)p;
	bus_armed = 0;
	return 0;
}

/* ------------------------------------------------------------ make-image */

/* A memory image that looks like a real one to a page server: 1-8 MiB
 * segments, 1 MiB aligned, of random pages, zeros, copies of a few template
 * blocks (so chunk dedup has something to find), or a per-page mix.  Every
 * random page starts with its own offset and a fixed tag, so a check that
 * finds the wrong page can say which page it got instead. */
#define STAMP_TAG 0x6663766d50414745ull /* "fcvmPAGE" */

static int make_image(void)
{
	uint64_t size = opt.image_size, seed = opt.seed;
	uint64_t tag = STAMP_TAG;
	int fd = open(opt.make_image, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return err_set(errno, "cannot create %s: %s", opt.make_image, strerror(errno));

	/* four 1 MiB template blocks and eight template pages */
	enum { BLK = 1 << 20, PAGES_PER_BLK = BLK / 4096 };
	uint8_t *tblk = malloc(4 * BLK), *buf = malloc(BLK);
	if (!tblk || !buf) {
		close(fd);
		free(tblk);
		free(buf);
		return err_set(ENOMEM, "out of memory");
	}
	uint64_t ts = seed ^ 0x7465706c61746573ull;
	for (size_t i = 0; i < 4 * BLK; i += 8) {
		uint64_t v = sm64(&ts);
		memcpy(tblk + i, &v, 8);
	}
	uint8_t *tpage = tblk + 3 * BLK + 128 * 4096; /* eight pages inside template 3 */

	uint64_t rs = seed, ds = seed ^ 0x64617461ull;
	uint64_t off = 0, nrand = 0, nzero = 0, ntmpl = 0;
	size_t fill = 0;
	int rc = 0;
	while (off < size) {
		int kind = (int)(sm64(&rs) % 8);
		uint64_t npages = PAGES_PER_BLK * (1 + sm64(&rs) % 8);
		int which = (int)(sm64(&rs) % 4);
		for (uint64_t j = 0; j < npages && off < size; j++, off += 4096) {
			uint8_t *pg = buf + fill;
			int k = kind <= 2 ? 0 : kind <= 4 ? 1 : kind == 5 ? 2 : (int)(sm64(&rs) % 4);
			if (kind >= 6)
				k = k == 0 || k == 1 ? 0 : k == 2 ? 1 : 3;
			switch (k) {
			case 0: /* random, stamped */
				for (size_t i = 16; i < 4096; i += 8) {
					uint64_t v = sm64(&ds);
					memcpy(pg + i, &v, 8);
				}
				memcpy(pg, &off, 8);
				memcpy(pg + 8, &tag, 8);
				nrand++;
				break;
			case 1:
				memset(pg, 0, 4096);
				nzero++;
				break;
			case 2: /* page j of a template block: whole aligned blocks repeat */
				memcpy(pg, tblk + (size_t)which * BLK + (j % PAGES_PER_BLK) * 4096, 4096);
				ntmpl++;
				break;
			default: /* one of eight template pages */
				memcpy(pg, tpage + (sm64(&rs) % 8) * 4096, 4096);
				ntmpl++;
				break;
			}
			fill += 4096;
			if (fill == BLK || off + 4096 >= size) {
				size_t len = fill;
				if (off + 4096 > size)
					len -= (size_t)(off + 4096 - size);
				for (size_t done = 0; done < len;) {
					ssize_t w = write(fd, buf + done, len - done);
					if (w < 0 && errno == EINTR)
						continue;
					if (w <= 0) {
						rc = err_set(errno ? errno : EIO, "cannot write %s: %s", opt.make_image,
							     strerror(errno));
						goto out;
					}
					done += (size_t)w;
				}
				fill = 0;
			}
		}
	}
	if (fsync(fd) < 0 && errno != EINVAL)
		rc = err_set(errno, "cannot sync %s: %s", opt.make_image, strerror(errno));
out:
	if (close(fd) < 0 && !rc)
		rc = err_set(errno, "cannot close %s: %s", opt.make_image, strerror(errno));
	free(tblk);
	free(buf);
	if (rc)
		return rc;
	printf("{\"mode\":\"make-image\",\"file\":");
	json_write_str(stdout, opt.make_image);
	printf(",\"size\":%" PRIu64 ",\"seed\":%" PRIu64 ",\"random_pages\":%" PRIu64 ",\"zero_pages\":%" PRIu64
	       ",\"template_pages\":%" PRIu64 "}\n",
	       size, seed, nrand, nzero, ntmpl);
	note("wrote %s: %" PRIu64 " bytes, %" PRIu64 " random / %" PRIu64 " zero / %" PRIu64 " template pages (seed %" PRIu64 ")",
	     opt.make_image, size, nrand, nzero, ntmpl, seed);
	return 0;
}

/* ---------------------------------------------------------- guest memory */

static int64_t read_long_file(const char *path)
{
	FILE *f = fopen(path, "re");
	long long v = -1;
	if (!f)
		return -1;
	if (fscanf(f, "%lld", &v) != 1)
		v = -1;
	fclose(f);
	return v;
}

static int64_t meminfo(const char *key)
{
	FILE *f = fopen("/proc/meminfo", "re");
	char line[256];
	size_t klen = strlen(key);
	long long v = -1;
	if (!f)
		return -1;
	while (fgets(line, sizeof line, f))
		if (!strncmp(line, key, klen) && line[klen] == ':') {
			v = atoll(line + klen + 1);
			break;
		}
	fclose(f);
	return v;
}

/* MAP_NORESERVE hugetlb memory maps fine with an empty pool and then fails at
 * fault time, so make sure the pool can hold the guest before we start. */
static int ensure_hugepages(uint64_t need)
{
	int64_t nr = read_long_file("/proc/sys/vm/nr_hugepages"), free_ = meminfo("HugePages_Free");
	if (nr < 0 || free_ < 0)
		return err_set(ENOTSUP, "cannot read the huge page pool (/proc/sys/vm/nr_hugepages)");
	if ((uint64_t)free_ >= need)
		return 0;
	int64_t want = nr + ((int64_t)need - free_);
	if (geteuid() != 0)
		return err_set(ENOMEM, "need %" PRIu64 " free 2 MiB huge pages, have %" PRId64
			       "; as root: echo %" PRId64 " > /proc/sys/vm/nr_hugepages",
			       need, free_, want);
	FILE *f = fopen("/proc/sys/vm/nr_hugepages", "we");
	if (f) {
		fprintf(f, "%" PRId64 "\n", want);
		fclose(f);
	}
	int64_t now = read_long_file("/proc/sys/vm/nr_hugepages");
	free_ = meminfo("HugePages_Free");
	if (free_ < 0 || (uint64_t)free_ < need)
		return err_set(ENOMEM, "need %" PRIu64 " free 2 MiB huge pages; raised vm.nr_hugepages to %" PRId64
			       " but only %" PRId64 " are free (memory too fragmented?)",
			       need, now, free_);
	note("raised vm.nr_hugepages from %" PRId64 " to %" PRId64 " (left raised)", nr, now);
	return 0;
}

static int map_guest(void)
{
	uint64_t per = total / (uint64_t)opt.regions / unit * unit;
	if (per == 0)
		return err_set(EINVAL, "%" PRIu64 " bytes cannot make %d regions of whole %" PRIu64 "-byte pages",
			       total, opt.regions, unit);
	if (opt.hugepages) {
		int rc = ensure_hugepages(total / HUGE_2M);
		if (rc)
			return rc;
	}
	/* Separate mappings, one per region, as Firecracker makes them; the kernel
	 * usually stacks them top-down, so region 1 can sit below region 0. */
	int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | (opt.hugepages ? MAP_HUGETLB | MAP_HUGE_2MB : 0);
	uint64_t goff = 0, ioff = 0;
	nregs = opt.regions;
	for (int i = 0; i < nregs; i++) {
		uint64_t sz = i == nregs - 1 ? total - goff : per;
		void *p = mmap(NULL, sz, PROT_READ | PROT_WRITE, flags, -1, 0);
		if (p == MAP_FAILED)
			return err_set(errno, "cannot mmap %" PRIu64 " bytes of guest memory%s: %s", sz,
				       opt.hugepages ? " (hugetlb)" : "", strerror(errno));
		regs[i] = (struct region){ p, sz, ioff, goff };
		goff += sz;
		ioff += sz + opt.offset_gap;
	}
	return 0;
}

/* ------------------------------------------------------------ userfaultfd */

/* The userfaultfd crate (0.7+, Firecracker 1.6+) opens /dev/userfaultfd when
 * it exists and falls back to the syscall only when it does not; older ones
 * always used the syscall.  Flags: O_CLOEXEC|O_NONBLOCK, never
 * UFFD_USER_MODE_ONLY, because KVM's own accesses must fault too. */
static int open_uffd(void)
{
	const int flags = O_CLOEXEC | O_NONBLOCK;
	enum uffd_src src = opt.uffd_src;
	if (src == UFFD_AUTO && opt.fc_minor < 6)
		src = UFFD_SYSCALL;
	if (src != UFFD_SYSCALL) {
		int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
		if (dev >= 0) {
			uffd = ioctl(dev, USERFAULTFD_IOC_NEW, flags);
			int e = errno;
			close(dev);
			if (uffd < 0)
				return err_set(e, "USERFAULTFD_IOC_NEW on /dev/userfaultfd: %s", strerror(e));
			uffd_how = "dev";
		} else if (errno != ENOENT || src == UFFD_DEV) {
			return err_set(errno, "cannot open /dev/userfaultfd: %s", strerror(errno));
		}
	}
	if (uffd < 0) {
		uffd = (int)syscall(SYS_userfaultfd, flags);
		if (uffd < 0)
			return err_set(errno, "userfaultfd(2): %s%s", strerror(errno),
				       errno == EPERM ? " (try --dev-uffd, or root)" : "");
		uffd_how = "syscall";
	}
	struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_EVENT_REMOVE };
	if (ioctl(uffd, UFFDIO_API, &api) < 0)
		return err_set(errno, "UFFDIO_API (features EVENT_REMOVE): %s", strerror(errno));
	uffd_features = api.features;
	for (int i = 0; i < nregs; i++) {
		struct uffdio_register reg = {
			.range = { (uintptr_t)regs[i].base, regs[i].size },
			.mode = UFFDIO_REGISTER_MODE_MISSING,
		};
		if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0)
			return err_set(errno, "UFFDIO_REGISTER region %d (%p, %" PRIu64 " bytes): %s", i,
				       (void *)regs[i].base, regs[i].size, strerror(errno));
		uffd_range_ioctls = reg.ioctls;
	}
	return 0;
}

/* ------------------------------------------------------------- handshake */

/* serde_json::to_string of Vec<GuestRegionUffdMapping>: compact, fields in
 * declaration order, integers in decimal.  1.7-1.11 added page_size_kib (in
 * bytes, despite the name); 1.12 added page_size and kept page_size_kib, so
 * both go out. */
static char *mappings_json(void)
{
	size_t cap = 64 + (size_t)nregs * 160, len = 0;
	char *s = malloc(cap);
	if (!s)
		return NULL;
	s[len++] = '[';
	for (int i = 0; i < nregs; i++) {
		struct region *r = &regs[i];
		len += (size_t)snprintf(s + len, cap - len, "%s{\"base_host_virt_addr\":%" PRIu64 ",\"size\":%" PRIu64
					",\"offset\":%" PRIu64,
					i ? "," : "", (uint64_t)(uintptr_t)r->base, r->size, r->offset);
		if (opt.fc_minor >= 12)
			len += (size_t)snprintf(s + len, cap - len, ",\"page_size\":%" PRIu64 ",\"page_size_kib\":%" PRIu64,
						unit, unit);
		else if (opt.fc_minor >= 7)
			len += (size_t)snprintf(s + len, cap - len, ",\"page_size_kib\":%" PRIu64, unit);
		s[len++] = '}';
	}
	s[len++] = ']';
	s[len] = 0;
	return s;
}

static int connect_socket(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(opt.socket) >= sizeof sa.sun_path)
		return err_set(ENAMETOOLONG, "socket path too long (max %zu bytes): %s", sizeof sa.sun_path - 1,
			       opt.socket);
	strcpy(sa.sun_path, opt.socket);
	uint64_t until = now_ns() + (uint64_t)(opt.connect_retry * 1e9);
	atomic_store(&phase, PH_CONNECT);
	for (;;) {
		sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (sock < 0)
			return err_set(errno, "socket: %s", strerror(errno));
		t_connect = now_ns();
		if (connect(sock, (struct sockaddr *)&sa, sizeof sa) == 0)
			return 0;
		int e = errno;
		close(sock);
		sock = -1;
		if ((e == ENOENT || e == ECONNREFUSED) && now_ns() < until) {
			usleep(20000);
			continue;
		}
		return err_set(e, "cannot connect to %s: %s", opt.socket, strerror(e));
	}
}

/* One sendmsg, one iovec, the uffd in SCM_RIGHTS: what vmm_sys_util's
 * send_with_fd does. */
static int send_handshake(void)
{
	handshake_json = opt.raw_json ? strdup(opt.raw_json) : mappings_json();
	if (!handshake_json)
		return err_set(ENOMEM, "out of memory");
	size_t len = strlen(handshake_json);
	struct iovec iov = { handshake_json, len };
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int))];
	} ctl;
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (!opt.no_fd) {
		memset(&ctl, 0, sizeof ctl);
		msg.msg_control = ctl.buf;
		msg.msg_controllen = sizeof ctl.buf;
		struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &uffd, sizeof(int));
	}
	atomic_store(&phase, PH_SEND);
	ssize_t n;
	do
		n = sendmsg(sock, &msg, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return err_set(errno, "sendmsg to %s: %s", opt.socket, strerror(errno));
	if ((size_t)n != len)
		return err_set(EIO, "sendmsg to %s sent %zd of %zu bytes", opt.socket, n, len);
	t_sent = now_ns();
	/* Until 1.12 Firecracker dropped the stream right after sending, which
	 * could race the handler's read; 1.12 forgets it, keeping it open until
	 * the process exits.  Handlers must cope with both. */
	if (opt.fc_minor < 12) {
		close(sock);
		sock = -1;
	}
	return 0;
}

/* -------------------------------------------------------------- touching */

static _Atomic uint64_t touched_total;

static void disconnect_now(uint64_t n);

static void *touch_worker(void *arg)
{
	struct worker *w = arg;
	uint64_t inner = opt.stride < unit ? opt.stride : 0;
	w->t_start = now_ns();
	for (uint64_t pos = w->from; pos < w->to; pos++) {
		atomic_store_explicit(&w->at, pos, memory_order_relaxed);
		uint64_t g = item_goff(pos);
		const uint8_t *p = guest_ptr(g);
		uint64_t t0 = now_ns();
		int bad = 0;
		if (opt.expect_sigbus)
			bad = read_guarded(p);
		else
			(void)*(const volatile uint8_t *)p;
		uint64_t t1 = now_ns();
		if (pos == w->from)
			w->t_first = t1;
		if (bad) {
			lat[pos] = UINT64_MAX;
			if (!w->sigbus++) {
				w->first_sigbus_goff = g;
				w->first_sigbus_addr = bus_addr;
				w->first_sigbus_code = bus_code;
			}
			continue;
		}
		lat[pos] = t1 - t0;
		if (inner)
			for (uint64_t o = inner; o < unit; o += inner)
				(void)*(const volatile uint8_t *)(p + o);
		if (opt.disconnect_after) {
			uint64_t n = atomic_fetch_add(&touched_total, 1) + 1;
			if (n == opt.disconnect_after)
				disconnect_now(n);
		}
	}
	w->t_end = now_ns();
	atomic_store(&w->done, 1);
	return NULL;
}

struct stats {
	uint64_t n, min, max, p50, p90, p99, sum;
	uint64_t hist[64];
};

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static void compute_stats(struct stats *s)
{
	memset(s, 0, sizeof *s);
	uint64_t *v = malloc((nitems ? nitems : 1) * sizeof *v);
	if (!v)
		die(1, "out of memory");
	for (uint64_t i = 0; i < nitems; i++) {
		if (lat[i] == UINT64_MAX)
			continue;
		v[s->n++] = lat[i];
		s->sum += lat[i];
		int b = lat[i] ? 63 - __builtin_clzll(lat[i]) : 0;
		s->hist[b]++;
	}
	if (s->n) {
		qsort(v, s->n, sizeof *v, cmp_u64);
		s->min = v[0];
		s->max = v[s->n - 1];
/* nearest rank: the smallest value with at least pct% of samples at or below it */
#define RANK(pct) v[(s->n * (pct) + 99) / 100 - 1]
		s->p50 = RANK(50);
		s->p90 = RANK(90);
		s->p99 = RANK(99);
#undef RANK
	}
	free(v);
}

static void print_lat_json(const struct stats *s)
{
	printf(",\"lat_us\":{\"n\":%" PRIu64 ",\"mean\":%.2f,\"p50\":%.2f,\"p90\":%.2f,\"p99\":%.2f,\"max\":%.2f,\"min\":%.2f}",
	       s->n, s->n ? us(s->sum) / (double)s->n : 0.0, us(s->p50), us(s->p90), us(s->p99), us(s->max), us(s->min));
	printf(",\"hist_log2_ns\":[");
	int first = 1;
	for (int b = 0; b < 64; b++)
		if (s->hist[b]) {
			printf("%s[%" PRIu64 ",%" PRIu64 "]", first ? "" : ",", (uint64_t)1 << b, s->hist[b]);
			first = 0;
		}
	printf("]");
}

static void print_common_json(const char *mode)
{
	printf("{\"mode\":\"%s\",\"fc_version\":\"1.%d\",\"uffd\":\"%s\",\"regions\":%d,\"mem_bytes\":%" PRIu64
	       ",\"page_size\":%" PRIu64 ",\"handshake_bytes\":%zu,\"handshake_us\":%.1f",
	       mode, opt.fc_minor, uffd_how ? uffd_how : "", nregs, total, unit,
	       handshake_json ? strlen(handshake_json) : (size_t)0, t_sent ? us(t_sent - t_connect) : 0.0);
	if (opt.no_uffd)
		printf(",\"preload_s\":%.6f", (double)preload_ns / 1e9);
}

/* Set up positions, order and latency slots for nitems touch points. */
static int plan_touch(void)
{
	uint64_t stride = opt.stride ? opt.stride : unit;
	if (stride % unit && unit % stride)
		return err_set(EINVAL, "--stride %" PRIu64 " must divide or be a multiple of the page size %" PRIu64, stride,
			       unit);
	opt.stride = stride;
	step = stride > unit ? stride : unit;
	nitems = (total + step - 1) / step;
	lat = malloc(nitems * sizeof *lat);
	if (!lat)
		return err_set(ENOMEM, "out of memory for %" PRIu64 " latency slots", nitems);
	for (uint64_t i = 0; i < nitems; i++)
		lat[i] = UINT64_MAX;
	if (opt.order == ORDER_RANDOM) {
		order = malloc(nitems * sizeof *order);
		if (!order)
			return err_set(ENOMEM, "out of memory for the touch order");
		uint64_t s = opt.seed ^ 0x6f72646572ull;
		for (uint64_t i = 0; i < nitems; i++)
			order[i] = i;
		for (uint64_t i = nitems - 1; i > 0; i--) {
			uint64_t j = sm64(&s) % (i + 1), t = order[i];
			order[i] = order[j];
			order[j] = t;
		}
	}
	return 0;
}

static uint64_t t_touch0, t_touch1, t_first_touch;

static int run_touch(void)
{
	nworkers = opt.threads;
	if ((uint64_t)nworkers > nitems)
		nworkers = (int)nitems;
	atomic_store(&phase, PH_TOUCH);
	t_touch0 = now_ns();
	for (int i = 0; i < nworkers; i++) {
		struct worker *w = &workers[i];
		w->id = i;
		w->from = nitems * (uint64_t)i / (uint64_t)nworkers;
		w->to = nitems * (uint64_t)(i + 1) / (uint64_t)nworkers;
		atomic_store(&w->at, w->from);
		int e = pthread_create(&w->th, NULL, touch_worker, w);
		if (e)
			return err_set(e, "pthread_create: %s", strerror(e));
	}
	for (int i = 0; i < nworkers; i++)
		pthread_join(workers[i].th, NULL);
	t_touch1 = now_ns();
	t_first_touch = UINT64_MAX;
	for (int i = 0; i < nworkers; i++)
		if (workers[i].t_first && workers[i].t_first < t_first_touch)
			t_first_touch = workers[i].t_first;
	return 0;
}

static uint64_t sigbus_count(int *who)
{
	uint64_t n = 0;
	*who = -1;
	for (int i = 0; i < nworkers; i++) {
		n += workers[i].sigbus;
		if (workers[i].sigbus && *who < 0)
			*who = i;
	}
	return n;
}

/* --disconnect-after: whichever thread touches the N-th page reports and
 * leaves at once, with the others possibly blocked mid-fault. */
static void disconnect_now(uint64_t n)
{
	print_common_json("disconnect");
	printf(",\"touched\":%" PRIu64 ",\"elapsed_s\":%.6f}\n", n, (double)(now_ns() - t_touch0) / 1e9);
	fflush(stdout);
	note("touched %" PRIu64 " pages, exiting abruptly", n);
	_exit(0);
}

/* --------------------------------------------------------------- checking */

/* The image as guest memory expects it: bytes past the end of the file read
 * as zeros (the final partial page of an odd-sized image). */
static int image_read(uint64_t off, uint8_t *buf, size_t len)
{
	size_t got = 0;
	while (got < len && off + got < img_size) {
		size_t want = len - got;
		if (off + got + want > img_size)
			want = (size_t)(img_size - off - got);
		ssize_t n = pread(img_fd, buf + got, want, (off_t)(off + got));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return err_set(n < 0 ? errno : EIO, "cannot read %s at %" PRIu64 ": %s", opt.check, off + got,
				       n < 0 ? strerror(errno) : "short file");
		got += (size_t)n;
	}
	memset(buf + got, 0, len - got);
	return 0;
}

struct mismatch {
	uint64_t pages, poisoned;
	uint64_t goff; /* first bad byte */
	uint8_t got, want;
	char why[160];
};

static void describe(struct mismatch *m, const uint8_t *page, int want_zero)
{
	uint64_t stamp, tag;
	memcpy(&stamp, page, 8);
	memcpy(&tag, page + 8, 8);
	int zero = 1;
	for (size_t i = 0; i < 4096 && zero; i++)
		zero = !page[i];
	if (tag == STAMP_TAG)
		snprintf(m->why, sizeof m->why, "it holds the page of image offset 0x%" PRIx64, stamp);
	else if (zero)
		snprintf(m->why, sizeof m->why, "it reads as zeros");
	else if (want_zero)
		snprintf(m->why, sizeof m->why, "it should read as zeros after the balloon remove");
	else
		m->why[0] = 0;
}

/* Compare guest memory [from,to) with the image (or with zeros), page by page,
 * in 2 MiB reads of the image.  Poisoned pages are counted, not compared. */
static int verify(uint64_t from, uint64_t to, int want_zero, struct mismatch *m)
{
	const size_t CH = 2u << 20;
	uint8_t *buf = malloc(CH);
	if (!buf)
		return err_set(ENOMEM, "out of memory");
	if (want_zero)
		memset(buf, 0, CH);
	atomic_store(&phase, PH_CHECK);
	int rc = 0;
	for (uint64_t g = from; g < to;) {
		struct region *r = region_of(g);
		uint64_t len = r->goff + r->size - g;
		if (len > CH)
			len = CH;
		if (len > to - g)
			len = to - g;
		if (!want_zero && (rc = image_read(r->offset + (g - r->goff), buf, (size_t)len)))
			break;
		for (uint64_t o = 0, n; o < len; o += n) {
			n = len - o < 4096 ? len - o : 4096;
			const uint8_t *p = r->base + (g - r->goff) + o;
			atomic_store_explicit(&check_goff, g + o, memory_order_relaxed);
			if (opt.expect_sigbus && read_guarded(p) < 0) {
				m->poisoned++; /* count the page once, skip the rest of it */
				n = unit - (g + o) % unit;
				if (n > len - o)
					n = len - o;
				continue;
			}
			if (!memcmp(p, buf + o, n))
				continue;
			if (!m->pages++) {
				uint64_t i = 0;
				while (p[i] == buf[o + i])
					i++;
				m->goff = g + o + i;
				m->got = p[i];
				m->want = buf[o + i];
				describe(m, p, want_zero);
			}
		}
		g += len;
	}
	free(buf);
	return rc;
}

static int report_mismatch(const struct mismatch *m, const char *what)
{
	return err_set(EIO, "%s: %" PRIu64 " page%s differ; first at %p (guest offset 0x%" PRIx64 ", image offset 0x%" PRIx64
		       "): got 0x%02x, want 0x%02x%s%s",
		       what, m->pages, m->pages == 1 ? "" : "s", (void *)guest_ptr(m->goff), m->goff, image_off(m->goff),
		       m->got, m->want, m->why[0] ? "; " : "", m->why);
}

static int open_image(void)
{
	img_fd = open(opt.check, O_RDONLY | O_CLOEXEC);
	if (img_fd < 0)
		return err_set(errno, "cannot open %s: %s", opt.check, strerror(errno));
	struct stat st;
	if (fstat(img_fd, &st) < 0)
		return err_set(errno, "cannot stat %s: %s", opt.check, strerror(errno));
	img_size = (uint64_t)st.st_size;
	return 0;
}

/* --no-uffd: the local baseline, guest memory read eagerly from the image
 * before the VM runs, as a plain (non-lazy) restore would. */

static int preload(void)
{
	uint64_t t0 = now_ns();
	for (int i = 0; i < nregs; i++) {
		int rc = image_read(regs[i].offset, regs[i].base, (size_t)regs[i].size);
		if (rc)
			return rc;
	}
	preload_ns = now_ns() - t0;
	note("loaded %" PRIu64 " MiB from %s in %.3f s (no uffd)", total >> 20, opt.check, (double)preload_ns / 1e9);
	return 0;
}

/* ------------------------------------------------------------------ KVM */

/* The guest: 64-bit long mode at CPL 3, identity-mapped with 2 MiB pages, its
 * code and page tables in a small plain-memory slot, guest memory (the
 * uffd-registered mappings) as slots from DATA_GPA up.  User mode is not a
 * whim: this host's KVM is PVM (kvm_pvm), which runs only 64-bit CPL 3 code
 * natively and emulates everything else an instruction at a time -- reading
 * a 4 KiB page took 6 ms in 32-bit protected mode and 3 us in user mode.  On
 * VMX/SVM hardware the same state simply runs.  IOPL 3 lets it use OUT.
 *
 * In: rsi = first byte, rdi = end, rbx = stride, rcx = bytes read at each
 * stride point (a multiple of 4).  It says "started" and "first page read" on
 * two ports, folds every dword it reads into eax (rol 1, xor), and reports
 * eax on a third port; the host stops the vCPU there. */
#define CODE_SLOT_SIZE 0x100000ull
#define CODE_GPA 0x1000ull
#define PML4_GPA 0x2000ull
#define PDPT_GPA 0x3000ull
#define PD_GPA 0x4000ull	     /* one 4 KiB page directory per GiB */
#define DATA_GPA 0x100000000ull	     /* 4 GiB: huge-aligned, clear of the TSS */
#define DATA_END_MAX (68ull << 30)   /* 64 GiB of guest memory */
#define TSS_GPA 0xfffbd000ull
#define PORT_SUM 0x3f0
#define PORT_STARTED 0x3f1
#define PORT_FIRST 0x3f2

static const uint8_t guest_code[] = {
	0x66, 0xba, 0xf1, 0x03,	      /*  0: mov dx, 0x3f1                          */
	0xee,			      /*  4: out dx, al        ; started             */
	0x8b, 0x16,		      /*  5: mov edx, [rsi]    ; first data page      */
	0x66, 0xba, 0xf2, 0x03,	      /*  7: mov dx, 0x3f2                          */
	0xee,			      /* 11: out dx, al        ; first page read      */
	0x31, 0xc0,		      /* 12: xor eax, eax                           */
				      /* outer:                                    */
	0x48, 0x89, 0xcd,	      /* 14: mov rbp, rcx      ; bytes left here      */
	0x48, 0x89, 0xf2,	      /* 17: mov rdx, rsi      ; cursor               */
				      /* inner:                                    */
	0xd1, 0xc0,		      /* 20: rol eax, 1                             */
	0x33, 0x02,		      /* 22: xor eax, [rdx]                         */
	0x48, 0x83, 0xc2, 0x04,	      /* 24: add rdx, 4                             */
	0x48, 0x83, 0xed, 0x04,	      /* 28: sub rbp, 4                             */
	0x75, 0xf2,		      /* 32: jnz inner         ; 34 - 14 = 20         */
	0x48, 0x01, 0xde,	      /* 34: add rsi, rbx                           */
	0x48, 0x39, 0xfe,	      /* 37: cmp rsi, rdi                           */
	0x72, 0xe4,		      /* 40: jb outer          ; 42 - 28 = 14         */
	0x66, 0xba, 0xf0, 0x03,	      /* 42: mov dx, 0x3f0                          */
	0xef,			      /* 46: out dx, eax       ; checksum, host stops */
	0xeb, 0xfe,		      /* 47: jmp 47                                 */
};

static uint32_t rol1(uint32_t x) { return (x << 1) | (x >> 31); }

/* The guest's checksum, computed from the image in the host. */
static int host_checksum(uint64_t stride, uint64_t span, uint32_t *out)
{
	const size_t CH = 2u << 20;
	uint8_t *buf = malloc(CH);
	if (!buf)
		return err_set(ENOMEM, "out of memory");
	uint64_t cached = UINT64_MAX, clen = 0; /* buf holds guest [cached, cached+clen) */
	uint32_t sum = 0;
	int rc = 0;
	for (uint64_t g = 0; g < total && !rc; g += stride)
		for (uint64_t k = 0; k < span; k += 4) {
			uint64_t a = g + k;
			if (cached == UINT64_MAX || a < cached || a >= cached + clen) {
				struct region *r = region_of(a);
				clen = r->goff + r->size - a;
				if (clen > CH)
					clen = CH;
				cached = a;
				if ((rc = image_read(r->offset + (a - r->goff), buf, (size_t)clen)))
					break;
			}
			uint32_t w;
			memcpy(&w, buf + (a - cached), 4);
			sum = rol1(sum) ^ w;
		}
	free(buf);
	*out = sum;
	return rc;
}

struct kvm_result {
	uint64_t t_run0, t_started, t_first, t_end;
	uint64_t exits, points;
	uint32_t sum;
	int got_sum;
	int sigbus;
	uintptr_t sigbus_addr;
	int sigbus_code;
	const char *sigbus_how;
};

static int kvm_fail(int *fds, int n, int code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int kvm_fail(int *fds, int n, int code, const char *fmt, ...)
{
	char m[ERR_MSG_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(m, sizeof m, fmt, ap);
	va_end(ap);
	for (int i = 0; i < n; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	return err_set(code, "%s", m);
}

static int run_kvm(uint64_t stride, uint64_t span, struct kvm_result *res)
{
	int fd[3] = { -1, -1, -1 }; /* kvm, vm, vcpu */
	memset(res, 0, sizeof *res);
	fd[0] = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (fd[0] < 0)
		return kvm_fail(fd, 3, errno, "cannot open /dev/kvm: %s", strerror(errno));
	if (ioctl(fd[0], KVM_GET_API_VERSION, 0) != KVM_API_VERSION)
		return kvm_fail(fd, 3, ENOTSUP, "/dev/kvm speaks an unexpected API version");
	fd[1] = ioctl(fd[0], KVM_CREATE_VM, 0);
	if (fd[1] < 0)
		return kvm_fail(fd, 3, errno, "KVM_CREATE_VM: %s", strerror(errno));
	if (ioctl(fd[1], KVM_SET_TSS_ADDR, (unsigned long)TSS_GPA) < 0)
		return kvm_fail(fd, 3, errno, "KVM_SET_TSS_ADDR: %s", strerror(errno));

	uint8_t *code = mmap(NULL, CODE_SLOT_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (code == MAP_FAILED)
		return kvm_fail(fd, 3, errno, "mmap code slot: %s", strerror(errno));
	memcpy(code + CODE_GPA, guest_code, sizeof guest_code);
	uint64_t *pml4 = (uint64_t *)(code + PML4_GPA), *pdpt = (uint64_t *)(code + PDPT_GPA);
	uint64_t *pd = (uint64_t *)(code + PD_GPA);
	pml4[0] = PDPT_GPA | 7; /* present, writable, user */
	for (uint64_t gib = 0; gib < DATA_END_MAX >> 30; gib++) {
		pdpt[gib] = (PD_GPA + gib * 4096) | 7;
		for (uint64_t i = 0; i < 512; i++)
			pd[gib * 512 + i] = (gib << 30) + (i << 21) + 0x87; /* ... and 2 MiB */
	}
	struct kvm_userspace_memory_region mr = {
		.slot = 0, .guest_phys_addr = 0, .memory_size = CODE_SLOT_SIZE, .userspace_addr = (uintptr_t)code
	};
	if (ioctl(fd[1], KVM_SET_USER_MEMORY_REGION, &mr) < 0)
		return kvm_fail(fd, 3, errno, "KVM_SET_USER_MEMORY_REGION (code): %s", strerror(errno));
	for (int i = 0; i < nregs; i++) {
		mr = (struct kvm_userspace_memory_region){
			.slot = (uint32_t)(i + 1),
			.guest_phys_addr = DATA_GPA + regs[i].goff,
			.memory_size = regs[i].size,
			.userspace_addr = (uintptr_t)regs[i].base,
		};
		if (ioctl(fd[1], KVM_SET_USER_MEMORY_REGION, &mr) < 0)
			return kvm_fail(fd, 3, errno, "KVM_SET_USER_MEMORY_REGION (region %d): %s", i, strerror(errno));
	}

	fd[2] = ioctl(fd[1], KVM_CREATE_VCPU, 0);
	if (fd[2] < 0)
		return kvm_fail(fd, 3, errno, "KVM_CREATE_VCPU: %s", strerror(errno));
	int run_size = ioctl(fd[0], KVM_GET_VCPU_MMAP_SIZE, 0);
	if (run_size <= 0)
		return kvm_fail(fd, 3, errno, "KVM_GET_VCPU_MMAP_SIZE: %s", strerror(errno));
	struct kvm_run *run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd[2], 0);
	if (run == MAP_FAILED)
		return kvm_fail(fd, 3, errno, "mmap kvm_run: %s", strerror(errno));

	struct kvm_sregs sr;
	if (ioctl(fd[2], KVM_GET_SREGS, &sr) < 0)
		return kvm_fail(fd, 3, errno, "KVM_GET_SREGS: %s", strerror(errno));
	struct kvm_segment seg = {
		.base = 0, .limit = 0xffffffff, .selector = 0x2b, .type = 3, /* data, read/write, accessed */
		.present = 1, .dpl = 3, .db = 1, .s = 1, .l = 0, .g = 1,
	};
	sr.ds = sr.es = sr.fs = sr.gs = sr.ss = seg;
	seg.selector = 0x33;
	seg.type = 11; /* code, execute/read, accessed */
	seg.db = 0;
	seg.l = 1;
	sr.cs = seg;
	sr.cr0 = 0x80000031; /* PG, NE, ET, PE */
	sr.cr3 = PML4_GPA;
	sr.cr4 = 0x20;	     /* PAE */
	sr.efer = 0x500;     /* LME, LMA */
	if (ioctl(fd[2], KVM_SET_SREGS, &sr) < 0)
		return kvm_fail(fd, 3, errno, "KVM_SET_SREGS: %s", strerror(errno));
	struct kvm_regs r = {
		.rip = CODE_GPA, .rflags = 0x3002, /* IOPL 3 */
		.rsi = DATA_GPA, .rdi = DATA_GPA + total, .rbx = stride, .rcx = span,
	};
	if (ioctl(fd[2], KVM_SET_REGS, &r) < 0)
		return kvm_fail(fd, 3, errno, "KVM_SET_REGS: %s", strerror(errno));

	res->points = total / stride;
	atomic_store(&phase, PH_KVM);
	if (opt.expect_sigbus && sigsetjmp(bus_jb, 0)) {
		/* KVM raises SIGBUS (BUS_MCEERR_AR) on the vCPU thread when
		 * get_user_pages hits a poisoned page. */
		res->t_end = now_ns();
		res->sigbus = 1;
		res->sigbus_addr = bus_addr;
		res->sigbus_code = bus_code;
		res->sigbus_how = "SIGBUS";
		goto out;
	}
	res->t_run0 = now_ns();
	for (;;) {
		bus_armed = opt.expect_sigbus;
		int rc = ioctl(fd[2], KVM_RUN, 0);
		bus_armed = 0;
		if (rc < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			int e = errno;
			if (opt.expect_sigbus && (e == EFAULT || e == EHWPOISON)) {
				res->t_end = now_ns();
				res->sigbus = 1;
				res->sigbus_how = e == EFAULT ? "KVM_RUN EFAULT" : "KVM_RUN EHWPOISON";
				goto out;
			}
			return kvm_fail(fd, 3, e, "KVM_RUN: %s%s", strerror(e),
					e == EFAULT || e == EHWPOISON ? " (the server poisoned a page?)" : "");
		}
		res->exits++;
		uint64_t t = now_ns();
		switch (run->exit_reason) {
		case KVM_EXIT_IO:
			if (run->io.direction != KVM_EXIT_IO_OUT)
				return kvm_fail(fd, 3, EPROTO, "guest read port 0x%x", run->io.port);
			if (run->io.port == PORT_STARTED)
				res->t_started = t;
			else if (run->io.port == PORT_FIRST)
				res->t_first = t;
			else if (run->io.port == PORT_SUM && run->io.size == 4) {
				memcpy(&res->sum, (uint8_t *)run + run->io.data_offset, 4);
				res->got_sum = 1;
				res->t_end = t;
				goto out;
			} else
				return kvm_fail(fd, 3, EPROTO, "guest wrote unexpected port 0x%x", run->io.port);
			break;
		case KVM_EXIT_HLT:
			return kvm_fail(fd, 3, EPROTO, "guest halted before reporting its checksum");
		case KVM_EXIT_MMIO:
			return kvm_fail(fd, 3, EPROTO, "guest touched unmapped guest-physical 0x%llx",
					(unsigned long long)run->mmio.phys_addr);
		case KVM_EXIT_FAIL_ENTRY:
			return kvm_fail(fd, 3, EPROTO, "VM entry failed, hardware reason 0x%llx",
					(unsigned long long)run->fail_entry.hardware_entry_failure_reason);
		case KVM_EXIT_INTERNAL_ERROR:
			return kvm_fail(fd, 3, EPROTO, "KVM internal error, suberror %u", run->internal.suberror);
		case KVM_EXIT_SHUTDOWN:
			return kvm_fail(fd, 3, EPROTO, "guest triple-faulted (KVM_EXIT_SHUTDOWN)");
		default:
			return kvm_fail(fd, 3, EPROTO, "unexpected KVM exit %u", run->exit_reason);
		}
	}
out:
	munmap(run, (size_t)run_size);
	for (int i = 2; i >= 0; i--)
		close(fd[i]);
	munmap(code, CODE_SLOT_SIZE);
	return 0;
}

/* ------------------------------------------------------------------ main */

static void usage(FILE *f)
{
	fputs("usage: fcvm --socket PATH [memory] [handshake] [workload]\n"
	      "       fcvm --make-image FILE --size BYTES [--seed N]\n"
	      "\n"
	      "Plays Firecracker's side of the userfaultfd snapshot-restore handshake byte for\n"
	      "byte, then makes guest memory fault the way a resumed microVM would.  Prints one\n"
	      "JSON line on stdout and a summary on stderr.  Sizes take K/M/G suffixes.\n"
	      "\n"
	      "memory:\n"
	      "  --mem-size BYTES     guest memory in all (default: the --check image, else 64M)\n"
	      "  --regions N          split it into N regions, one mmap each (default 1)\n"
	      "  --offset-gap BYTES   skip BYTES of the image between regions' offsets\n"
	      "  --hugepages          2 MiB MAP_HUGETLB pages (raises vm.nr_hugepages if root)\n"
	      "handshake:\n"
	      "  --fc-version 1.N     1.1-1.6: base_host_virt_addr,size,offset; 1.7-1.11: adds\n"
	      "                       page_size_kib; 1.12+ (default): page_size and page_size_kib,\n"
	      "                       socket kept open (older ones close it right after sending)\n"
	      "  --uffd auto|syscall|dev  how to get the userfaultfd (auto: /dev/userfaultfd when\n"
	      "                       present, as Firecracker 1.6+ does; syscall before 1.6)\n"
	      "  --dev-uffd           same as --uffd dev\n"
	      "  --raw-json STRING    send STRING instead of the region mappings\n"
	      "  --no-fd              send no file descriptor\n"
	      "  --connect-retry SEC  retry while the socket is missing or refusing (default 5;\n"
	      "                       0 tries once, like Firecracker)\n"
	      "workload (default: send the handshake, then exit):\n"
	      "  --touch seq|random   read one byte of every page, timing each first access\n"
	      "  --threads N          touching threads, each a disjoint share (default 1)\n"
	      "  --stride BYTES       distance between reads (default: the page size)\n"
	      "  --seed N             seed for --touch random and --make-image (default 1)\n"
	      "  --check FILE         afterwards compare all guest memory with FILE, byte for byte\n"
	      "  --kvm                run a KVM guest that reads the memory (faults come\n"
	      "                       from KVM, not user space) and reports a checksum\n"
	      "  --span BYTES         with --kvm: bytes read at each stride point (default: all)\n"
	      "  --balloon OFF:LEN    after touching, MADV_DONTNEED guest bytes [OFF,OFF+LEN) as a\n"
	      "                       balloon inflate does; they must read back as zeros\n"
	      "  --disconnect-after N touch N pages, then exit at once\n"
	      "  --expect-sigbus      succeed only if some page raises SIGBUS (server poisoned it)\n"
	      "  --expect-close       after the handshake, wait for the server to close the socket\n"
	      "  --hold SEC           stay alive SEC seconds after the workload\n"
	      "  --timeout SEC        give up after SEC seconds in all (--hold aside), exit 124\n"
	      "                       (default 60)\n"
	      "  --quiet              no summary on stderr\n"
	      "  --no-uffd            baseline without a server: plain anonymous memory, loaded\n"
	      "                       eagerly from the --check image (pread) before the workload\n"
	      "\n"
	      "exit status: 0 ok, 1 failure or mismatch, 2 usage, 124 timeout\n",
	      f);
}

static void parse_args(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG(name) (!strcmp(a, name) && (v ? (i++, 1) : (die(2, "%s needs a value", name), 0)))
		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			usage(stdout);
			exit(0);
		} else if (ARG("--socket")) {
			opt.socket = v;
		} else if (ARG("--mem-size")) {
			opt.mem_size = need_size(a, v);
		} else if (ARG("--regions")) {
			uint64_t n = need_num(a, v);
			if (n < 1 || n > MAX_REGIONS)
				die(2, "--regions must be 1..%d", MAX_REGIONS);
			opt.regions = (int)n;
		} else if (ARG("--offset-gap")) {
			opt.offset_gap = need_size(a, v);
		} else if (!strcmp(a, "--hugepages")) {
			opt.hugepages = 1;
		} else if (ARG("--fc-version")) {
			unsigned maj, min;
			char c;
			if (sscanf(v, "%u.%u%c", &maj, &min, &c) != 2 && sscanf(v, "%u.%u.%*u%c", &maj, &min, &c) != 2)
				die(2, "--fc-version wants 1.N, e.g. 1.6, 1.10 or 1.12, not '%s'", v);
			if (maj != 1 || min < 1 || min > 99)
				die(2, "--fc-version: only Firecracker 1.1 and later send this handshake");
			opt.fc_minor = (int)min;
		} else if (ARG("--uffd")) {
			if (!strcmp(v, "auto"))
				opt.uffd_src = UFFD_AUTO;
			else if (!strcmp(v, "syscall"))
				opt.uffd_src = UFFD_SYSCALL;
			else if (!strcmp(v, "dev"))
				opt.uffd_src = UFFD_DEV;
			else
				die(2, "--uffd wants auto, syscall or dev");
		} else if (!strcmp(a, "--dev-uffd")) {
			opt.uffd_src = UFFD_DEV;
		} else if (ARG("--raw-json")) {
			opt.raw_json = v;
		} else if (!strcmp(a, "--no-fd")) {
			opt.no_fd = 1;
		} else if (ARG("--connect-retry")) {
			opt.connect_retry = need_secs(a, v);
		} else if (ARG("--timeout")) {
			opt.timeout = need_secs(a, v);
			if (opt.timeout <= 0)
				die(2, "--timeout must be more than 0");
		} else if (ARG("--touch")) {
			opt.touch = 1;
			if (!strcmp(v, "seq"))
				opt.order = ORDER_SEQ;
			else if (!strcmp(v, "random"))
				opt.order = ORDER_RANDOM;
			else
				die(2, "--touch wants seq or random");
		} else if (ARG("--threads")) {
			uint64_t n = need_num(a, v);
			if (n < 1 || n > MAX_THREADS)
				die(2, "--threads must be 1..%d", MAX_THREADS);
			opt.threads = (int)n;
		} else if (ARG("--stride")) {
			opt.stride = need_size(a, v);
			if (!opt.stride)
				die(2, "--stride must be more than 0");
		} else if (ARG("--seed")) {
			opt.seed = need_num(a, v);
		} else if (ARG("--check")) {
			opt.check = v;
		} else if (!strcmp(a, "--kvm")) {
			opt.kvm = 1;
		} else if (ARG("--span")) {
			opt.span = need_size(a, v);
		} else if (ARG("--balloon")) {
			const char *colon = strchr(v, ':');
			char off[64];
			if (!colon || (size_t)(colon - v) >= sizeof off)
				die(2, "--balloon wants OFF:LEN, e.g. 16M:8M");
			memcpy(off, v, (size_t)(colon - v));
			off[colon - v] = 0;
			opt.balloon_off = need_size("--balloon OFF", off);
			opt.balloon_len = need_size("--balloon LEN", colon + 1);
			opt.balloon = 1;
		} else if (ARG("--disconnect-after")) {
			opt.disconnect_after = need_num(a, v);
			if (!opt.disconnect_after)
				die(2, "--disconnect-after must be at least 1");
		} else if (!strcmp(a, "--expect-sigbus")) {
			opt.expect_sigbus = 1;
		} else if (!strcmp(a, "--expect-close")) {
			opt.expect_close = 1;
		} else if (ARG("--hold")) {
			opt.hold = need_secs(a, v);
		} else if (!strcmp(a, "--no-uffd")) {
			opt.no_uffd = 1;
		} else if (!strcmp(a, "--quiet") || !strcmp(a, "-q")) {
			opt.quiet = 1;
		} else if (ARG("--make-image")) {
			opt.make_image = v;
		} else if (ARG("--size")) {
			opt.image_size = need_size(a, v);
		} else {
			die(2, "unknown option '%s' (try --help)", a);
		}
#undef ARG
	}
}

static void check_args(void)
{
	if (opt.make_image) {
		if (!opt.image_size)
			die(2, "--make-image needs --size BYTES");
		return;
	}
	if (!opt.socket && !opt.no_uffd)
		die(2, "--socket PATH is required (try --help)");
	if (opt.no_uffd && (opt.socket || opt.raw_json || opt.no_fd || opt.expect_close || opt.expect_sigbus))
		die(2, "--no-uffd runs without a server: drop --socket, --raw-json, --no-fd, --expect-*");
	if (opt.kvm && (opt.balloon || opt.disconnect_after || opt.touch))
		die(2, "--kvm cannot be combined with --touch, --balloon or --disconnect-after");
	if (opt.balloon && opt.disconnect_after)
		die(2, "--balloon and --disconnect-after do not mix");
	if (opt.expect_close && opt.fc_minor < 12)
		die(2, "--expect-close needs --fc-version 1.12+ (older versions close the socket themselves)");
	if (!opt.kvm && (opt.check || opt.balloon || opt.disconnect_after || opt.expect_sigbus || opt.stride ||
			     opt.threads > 1))
		opt.touch = 1;
	unit = opt.hugepages ? HUGE_2M : PAGE_4K;
	if (opt.offset_gap % PAGE_4K)
		die(2, "--offset-gap must be a multiple of 4096");
	if (opt.balloon && (opt.balloon_off % unit || opt.balloon_len % unit || !opt.balloon_len))
		die(2, "--balloon OFF and LEN must be non-zero multiples of the page size (%" PRIu64 ")", unit);
}

int main(int argc, char **argv)
{
	setvbuf(stderr, NULL, _IOLBF, 0);
	parse_args(argc, argv);
	check_args();
	if (opt.make_image) {
		if (make_image() < 0)
			die(1, "%s", err_msg());
		return 0;
	}

	t_begin = now_ns();
	pthread_t wd;
	if (pthread_create(&wd, NULL, watchdog, NULL))
		die(1, "cannot start the watchdog thread");
	pthread_detach(wd);
	install_sigbus();

	if (opt.check && open_image() < 0)
		die(1, "%s", err_msg());
	total = opt.mem_size;
	if (!total)
		total = opt.check ? (img_size + unit - 1) / unit * unit : 64ull << 20;
	if (!total || total % unit)
		die(2, "--mem-size must be a non-zero multiple of the page size (%" PRIu64 ")", unit);
	if (opt.balloon && opt.balloon_off + opt.balloon_len > total)
		die(2, "--balloon range ends past the %" PRIu64 " bytes of guest memory", total);
	if (map_guest() < 0)
		die(1, "%s", err_msg());
	if (opt.check) {
		struct region *last = &regs[nregs - 1];
		uint64_t need = last->offset + last->size, have = (img_size + PAGE_4K - 1) / PAGE_4K * PAGE_4K;
		if (need > have)
			die(1, "%s is %" PRIu64 " bytes but the regions need %" PRIu64, opt.check, img_size, need);
	}

	uint64_t kstride = 0, kspan = 0;
	if (opt.kvm) {
		kstride = opt.stride ? opt.stride : unit;
		kspan = opt.span ? opt.span : kstride;
		if (kstride % 4 || kspan % 4 || !kspan || kspan > kstride || total % kstride)
			die(2, "--kvm: --stride must divide guest memory, --span must be 4..stride, both multiples of 4");
		if (DATA_GPA + total > DATA_END_MAX)
			die(2, "--kvm: guest memory must stay under %" PRIu64 " GiB",
			    (uint64_t)((DATA_END_MAX - DATA_GPA) >> 30));
	} else if (opt.touch && plan_touch() < 0) {
		die(2, "%s", err_msg());
	}

	if (opt.no_uffd) {
		if (opt.check && preload() < 0)
			die(1, "%s", err_msg());
		uffd_how = "none";
		t_connect = now_ns();
	} else {
		if (open_uffd() < 0 || connect_socket() < 0 || send_handshake() < 0)
			die(1, "%s", err_msg());
		if (opt.raw_json)
			note("sent a %zu-byte raw payload%s to %s", strlen(handshake_json), opt.no_fd ? ", no fd," : "",
			     opt.socket);
		else
			note("sent %zu-byte handshake (Firecracker 1.%d, %d region%s, %" PRIu64 " MiB, %s uffd%s) to %s",
			     strlen(handshake_json), opt.fc_minor, nregs, nregs == 1 ? "" : "s", total >> 20, uffd_how,
			     opt.no_fd ? ", fd withheld" : "", opt.socket);
	}

	int status = 0;
	if (opt.kvm) {
		struct kvm_result kr;
		if (run_kvm(kstride, kspan, &kr) < 0)
			die(1, "%s", err_msg());
		uint32_t want = 0;
		int sum_ok = -1;
		struct mismatch m = { 0 };
		if (!kr.sigbus && opt.check) {
			if (host_checksum(kstride, kspan, &want) < 0 || verify(0, total, 0, &m) < 0)
				die(1, "%s", err_msg());
			sum_ok = kr.got_sum && kr.sum == want;
		}
		print_common_json("kvm");
		printf(",\"guest_gpa\":%llu,\"stride\":%" PRIu64 ",\"span\":%" PRIu64 ",\"points\":%" PRIu64,
		       DATA_GPA, kstride, kspan, kr.points);
		if (kr.t_started)
			/* launch_ is from process start: what a user waits for, preload included. */
			printf(",\"first_insn_us\":%.1f,\"launch_to_first_insn_us\":%.1f,\"launch_to_end_s\":%.6f",
			       us(kr.t_started - kr.t_run0), us(kr.t_started - t_begin),
			       (double)(kr.t_end - t_begin) / 1e9);
		if (kr.t_first)
			printf(",\"first_page_us\":%.1f,\"connect_to_first_page_us\":%.1f", us(kr.t_first - kr.t_run0),
			       us(kr.t_first - t_connect));
		printf(",\"run_s\":%.6f,\"exits\":%" PRIu64, (double)(kr.t_end - kr.t_run0) / 1e9, kr.exits);
		if (kr.got_sum)
			printf(",\"checksum\":\"0x%08x\"", kr.sum);
		if (sum_ok >= 0)
			printf(",\"expected\":\"0x%08x\",\"check\":\"%s\"", want, sum_ok && !m.pages ? "ok" : "mismatch");
		if (kr.sigbus) {
			printf(",\"sigbus\":1,\"sigbus_how\":\"%s\"", kr.sigbus_how);
			if (kr.sigbus_addr)
				printf(",\"sigbus_addr\":\"0x%" PRIxPTR "\",\"sigbus_code\":%d", kr.sigbus_addr,
				       kr.sigbus_code);
		}
		printf("}\n");
		fflush(stdout);
		double run_s = (double)(kr.t_end - kr.t_run0) / 1e9;
		if (kr.sigbus) {
			note("guest hit a poisoned page (%s%s%" PRIxPTR ")", kr.sigbus_how, kr.sigbus_addr ? " at 0x" : "",
			     kr.sigbus_addr);
		} else {
			note("KVM guest read %" PRIu64 " MiB (%" PRIu64 " points, %" PRIu64 " bytes each) in %.3f s = %.1f us/point, "
			     "first instruction after %.1f us, %" PRIu64 " exits, checksum 0x%08x",
			     total >> 20, kr.points, kspan, run_s, run_s * 1e6 / (double)kr.points,
			     kr.t_started ? us(kr.t_started - kr.t_run0) : 0.0, kr.exits, kr.sum);
		}
		if (opt.expect_sigbus && !kr.sigbus)
			die(1, "expected SIGBUS, but the guest read every page");
		if (sum_ok == 0 && !m.pages)
			die(1, "guest checksum 0x%08x, image says 0x%08x", kr.sum, want);
		if (m.pages) {
			report_mismatch(&m, "guest memory does not match the image");
			die(1, "%s", err_msg());
		}
		if (sum_ok == 1)
			note("checksum and every byte match %s", opt.check);
	} else if (opt.touch) {
		if (run_touch() < 0)
			die(1, "%s", err_msg());
		struct stats st;
		compute_stats(&st);
		int who;
		uint64_t nbus = sigbus_count(&who);
		struct mismatch m = { 0 }, mz = { 0 };
		uint64_t t_madv0 = 0, t_madv1 = 0, t_zero0 = 0, t_zero1 = 0;
		if (opt.balloon) {
			atomic_store(&phase, PH_MADVISE);
			t_madv0 = now_ns();
			for (uint64_t g = opt.balloon_off, end = opt.balloon_off + opt.balloon_len; g < end;) {
				struct region *r = region_of(g);
				uint64_t n = r->goff + r->size - g;
				if (n > end - g)
					n = end - g;
				if (madvise(guest_ptr(g), n, MADV_DONTNEED) < 0)
					die(1, "madvise(MADV_DONTNEED) at guest offset 0x%" PRIx64 ": %s", g, strerror(errno));
				g += n;
			}
			t_madv1 = t_zero0 = now_ns();
			if (verify(opt.balloon_off, opt.balloon_off + opt.balloon_len, 1, &mz) < 0)
				die(1, "%s", err_msg());
			t_zero1 = now_ns();
		}
		uint64_t t_check0 = now_ns();
		if (opt.check) {
			uint64_t bo = opt.balloon ? opt.balloon_off : total, be = opt.balloon ? bo + opt.balloon_len : total;
			if (verify(0, bo, 0, &m) < 0 || verify(be, total, 0, &m) < 0)
				die(1, "%s", err_msg());
		}
		uint64_t t_check1 = now_ns();

		double secs = (double)(t_touch1 - t_touch0) / 1e9;
		print_common_json(opt.balloon ? "balloon" : "touch");
		printf(",\"order\":\"%s\",\"threads\":%d,\"stride\":%" PRIu64 ",\"items\":%" PRIu64 ",\"touch_s\":%.6f,\"mb_per_s\":%.1f",
		       opt.order == ORDER_RANDOM ? "random" : "seq", nworkers, opt.stride, nitems, secs,
		       secs > 0 ? (double)(st.n * unit) / secs / 1e6 : 0.0);
		if (t_first_touch != UINT64_MAX)
			/* launch_ is from process start, as for --kvm (preload included). */
			printf(",\"connect_to_first_touch_us\":%.1f,\"launch_to_first_touch_us\":%.1f",
			       us(t_first_touch - t_connect), us(t_first_touch - t_begin));
		printf(",\"launch_to_end_s\":%.6f", (double)(t_touch1 - t_begin) / 1e9);
		print_lat_json(&st);
		/* the check reads every page, the touch maybe not (--stride) */
		uint64_t npoison = opt.check && m.poisoned > nbus ? m.poisoned : nbus;
		if (opt.expect_sigbus || nbus) {
			printf(",\"sigbus_pages\":%" PRIu64, npoison);
			if (who >= 0)
				printf(",\"first_sigbus_addr\":\"0x%" PRIxPTR "\",\"first_sigbus_image_offset\":%" PRIu64
				       ",\"first_sigbus_code\":%d",
				       workers[who].first_sigbus_addr, image_off(workers[who].first_sigbus_goff),
				       workers[who].first_sigbus_code);
		}
		if (opt.balloon)
			printf(",\"balloon\":{\"off\":%" PRIu64 ",\"len\":%" PRIu64 ",\"madvise_us\":%.1f,\"readback_s\":%.6f,\"zero\":%s}",
			       opt.balloon_off, opt.balloon_len, us(t_madv1 - t_madv0), (double)(t_zero1 - t_zero0) / 1e9,
			       mz.pages ? "false" : "true");
		if (opt.check)
			printf(",\"check\":\"%s\",\"check_s\":%.6f", m.pages ? "mismatch" : "ok", (double)(t_check1 - t_check0) / 1e9);
		printf("}\n");
		fflush(stdout);

		note("touched %" PRIu64 " of %" PRIu64 " items (%s, %d thread%s, stride %" PRIu64 ") in %.3f s: "
		     "p50 %.1f us, p90 %.1f us, p99 %.1f us, max %.1f us, mean %.1f us",
		     st.n, nitems, opt.order == ORDER_RANDOM ? "random" : "seq", nworkers, nworkers == 1 ? "" : "s",
		     opt.stride, secs, us(st.p50), us(st.p90), us(st.p99), us(st.max),
		     st.n ? us(st.sum) / (double)st.n : 0.0);
		if (t_first_touch != UINT64_MAX)
			note("first touch done %.1f us after connect", us(t_first_touch - t_connect));
		if (opt.balloon)
			note("balloon: madvise of %" PRIu64 " KiB took %.1f us; read back in %.3f s", opt.balloon_len >> 10,
			     us(t_madv1 - t_madv0), (double)(t_zero1 - t_zero0) / 1e9);
		if (mz.pages) {
			report_mismatch(&mz, "ballooned range does not read as zeros");
			die(1, "%s", err_msg());
		}
		if (m.pages) {
			report_mismatch(&m, "guest memory does not match the image");
			die(1, "%s", err_msg());
		}
		if (opt.check)
			note("every byte matches %s", opt.check);
		if (opt.expect_sigbus) {
			if (!npoison)
				die(1, "expected SIGBUS, but every page read fine");
			if (who >= 0)
				note("SIGBUS on %" PRIu64 " page%s, first at 0x%" PRIxPTR " (image offset 0x%" PRIx64 ")",
				     npoison, npoison == 1 ? "" : "s", workers[who].first_sigbus_addr,
				     image_off(workers[who].first_sigbus_goff));
			else
				note("SIGBUS on %" PRIu64 " page%s while checking", npoison, npoison == 1 ? "" : "s");
		} else if (nbus) {
			status = 1;
		}
	} else {
		print_common_json("handshake");
		printf("}\n");
		fflush(stdout);
	}

	if (opt.expect_close) {
		atomic_store(&phase, PH_CLOSE);
		char b[256];
		size_t extra = 0;
		for (;;) {
			ssize_t n = recv(sock, b, sizeof b, 0);
			if (n > 0) {
				extra += (size_t)n;
				continue;
			}
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0 && errno != ECONNRESET)
				die(1, "recv from %s: %s", opt.socket, strerror(errno));
			break;
		}
		note("server closed the socket after %.1f ms%s", (double)(now_ns() - t_sent) / 1e6,
		     extra ? " (after sending us data)" : "");
	}
	if (opt.hold > 0) {
		atomic_store(&phase, PH_HOLD);
		usleep((useconds_t)(opt.hold * 1e6));
	}
	return status;
}
