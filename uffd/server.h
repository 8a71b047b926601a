/* server.h - the userfaultfd page server behind `thaw uffd-serve`.
 *
 * One listening Unix socket; each connection is one client (one VM) that
 * performs Firecracker's handshake and then has its memory served from one
 * lazy blob shared by every connection: demand faults first, a background
 * pusher installing the rest, the userfaultfd released when all is in. */
#ifndef THAW_UFFD_SERVER_H
#define THAW_UFFD_SERVER_H

#include <stdint.h>

enum wait_mode { WAIT_BLOCK = 0, WAIT_SPIN, WAIT_ADAPTIVE };

struct userver_config {
	const char *socket_path;
	const char *mem_url;
	const char *record_url;     /* NULL: don't record the working set */
	const char *prefetch_url;   /* where --prefetch reads the set (NULL: derived) */
	int prefetch;
	int prefetch_wait;          /* REAP: load the whole set before serving a fault */
	int push;                   /* install everything in the background (default 1) */
	int exit_when_done;         /* return from userver_run once the first client served leaves */
	enum wait_mode wait;
	unsigned spin_us;           /* WAIT_ADAPTIVE: spin this long after activity */
	int jobs;                   /* blob fetches in flight */
	int bg_jobs;                /* of which background (pusher) at most */
	int push_nice;              /* nice value of the pusher thread */
	uint64_t fault_timeout_ms;  /* poison a fault whose chunk takes longer than this */
	int handshake_timeout_ms;
	const char *metrics_path;   /* NULL: none */
	const char *ready_file;     /* written (socket path) once listening */
};

void userver_config_default(struct userver_config *c);

struct userver;

/* Open the image, load the prefetch set, bind and listen.  Signals SIGINT,
 * SIGTERM and SIGUSR1 must already be blocked in every thread (userver_run
 * takes them through a signalfd).  0 or <0 + err_msg(). */
int userver_open(const struct userver_config *c, struct userver **out);
/* Serve until SIGINT/SIGTERM, or (exit_when_done) until the first client that
 * completed a handshake has gone (its process exited, or it closed the socket
 * when its pid cannot be watched), whether or not its transfer completed.  A
 * transfer is complete when every page of its regions was installed, removed
 * by the balloon, unmapped or poisoned, even if the client left before the
 * userfaultfd was released.  SIGUSR1 writes the metrics file.  Returns 0, or
 * 1 if (exit_when_done, pushing) that client left before its transfer
 * completed. */
int userver_run(struct userver *s);
/* Stop every connection, write metrics, free everything. */
void userver_close(struct userver *s);
/* Write the metrics JSON to path (atomically: temp file + rename). */
int userver_write_metrics(struct userver *s, const char *path);

#endif
