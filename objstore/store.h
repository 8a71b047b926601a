/* store.h - the object-store interface: HEAD, ranged GET, PUT (multipart when
 * large), DELETE and LIST over file:// and s3:// locations.
 *
 * Operations are asynchronous: fill a struct store_op, store_submit() it, and
 * op->done(op) is called exactly once, from a store-owned thread, when it has
 * finished (successfully or not).  store_run() is the synchronous wrapper.
 * Many operations may be in flight; the store bounds how many it runs at once
 * (cfg.max_inflight) and queues the rest in submission order.
 *
 * Retries belong to the store: 5xx, 429/SlowDown, timeouts, stalls, connection
 * resets and short bodies are retried with exponential backoff and full jitter,
 * at most cfg.max_attempts times and within cfg.max_total_ms; then the op fails
 * with a message naming the key, the status and the attempts.
 *
 * Version pinning: a GET with if_match set sends If-Match and ALSO compares
 * the ETag of the response (some servers ignore If-Match); a mismatch fails
 * with -ESTALE ("object changed"), and no bytes are reported. */
#ifndef THAW_STORE_H
#define THAW_STORE_H

#include <stdatomic.h>
#include <stdint.h>

#include "../common/err.h"
#include "url.h"

enum store_op_kind { STORE_GET = 1, STORE_HEAD, STORE_PUT, STORE_DELETE };

#define STORE_KEY_MAX 1024
#define STORE_ETAG_MAX 128

struct store_op {
	/* request */
	enum store_op_kind kind;
	char key[STORE_KEY_MAX];
	uint64_t off;        /* GET: first byte wanted */
	uint64_t len;        /* GET: bytes wanted; PUT: bytes to store */
	void *buf;           /* GET: destination, len bytes; PUT: source */
	char if_match[STORE_ETAG_MAX]; /* GET: "" or the ETag the object must have */
	int urgent;          /* someone is blocked on this (a demand fault): it goes
	                        ahead of queued non-urgent ops, in submission order */
	/* GET, optional: the body goes here instead of into buf (buf may then
	 * be NULL).  Called in order from a store thread with the position in
	 * [0, len) and the next piece, only after the answer was checked
	 * (status, range, ETag pin).  A retry resumes where the failed attempt
	 * stopped, so each byte is passed exactly once.  Return 0, or a negative
	 * errno (with err_set) to fail the op with it, not retried.  Lets a
	 * reader stream a long range to disk and use its head while the tail is
	 * still on the wire. */
	int (*sink)(struct store_op *op, uint64_t pos, const void *p, size_t n);

	/* result, valid in done() */
	int rc;              /* 0, or a negative errno (-ENOENT missing key/bucket,
	                        -EACCES 403, -ESTALE object changed, -EIO other) */
	char errmsg[ERR_MSG_MAX];
	uint64_t nread;      /* GET: bytes delivered.  Equals len unless the object
	                        ends first: then size-off (0 if off >= size). */
	uint64_t obj_size;   /* HEAD, GET: the object's total size */
	char etag[STORE_ETAG_MAX]; /* HEAD, GET, PUT: the object's ETag (quotes kept) */
	int64_t mtime;       /* HEAD: seconds since the epoch, or 0 if unknown */
	int attempts;        /* how many tries it took */

	/* completion */
	void (*done)(struct store_op *op);
	void *arg;

	/* private to the store implementation */
	void *priv;
	uint64_t t_start_ns, t_deadline_ns;
	struct store_op *next;
};

struct store_config {
	int max_inflight;          /* transfers at once (default 16) */
	int max_attempts;          /* tries per op including the first (default 5) */
	uint64_t max_total_ms;     /* give up on an op after this long (default 60000) */
	uint64_t connect_timeout_ms; /* default 5000 */
	uint64_t stall_timeout_ms; /* a transfer making no progress this long is retried (default 10000) */
	uint64_t part_size;        /* multipart part size for PUT (default 8 MiB) */
	int no_here;               /* store_submit_here never runs on the caller's
	                              thread (THAW_STORE_HERE=0; for comparisons) */
};

