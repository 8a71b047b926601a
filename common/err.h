/* err.h - the error convention every thaw module follows.
 *
 * A function that fails returns a negative errno-style code and records one
 * human sentence naming what failed with err_set().  The caller either adds
 * context (err_wrap) and returns the same code, or prints err_msg() once at the
 * top (the CLI).  The message lives in a thread-local buffer, so worker threads
 * never clobber each other's errors.  Nothing in a library calls exit(). */
#ifndef THAW_ERR_H
#define THAW_ERR_H

#include <errno.h>
#include <stddef.h>

#define ERR_MSG_MAX 512

/* Record a message and return -code (code is a positive errno value). */
int err_set(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prefix the current message with more context; returns rc unchanged. */
int err_wrap(int rc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The last message recorded on this thread ("" if none). */
const char *err_msg(void);
void err_clear(void);
/* Copy this thread's message out (for handing an error across threads). */
void err_copy(char *dst, size_t n);

#endif
