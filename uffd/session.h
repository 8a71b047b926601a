/* session.h - one client connection of the uffd server, shared between the
 * files that serve it: fault.c (the connection's thread: handshake, fault and
 * event loop, release), fill.c (putting pages in), pusher.c (the background
 * transfer), record.c (the working set) and server.c (accept, the blob).
 *
 * Page state lives in two bitmaps over the memory image in 4 KiB units (a
 * 2 MiB page owns 512 bits): `done` once a page needs nothing more from us
 * (installed, removed by the balloon, unmapped, or poisoned) and `zero` for
 * pages the balloon removed, which must read as zeros from then on.  Image
 * offsets, not addresses, index them, so a REMAP only moves an extent.
 *
 * Locking: the connection thread is the only reader of the userfaultfd and
 * the only writer of the extents and of `zero`.  `evlock` orders the pusher's
 * installs against event reads: while a REMOVE is unread the kernel refuses
 * installs with EAGAIN, but once it is read the range is zapped at some point
 * after, and an install that raced past our bitmap check would leave snapshot
 * bytes in a page that must read zero.  So reading events and applying them
 * happen under evlock, and the pusher checks and installs under it too. */
#ifndef THAW_UFFD_SESSION_H
#define THAW_UFFD_SESSION_H

#include <pthread.h>
#include <stdint.h>
#include <sys/types.h>

#include "../objstore/blob.h"
#include "handshake.h"
#include "metrics.h"
#include "server.h"

#define UNIT 4096ull /* bitmap granularity */

struct extent {
	uint64_t va, len; /* where the client maps it now */
	uint64_t off;     /* image offset of va */
	uint64_t ps;      /* page size */
};

struct waiter {
	uint64_t addr;      /* faulting page (address at fault time) */
	uint64_t t_recv;    /* when the fault was read */
	uint64_t t_req;     /* when its chunks were requested */
	uint64_t c0, c1;    /* chunks it needs */
};

struct userver;

struct session {
	struct userver *srv;
	struct blob *blob;
	int id;
	int sock, uffd, evfd, pidfd;
	pid_t pid;
	uid_t uid;
	uint64_t features;
	int sock_open;           /* still polling the socket */

	struct extent *ext;      /* sorted by off */
	size_t next, ext_cap;
	size_t ext_hint;         /* last extent a fault hit */
	uint64_t *done, *zero;   /* bitmaps, image/UNIT bits */
	uint64_t units_total;    /* units covered by the regions */
	uint64_t units_done;     /* atomic */
	pthread_mutex_t evlock;
	int evwant;              /* atomic: the connection thread wants evlock */
	int warned_unknown;

	struct waiter *w;        /* connection thread only */
	size_t nw, wcap;
	int nwaiters;            /* atomic mirror of nw, for the blob listener */
	unsigned outstanding;    /* faults read but not yet answered */
	uint64_t t_busy;         /* when outstanding went 0 -> 1 */

	pthread_t pusher;
	int pusher_started;
	pthread_mutex_t pmu;     /* pusher sleep/wake */
	pthread_cond_t pcv;
	uint64_t pgen;           /* bumped when a chunk settles */
	int pstop;               /* atomic */
	int push_done;           /* atomic: pusher walked the whole image */

	uint32_t *rec;           /* working-set record: chunk order of first touch */
	size_t nrec, rec_cap;
	uint8_t *rec_seen;       /* one bit per chunk */
	int recording, rec_saved;

	int stop;                /* atomic: server shutting down */
	int complete;            /* every page of the regions is done: set at release,
	                            or at teardown when the client left before the
	                            connection thread got round to releasing */
	int released;            /* uffd closed after the transfer completed */
	int gone;                /* client exited */
	int finished;            /* atomic: thread done, ready to join */
	pthread_t thread;
	struct session *next_reap;
	struct sess_metrics *m;  /* owned by the server (outlives the session) */
	struct session *next_s;
};

/* fault.c */
void *session_main(void *arg);

/* fill.c: install what can be installed in image range [lo, hi), skipping
 * done and zero units and pages whose chunks are not present.  first_va, if
 * non-zero, is the faulting page: installed first and woken at once; the rest
 * go in with DONTWAKE and one WAKE at the end.  budget caps the bytes put in
 * (0 = no cap); *next receives where to resume.  Returns 0 or -EAGAIN (event
 * pending), -ESRCH (client's mm gone), other -errno; *missing is set to the
 * first chunk that kept a page out (or UINT64_MAX). */
struct fill_result {
	uint64_t installed, zeroed, next, missing;
	uint64_t t_wake; /* first_va mode: when the faulting thread was woken */
};
int fill_range(struct session *s, uint64_t lo, uint64_t hi, uint64_t first_va, uint64_t budget, int pusher,
	       struct fill_result *r);
/* Zero-fill the page at image offset off (balloon-removed). */
int fill_zero_page(struct session *s, const struct extent *e, uint64_t off);
/* After a removed page faulted: zero the other removed pages of [lo, hi)
 * too (4 KiB pages), so a deflated balloon range costs one fault per block,
 * not one per page.  Never touches a page that is there. */
void fill_zero_rest(struct session *s, const struct extent *e, uint64_t lo, uint64_t hi);
/* Poison the not-done pages of [lo, hi); returns bytes poisoned or -errno. */
int64_t fill_poison(struct session *s, uint64_t lo, uint64_t hi);
/* Mark units of [lo, hi) done; returns how many were newly done.  The call
 * that makes units_done reach units_total stamps t_complete: that, not the
 * release, is when the transfer completed. */
uint64_t mark_done(struct session *s, uint64_t lo, uint64_t hi);
static inline int unit_test(const uint64_t *bm, uint64_t off)
{
	uint64_t u = off / UNIT;
	return (int)(__atomic_load_n(&bm[u / 64], __ATOMIC_RELAXED) >> (u % 64) & 1);
}
/* The extent holding image offset off / address va, or NULL. */
struct extent *ext_by_off(struct session *s, uint64_t off);
struct extent *ext_by_va(struct session *s, uint64_t va);

/* pusher.c */
int pusher_start(struct session *s);
void pusher_stop(struct session *s);
void pusher_poke(struct session *s);

/* record.c */
void record_touch(struct session *s, uint64_t chunk);
/* Encode/decode the working-set object (format in record.c). */
int ws_encode(const uint32_t *idx, size_t n, uint32_t chunk_shift, uint64_t image_size, void **out, size_t *len);
int ws_decode(const void *buf, size_t len, uint32_t chunk_shift, uint64_t image_size, uint64_t nchunks,
	      uint64_t **out, size_t *n);
int record_save(struct session *s);

/* server.c: what sessions need from the server */
struct blob *userver_blob(struct userver *srv);
const struct userver_config *userver_cfg(struct userver *srv);
/* ns timestamp of the last failed fetch of chunk idx (0 = never). */
uint64_t userver_fail_ns(struct userver *srv, uint64_t idx);
/* The prefetch order, if --prefetch found one. */
const uint64_t *userver_ws(struct userver *srv, size_t *n);
/* First caller gets 1 and must record (the working set of the first VM). */
int userver_claim_recorder(struct userver *srv);
int userver_store_ws(struct userver *srv, const void *buf, size_t len);
/* Start the blob's hydration once for all connections. */
void userver_hydrate_once(struct userver *srv);
void userver_session_ended(struct userver *srv, struct session *s);
void userver_session_ready(struct userver *srv, struct session *s);

#endif