struct store_stats {
	atomic_uint_fast64_t gets, heads, puts, deletes, lists;
	atomic_uint_fast64_t bytes_in, bytes_out;
	atomic_uint_fast64_t retries, failures;
};

struct store_entry {
	const char *key;     /* full key (for a common prefix: the prefix, ending in delimiter) */
	uint64_t size;
	int64_t mtime;
	const char *etag;
	int is_prefix;
};
/* Return 0 to continue listing, non-zero to stop (store_list returns that value). */
typedef int (*store_list_cb)(const struct store_entry *e, void *arg);

struct store;

struct store_impl {
	const char *name;
	int (*submit)(struct store *s, struct store_op *op);
	/* Optional: store_submit_here's first attempt on the caller's thread. */
	int (*submit_here)(struct store *s, struct store_op *op);
	int (*list)(struct store *s, const char *prefix, const char *delim, store_list_cb cb, void *arg);
	void (*close)(struct store *s);
};

struct store_deliverer; /* store.c: threads that run done() callbacks */

struct store {
	const struct store_impl *impl;
	struct thaw_url url;     /* root is meaningful; key is ignored */
	struct store_config cfg;
	struct store_stats stats;
	void *priv;
	struct store_deliverer *dlv;
};

void store_config_default(struct store_config *cfg);
/* Open the store holding location u (u->key is ignored).  cfg may be NULL. */
int store_open(const struct thaw_url *u, const struct store_config *cfg, struct store **out);
void store_close(struct store *s);

/* Asynchronous: op->done is called exactly once.  Returns 0, or <0 if the op
 * was refused before queuing (then done is not called). */
int store_submit(struct store *s, struct store_op *op);
/* As store_submit, for a caller that would only sleep until op is done (a
 * reader blocked on a missing chunk): the first attempt of a GET may run on
 * the calling thread, on a connection that thread keeps, which saves the
 * hand-offs to the store's thread and back (two cross-CPU wake-ups, 0.1-0.2
 * ms each on a virtual machine).  Then op->done has been called, on this
 * thread, before this returns (so the caller must hold no lock done takes).
 * A failed attempt that may be retried continues on the store's thread as
 * any other op does, done coming from there.  Stores without the fast path,
 * and ops other than a ranged GET, are simply submitted.  Caller-thread
 * attempts are outside cfg.max_inflight: the caller's thread count bounds them. */
int store_submit_here(struct store *s, struct store_op *op);
/* Synchronous: runs op and returns op->rc; on failure err_msg() holds op->errmsg. */
int store_run(struct store *s, struct store_op *op);

/* Convenience wrappers around store_run. */
int store_get(struct store *s, const char *key, uint64_t off, uint64_t len, void *buf,
	      const char *if_match, uint64_t *nread, uint64_t *obj_size, char *etag_out);
int store_head(struct store *s, const char *key, uint64_t *size, char *etag_out, int64_t *mtime);
int store_put(struct store *s, const char *key, const void *buf, uint64_t len);
int store_delete(struct store *s, const char *key);
/* List keys under prefix; with delim "/" keys below the next '/' collapse into
 * one is_prefix entry.  Pages are followed to the end. */
int store_list(struct store *s, const char *prefix, const char *delim, store_list_cb cb, void *arg);

/* Shared retry policy: the delay before attempt n (n >= 1), full jitter. */
uint64_t store_backoff_ms(int attempt);
/* Fill op->rc/errmsg (helper for implementations). */
void store_op_fail(struct store_op *op, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* For event-loop implementations: hand a finished op to the store's callback
 * threads, so a done() that writes to disk or hashes never stalls the loop
 * (and with it every other transfer).  Started by store_deliver_start. */
int store_deliver_start(struct store *s, int nthreads);
void store_deliver(struct store *s, struct store_op *op);

/* Implementations. */
int store_file_open(struct store *s);
int store_s3_open(struct store *s);

#endif
