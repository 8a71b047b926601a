/* thread.h - starting the process-wide background threads (the cache's
 * flusher, its writer): detached, named, started once. */
#ifndef THAW_THREAD_H
#define THAW_THREAD_H

/* Start fn(NULL) on a detached thread called name: 0, or an error naming it. */
int thread_start_detached(void *(*fn)(void *), const char *name);

#endif
