/* test_handshake.c - the Firecracker UFFD handshake parser and receiver:
 * every field set Firecracker has sent, and the malformed messages a handler
 * must refuse (with a message naming what is wrong). */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../../common/err.h"
#include "../../uffd/handshake.h"
#include "check.h"

#define GiB (1ull << 30)
#define MiB (1ull << 20)

static int parse(const char *json, uint64_t image, struct hs_msg *m)
{
	return hs_parse(json, strlen(json), image, m);
}

/* Refused, and the message mentions `needle`. */
static void refused(const char *json, uint64_t image, const char *needle)
{
	struct hs_msg m;
	int rc = parse(json, image, &m);
	CHECK(rc == -EINVAL);
	if (rc == 0) {
		fprintf(stderr, "  accepted: %s\n", json);
		hs_free(&m);
	} else if (needle && !strstr(err_msg(), needle)) {
		fprintf(stderr, "  message \"%s\" lacks \"%s\" (input %s)\n", err_msg(), needle, json);
		CHECK(0);
	}
}

static void field_sets(void)
{
	struct hs_msg m;
	/* v1.1-1.6: no page size field means 4 KiB pages. */
	CHECK_RC(parse("[{\"base_host_virt_addr\":140737488289792,\"size\":134217728,\"offset\":0}]", GiB, &m));
	CHECK(m.n == 1 && m.r[0].base == 140737488289792ull && m.r[0].size == 134217728 && m.r[0].offset == 0 &&
	      m.r[0].page_size == 4096 && m.fields == 0);
	hs_free(&m);

	/* v1.7-1.11: page_size_kib carries bytes. */
	CHECK_RC(parse("[{\"base_host_virt_addr\":1073741824,\"size\":4194304,\"offset\":0,\"page_size_kib\":2097152},"
		       "{\"base_host_virt_addr\":2147483648,\"size\":2097152,\"offset\":4194304,\"page_size_kib\":2097152}]",
		       GiB, &m));
	CHECK(m.n == 2 && m.r[0].page_size == 2 * MiB && m.r[1].page_size == 2 * MiB && m.fields == HS_F_PAGE_SIZE_KIB);
	CHECK(m.r[1].offset == 4194304);
	hs_free(&m);
	CHECK_RC(parse("[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0,\"page_size_kib\":4096}]", GiB, &m));
	CHECK(m.n == 1 && m.r[0].page_size == 4096);
	hs_free(&m);
	/* A literal KiB count cannot be confused with bytes: accept it. */
	CHECK_RC(parse("[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0,\"page_size_kib\":4}]", GiB, &m));
	CHECK(m.n == 1 && m.r[0].page_size == 4096);
	hs_free(&m);

	/* v1.12+: page_size; and builds that send both. */
	CHECK_RC(parse(" [ {\"size\" : 8192 , \"offset\":8192, \"page_size\":4096,\"base_host_virt_addr\":65536} ]\n",
		       16384, &m));
	CHECK(m.n == 1 && m.r[0].base == 65536 && m.r[0].offset == 8192 && m.fields == HS_F_PAGE_SIZE);
	hs_free(&m);
	CHECK_RC(parse("[{\"base_host_virt_addr\":0,\"size\":2097152,\"offset\":0,\"page_size\":4096,\"page_size_kib\":4096},"
		       "{\"base_host_virt_addr\":2097152,\"size\":2097152,\"offset\":2097152,\"page_size\":2097152,"
		       "\"page_size_kib\":2097152}]",
		       4 * MiB, &m));
	CHECK(m.n == 2 && m.fields == (HS_F_PAGE_SIZE | HS_F_PAGE_SIZE_KIB) && m.r[1].page_size == 2 * MiB);
	hs_free(&m);

	/* Unknown keys are skipped whatever their type; regions come back sorted by address. */
	CHECK_RC(parse("[{\"base_host_virt_addr\":1048576,\"size\":4096,\"offset\":4096,\"future\":{\"a\":[1,2,{\"b\":null}],"
		       "\"s\":\"x\\\"y\\u0041\"},\"flag\":true,\"neg\":-1.5e3},"
		       "{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0,\"z\":false}]",
		       8192, &m));
	CHECK(m.n == 2 && m.r[0].base == 4096 && m.r[0].offset == 0 && m.r[1].base == 1048576);
	hs_free(&m);

	/* Escaped key names still match; a trailing NUL is tolerated. */
	static const char esc[] = "[{\"b\\u0061se_host_virt_addr\":4096,\"size\":4096,\"offset\":0}]\0";
	CHECK_RC(hs_parse(esc, sizeof esc, 4096, &m)); /* sizeof: both NULs */
	CHECK(m.n == 1 && m.r[0].base == 4096);
	hs_free(&m);

	/* Offsets exactly at the end of the image are fine. */
	CHECK_RC(parse("[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":4096}]", 8192, &m));
	hs_free(&m);
}

