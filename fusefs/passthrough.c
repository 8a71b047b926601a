/* passthrough.c - negotiate FUSE passthrough (and FUSE_DIRECT_IO_ALLOW_MMAP)
 * under a libfuse that predates them, and register cache data files with the
 * kernel as backing files.
 *
 * libfuse 3.14 keeps the INIT capabilities in 32 bits, so it can neither see
 * FUSE_PASSTHROUGH (bit 37, in INIT's flags2) nor ask for it, nor for
 * FUSE_DIRECT_IO_ALLOW_MMAP (bit 36), without which a file opened for
 * direct I/O cannot be mmap'd shared.  It does let a
 * file system bring its own read/writev for the device (custom I/O), and
 * that is where this file works: read() notes the INIT request's id and
 * whether the kernel offers passthrough; writev() finds INIT's reply and
 * adds the flag and the stack depth before it goes out.  Everything else
 * passes through untouched.  Requests are then read with read(2) instead of
 * splice (libfuse only splices requests in when asked, and we never asked:
 * it helps large writes, which a lazy read-mostly mount hardly gets);
 * replies are still spliced out through our splice_send.
 *
 * The structures and numbers below are the kernel's ABI (linux/fuse.h of
 * 6.9 and later); Debian 12's header is older, so they are spelt out here. */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

#include "../common/err.h"
#include "../common/log.h"
#include "fs.h"

#define K_FUSE_INIT 26
#define K_FUSE_INIT_EXT (1u << 30)
#define K_FUSE_PASSTHROUGH_HI (1u << (37 - 32)) /* in flags2 */
#define K_FUSE_DIRECT_IO_ALLOW_MMAP_HI (1u << (36 - 32)) /* in flags2 */
#define K_FOPEN_PASSTHROUGH (1u << 7)

/* Passthrough files may sit on a file system one level deep at most: the
 * cache on ext4/xfs/tmpfs is depth 0.  1 keeps room for an overlayfs on top
 * of this mount (a container's image layers), which the kernel allows up to
 * a total depth of 2. */
#define PT_STACK_DEPTH 1

struct k_in_header {
	uint32_t len, opcode;
	uint64_t unique, nodeid;
	uint32_t uid, gid, pid;
	uint16_t total_extlen, padding;
};

struct k_init_in {
	uint32_t major, minor, max_readahead, flags, flags2;
	uint32_t unused[11];
};

struct k_out_header {
	uint32_t len;
	int32_t error;
	uint64_t unique;
};

struct k_init_out {
	uint32_t major, minor, max_readahead, flags;
	uint16_t max_background, congestion_threshold;
	uint32_t max_write, time_gran;
	uint16_t max_pages, map_alignment;
	uint32_t flags2, max_stack_depth;
	uint16_t request_timeout, unused[11];
};

struct k_open_out {
	uint64_t fh;
	uint32_t open_flags;
	int32_t backing_id;
};

struct k_backing_map {
	int32_t fd;
	uint32_t flags;
	uint64_t padding;
};

#define K_DEV_IOC_BACKING_OPEN _IOW(229, 1, struct k_backing_map)
#define K_DEV_IOC_BACKING_CLOSE _IOW(229, 2, uint32_t)

_Static_assert(sizeof(struct k_in_header) == 40, "fuse_in_header");
_Static_assert(offsetof(struct k_init_out, flags2) == 32, "fuse_init_out.flags2");
_Static_assert(offsetof(struct k_init_out, max_stack_depth) == 36, "fuse_init_out.max_stack_depth");
_Static_assert(sizeof(struct k_open_out) == 16, "fuse_open_out");

static ssize_t io_read(int fd, void *buf, size_t len, void *ud)
{
	struct thawfs *fs = ud;
	ssize_t n = read(fd, buf, len);
	if (n < (ssize_t)sizeof(struct k_in_header) || __atomic_load_n(&fs->pt.init_done, __ATOMIC_ACQUIRE))
		return n;
	const struct k_in_header *h = buf;
	if (h->opcode != K_FUSE_INIT || (size_t)n < sizeof *h + offsetof(struct k_init_in, unused))
		return n;
	const struct k_init_in *in = (const void *)(h + 1);
	fs->pt.init_unique = h->unique;
	fs->pt.offered = (in->flags & K_FUSE_INIT_EXT) && (in->flags2 & K_FUSE_PASSTHROUGH_HI);
	fs->pt.mmap_offered = (in->flags & K_FUSE_INIT_EXT) && (in->flags2 & K_FUSE_DIRECT_IO_ALLOW_MMAP_HI);
	return n;
}

