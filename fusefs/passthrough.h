/* passthrough.h - FUSE passthrough for files that are wholly in the cache,
 * and the INIT flags it and direct I/O need that libfuse 3.14 cannot ask for.
 *
 * Once every chunk of a file is in the persistent cache and checked, the
 * kernel can read the cache's data file itself (FOPEN_PASSTHROUGH, Linux
 * 6.9+): no READ reaches this process, and the page cache used is the data
 * file's, in large folios, instead of FUSE's 4 KiB pages.  Debian 12's
 * libfuse (3.14) predates passthrough, so passthrough.c negotiates it
 * underneath libfuse through its custom I/O hooks.
 *
 * Include after <fuse_lowlevel.h> (fs.h does). */
#ifndef THAW_FUSEFS_PASSTHROUGH_H
#define THAW_FUSEFS_PASSTHROUGH_H

#include <stdint.h>

struct thawfs;

struct pt_state {
	int want;              /* allowed for this mount (not --rw, not --no-passthrough) */
	int offered;           /* the kernel's INIT offered FUSE_PASSTHROUGH */
	int on;                /* we accepted it in the INIT reply; cleared if backing opens fail */
	uint64_t init_unique;  /* the INIT request's id, to find its reply */
	int init_done;         /* the INIT reply has gone out */
	int fd;                /* the session's /dev/fuse descriptor (for the ioctls) */
	int dio_want;          /* open files not wholly cached with direct I/O (--direct-io, not --rw) */
	int mmap_offered;      /* the kernel's INIT offered FUSE_DIRECT_IO_ALLOW_MMAP */
	int dio_on;            /* we accepted it: such files can be opened for direct I/O and
	                          still be mmap'd shared */
};

/* Put the hooks under fs->se (wanted for passthrough or direct I/O) (after fuse_session_mount, before the loop).
 * 0, or <0 + err_msg if libfuse refused them. */
int pt_install(struct thawfs *fs);

/* Register fd (a file wholly in the cache) with the kernel: a backing id
 * (> 0) to answer an open with, or <0 + err_msg (passthrough is then off
 * for the rest of the mount if the kernel or our privileges rule it out). */
int pt_backing_open(struct thawfs *fs, int fd);
void pt_backing_close(struct thawfs *fs, int id);

/* Answer an open with FOPEN_PASSTHROUGH on backing id; as fuse_reply_open. */
int pt_reply_open(fuse_req_t req, uint64_t fh, uint32_t open_flags, int id);

#endif
