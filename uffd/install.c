/* install.c - userfaultfd ioctl wrappers (see install.h). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "install.h"

/* One ioctl of the mfill family over [dst, dst+len).  The kernel writes the
 * bytes it did (or -errno) back into the request, and a partial success
 * comes back as EAGAIN whatever stopped it; so resume after any progress and
 * let the next call report the real cause.  Only EAGAIN with no progress
 * means "a non-cooperative event is pending". */
enum op { OP_COPY, OP_ZERO, OP_POISON };

static int mfill(int uffd, enum op op, uint64_t dst, const void *src, uint64_t len, int dontwake, uint64_t *done)
{
	uint64_t total = 0;
	for (;;) {
		__s64 progress;
		int rc;
		uint64_t d = dst + total, l = len - total;
		if (op == OP_COPY) {
			struct uffdio_copy c = { .dst = d, .src = (uint64_t)(uintptr_t)src + total, .len = l,
						 .mode = dontwake ? UFFDIO_COPY_MODE_DONTWAKE : 0 };
			rc = ioctl(uffd, UFFDIO_COPY, &c);
			progress = c.copy;
		} else if (op == OP_ZERO) {
			struct uffdio_zeropage z = { .range = { d, l }, .mode = dontwake ? UFFDIO_ZEROPAGE_MODE_DONTWAKE : 0 };
			rc = ioctl(uffd, UFFDIO_ZEROPAGE, &z);
			progress = z.zeropage;
		} else {
			struct uffdio_poison p = { .range = { d, l }, .mode = dontwake ? UFFDIO_POISON_MODE_DONTWAKE : 0 };
			rc = ioctl(uffd, UFFDIO_POISON, &p);
			progress = p.updated;
		}
		int e = rc ? errno : 0;
		if (progress > 0)
			total += (uint64_t)progress < l ? (uint64_t)progress : l;
		if (rc == 0 && total >= len) {
			*done = len;
			return 0;
		}
		if (progress > 0 && total < len)
			continue;
		*done = total;
		if (rc == 0)
			return -EAGAIN;
		if (progress < 0 && progress != -EAGAIN)
			e = (int)-progress;
		return -(e ? e : EIO);
	}
}

int ufd_copy(int uffd, uint64_t dst, const void *src, uint64_t len, int dontwake, uint64_t *done)
{
	return mfill(uffd, OP_COPY, dst, src, len, dontwake, done);
}

int ufd_zero(int uffd, uint64_t dst, uint64_t len, int dontwake, uint64_t *done)
{
	return mfill(uffd, OP_ZERO, dst, NULL, len, dontwake, done);
}

int ufd_poison(int uffd, uint64_t dst, uint64_t len, uint64_t *done)
{
	return mfill(uffd, OP_POISON, dst, NULL, len, 0, done);
}

int ufd_wake(int uffd, uint64_t start, uint64_t len)
{
	struct uffdio_range r = { start, len };
	return ioctl(uffd, UFFDIO_WAKE, &r) ? -errno : 0;
}

int ufd_unregister(int uffd, uint64_t start, uint64_t len)
{
	struct uffdio_range r = { start, len };
	return ioctl(uffd, UFFDIO_UNREGISTER, &r) ? -errno : 0;
}

int ufd_is_userfaultfd(int fd)
{
	char path[64], target[64];
	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	ssize_t n = readlink(path, target, sizeof target - 1);
	if (n < 0)
		return 0;
	target[n] = 0;
	return !strcmp(target, "anon_inode:[userfaultfd]");
}

uint64_t ufd_features(int uffd)
{
	char path[64], line[256];
	snprintf(path, sizeof path, "/proc/self/fdinfo/%d", uffd);
	FILE *f = fopen(path, "re");
	if (!f)
		return 0;
	unsigned long long api = 0, feat = 0, ioctls = 0;
	int found = 0;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "API:\t%llx:%llx:%llx", &api, &feat, &ioctls) == 3)
			found = 1;
	fclose(f);
	return found ? feat : 0;
}

void ufd_features_str(uint64_t f, char *buf, size_t n)
{
	static const struct {
		uint64_t bit;
		const char *name;
	} names[] = {
		{ UFFD_FEATURE_PAGEFAULT_FLAG_WP, "PAGEFAULT_FLAG_WP" }, { UFFD_FEATURE_EVENT_FORK, "EVENT_FORK" },
		{ UFFD_FEATURE_EVENT_REMAP, "EVENT_REMAP" },             { UFFD_FEATURE_EVENT_REMOVE, "EVENT_REMOVE" },
		{ UFFD_FEATURE_MISSING_HUGETLBFS, "MISSING_HUGETLBFS" }, { UFFD_FEATURE_MISSING_SHMEM, "MISSING_SHMEM" },
		{ UFFD_FEATURE_EVENT_UNMAP, "EVENT_UNMAP" },             { UFFD_FEATURE_SIGBUS, "SIGBUS" },
		{ UFFD_FEATURE_THREAD_ID, "THREAD_ID" },                 { UFFD_FEATURE_POISON, "POISON" },
	};
	size_t used = 0;
	buf[0] = 0;
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
		if (f & names[i].bit) {
			int k = snprintf(buf + used, n - used, "%s%s", used ? "|" : "", names[i].name);
			if (k < 0 || (size_t)k >= n - used)
				break;
			used += (size_t)k;
		}
	if (!used)
		snprintf(buf, n, "none");
}
