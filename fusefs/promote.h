/* promote.h - hands a complete file that was read through FUSE's page cache
 * over to passthrough once its last cached-mode open has closed.
 *
 * FUSE's page cache holds a file in 4 KiB pages on kernels without large
 * folios for FUSE (6.18 here), and a re-read walks them at 0.5-0.7x the speed
 * of a local file, which ext4 holds in large folios.  Passthrough reads the
 * cache's data file itself, at a local file's speed.  So a sequential reader
 * in cached mode leaves its bytes in the data file's page cache and FUSE's
 * are dropped behind it (file.c, handoff); when the file is complete and no
 * cached open is left, this thread reads back whatever of the data file is
 * not in memory (cachestat(2) says; after a sequential read, nothing), lets
 * later opens go passthrough, and then tells the kernel to drop what FUSE's
 * page cache still holds.  An open that comes while a promotion is queued
 * waits for it a little (file_open_mode).  Read back means read through the
 * CPU: pages a disk read fills are slow to touch first on a VM whose free
 * memory goes back to the host (a first passthrough read of such pages ran at
 * ~430-600 MB/s, against ~15 GB/s after).  A file with more to read back than
 * half the memory available stays in cached mode. */
#ifndef THAW_FUSEFS_PROMOTE_H
#define THAW_FUSEFS_PROMOTE_H

#include "fs.h"

int promoter_start(struct thawfs *fs, struct promoter **out);
/* Queue n (its tfile's promote state set to PROMOTE_QUEUED by the caller,
 * under f->mu, and set back if this fails); 0 or <0 + err_msg.  Takes only
 * the promoter's own lock. */
int promoter_add(struct promoter *p, struct tnode *n);
/* Stop and join; a promotion under way stops between pieces. */
void promoter_stop(struct promoter *p);

#endif
