/* fsutil.h - small file-system helpers every layer needs: whole reads and
 * writes that survive EINTR and short transfers, and mkdir -p.  They return 0
 * or a negative errno and record no message: the caller knows what the file
 * is and names it. */
#ifndef THAW_FSUTIL_H
#define THAW_FSUTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Read exactly len bytes at off; -EIO if the file ends first. */
int fsu_pread_full(int fd, void *buf, size_t len, uint64_t off);
int fsu_pwrite_full(int fd, const void *buf, size_t len, uint64_t off);
/* Create the directories above path's last component. */
int fsu_mkdir_parents(const char *path, mode_t mode);
/* Create path and the directories above it; -ENOTDIR if it exists as something else. */
int fsu_mkdir_p(const char *path, mode_t mode);

#endif