static void malformed(void)
{
	/* Not JSON, or not the shape. */
	refused("", GiB, "expected");
	refused("   ", GiB, "ends early");
	refused("{\"base_host_virt_addr\":0}", GiB, "array");
	refused("[", GiB, "ends early");
	refused("[{", GiB, NULL);
	refused("[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0}", GiB, "']'");
	refused("[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0},]", GiB, "region 1");
	refused("[{\"base_host_virt_addr\":4096 \"size\":4096,\"offset\":0}]", GiB, "region 0");
	refused("[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0}] x", GiB, "after the region array");
	refused("[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0}][]", GiB, "after");
	refused("[1]", GiB, "region 0");
	refused("[{\"base_host_virt_addr\":\"4096\",\"size\":4096,\"offset\":0}]", GiB, "not a number");
	refused("[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0,\"x\":tru}]", GiB, "unexpected token");
	refused("[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0,\"x\":\"a\nb\"}]", GiB, "control character");
	refused("[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0,\"x\":\"\\q\"}]", GiB, "bad escape");
	refused("[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0,\"x\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["
		"]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}]",
		GiB, "nests deeper");
	/* Empty array. */
	refused("[]", GiB, "no regions");
	refused(" [ ] ", GiB, "no regions");
	/* Missing fields. */
	refused("[{\"size\":4096,\"offset\":0}]", GiB, "missing field 'base_host_virt_addr'");
	refused("[{\"base_host_virt_addr\":4096,\"offset\":0}]", GiB, "missing field 'size'");
	refused("[{\"base_host_virt_addr\":4096,\"size\":4096}]", GiB, "missing field 'offset'");
	refused("[{}]", GiB, "missing field");
	refused("[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0,\"size\":8192}]", GiB, "appears twice");
	/* Numbers that are not what they should be. */
	refused("[{\"base_host_virt_addr\":-4096,\"size\":4096,\"offset\":0}]", GiB, "non-negative integer");
	refused("[{\"base_host_virt_addr\":4096.0,\"size\":4096,\"offset\":0}]", GiB, "non-negative integer");
	refused("[{\"base_host_virt_addr\":4096,\"size\":4e3,\"offset\":0}]", GiB, "non-negative integer");
	refused("[{\"base_host_virt_addr\":04096,\"size\":4096,\"offset\":0}]", GiB, "leading zero");
	refused("[{\"base_host_virt_addr\":18446744073709551616,\"size\":4096,\"offset\":0}]", GiB, "64 bits");
	refused("[{\"base_host_virt_addr\":99999999999999999999999999,\"size\":4096,\"offset\":0}]", GiB, "64 bits");
	refused("[{\"base_host_virt_addr\":18446744073709547520,\"size\":4096,\"offset\":0}]", GiB, "user address");
	refused("[{\"base_host_virt_addr\":4096,\"size\":18446744073709547520,\"offset\":0}]", ~0ull, "user address");
	refused("[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":18446744073709547520}]", ~0ull, "beyond");
	/* Page sizes. */
	refused("[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0,\"page_size\":8192}]", GiB, "neither");
	refused("[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0,\"page_size\":0}]", GiB, "neither");
	refused("[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0,\"page_size_kib\":1}]", GiB, "neither");
	refused("[{\"base_host_virt_addr\":2097152,\"size\":2097152,\"offset\":0,\"page_size\":2097152,"
		"\"page_size_kib\":4096}]",
		GiB, "disagrees");
	/* Alignment. */
	refused("[{\"base_host_virt_addr\":4097,\"size\":4096,\"offset\":0}]", GiB, "not aligned");
	refused("[{\"base_host_virt_addr\":4096,\"size\":4095,\"offset\":0}]", GiB, "not aligned");
	refused("[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":512}]", GiB, "not aligned");
	refused("[{\"base_host_virt_addr\":4096,\"size\":2097152,\"offset\":0,\"page_size\":2097152}]", GiB,
		"not aligned");
	refused("[{\"base_host_virt_addr\":2097152,\"size\":2097152,\"offset\":4096,\"page_size\":2097152}]", GiB,
		"not aligned");
	refused("[{\"base_host_virt_addr\":4096,\"size\":0,\"offset\":0}]", GiB, "empty");
	/* Overlaps, in address and in image offset. */
	refused("[{\"base_host_virt_addr\":4096,\"size\":8192,\"offset\":0},"
		"{\"base_host_virt_addr\":8192,\"size\":4096,\"offset\":8192}]",
		GiB, "overlap");
	refused("[{\"base_host_virt_addr\":65536,\"size\":4096,\"offset\":0},"
		"{\"base_host_virt_addr\":65536,\"size\":4096,\"offset\":4096}]",
		GiB, "overlap");
	refused("[{\"base_host_virt_addr\":65536,\"size\":8192,\"offset\":0},"
		"{\"base_host_virt_addr\":1048576,\"size\":4096,\"offset\":4096}]",
		GiB, "both map image bytes");
	/* Beyond the image. */
	refused("[{\"base_host_virt_addr\":4096,\"size\":8192,\"offset\":0}]", 4096, "beyond the 4096-byte memory image");
	refused("[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":4096}]", 4096, "beyond");
	refused("[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0},"
		"{\"base_host_virt_addr\":1048576,\"size\":4096,\"offset\":1073741824}]",
		GiB, "region 1");
	/* Too many regions. */
	{
		static char big[HS_MAX_MSG * 2];
		size_t n = 0;
		n += (size_t)sprintf(big + n, "[");
		for (int i = 0; i <= HS_MAX_REGIONS; i++)
			n += (size_t)sprintf(big + n, "%s{\"base_host_virt_addr\":%d,\"size\":4096,\"offset\":%d}",
					     i ? "," : "", (i + 1) * 4096, i * 4096);
		sprintf(big + n, "]");
		refused(big, GiB, "more than");
	}
}

