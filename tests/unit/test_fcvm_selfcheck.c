/* test_fcvm_selfcheck.c - holds tests/tools/fcvm to Firecracker's handshake.
 *
 * It plays a receiver, not a page server: accept, one recvmsg, then check the
 * payload byte for byte against serde_json's formatting for each Firecracker
 * line, that the fd is a non-blocking userfaultfd, that the regions tile guest
 * memory with the right offsets, and that the socket stays open (1.12+) or
 * is closed right after sending (older).  fcvm sends and exits without
 * touching memory, so no faults need serving.  Also checks that --make-image
 * is deterministic.  Skips (77) when build/tools/fcvm is not built.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../../common/err.h"
#include "check.h"

static char fcvm[PATH_MAX], dir[] = "/tmp/fcvm-selfcheck.XXXXXX";

struct got {
	char msg[65536];
	ssize_t len;
	int fd;	       /* received fd, -1 if none */
	int closed;    /* peer closed the stream soon after sending */
	int status;    /* fcvm's exit status */
};

static pid_t spawn(char **argv)
{
	pid_t pid = fork();
	if (pid == 0) {
		int null = open("/dev/null", O_WRONLY);
		dup2(null, 1);
		dup2(null, 2);
		execv(fcvm, argv);
		_exit(127);
	}
	return pid;
}

/* Run fcvm with extra args against a fresh listening socket; collect what
 * it sends. */
static int exchange(struct got *g, const char *const *extra)
{
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s/s.sock", dir);
	unlink(path);
	int ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
	if (ls < 0 || bind(ls, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(ls, 1) < 0)
		return -1;
	char *argv[32];
	int n = 0;
	argv[n++] = fcvm;
	argv[n++] = "--socket";
	argv[n++] = path;
	argv[n++] = "--connect-retry";
	argv[n++] = "0";
	argv[n++] = "--timeout";
	argv[n++] = "20";
	argv[n++] = "--hold"; /* lets us tell "closed the socket" from "exited" */
	argv[n++] = "0.7";
	for (int i = 0; extra[i] && n < 31; i++)
		argv[n++] = (char *)extra[i];
	argv[n] = NULL;
	pid_t pid = spawn(argv);

	memset(g, 0, sizeof *g);
	g->fd = -1;
	struct pollfd p = { ls, POLLIN, 0 };
	int c = poll(&p, 1, 10000) == 1 ? accept4(ls, NULL, NULL, SOCK_CLOEXEC) : -1;
	close(ls);
	if (c >= 0) {
		char ctl[CMSG_SPACE(4 * sizeof(int))];
		struct iovec iov = { g->msg, sizeof g->msg - 1 };
		struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof ctl };
		p = (struct pollfd){ c, POLLIN, 0 };
		poll(&p, 1, 10000);
		g->len = recvmsg(c, &m, MSG_CMSG_CLOEXEC);
		if (g->len >= 0)
			g->msg[g->len] = 0;
		for (struct cmsghdr *cm = CMSG_FIRSTHDR(&m); cm; cm = CMSG_NXTHDR(&m, cm))
			if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS)
				memcpy(&g->fd, CMSG_DATA(cm), sizeof(int));
		/* fcvm holds for 0.7 s after sending: EOF well before that means it
		 * closed the stream itself. */
		p = (struct pollfd){ c, POLLIN, 0 };
		char x;
		g->closed = poll(&p, 1, 400) == 1 && recv(c, &x, 1, MSG_DONTWAIT) == 0;
		close(c);
	}
	int st = 0;
	waitpid(pid, &st, 0);
	g->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
	unlink(path);
	return c >= 0 ? 0 : -1;
}

static int is_nonblocking_uffd(int fd)
{
	char link[64], target[128];
	snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
	ssize_t n = readlink(link, target, sizeof target - 1);
	if (n < 0)
		return 0;
	target[n] = 0;
	int fl = fcntl(fd, F_GETFL);
	return !strcmp(target, "anon_inode:[userfaultfd]") && fl >= 0 && (fl & O_NONBLOCK);
}

/* Parse the regions out of the payload, then print them back the way
 * serde_json prints Vec<GuestRegionUffdMapping> for this version; equality
 * proves byte-exact formatting.  Returns the number of regions or -1. */
static int check_format(const char *msg, int minor, uint64_t page, uint64_t *base, uint64_t *size, uint64_t *off)
{
	char again[65536];
	size_t len = 0;
	int n = 0;
	const char *p = msg;
	if (*p++ != '[')
		return -1;
	again[len++] = '[';
	while (*p == '{' && n < 64) {
		unsigned long long b, s, o;
		int used = 0;
		if (sscanf(p, "{\"base_host_virt_addr\":%llu,\"size\":%llu,\"offset\":%llu%n", &b, &s, &o, &used) != 3)
			return -1;
		base[n] = b, size[n] = s, off[n] = o;
		len += (size_t)snprintf(again + len, sizeof again - len,
					"%s{\"base_host_virt_addr\":%llu,\"size\":%llu,\"offset\":%llu", n ? "," : "", b, s, o);
		if (minor >= 12)
			len += (size_t)snprintf(again + len, sizeof again - len,
						",\"page_size\":%" PRIu64 ",\"page_size_kib\":%" PRIu64, page, page);
		else if (minor >= 7)
			len += (size_t)snprintf(again + len, sizeof again - len, ",\"page_size_kib\":%" PRIu64, page);
		again[len++] = '}';
		n++;
		p = strchr(p, '}');
		if (!p)
			return -1;
		p++;
		if (*p == ',')
			p++;
	}
	again[len++] = ']';
	again[len] = 0;
	return strcmp(again, msg) ? -1 : n;
}