/* INIT's reply is libfuse's header and one fuse_init_out; anything else
 * goes out as it is. */
static ssize_t io_writev(int fd, struct iovec *iov, int count, void *ud)
{
	struct thawfs *fs = ud;
	if (__atomic_load_n(&fs->pt.init_done, __ATOMIC_ACQUIRE) || count != 2 ||
	    iov[0].iov_len != sizeof(struct k_out_header))
		return writev(fd, iov, count);
	const struct k_out_header *oh = iov[0].iov_base;
	if (oh->unique != fs->pt.init_unique)
		return writev(fd, iov, count);
	__atomic_store_n(&fs->pt.init_done, 1, __ATOMIC_RELEASE);
	uint32_t add2 = (fs->pt.want && fs->pt.offered ? K_FUSE_PASSTHROUGH_HI : 0) |
			(fs->pt.dio_want && fs->pt.mmap_offered ? K_FUSE_DIRECT_IO_ALLOW_MMAP_HI : 0);
	if (oh->error || !add2 || iov[1].iov_len < offsetof(struct k_init_out, request_timeout))
		return writev(fd, iov, count);
	struct k_init_out out;
	memset(&out, 0, sizeof out);
	memcpy(&out, iov[1].iov_base, iov[1].iov_len < sizeof out ? iov[1].iov_len : sizeof out);
	out.flags |= K_FUSE_INIT_EXT;
	out.flags2 |= add2;
	if (add2 & K_FUSE_PASSTHROUGH_HI)
		out.max_stack_depth = PT_STACK_DEPTH;
	struct iovec v[2] = { iov[0], { &out, iov[1].iov_len < sizeof out ? iov[1].iov_len : sizeof out } };
	ssize_t r = writev(fd, v, 2);
	if (r >= 0 && (add2 & K_FUSE_PASSTHROUGH_HI)) {
		fs->pt.on = 1;
		log_debug("FUSE passthrough negotiated");
	}
	if (r >= 0 && (add2 & K_FUSE_DIRECT_IO_ALLOW_MMAP_HI))
		__atomic_store_n(&fs->pt.dio_on, 1, __ATOMIC_RELEASE);
	return r;
}

static ssize_t io_splice_send(int fdin, off_t *offin, int fdout, off_t *offout, size_t len, unsigned flags,
			      void *ud)
{
	(void)ud;
	return splice(fdin, offin, fdout, offout, len, flags);
}

int pt_install(struct thawfs *fs)
{
	fs->pt.fd = fuse_session_fd(fs->se);
	const struct fuse_custom_io io = {
		.writev = io_writev,
		.read = io_read,
		.splice_send = io_splice_send,
	};
	int rc = fuse_session_custom_io(fs->se, &io, fs->pt.fd);
	return rc < 0 ? err_set(-rc, "cannot hook the FUSE session's I/O: %s", strerror(-rc)) : 0;
}

int pt_backing_open(struct thawfs *fs, int fd)
{
	if (!__atomic_load_n(&fs->pt.on, __ATOMIC_ACQUIRE))
		return err_set(EOPNOTSUPP, "FUSE passthrough is off for this mount");
	struct k_backing_map m = { .fd = fd };
	int id = ioctl(fs->pt.fd, K_DEV_IOC_BACKING_OPEN, &m);
	if (id > 0)
		return id;
	int e = id < 0 ? errno : EPROTO;
	/* Errors that will not go away for this mount turn passthrough off. */
	if (e == EPERM || e == EOPNOTSUPP || e == ENOTTY || e == EINVAL || e == ELOOP) {
		if (__atomic_exchange_n(&fs->pt.on, 0, __ATOMIC_ACQ_REL))
			log_info("FUSE passthrough off for this mount: the kernel refused a backing file (%s); "
				 "complete files are served by this process",
				 strerror(e));
	}
	return err_set(e, "cannot register a backing file for passthrough: %s", strerror(e));
}

void pt_backing_close(struct thawfs *fs, int id)
{
	uint32_t v = (uint32_t)id;
	if (id > 0 && ioctl(fs->pt.fd, K_DEV_IOC_BACKING_CLOSE, &v) < 0)
		log_warn("cannot release passthrough backing file %d: %s", id, strerror(errno));
}

int pt_reply_open(fuse_req_t req, uint64_t fh, uint32_t open_flags, int id)
{
	struct k_open_out o = { .fh = fh, .open_flags = open_flags | K_FOPEN_PASSTHROUGH, .backing_id = id };
	struct iovec v = { &o, sizeof o };
	return fuse_reply_iov(req, &v, 1);
}
