/* ctl.h - the control channel of a mount: a Unix socket served by one
 * thread, one request line per connection (the protocol is in fusefs.h). */
#ifndef THAW_FUSEFS_CTL_H
#define THAW_FUSEFS_CTL_H

#include <stdio.h>

struct ctl_server;
/* Answer request line `req` by writing to out. */
typedef void (*ctl_handler)(void *arg, const char *req, FILE *out);

/* The absolute path of a mountpoint without touching the mountpoint itself
 * (a dead FUSE mount answers stat with ENOTCONN). */
int ctl_canon_mountpoint(const char *mp, char *out, size_t n);
/* Listen at sock_path (a live server there is an error; a stale socket is
 * replaced).  Creates the directory (0700) if needed. */
int ctl_server_start(const char *sock_path, ctl_handler fn, void *arg, struct ctl_server **out);
void ctl_server_stop(struct ctl_server *c);

#endif