static void value_len(void)
{
	CHECK(hs_value_len("", 0) == 0);
	CHECK(hs_value_len("  [", 3) == 0);
	CHECK(hs_value_len("[]", 2) == 2);
	CHECK(hs_value_len(" [{\"a\":\"]\"}] trailing", 21) == 12);
	CHECK(hs_value_len("[\"\\\"]\"]", 7) == 7);
	CHECK(hs_value_len("{}", 2) == -EINVAL);
}

static int send_fds(int sock, const char *data, size_t len, const int *fds, int nfds)
{
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(sizeof(int) * 8)];
	} ctl;
	struct iovec iov = { (void *)data, len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (nfds) {
		mh.msg_control = ctl.b;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
		memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)nfds);
	}
	return sendmsg(sock, &mh, 0) == (ssize_t)len ? 0 : -1;
}

static int count_open_fds(void)
{
	int n = 0;
	for (int f = 0; f < 1024; f++)
		n += fcntl(f, F_GETFD) >= 0;
	return n;
}

static void receive(void)
{
	static char buf[HS_MAX_MSG];
	const char *msg = "[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0}]";
	int sv[2], pfd[2], fd;
	size_t len;
	CHECK(pipe(pfd) == 0);
	int base = count_open_fds();

	/* One message, one descriptor: Firecracker's case. */
	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
	CHECK(send_fds(sv[1], msg, strlen(msg), &pfd[0], 1) == 0);
	CHECK_RC(hs_recv(sv[0], 1000, buf, sizeof buf, &len, &fd));
	CHECK(len == strlen(msg) && !memcmp(buf, msg, len) && fd >= 0 && fd != pfd[0]);
	if (fd >= 0)
		close(fd);
	close(sv[0]);
	close(sv[1]);

	/* The body split over several writes, the descriptor on the first. */
	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
	CHECK(send_fds(sv[1], msg, 10, &pfd[0], 1) == 0);
	CHECK(write(sv[1], msg + 10, strlen(msg) - 10) == (ssize_t)(strlen(msg) - 10));
	CHECK_RC(hs_recv(sv[0], 1000, buf, sizeof buf, &len, &fd));
	CHECK(len == strlen(msg) && fd >= 0);
	if (fd >= 0)
		close(fd);
	close(sv[0]);
	close(sv[1]);

	/* No descriptor. */
	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
	CHECK(send_fds(sv[1], msg, strlen(msg), NULL, 0) == 0);
	CHECK(hs_recv(sv[0], 1000, buf, sizeof buf, &len, &fd) == -EPROTO && strstr(err_msg(), "without a userfaultfd"));
	close(sv[0]);
	close(sv[1]);

	/* Three descriptors (secret-free guest_memfd mode): refused, all closed. */
	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
	int three[3] = { pfd[0], pfd[1], pfd[0] };
	CHECK(send_fds(sv[1], msg, strlen(msg), three, 3) == 0);
	CHECK(hs_recv(sv[0], 1000, buf, sizeof buf, &len, &fd) == -EPROTO && strstr(err_msg(), "guest_memfd"));
	close(sv[0]);
	close(sv[1]);

	/* A client that sends half a message and goes quiet times out. */
	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
	CHECK(send_fds(sv[1], msg, 10, &pfd[0], 1) == 0);
	CHECK(hs_recv(sv[0], 100, buf, sizeof buf, &len, &fd) == -ETIMEDOUT);
	close(sv[1]);
	close(sv[0]);

	/* A client that connects and closes. */
	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
	close(sv[1]);
	CHECK(hs_recv(sv[0], 1000, buf, sizeof buf, &len, &fd) == -EPROTO && strstr(err_msg(), "closed"));
	close(sv[0]);

	/* Not an array: refused at once, no waiting for more bytes. */
	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
	CHECK(send_fds(sv[1], "{\"x\":1}", 7, &pfd[0], 1) == 0);
	CHECK(hs_recv(sv[0], 5000, buf, sizeof buf, &len, &fd) == -EINVAL);
	close(sv[0]);
	close(sv[1]);

	/* No descriptor leaked on any path. */
	CHECK(count_open_fds() == base);
	close(pfd[0]);
	close(pfd[1]);
}

int main(void)
{
	field_sets();
	malformed();
	value_len();
	receive();
	return check_summary("test_handshake");
}
