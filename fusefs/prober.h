/* prober.h - opens files' blobs ahead of their lookups, a few at a time.
 *
 * Each file's first lookup opens its blob (an image's logical size comes from
 * its index), which costs the store a request, and `ls -l` looks files up one
 * after another: 1000 files of a directory took 2.5-2.7 s against s3rver where
 * s3fs, which asks for them all at once, took 0.9-1.0 s.  So a directory
 * opened for reading has its files' blobs opened here, PROBE_THREADS at a
 * time and in the order `ls` looks them up; a lookup that comes first opens
 * the blob itself, and one that comes during an open waits for the same open
 * (file.c's per-file lock), never starts a second.  Only the first
 * --open-ahead files of each listing of a directory are taken (4096 by
 * default, and no more than half the bound on open blobs), so a listing
 * alone of a huge directory costs a bounded number of requests.
 *
 * The same threads tell the kernel of names that left the tree (prober_forget).
 *
 * At mount the root's first few files are also queued with their first chunk
 * asked for (the first reader of a fresh mount usually comes within
 * milliseconds, for one of them).  A blob opened here that is never looked up
 * stays open until the bound on open blobs (file.c) closes it. */
#ifndef THAW_FUSEFS_PROBER_H
#define THAW_FUSEFS_PROBER_H

#include "fs.h"

struct prober;

int prober_start(struct thawfs *fs, struct prober **out);
/* Queue n's open, and with head its first chunk; dropped if the queue is full. */
void prober_add(struct prober *p, struct tnode *n, int head);
/* Queue the files of dir not opened yet, once per listing of dir. */
void prober_dir(struct prober *p, struct tnode *dir);
/* Have the kernel drop the name of n, which a re-listing took out of dir
 * (fuse_lowlevel_notify_inval_entry, from a prober thread: on a request's
 * own path it could deadlock on the directory's lock). */
void prober_forget(struct prober *p, struct tnode *dir, struct tnode *n);
/* Stop and join; opens under way finish (the store bounds them). */
void prober_stop(struct prober *p);

#endif
