/* hydrator.h - pulls whole files into the persistent cache in the background
 * (`thaw mount --hydrate`, `thaw hydrate`).
 *
 * One thread walks a queue of files and directories and hydrates one file at
 * a time with blob_hydrate_start: the blob bounds the background fetches in
 * flight (blob_opts.bg_jobs) and their rate (bg_bytes_per_sec), and every
 * demand or readahead fetch goes ahead of them.  Hydrating one file at a time
 * keeps those bounds mount-wide.  A chunk that fails is tried again once, with
 * the store's own bounded retries, after the rest of its file; a file that
 * still fails is reported in `thaw status` and left for demand reads. */
#ifndef THAW_FUSEFS_HYDRATOR_H
#define THAW_FUSEFS_HYDRATOR_H

#include "fs.h"

int hydrator_start(struct thawfs *fs, struct hydrator **out);
/* Queue a file, or a directory and everything below it. */
int hydrator_add(struct hydrator *h, struct tnode *n);
/* What it is doing: files queued (not counting directories still to walk),
 * and the inode it is on (0 if idle). */
void hydrator_state(struct hydrator *h, uint64_t *queued, uint64_t *current, uint64_t *done, uint64_t *failed);
void hydrator_stop(struct hydrator *h);

#endif