static void handshake_case(const char *ver, int minor, const char *mem, uint64_t mem_bytes, const char *regions,
			   int nreg, const char *gap, uint64_t gap_bytes, int huge)
{
	const char *args[16] = { "--fc-version", ver, "--mem-size", mem, "--regions", regions };
	int n = 6;
	if (gap)
		args[n++] = "--offset-gap", args[n++] = gap;
	if (huge)
		args[n++] = "--hugepages";
	args[n] = NULL;
	struct got g;
	uint64_t page = huge ? 2u << 20 : 4096, base[64], size[64], off[64];
	CHECK(exchange(&g, args) == 0);
	CHECK(g.status == 0);
	CHECK(g.len > 0);
	int got = check_format(g.msg, minor, page, base, size, off);
	if (got != nreg)
		fprintf(stderr, "fcvm %s sent: %s\n", ver, g.msg);
	CHECK(got == nreg);
	CHECK(g.fd >= 0 && is_nonblocking_uffd(g.fd));
	CHECK(g.closed == (minor < 12));
	uint64_t sum = 0, want_off = 0;
	for (int i = 0; i < got; i++) {
		CHECK(size[i] % page == 0 && base[i] % page == 0);
		CHECK(off[i] == want_off);
		want_off += size[i] + gap_bytes;
		sum += size[i];
		for (int j = 0; j < i; j++) /* no two regions overlap */
			CHECK(base[i] + size[i] <= base[j] || base[j] + size[j] <= base[i]);
	}
	CHECK(sum == mem_bytes);
	if (g.fd >= 0)
		close(g.fd);
}

static int file_eq(const char *a, const char *b)
{
	FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
	int eq = fa && fb;
	while (eq) {
		int x = fgetc(fa), y = fgetc(fb);
		if (x != y)
			eq = 0;
		if (x == EOF || y == EOF)
			break;
	}
	if (fa)
		fclose(fa);
	if (fb)
		fclose(fb);
	return eq;
}

static int run_quiet(char **argv)
{
	int st;
	pid_t pid = spawn(argv);
	waitpid(pid, &st, 0);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void image_case(void)
{
	char a[PATH_MAX], b[PATH_MAX], c[PATH_MAX];
	snprintf(a, sizeof a, "%s/a.img", dir);
	snprintf(b, sizeof b, "%s/b.img", dir);
	snprintf(c, sizeof c, "%s/c.img", dir);
	char *ga[] = { fcvm, "--make-image", a, "--size", "5000001", "--seed", "5", NULL };
	char *gb[] = { fcvm, "--make-image", b, "--size", "5000001", "--seed", "5", NULL };
	char *gc[] = { fcvm, "--make-image", c, "--size", "5000001", "--seed", "6", NULL };
	CHECK(run_quiet(ga) == 0 && run_quiet(gb) == 0 && run_quiet(gc) == 0);
	struct stat st;
	CHECK(stat(a, &st) == 0 && st.st_size == 5000001);
	CHECK(file_eq(a, b));
	CHECK(!file_eq(a, c));
	/* some page carries its own offset and the tag: that is what lets a
	 * failed check say which page it got instead */
	FILE *f = fopen(a, "rb");
	int stamped = 0;
	uint8_t pg[4096];
	for (uint64_t off = 0; f && fread(pg, 1, sizeof pg, f) == sizeof pg; off += sizeof pg) {
		uint64_t o, tag;
		memcpy(&o, pg, 8);
		memcpy(&tag, pg + 8, 8);
		if (tag == 0x6663766d50414745ull && o == off)
			stamped++;
	}
	if (f)
		fclose(f);
	CHECK(stamped > 0);
	unlink(a);
	unlink(b);
	unlink(c);
}

int main(void)
{
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
	if (n <= 0)
		return 77;
	self[n] = 0;
	*strrchr(self, '/') = 0;
	snprintf(fcvm, sizeof fcvm, "%s/../tools/fcvm", self);
	if (access(fcvm, X_OK) < 0) {
		fprintf(stderr, "SKIP: %s is not built\n", fcvm);
		return 77;
	}
	if (access("/dev/userfaultfd", R_OK | W_OK) < 0 && geteuid() != 0) {
		fprintf(stderr, "SKIP: no userfaultfd for this user\n");
		return 77;
	}
	if (!mkdtemp(dir))
		return 1;
	signal(SIGPIPE, SIG_IGN);
	alarm(120);

	handshake_case("1.6", 6, "8M", 8u << 20, "1", 1, NULL, 0, 0);
	handshake_case("1.10", 10, "8M", 8u << 20, "2", 2, NULL, 0, 0);
	handshake_case("1.12", 12, "12M", 12u << 20, "3", 3, NULL, 0, 0);
	handshake_case("1.12", 12, "8M", 8u << 20, "2", 2, "1M", 1u << 20, 0);
	handshake_case("1.16", 16, "8M", 8u << 20, "1", 1, NULL, 0, 0);

	/* a raw payload and no fd go out exactly as given */
	struct got g;
	const char *raw[] = { "--raw-json", "[{\"size\":", "--no-fd", NULL };
	CHECK(exchange(&g, raw) == 0);
	CHECK(g.len == 9 && !strcmp(g.msg, "[{\"size\":"));
	CHECK(g.fd < 0);
	CHECK(g.status == 0);

	image_case();
	rmdir(dir);
	return check_summary("test_fcvm_selfcheck");
}
