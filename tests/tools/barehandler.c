/* barehandler.c - the benchmarks' baseline: a bare userfaultfd page handler in
 * the style of Firecracker's example handler.  It takes one Firecracker
 * handshake, maps the memory image file, and answers each fault with one
 * UFFDIO_COPY of the one faulting page, sleeping in poll between faults.
 * Nothing fetched ahead, nothing in the background: what "no design" costs. */
#include <fcntl.h>
#include <getopt.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "../../common/err.h"
#include "../../uffd/handshake.h"

static int die(const char *what)
{
	fprintf(stderr, "barehandler: %s: %s\n", what, err_msg()[0] ? err_msg() : strerror(errno));
	return 1;
}

int main(int argc, char **argv)
{
	const char *sock_path = NULL, *image = NULL, *ready = NULL;
	static const struct option opts[] = { { "socket", 1, 0, 's' }, { "image", 1, 0, 'i' },
					      { "ready-file", 1, 0, 'r' }, { "help", 0, 0, 'h' }, { 0, 0, 0, 0 } };
	int c;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 's': sock_path = optarg; break;
		case 'i': image = optarg; break;
		case 'r': ready = optarg; break;
		case 'h':
			printf("usage: barehandler --socket PATH --image FILE [--ready-file F]\n"
			       "Serve one client's faults one page at a time from FILE (bench baseline).\n");
			return 0;
		default: return 2;
		}
	}
	if (!sock_path || !image) {
		fprintf(stderr, "barehandler: --socket and --image are required\n");
		return 2;
	}
	int ifd = open(image, O_RDONLY);
	struct stat st;
	if (ifd < 0 || fstat(ifd, &st) < 0)
		return die(image);
	uint8_t *img = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, ifd, 0);
	if (img == MAP_FAILED)
		return die("mmap image");
	int ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock_path);
	unlink(sock_path);
	if (ls < 0 || bind(ls, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(ls, 1) < 0)
		return die(sock_path);
	if (ready) {
		FILE *f = fopen(ready, "w");
		if (f)
			fclose(f);
	}
	int cs = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
	if (cs < 0)
		return die("accept");
	char buf[HS_MAX_MSG];
	size_t len;
	int uffd;
	struct hs_msg m;
	if (hs_recv(cs, 5000, buf, sizeof buf, &len, &uffd) < 0 || hs_parse(buf, len, (uint64_t)st.st_size, &m) < 0)
		return die("handshake");
	uint64_t faults = 0;
	struct pollfd p[2] = { { .fd = uffd, .events = POLLIN }, { .fd = cs, .events = POLLIN } };
	for (;;) {
		if (poll(p, 2, -1) < 0)
			continue;
		if (p[1].revents & (POLLHUP | POLLERR | POLLIN)) {
			char b;
			if (recv(cs, &b, 1, MSG_DONTWAIT) == 0)
				break; /* the VM is gone */
		}
		if (!(p[0].revents & POLLIN))
			continue;
		struct uffd_msg msg;
		ssize_t n = read(uffd, &msg, sizeof msg);
		if (n == 0)
			break;
		if (n != sizeof msg || msg.event != UFFD_EVENT_PAGEFAULT)
			continue;
		uint64_t a = msg.arg.pagefault.address;
		for (size_t i = 0; i < m.n; i++) {
			struct hs_region *r = &m.r[i];
			if (a < r->base || a >= r->base + r->size)
				continue;
			uint64_t page = a & ~(r->page_size - 1);
			struct uffdio_copy cp = { .dst = page, .src = (uint64_t)(uintptr_t)(img + r->offset + (page - r->base)),
						  .len = r->page_size };
			if (ioctl(uffd, UFFDIO_COPY, &cp) < 0 && errno != EEXIST)
				fprintf(stderr, "barehandler: UFFDIO_COPY at %#llx: %s\n", (unsigned long long)page,
					strerror(errno));
			faults++;
			break;
		}
	}
	fprintf(stderr, "barehandler: served %llu faults\n", (unsigned long long)faults);
	hs_free(&m);
	return 0;
}
