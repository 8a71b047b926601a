/* install.h - thin, honest wrappers over the userfaultfd ioctls that put
 * pages into a client's address space (COPY, ZEROPAGE, POISON), wake its
 * threads, and let go of its ranges.  Each reports how far it got, because
 * the kernel stops part-way (EEXIST on a page already there, EAGAIN while a
 * non-cooperative event is pending) and the caller must resume precisely.
 * Also the ABI bits newer than this machine's kernel headers. */
#ifndef THAW_UFFD_INSTALL_H
#define THAW_UFFD_INSTALL_H

#include <linux/userfaultfd.h>
#include <stdint.h>

#ifndef UFFDIO_POISON /* Linux 6.6; Debian 12's headers predate it */
struct uffdio_poison {
	struct uffdio_range range;
#define UFFDIO_POISON_MODE_DONTWAKE ((__u64)1 << 0)
	__u64 mode;
	__s64 updated;
};
#define _UFFDIO_POISON (0x08)
#define UFFDIO_POISON _IOWR(UFFDIO, _UFFDIO_POISON, struct uffdio_poison)
#endif
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1 << 14)
#endif
#ifndef UFFD_FEATURE_INITIALIZED
#define UFFD_FEATURE_INITIALIZED (1u << 31)
#endif

/* All return 0 when the whole range was done, else -errno with *done set to
 * the bytes completed before the failing page (EEXIST: that page exists).
 * No err_set: these run per fault; callers decide what is worth a message. */
int ufd_copy(int uffd, uint64_t dst, const void *src, uint64_t len, int dontwake, uint64_t *done);
int ufd_zero(int uffd, uint64_t dst, uint64_t len, int dontwake, uint64_t *done);
int ufd_poison(int uffd, uint64_t dst, uint64_t len, uint64_t *done);
int ufd_wake(int uffd, uint64_t start, uint64_t len);
int ufd_unregister(int uffd, uint64_t start, uint64_t len);

/* 1 if fd is a userfaultfd (an anon inode named "[userfaultfd]"). */
int ufd_is_userfaultfd(int fd);
/* The features the client negotiated with UFFDIO_API, read from
 * /proc/self/fdinfo (the API cannot be queried twice); 0 if unreadable. */
uint64_t ufd_features(int uffd);
/* "EVENT_REMOVE|MISSING_HUGETLBFS|..." for logs. */
void ufd_features_str(uint64_t f, char *buf, size_t n);

#endif
