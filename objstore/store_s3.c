/* store_s3.c - the s3:// store: S3's REST API over libcurl's multi interface.
 *
 * One loop thread per store owns a curl multi handle and every transfer.
 * store_submit() only turns the op into a request, queues it and wakes the
 * loop (an eventfd in the loop's epoll set).  The loop drives curl with
 * curl_multi_socket_action, on the one socket epoll says is ready (with
 * curl_multi_perform, each turn of the loop ran every transfer and polled
 * each one's socket: ~4 poll(2)s per recv on a sequential read).  It runs at
 * most cfg.max_inflight requests at once on pooled easy handles, so
 * connections stay alive and are reused; a failed attempt waits for its retry
 * on a timer list, never by sleeping; and op->done is called from the loop
 * thread.
 *
 * A PUT larger than cfg.part_size becomes a multipart upload: Create, a few
 * UploadParts in flight, Complete, and Abort if it fails for good.  LIST pages
 * go through the loop too (for the same retries) but are parsed, and the
 * callback called, on the caller's thread, so a callback may use the store.
 *
 * Signing is libcurl's (CURLOPT_AWS_SIGV4).  curl 7.88 signs the path and the
 * query exactly as they are sent and every header set with CURLOPT_HTTPHEADER,
 * so paths and queries are built here already in S3's canonical form (RFC 3986
 * escapes, parameters sorted, "name=" even when empty) and no header is ever
 * added empty (an "X:" would be signed but not sent).
 *
 * Time budget: a request gives up at its deadline (op->t_deadline_ns; for the
 * parts of a multipart upload, max_total_ms from when the part was queued), and
 * each attempt's CURLOPT_TIMEOUT_MS is what is left of it. */
#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "../common/log.h"
#include "../common/timeutil.h"
#include "awsconf.h"
#include "store.h"

#define MPU_PARTS_INFLIGHT 4       /* parts of one upload in flight at once */
#define MPU_MAX_PARTS 10000        /* S3's limit */
#define MPU_MIN_PART (5ull << 20)  /* S3 refuses smaller parts but the last */
#define ERRBODY_MAX (64u << 10)    /* error documents are small; keep the head */
#define XMLBODY_MAX (32u << 20)    /* a 1000-key page is ~0.5 MB */
#define POLL_MAX_MS 1000
#define GET_LOWAT (256u << 10)     /* see get_lowat */
#define LOWAT_IDLE_MS 200          /* a GET with no bytes this long reads every byte as it comes */

enum rkind { R_GET, R_HEAD, R_PUT, R_DELETE, R_LIST, R_MPU_CREATE, R_MPU_PART, R_MPU_COMPLETE, R_MPU_ABORT };

static const char *const rkind_name[] = { "GET", "HEAD", "PUT", "DELETE", "LIST", "CreateMultipartUpload",
					  "UploadPart", "CompleteMultipartUpload", "AbortMultipartUpload" };

struct s3;
struct mpu;

/* One HTTP request and its retries.  Owned by the loop thread once queued. */
struct req {
	struct s3 *x;
	enum rkind kind;
	struct store_op *op;       /* the caller's op (NULL for LIST) */
	struct mpu *mpu;
	int part;                  /* MPU_PART: 1-based number */
	const char *key;           /* for messages */
	char *url;
	int as_head;               /* a zero-length GET is answered by a HEAD */

	/* upload source (PUT, parts, Complete's XML) */
	const unsigned char *up;
	uint64_t up_len, up_pos;
	char *up_owned;

	/* GET destination: [off, off+len) of the object goes to dst (or to
	 * op->sink).  A retry resumes: base bytes came in earlier attempts, and
	 * off/len/dst describe what is still missing. */
	unsigned char *dst;
	uint64_t off, len, base;
	char pin[STORE_ETAG_MAX];  /* the ETag the resumed bytes must match */
	int sink_rc;

	/* XML answers and error documents */
	char *body;
	size_t body_len, body_cap, body_max;

	/* this attempt's response */
	long status;
	char etag[STORE_ETAG_MAX];
	char amz_code[64];
	uint64_t clen;
	int have_clen;
	int cr_kind;               /* 0 none, 1 "bytes a-b/N", 2 "bytes a-b/x" (size unknown), 3 "bytes x/N" */
	uint64_t cr_first, cr_last, cr_total;
	int64_t mtime;
	uint64_t got, delivered;   /* GET: body bytes seen, bytes written to dst */
	int checked, stale, enough, bad;
	curl_socket_t fd;          /* this attempt's socket, as the loop's on_socket saw it (-1: not known) */
	int lowat;                 /* SO_RCVLOWAT this attempt set on fd (0: none) */
	char bad_msg[200];
	uint64_t progress_ns;      /* last time a byte moved either way */
	int stalled;

	/* retries */
	int attempts;
	uint64_t deadline_ns, wake_ns;
	int last_rc;
	char last[300];

	/* outcome */
	int rc;
	char errmsg[ERR_MSG_MAX];

	int here;                  /* this attempt runs on the submitter's thread
	                              (store_submit_here): done is called there */
	CURL *easy;
	struct curl_slist *hdrs;
	char curlerr[CURL_ERROR_SIZE];
	void (*finish)(struct req *r);
	void *arg;
	struct req *next;
};

struct mpu {
	struct store_op *op;
	uint64_t part_size;
	int nparts, next_part, inflight, done_parts;
	char upload_id[1024];
	char (*etags)[STORE_ETAG_MAX];
	int failed, attempts;
	int rc;
	char errmsg[ERR_MSG_MAX];
};

#define HERE_IDLE_MAX 16

struct s3 {
	struct store *s;
	struct awsconf conf;
	char base[1400];         /* URL up to and excluding "/key" */
	char list_url[1400];     /* URL of the bucket itself, for ListObjectsV2 */
	char endpoint_shown[600];/* for messages */
	char sigv4[128];
	char *userpwd;
	char *token_hdr;
	uint64_t stall_ns;

	CURLM *multi;
	int epfd;                        /* curl's sockets and wakefd */
	int wakefd;                      /* an eventfd: written to wake the loop */
	pthread_t thread;
	pthread_mutex_t mu;
	struct req *inbox, *inbox_tail;  /* guarded by mu */
	int stop;                        /* guarded by mu */

	/* loop thread only */
	uint64_t curl_due_ns;            /* curl's timer (UINT64_MAX: none) */
	int stopping;
	struct req *ready, *ready_tail;
	struct req *urgent_tail;         /* last urgent req in ready, or NULL */
	struct req *timers;              /* sorted by wake_ns */
	struct req *running;
	int nrunning;
	CURL **pool;
	int npool, pool_cap;

	/* Idle handles for GETs on callers' threads (store_submit_here), each
	 * with its kept-alive connection; the most recently used last. */
	pthread_mutex_t here_mu;
	CURL *here_idle[HERE_IDLE_MAX];
	int nhere_idle;
};

/* ---- small helpers ------------------------------------------------------- */

static void xstrlcpy(char *dst, const char *src, size_t n)
{
	size_t l = 0;
	while (l + 1 < n && src[l]) {
		dst[l] = src[l];
		l++;
	}
	dst[l] = 0;
}

/* S3's URI encoding: unreserved characters stay, everything else is %XX
 * (upper case, as SigV4 wants); '/' stays only in paths. */
static int uri_encode(char *dst, size_t n, const char *src, int keep_slash)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t o = 0;
	for (const unsigned char *p = (const unsigned char *)src; *p; p++) {
		int plain = (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
			    *p == '-' || *p == '_' || *p == '.' || *p == '~' || (keep_slash && *p == '/');
		if (o + (plain ? 1 : 3) >= n)
			return -1;
		if (plain) {
			dst[o++] = (char)*p;
		} else {
			dst[o++] = '%';
			dst[o++] = hex[*p >> 4];
			dst[o++] = hex[*p & 15];
		}
	}
	dst[o] = 0;
	return (int)o;
}

static int64_t iso8601_to_epoch(const char *s)
{
	struct tm tm;
	memset(&tm, 0, sizeof tm);
	if (sscanf(s, "%d-%d-%dT%d:%d:%d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour, &tm.tm_min,
		   &tm.tm_sec) != 6)
		return 0;
	tm.tm_year -= 1900;
	tm.tm_mon -= 1;
	return (int64_t)timegm(&tm);
}

/* ---- a small XML reader: enough for S3's answers ------------------------
 * Elements, text, entities, CDATA, comments, processing instructions and
 * attributes (skipped).  Namespace prefixes are dropped from names. */

enum { X_EOF, X_OPEN, X_CLOSE, X_TEXT, X_ERR };

struct xml {
	const char *p, *end;
	const char *pend_name; /* a self-closing <x/> yields OPEN then CLOSE */
	size_t pend_n;
};

struct xtok {
	int type, cdata;
	const char *s;
	size_t n;
};

static const char *find_str(const char *p, const char *end, const char *pat)
{
	size_t m = strlen(pat);
	for (; p + m <= end; p++)
		if (!memcmp(p, pat, m))
			return p;
	return NULL;
}

static void xml_name(const char *a, const char *b, struct xtok *t)
{
	const char *colon = memchr(a, ':', (size_t)(b - a));
	if (colon)
		a = colon + 1;
	t->s = a;
	t->n = (size_t)(b - a);
}

static int xml_next(struct xml *x, struct xtok *t)
{
	t->cdata = 0;
	if (x->pend_name) {
		t->type = X_CLOSE;
		t->s = x->pend_name;
		t->n = x->pend_n;
		x->pend_name = NULL;
		return t->type;
	}
	for (;;) {
		if (x->p >= x->end)
			return t->type = X_EOF;
		const char *p = x->p;
		if (*p != '<') {
			const char *lt = memchr(p, '<', (size_t)(x->end - p));
			if (!lt)
				lt = x->end;
			t->type = X_TEXT;
			t->s = p;
			t->n = (size_t)(lt - p);
			x->p = lt;
			return X_TEXT;
		}
		const char *q;
		if (x->end - p >= 9 && !memcmp(p, "<![CDATA[", 9)) {
			if (!(q = find_str(p + 9, x->end, "]]>")))
				return t->type = X_ERR;
			t->type = X_TEXT;
			t->cdata = 1;
			t->s = p + 9;
			t->n = (size_t)(q - (p + 9));
			x->p = q + 3;
			return X_TEXT;
		}
		if (x->end - p >= 4 && !memcmp(p, "<!--", 4)) {
			if (!(q = find_str(p + 4, x->end, "-->")))
				return t->type = X_ERR;
			x->p = q + 3;
			continue;
		}
		if (x->end - p >= 2 && (p[1] == '?' || p[1] == '!')) {
			if (!(q = memchr(p, '>', (size_t)(x->end - p))))
				return t->type = X_ERR;
			x->p = q + 1;
			continue;
		}
		int closing = x->end - p >= 2 && p[1] == '/';
		const char *a = p + 1 + closing, *b = a;
		while (b < x->end && *b != '>' && *b != '/' && *b != ' ' && *b != '\t' && *b != '\r' && *b != '\n')
			b++;
		if (b == a)
			return t->type = X_ERR;
		/* Skip attributes, honouring quotes: a '>' may sit inside one. */
		char quote = 0;
		for (q = b; q < x->end; q++) {
			if (quote) {
				if (*q == quote)
					quote = 0;
			} else if (*q == '"' || *q == '\'') {
				quote = *q;
			} else if (*q == '>') {
				break;
			}
		}
		if (q >= x->end)
			return t->type = X_ERR;
		xml_name(a, b, t);
		x->p = q + 1;
		if (closing) {
			t->type = X_CLOSE;
		} else {
			t->type = X_OPEN;
			if (q[-1] == '/') {
				x->pend_name = t->s;
				x->pend_n = t->n;
			}
		}
		return t->type;
	}
}

static int tok_is(const struct xtok *t, const char *name)
{
	return strlen(name) == t->n && !memcmp(t->s, name, t->n);
}

static int utf8_put(char *d, size_t room, unsigned long c)
{
	if (c < 0x80 && room >= 1) {
		d[0] = (char)c;
		return 1;
	}
	if (c < 0x800 && room >= 2) {
		d[0] = (char)(0xC0 | (c >> 6));
		d[1] = (char)(0x80 | (c & 0x3F));
		return 2;
	}
	if (c < 0x10000 && room >= 3) {
		d[0] = (char)(0xE0 | (c >> 12));
		d[1] = (char)(0x80 | ((c >> 6) & 0x3F));
		d[2] = (char)(0x80 | (c & 0x3F));
		return 3;
	}
	if (c < 0x110000 && room >= 4) {
		d[0] = (char)(0xF0 | (c >> 18));
		d[1] = (char)(0x80 | ((c >> 12) & 0x3F));
		d[2] = (char)(0x80 | ((c >> 6) & 0x3F));
		d[3] = (char)(0x80 | (c & 0x3F));
		return 4;
	}
	return -1;
}

/* Append the text of t to dst (NUL-terminated, *len bytes so far), decoding
 * entities.  -1 if it does not fit or an entity is malformed. */
static int xml_text_append(char *dst, size_t n, size_t *len, const struct xtok *t)
{
	static const struct {
		const char *name;
		char c;
	} named[] = { { "amp", '&' }, { "lt", '<' }, { "gt", '>' }, { "quot", '"' }, { "apos", '\'' } };
	size_t o = *len;
	for (size_t i = 0; i < t->n;) {
		char c = t->s[i];
		if (c != '&' || t->cdata) {
			if (o + 1 >= n)
				return -1;
			dst[o++] = c;
			i++;
			continue;
		}
		const char *semi = memchr(t->s + i, ';', t->n - i);
		if (!semi || semi - (t->s + i) > 12)
			return -1;
		const char *e = t->s + i + 1;
		size_t en = (size_t)(semi - e);
		int w = -1;
		if (en >= 2 && e[0] == '#') {
			char num[12];
			memcpy(num, e + 1, en - 1);
			num[en - 1] = 0;
			char *stop;
			unsigned long v = (num[0] == 'x' || num[0] == 'X') ? strtoul(num + 1, &stop, 16)
									     : strtoul(num, &stop, 10);
			if (*stop || stop == num || v == 0)
				return -1;
			if (o + 4 >= n)
				return -1;
			w = utf8_put(dst + o, n - 1 - o, v);
		} else {
			for (size_t k = 0; k < sizeof named / sizeof named[0]; k++)
				if (strlen(named[k].name) == en && !memcmp(e, named[k].name, en)) {
					if (o + 1 >= n)
						return -1;
					dst[o] = named[k].c;
					w = 1;
				}
		}
		if (w < 0)
			return -1;
		o += (size_t)w;
		i = (size_t)(semi - t->s) + 1;
	}
	dst[o] = 0;
	*len = o;
	return 0;
}

/* After an OPEN: read the element's text up to its CLOSE. */
static int xml_leaf(struct xml *x, char *dst, size_t n)
{
	struct xtok t;
	size_t len = 0;
	dst[0] = 0;
	for (;;) {
		switch (xml_next(x, &t)) {
		case X_TEXT:
			if (xml_text_append(dst, n, &len, &t) < 0)
				return -1;
			break;
		case X_CLOSE:
			return 0;
		default:
			return -1;
		}
	}
}

/* The text of the first <name> element anywhere in the document. */
static int xml_find(const char *doc, size_t len, const char *name, char *dst, size_t n)
{
	struct xml x = { doc, doc ? doc + len : doc, NULL, 0 };
	struct xtok t;
	int ty;
	dst[0] = 0;
	while ((ty = xml_next(&x, &t)) != X_EOF && ty != X_ERR)
		if (ty == X_OPEN && tok_is(&t, name))
			return xml_leaf(&x, dst, n) == 0 ? 1 : 0;
	return 0;
}

/* ---- requests ------------------------------------------------------------ */

static void req_free(struct req *r)
{
	if (!r)
		return;
	free(r->url);
	free(r->body);
	free(r->up_owned);
	curl_slist_free_all(r->hdrs);
	free(r);
}

/* URL of key (with an optional canonical query).  NULL if out of memory or
 * the key cannot be encoded. */
static char *object_url(struct s3 *x, const char *key, const char *query)
{
	size_t kn = strlen(key) * 3 + 1;
	char *ek = malloc(kn);
	if (!ek)
		return NULL;
	if (uri_encode(ek, kn, key, 1) < 0) {
		free(ek);
		return NULL;
	}
	char *url = NULL;
	if (asprintf(&url, "%s/%s%s%s", x->base, ek, query ? "?" : "", query ? query : "") < 0)
		url = NULL;
	free(ek);
	return url;
}

static struct req *req_new(struct s3 *x, enum rkind kind, struct store_op *op, const char *key)
{
	struct req *r = calloc(1, sizeof *r);
	if (!r)
		return NULL;
	r->x = x;
	r->kind = kind;
	r->op = op;
	r->key = key;
	r->body_max = ERRBODY_MAX;
	return r;
}

/* ---- response callbacks (loop thread, inside curl_multi_socket_action) --- */

static void reset_response(struct req *r)
{
	r->status = 0;
	r->etag[0] = 0;
	r->amz_code[0] = 0;
	r->clen = 0;
	r->have_clen = 0;
	r->cr_kind = 0;
	r->cr_first = r->cr_last = r->cr_total = 0;
	r->mtime = 0;
	r->got = r->delivered = 0;
	r->checked = r->stale = r->enough = r->bad = 0;
	r->body_len = 0;
	if (r->body)
		r->body[0] = 0;
}

static void parse_content_range(struct req *r, const char *v)
{
	/* "bytes a-b/N", "bytes a-b/x", or "bytes x/N" (416) */
	unsigned long long a, b, n;
	if (strncasecmp(v, "bytes", 5))
		return;
	v += 5;
	while (*v == ' ')
		v++;
	if (sscanf(v, "%llu-%llu/%llu", &a, &b, &n) == 3) {
		r->cr_kind = 1;
		r->cr_first = a;
		r->cr_last = b;
		r->cr_total = n;
	} else if (sscanf(v, "%llu-%llu/", &a, &b) == 2) {
		r->cr_kind = 2;
		r->cr_first = a;
		r->cr_last = b;
	} else if (sscanf(v, "*/%llu", &n) == 1) {
		r->cr_kind = 3;
		r->cr_total = n;
	}
}

/* An empty object asked for a range: s3rver answers 206 "bytes 0-0/0" with a
 * Content-Length of 1 and no body, which curl reports as a short transfer.
 * The Content-Range already says everything: zero bytes, size 0. */
static int is_empty_answer(const struct req *r)
{
	return r->kind == R_GET && r->status == 206 && r->cr_kind == 1 && r->cr_total == 0 && !r->got;
}

static int get_check(struct req *r);

static size_t on_header(char *buf, size_t size, size_t nmemb, void *arg)
{
	struct req *r = arg;
	size_t len = size * nmemb;
	char line[1024];
	r->progress_ns = now_ns();
	if (len >= 5 && !memcmp(buf, "HTTP/", 5)) {
		/* a new response (after a "100 Continue" too): forget the last */
		reset_response(r);
		const char *sp = memchr(buf, ' ', len);
		if (sp)
			r->status = strtol(sp + 1, NULL, 10);
		return len;
	}
	if (len <= 2 && is_empty_answer(r)) {
		/* End of the headers of an empty object's range answer (see
		 * is_empty_answer): nothing to wait for, whatever the
		 * Content-Length claims; the usual checks (ETag pin) still apply. */
		get_check(r);
		return 0;
	}
	size_t n = len < sizeof line - 1 ? len : sizeof line - 1;
	memcpy(line, buf, n);
	line[n] = 0;
	while (n && (line[n - 1] == '\r' || line[n - 1] == '\n' || line[n - 1] == ' '))
		line[--n] = 0;
	char *colon = strchr(line, ':');
	if (!colon)
		return len;
	*colon = 0;
	char *v = colon + 1;
	while (*v == ' ' || *v == '\t')
		v++;
	if (!strcasecmp(line, "etag")) {
		xstrlcpy(r->etag, v, sizeof r->etag);
	} else if (!strcasecmp(line, "content-length")) {
		char *end;
		unsigned long long cl = strtoull(v, &end, 10);
		if (end != v) {
			r->clen = cl;
			r->have_clen = 1;
		}
	} else if (!strcasecmp(line, "content-range")) {
		parse_content_range(r, v);
	} else if (!strcasecmp(line, "last-modified")) {
		time_t t = curl_getdate(v, NULL);
		r->mtime = t > 0 ? (int64_t)t : 0;
	} else if (!strcasecmp(line, "x-amz-error-code")) {
		xstrlcpy(r->amz_code, v, sizeof r->amz_code);
	}
	return len;
}

/* Checks made once, before the first byte of a GET's body lands. */
static int get_check(struct req *r)
{
	struct store_op *op = r->op;
	const char *want = op->if_match[0] ? op->if_match : r->pin;
	if (want[0] && strcmp(r->etag, want)) {
		r->stale = 1;
		return 0;
	}
	/* Bytes kept from this answer pin the version a resumed retry must see. */
	if (!r->pin[0])
		xstrlcpy(r->pin, r->etag, sizeof r->pin);
	if (r->status == 206 && ((r->cr_kind != 1 && r->cr_kind != 2) || r->cr_first != r->off ||
				 r->cr_last < r->cr_first)) {
		r->bad = 1;
		snprintf(r->bad_msg, sizeof r->bad_msg,
			 "206 answer with a Content-Range that is not the range asked for (bytes=%llu-)",
			 (unsigned long long)r->off);
		return 0;
	}
	r->checked = 1;
	return 1;
}

/* Body bytes [at, at+n) of this attempt's range: into dst or the sink. */
static int put_body(struct req *r, uint64_t at, const char *p, uint64_t n)
{
	struct store_op *op = r->op;
	if (op->sink) {
		int rc = op->sink(op, r->base + at, p, (size_t)n);
		if (rc < 0) {
			r->sink_rc = rc;
			r->bad = 1;
			snprintf(r->bad_msg, sizeof r->bad_msg, "%s", err_msg());
			return 0;
		}
	} else {
		memcpy(r->dst + at, p, n);
	}
	r->delivered += n;
	return 1;
}

/* A GET's body arrives faster than one thread can take it only in bursts:
 * woken for every few tens of KiB that land, the loop slept and woke ~10,000
 * times per GiB, each time a context switch and a wake-up on the sender's
 * side.  SO_RCVLOWAT makes the socket readable (and the kernel wake its
 * reader) only once GET_LOWAT bytes are there; once less than that is left
 * of the body, back to 1, so that no byte waits for others that will never
 * come and the next answer's headers on a kept-alive connection are read at
 * once.  (The kernel also wakes the reader when the window or memory
 * runs short, so a lower-than-asked receive buffer cannot stall it.)  A GET
 * that has seen nothing for LOWAT_IDLE_MS goes back to 1 for the rest of its
 * attempt (check_stalls): on a slow link, or a server pausing mid-body, bytes
 * short of the mark would otherwise wait, unseen by readers and by the stall
 * check, which would then call a trickling transfer stalled.  Only
 * for transfers in the loop, whose socket on_socket names: a GET run on a
 * caller's thread is a small one a reader waits for, and CURLINFO_ACTIVESOCKET
 * names the easy handle's last connection, not always the one in use. */
static void get_lowat(struct req *r, uint64_t left)
{
	/* Below the mark, straight to 1, not to what is left: lowering it step
	 * by step cost a setsockopt per 16 KiB callback in a GET's last 256 KiB,
	 * ~16 per GET, which a 1 MiB image chunk's GET felt. */
	int want = left >= GET_LOWAT ? (int)GET_LOWAT : 1;
	if (r->fd == CURL_SOCKET_BAD || (r->lowat ? want >= r->lowat : want == 1))
		return;
	if (setsockopt(r->fd, SOL_SOCKET, SO_RCVLOWAT, &want, sizeof want) == 0)
		r->lowat = want;
}

static size_t on_write(char *buf, size_t size, size_t nmemb, void *arg)
{
	struct req *r = arg;
	size_t len = size * nmemb;
	r->progress_ns = now_ns();
	if (r->kind == R_GET && (r->status == 206 || r->status == 200)) {
		atomic_fetch_add(&r->x->s->stats.bytes_in, len);
		if (!r->checked && !get_check(r))
			return 0;
		uint64_t base = r->got;
		r->got += len;
		if (r->have_clen && r->clen >= r->got)
			get_lowat(r, r->clen - r->got);
		if (r->status == 206) {
			/* body byte i is object byte off+i; take no more than len, and
			 * hang up on a server that sends more than was asked for */
			if (base < r->len) {
				uint64_t n = len < r->len - base ? len : r->len - base;
				if (!put_body(r, base, buf, n))
					return 0;
			}
			if (r->got >= r->len && r->cr_last - r->cr_first + 1 > r->len) {
				r->enough = 1;
				return 0;
			}
			return len;
		}
		/* 200: the server sent the whole object; keep [off, off+len) and
		 * hang up once we have it rather than download the rest. */
		uint64_t lo = base > r->off ? base : r->off;
		uint64_t hi = base + len < r->off + r->len ? base + len : r->off + r->len;
		if (lo < hi && !put_body(r, lo - r->off, buf + (lo - base), hi - lo))
			return 0;
		if (r->got >= r->off + r->len) {
			r->enough = 1;
			return 0;
		}
		return len;
	}
	/* Anything else is an XML answer or an error document. */
	if (r->body_len + len > r->body_max) {
		if (r->status >= 200 && r->status < 300) {
			r->bad = 1;
			snprintf(r->bad_msg, sizeof r->bad_msg, "%s answer larger than %zu bytes", rkind_name[r->kind],
				 r->body_max);
			return 0;
		}
		len = r->body_max - r->body_len; /* an error: its head is enough */
		if (!len)
			return size * nmemb;
	}
	if (r->body_len + len + 1 > r->body_cap) {
		size_t cap = r->body_cap ? r->body_cap : 4096;
		while (cap < r->body_len + len + 1)
			cap *= 2;
		char *nb = realloc(r->body, cap);
		if (!nb) {
			r->bad = 1;
			snprintf(r->bad_msg, sizeof r->bad_msg, "out of memory reading the answer");
			return 0;
		}
		r->body = nb;
		r->body_cap = cap;
	}
	memcpy(r->body + r->body_len, buf, len);
	r->body_len += len;
	r->body[r->body_len] = 0;
	return size * nmemb;
}

static size_t on_read(char *buf, size_t size, size_t nmemb, void *arg)
{
	struct req *r = arg;
	uint64_t left = r->up_len - r->up_pos;
	r->progress_ns = now_ns();
	size_t n = size * nmemb;
	if (n > left)
		n = (size_t)left;
	memcpy(buf, r->up + r->up_pos, n);
	r->up_pos += n;
	atomic_fetch_add(&r->x->s->stats.bytes_out, n);
	return n;
}

static int on_seek(void *arg, curl_off_t off, int origin)
{
	struct req *r = arg;
	if (origin != SEEK_SET || off < 0 || (uint64_t)off > r->up_len)
		return CURL_SEEKFUNC_FAIL;
	r->up_pos = (uint64_t)off;
	return CURL_SEEKFUNC_OK;
}

/* ---- the loop's lists ---------------------------------------------------- */

static void ready_push(struct s3 *x, struct req *r, int front)
{
	if (front == 2) {
		/* Urgent (a demand fetch): after earlier urgent ones, before the rest. */
		struct req **pp = x->urgent_tail ? &x->urgent_tail->next : &x->ready;
		r->next = *pp;
		*pp = r;
		if (!r->next)
			x->ready_tail = r;
		x->urgent_tail = r;
		return;
	}
	if (front) {
		r->next = x->ready;
		x->ready = r;
		if (!x->ready_tail)
			x->ready_tail = r;
		return;
	}
	r->next = NULL;
	if (x->ready_tail)
		x->ready_tail->next = r;
	else
		x->ready = r;
	x->ready_tail = r;
}

static void timer_add(struct s3 *x, struct req *r)
{
	struct req **pp = &x->timers;
	while (*pp && (*pp)->wake_ns <= r->wake_ns)
		pp = &(*pp)->next;
	r->next = *pp;
	*pp = r;
}

static void running_remove(struct s3 *x, struct req *r)
{
	for (struct req **pp = &x->running; *pp; pp = &(*pp)->next)
		if (*pp == r) {
			*pp = r->next;
			x->nrunning--;
			return;
		}
}

static CURL *pool_get(struct s3 *x)
{
	if (x->npool)
		return x->pool[--x->npool];
	return curl_easy_init();
}

static void pool_put(struct s3 *x, CURL *e)
{
	/* reset keeps the handle's connection and DNS caches */
	curl_easy_reset(e);
	if (x->npool < x->pool_cap)
		x->pool[x->npool++] = e;
	else
		curl_easy_cleanup(e);
}

/* ---- outcomes ------------------------------------------------------------ */

static void req_fail(struct req *r, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void req_fail(struct req *r, int rc, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(r->errmsg, sizeof r->errmsg, fmt, ap);
	va_end(ap);
	r->rc = rc;
	r->finish(r);
}

static void req_ok(struct req *r)
{
	r->rc = 0;
	r->errmsg[0] = 0;
	r->finish(r);
}

static int start_req(struct s3 *x, struct req *r);
static int enqueue(struct s3 *x, struct req *r);
static void cancel_req(struct req *r);

/* A retry waits on the loop's timer list; an attempt made on a caller's
 * thread hands its request over to the loop for that (the loop files a
 * request arriving with a wake time under its timers). */
static void schedule_retry(struct s3 *x, struct req *r)
{
	if (!r->here) {
		timer_add(x, r);
		return;
	}
	r->here = 0;
	r->easy = NULL;
	if (enqueue(x, r) < 0)
		cancel_req(r);
}

/* A failed attempt that may succeed if tried again: schedule it, or give up
 * if the attempts or the time budget are spent. */
static void retry_or_fail(struct s3 *x, struct req *r, int rc, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void retry_or_fail(struct s3 *x, struct req *r, int rc, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(r->last, sizeof r->last, fmt, ap);
	va_end(ap);
	r->last_rc = rc;
	const char *bucket = x->s->url.root;
	if (r->kind == R_GET && !r->as_head && r->delivered) {
		/* Resume after the bytes already kept instead of fetching them again. */
		r->base += r->delivered;
		r->off += r->delivered;
		r->len -= r->delivered;
		if (r->dst)
			r->dst += r->delivered;
		r->delivered = 0;
		if (!r->len) {
			/* Everything wanted arrived; the failure came after it. */
			r->op->nread = r->base;
			r->op->obj_size = r->cr_kind == 1 ? r->cr_total : 0;
			req_ok(r);
			return;
		}
	}
	if (!x->stopping && r->attempts < x->s->cfg.max_attempts) {
		uint64_t delay = store_backoff_ms(r->attempts);
		uint64_t now = now_ns();
		if (now + delay * 1000000ull < r->deadline_ns) {
			r->wake_ns = now + delay * 1000000ull;
			atomic_fetch_add(&x->s->stats.retries, 1);
			log_debug("s3://%s/%s: %s %s; retry %d in %llu ms", bucket, r->key, rkind_name[r->kind],
				  r->last, r->attempts + 1, (unsigned long long)delay);
			schedule_retry(x, r);
			return;
		}
		req_fail(r, rc, "s3://%s/%s: %s %s (gave up after %d attempt%s: the %llu ms budget would run out)",
			 bucket, r->key, rkind_name[r->kind], r->last, r->attempts, r->attempts == 1 ? "" : "s",
			 (unsigned long long)x->s->cfg.max_total_ms);
		return;
	}
	req_fail(r, rc, "s3://%s/%s: %s %s (gave up after %d attempt%s)", bucket, r->key, rkind_name[r->kind],
		 r->last, r->attempts, r->attempts == 1 ? "" : "s");
}

static int is_retryable_code(const char *code)
{
	return !strcmp(code, "SlowDown") || !strcmp(code, "InternalError") || !strcmp(code, "ServiceUnavailable") ||
	       !strcmp(code, "RequestTimeout") || !strcmp(code, "OperationAborted");
}

/* An HTTP error answer: name the S3 error code from the document (or the
 * x-amz-error-code header a HEAD gets instead of a body). */
static void http_error(struct s3 *x, struct req *r)
{
	char code[128] = "", msg[200] = "";
	const char *bucket = x->s->url.root;
	if (r->body_len) {
		xml_find(r->body, r->body_len, "Code", code, sizeof code);
		xml_find(r->body, r->body_len, "Message", msg, sizeof msg);
	}
	if (!code[0])
		xstrlcpy(code, r->amz_code, sizeof code);
	long st = r->status;
	if (st >= 500 || st == 429 || st == 408 || is_retryable_code(code)) {
		retry_or_fail(x, r, -EIO, "failed: HTTP %ld%s%s", st, code[0] ? " " : "", code);
		return;
	}
	if (st == 404) {
		if (!strcmp(code, "NoSuchBucket"))
			req_fail(r, -ENOENT, "s3://%s/%s: bucket '%s' does not exist (NoSuchBucket)", bucket, r->key,
				 bucket);
		else if (!strcmp(code, "NoSuchUpload"))
			req_fail(r, -ENOENT, "s3://%s/%s: %s: the multipart upload is gone (NoSuchUpload)", bucket,
				 r->key, rkind_name[r->kind]);
		else if (code[0])
			req_fail(r, -ENOENT, "s3://%s/%s: no such key (%s)", bucket, r->key, code);
		else /* a HEAD's 404 has no body to tell a missing key from a missing bucket */
			req_fail(r, -ENOENT, "s3://%s/%s: not found (HTTP 404 to %s: no such key or no such bucket)",
				 bucket, r->key, rkind_name[r->kind]);
		return;
	}
	if (!strcmp(code, "RequestTimeTooSkewed")) {
		req_fail(r, -EACCES, "s3://%s/%s: refused (RequestTimeTooSkewed): this machine's clock is off by "
				     "more than 15 minutes", bucket, r->key);
		return;
	}
	if (!strcmp(code, "ExpiredToken") || !strcmp(code, "InvalidToken") || !strcmp(code, "TokenRefreshRequired")) {
		req_fail(r, -EACCES, "s3://%s/%s: access denied (%s): the session token is no longer valid (%s)",
			 bucket, r->key, code, x->conf.cred_source);
		return;
	}
	if (st == 403) {
		req_fail(r, -EACCES, "s3://%s/%s: access denied (%s%s%s): check credentials (%s)", bucket, r->key,
			 code[0] ? code : "HTTP 403", msg[0] ? ": " : "", msg, x->conf.cred_source);
		return;
	}
	if (st == 412) {
		req_fail(r, -ESTALE, "s3://%s/%s changed while reading (precondition failed, expected ETag %s)",
			 bucket, r->key, r->op ? r->op->if_match : "?");
		return;
	}
	if (st == 301 || st == 307 || !strcmp(code, "AuthorizationHeaderMalformed")) {
		req_fail(r, -EIO, "s3://%s/%s: %s answered HTTP %ld %s: is the bucket in region %s? (set AWS_REGION)",
			 bucket, r->key, rkind_name[r->kind], st, code, x->conf.region);
		return;
	}
	req_fail(r, -EIO, "s3://%s/%s: %s failed: HTTP %ld%s%s%s%s", bucket, r->key, rkind_name[r->kind], st,
		 code[0] ? " " : "", code, msg[0] ? ": " : "", msg);
}

static void curl_error(struct s3 *x, struct req *r, CURLcode res)
{
	const char *detail = r->curlerr[0] ? r->curlerr : curl_easy_strerror(res);
	long oserr = 0;
	curl_easy_getinfo(r->easy, CURLINFO_OS_ERRNO, &oserr);
	switch (res) {
	case CURLE_COULDNT_CONNECT: {
		int rc = oserr == ECONNREFUSED ? -ECONNREFUSED : oserr == ETIMEDOUT ? -ETIMEDOUT : -EHOSTUNREACH;
		retry_or_fail(x, r, rc, "cannot connect to %s: %s", x->endpoint_shown, detail);
		return;
	}
	case CURLE_COULDNT_RESOLVE_HOST:
		retry_or_fail(x, r, -EHOSTUNREACH, "cannot resolve %s: %s", x->endpoint_shown, detail);
		return;
	case CURLE_OPERATION_TIMEDOUT:
		if (r->stalled) {
			retry_or_fail(x, r, -ETIMEDOUT, "stalled: no bytes from %s for %llu ms", x->endpoint_shown,
				      (unsigned long long)(x->stall_ns / 1000000));
			return;
		}
		retry_or_fail(x, r, -ETIMEDOUT, "timed out talking to %s: %s", x->endpoint_shown, detail);
		return;
	case CURLE_SEND_ERROR:
	case CURLE_RECV_ERROR:
	case CURLE_GOT_NOTHING:
	case CURLE_PARTIAL_FILE:
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_HTTP2:
	case CURLE_HTTP2_STREAM:
	case CURLE_WEIRD_SERVER_REPLY:
		retry_or_fail(x, r, -ECONNRESET, "connection to %s failed mid-request: %s", x->endpoint_shown,
			      detail);
		return;
	default:
		req_fail(r, -EIO, "s3://%s/%s: %s to %s failed: %s", x->s->url.root, r->key, rkind_name[r->kind],
			 x->endpoint_shown, detail);
	}
}

/* The answer's ETag was not the one the bytes are pinned to. */
static void fail_stale(struct s3 *x, struct req *r)
{
	const char *want = r->op->if_match[0] ? r->op->if_match : r->pin;
	req_fail(r, -ESTALE, "s3://%s/%s changed while reading (ETag %s, expected %s)", x->s->url.root, r->key,
		 r->etag[0] ? r->etag : "none", want);
}

/* A 2xx answer to a GET: did we get every byte the answer promised? */
static void get_done(struct s3 *x, struct req *r)
{
	struct store_op *op = r->op;
	if (!r->checked && !r->as_head && !get_check(r)) /* an empty body: check now */
		goto refused;
	if (r->as_head) {
		if (op->if_match[0] && strcmp(r->etag, op->if_match)) {
			r->stale = 1;
			goto refused;
		}
		op->obj_size = r->have_clen ? r->clen : 0;
		op->nread = 0;
		req_ok(r);
		return;
	}
	if (r->status == 206) {
		uint64_t promised = r->cr_last - r->cr_first + 1;
		if (!r->enough && r->got < promised) {
			retry_or_fail(x, r, -EIO, "short body: %llu of %llu bytes", (unsigned long long)r->got,
				      (unsigned long long)promised);
			return;
		}
		op->nread = r->base + r->delivered;
		op->obj_size = r->cr_kind == 1 ? r->cr_total : 0;
		if (r->cr_kind == 1 && r->cr_total < r->cr_last + 1) {
			req_fail(r, -EIO, "s3://%s/%s: GET: Content-Range says the object is %llu bytes but sent byte %llu",
				 x->s->url.root, r->key, (unsigned long long)r->cr_total,
				 (unsigned long long)r->cr_last);
			return;
		}
		req_ok(r);
		return;
	}
	/* 200: the whole object (the server ignored Range) */
	uint64_t total = r->have_clen ? r->clen : r->got;
	if (!r->enough && r->got < total) {
		retry_or_fail(x, r, -EIO, "short body: %llu of %llu bytes", (unsigned long long)r->got,
			      (unsigned long long)total);
		return;
	}
	uint64_t want = r->off < total ? (total - r->off < r->len ? total - r->off : r->len) : 0;
	if (r->delivered != want) {
		retry_or_fail(x, r, -EIO, "short body: delivered %llu of %llu bytes", (unsigned long long)r->delivered,
			      (unsigned long long)want);
		return;
	}
	op->nread = r->base + want;
	op->obj_size = total;
	req_ok(r);
	return;
refused:
	if (r->stale) {
		fail_stale(x, r);
		return;
	}
	req_fail(r, -EIO, "s3://%s/%s: GET: %s", x->s->url.root, r->key, r->bad_msg);
}

/* A 416 answer: off is at or past the end.  The size comes from
 * "Content-Range: bytes * /N" or, failing that, the error document. */
static void get_416(struct req *r)
{
	struct store_op *op = r->op;
	op->nread = r->base; /* a resumed GET keeps what earlier attempts delivered */
	op->obj_size = 0;
	if (r->cr_kind == 3) {
		op->obj_size = r->cr_total;
	} else if (r->body_len) {
		char v[32];
		if (xml_find(r->body, r->body_len, "ActualObjectSize", v, sizeof v))
			op->obj_size = strtoull(v, NULL, 10);
	}
	req_ok(r);
}

/* What an attempt that has ended means: finish r, or schedule its retry. */
static void attempt_outcome(struct s3 *x, struct req *r, CURLcode res)
{
	const char *bucket = x->s->url.root;
	if (r->stale) {
		fail_stale(x, r);
	} else if (r->bad && r->sink_rc) {
		req_fail(r, r->sink_rc, "%s", r->bad_msg);
	} else if (r->bad) {
		req_fail(r, -EIO, "s3://%s/%s: %s: %s", bucket, r->key, rkind_name[r->kind], r->bad_msg);
	} else if (r->checked && is_empty_answer(r)) {
		r->op->nread = r->base;
		r->op->obj_size = 0;
		req_ok(r);
	} else if (res != CURLE_OK && !(res == CURLE_WRITE_ERROR && r->enough)) {
		curl_error(x, r, res);
	} else if (r->status >= 200 && r->status < 300) {
		switch (r->kind) {
		case R_GET:
			get_done(x, r);
			break;
		case R_HEAD:
			r->op->obj_size = r->have_clen ? r->clen : 0;
			r->op->mtime = r->mtime;
			req_ok(r);
			break;
		case R_MPU_COMPLETE: {
			/* S3 may answer 200 and still fail: the error is in the body. */
			char code[128];
			if (r->body_len && find_str(r->body, r->body + r->body_len, "<Error>") &&
			    xml_find(r->body, r->body_len, "Code", code, sizeof code)) {
				if (is_retryable_code(code))
					retry_or_fail(x, r, -EIO, "failed: 200 with error %s", code);
				else
					req_fail(r, -EIO, "s3://%s/%s: %s failed: %s", bucket, r->key,
						 rkind_name[r->kind], code);
				break;
			}
			req_ok(r);
			break;
		}
		default:
			req_ok(r);
		}
	} else if (r->status == 416 && r->kind == R_GET) {
		get_416(r);
	} else if (r->status == 0) {
		retry_or_fail(x, r, -EIO, "got no HTTP status from %s", x->endpoint_shown);
	} else {
		http_error(x, r);
	}
	/* r may be freed or queued for retry now: the easy handle goes back to
	 * the pool either way (finish/retry never touch it). */
}

/* A new attempt of r: on the loop (start_req) or a caller's thread. */
static void attempt_begin(struct req *r)
{
	r->attempts++;
	r->stalled = 0;
	r->fd = CURL_SOCKET_BAD;
	r->lowat = 0;
	r->progress_ns = now_ns();
}

static void attempt_done(struct s3 *x, struct req *r, CURLcode res)
{
	if (r->lowat > 1) /* cut short: the connection may yet be kept */
		get_lowat(r, 0);
	running_remove(x, r);
	curl_multi_remove_handle(x->multi, r->easy);
	curl_slist_free_all(r->hdrs);
	r->hdrs = NULL;
	attempt_outcome(x, r, res);
}

/* ---- starting attempts ----------------------------------------------------- */

static int add_header(struct req *r, const char *h)
{
	struct curl_slist *n = curl_slist_append(r->hdrs, h);
	if (!n)
		return -1;
	r->hdrs = n;
	return 0;
}

#define SETOPT(e, o, v)                                     \
	do {                                                \
		if (curl_easy_setopt(e, o, v) != CURLE_OK)  \
			goto setopt_failed;                 \
	} while (0)

/* Finish r if its time budget is spent (1), else 0. */
static int past_deadline(struct s3 *x, struct req *r, uint64_t now)
{
	const struct store_config *cfg = &x->s->cfg;
	if (now >= r->deadline_ns) {
		if (r->attempts)
			req_fail(r, r->last_rc ? r->last_rc : -ETIMEDOUT,
				 "s3://%s/%s: %s %s (gave up after %d attempts: %llu ms budget spent)", x->s->url.root,
				 r->key, rkind_name[r->kind], r->last, r->attempts,
				 (unsigned long long)cfg->max_total_ms);
		else
			req_fail(r, -ETIMEDOUT, "s3://%s/%s: %s waited in the queue past its %llu ms budget",
				 x->s->url.root, r->key, rkind_name[r->kind], (unsigned long long)cfg->max_total_ms);
		return 1;
	}
	return 0;
}

static int here_progress(void *arg, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un);

/* Set e up for one attempt of r: 0, or -EIO (libcurl refused an option) or
 * -ENOMEM, with r->hdrs freed. */
static int setup_easy(struct s3 *x, struct req *r, CURL *e, uint64_t now)
{
	const struct store_config *cfg = &x->s->cfg;
	reset_response(r);
	r->up_pos = 0;
	r->curlerr[0] = 0;
	uint64_t left_ms = ms_until(r->deadline_ns, now);
	char h[200];

	SETOPT(e, CURLOPT_URL, r->url);
	SETOPT(e, CURLOPT_PRIVATE, r);
	SETOPT(e, CURLOPT_ERRORBUFFER, r->curlerr);
	SETOPT(e, CURLOPT_NOSIGNAL, 1L);
	SETOPT(e, CURLOPT_PATH_AS_IS, 1L);
	SETOPT(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
	SETOPT(e, CURLOPT_AWS_SIGV4, x->sigv4);
	SETOPT(e, CURLOPT_USERPWD, x->userpwd);
	SETOPT(e, CURLOPT_CONNECTTIMEOUT_MS, (long)cfg->connect_timeout_ms);
	SETOPT(e, CURLOPT_TIMEOUT_MS, (long)left_ms);
	SETOPT(e, CURLOPT_HEADERFUNCTION, on_header);
	SETOPT(e, CURLOPT_HEADERDATA, r);
	SETOPT(e, CURLOPT_WRITEFUNCTION, on_write);
	SETOPT(e, CURLOPT_WRITEDATA, r);
	SETOPT(e, CURLOPT_BUFFERSIZE, 256L << 10);
	if (x->conf.ca_bundle[0])
		SETOPT(e, CURLOPT_CAINFO, x->conf.ca_bundle);

	if (add_header(r, "x-amz-content-sha256: UNSIGNED-PAYLOAD") < 0 ||
	    (x->token_hdr && add_header(r, x->token_hdr) < 0))
		goto nomem;
	switch (r->kind) {
	case R_GET:
		if (r->as_head) {
			SETOPT(e, CURLOPT_NOBODY, 1L);
		} else {
			snprintf(h, sizeof h, "Range: bytes=%llu-%llu", (unsigned long long)r->off,
				 (unsigned long long)(r->off + r->len - 1));
			if (add_header(r, h) < 0)
				goto nomem;
		}
		if (r->op->if_match[0]) {
			snprintf(h, sizeof h, "If-Match: %s", r->op->if_match);
			if (add_header(r, h) < 0)
				goto nomem;
		}
		break;
	case R_HEAD:
		SETOPT(e, CURLOPT_NOBODY, 1L);
		break;
	case R_PUT:
	case R_MPU_PART:
		SETOPT(e, CURLOPT_UPLOAD, 1L);
		SETOPT(e, CURLOPT_READFUNCTION, on_read);
		SETOPT(e, CURLOPT_READDATA, r);
		SETOPT(e, CURLOPT_SEEKFUNCTION, on_seek);
		SETOPT(e, CURLOPT_SEEKDATA, r);
		SETOPT(e, CURLOPT_INFILESIZE_LARGE, (curl_off_t)r->up_len);
		SETOPT(e, CURLOPT_UPLOAD_BUFFERSIZE, 1L << 20);
		break;
	case R_DELETE:
	case R_MPU_ABORT:
		SETOPT(e, CURLOPT_CUSTOMREQUEST, "DELETE");
		break;
	case R_LIST:
		break;
	case R_MPU_CREATE:
	case R_MPU_COMPLETE:
		SETOPT(e, CURLOPT_POST, 1L);
		SETOPT(e, CURLOPT_POSTFIELDS, r->up ? (const char *)r->up : "");
		SETOPT(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->up_len);
		if (add_header(r, "Content-Type: application/xml") < 0)
			goto nomem;
		break;
	}
	SETOPT(e, CURLOPT_HTTPHEADER, r->hdrs);
	if (r->here) {
		SETOPT(e, CURLOPT_XFERINFOFUNCTION, here_progress);
		SETOPT(e, CURLOPT_XFERINFODATA, r);
		SETOPT(e, CURLOPT_NOPROGRESS, 0L);
	}
	return 0;

setopt_failed:
	curl_slist_free_all(r->hdrs);
	r->hdrs = NULL;
	return -EIO;
nomem:
	curl_slist_free_all(r->hdrs);
	r->hdrs = NULL;
	return -ENOMEM;
}

static void setup_failed(struct s3 *x, struct req *r, int rc)
{
	if (rc == -ENOMEM)
		req_fail(r, -ENOMEM, "s3://%s/%s: out of memory building a request", x->s->url.root, r->key);
	else
		req_fail(r, -EIO, "s3://%s/%s: libcurl refused an option (is it built with AWS SigV4 support?)",
			 x->s->url.root, r->key);
}

/* Start one attempt of r.  On failure r has been finished. */
static int start_req(struct s3 *x, struct req *r)
{
	uint64_t now = now_ns();
	if (past_deadline(x, r, now))
		return -1;
	CURL *e = pool_get(x);
	if (!e) {
		req_fail(r, -ENOMEM, "s3://%s/%s: out of memory for a curl handle", x->s->url.root, r->key);
		return -1;
	}
	r->easy = e;
	int rc = setup_easy(x, r, e, now);
	if (rc < 0) {
		pool_put(x, e);
		r->easy = NULL;
		setup_failed(x, r, rc);
		return -1;
	}

	CURLMcode mc = curl_multi_add_handle(x->multi, e);
	if (mc != CURLM_OK) {
		pool_put(x, e);
		r->easy = NULL;
		req_fail(r, -EIO, "s3://%s/%s: curl_multi_add_handle: %s", x->s->url.root, r->key,
			 curl_multi_strerror(mc));
		return -1;
	}
	attempt_begin(r);
	r->next = x->running;
	x->running = r;
	x->nrunning++;
	return 0;
}

/* ---- finishing: single-request ops ---------------------------------------- */

static void op_complete(struct s3 *x, struct store_op *op)
{
	if (op->rc < 0)
		atomic_fetch_add(&x->s->stats.failures, 1);
	store_deliver(x->s, op);
}

static void finish_simple(struct req *r)
{
	struct store_op *op = r->op;
	op->attempts = r->attempts;
	op->rc = r->rc;
	if (r->rc < 0) {
		xstrlcpy(op->errmsg, r->errmsg, sizeof op->errmsg);
		op->nread = 0;
	} else {
		xstrlcpy(op->etag, r->etag, sizeof op->etag);
	}
	struct s3 *x = r->x;
	int here = r->here;
	req_free(r);
	if (!here) {
		op_complete(x, op);
		return;
	}
	if (op->rc < 0)
		atomic_fetch_add(&x->s->stats.failures, 1);
	op->done(op);
}

/* ---- finishing: multipart uploads ----------------------------------------- */

static void mpu_step(struct s3 *x, struct mpu *m);

static void mpu_done(struct s3 *x, struct mpu *m, int rc, const char *msg, const char *etag)
{
	struct store_op *op = m->op;
	op->rc = rc;
	op->attempts = m->attempts;
	if (rc < 0)
		xstrlcpy(op->errmsg, msg, sizeof op->errmsg);
	else
		xstrlcpy(op->etag, etag, sizeof op->etag);
	free(m->etags);
	free(m);
	op_complete(x, op);
}

static void mpu_note_failure(struct mpu *m, struct req *r)
{
	if (!m->failed) {
		m->failed = 1;
		m->rc = r->rc;
		xstrlcpy(m->errmsg, r->errmsg, sizeof m->errmsg);
	}
}

static void finish_abort(struct req *r)
{
	struct s3 *x = r->x;
	struct mpu *m = r->mpu;
	if (r->attempts > m->attempts)
		m->attempts = r->attempts;
	if (r->rc < 0 && r->rc != -ENOENT) {
		/* the upload's parts stay billed until a lifecycle rule removes them */
		log_warn("abandoned multipart upload of s3://%s/%s: %s", x->s->url.root, m->op->key, r->errmsg);
	}
	req_free(r);
	mpu_done(x, m, m->rc, m->errmsg, NULL);
}

static void mpu_abort(struct s3 *x, struct mpu *m)
{
	char q[1200], id[1100];
	struct req *r = NULL;
	if (x->stopping || uri_encode(id, sizeof id, m->upload_id, 0) < 0 ||
	    snprintf(q, sizeof q, "uploadId=%s", id) >= (int)sizeof q || !(r = req_new(x, R_MPU_ABORT, m->op, m->op->key)) ||
	    !(r->url = object_url(x, m->op->key, q))) {
		req_free(r);
		mpu_done(x, m, m->rc, m->errmsg, NULL);
		return;
	}
	r->mpu = m;
	r->finish = finish_abort;
	r->deadline_ns = now_ns() + x->s->cfg.max_total_ms * 1000000ull;
	ready_push(x, r, 1);
}

static void finish_complete(struct req *r)
{
	struct s3 *x = r->x;
	struct mpu *m = r->mpu;
	if (r->attempts > m->attempts)
		m->attempts = r->attempts;
	if (r->rc < 0) {
		mpu_note_failure(m, r);
		req_free(r);
		mpu_abort(x, m);
		return;
	}
	char etag[STORE_ETAG_MAX];
	if (!xml_find(r->body, r->body_len, "ETag", etag, sizeof etag))
		xstrlcpy(etag, r->etag, sizeof etag);
	req_free(r);
	mpu_done(x, m, 0, NULL, etag);
}

static void mpu_complete(struct s3 *x, struct mpu *m)
{
	/* <Part><PartNumber>n</PartNumber><ETag>&quot;..&quot;</ETag></Part> */
	size_t cap = 128 + (size_t)m->nparts * (64 + 6 * STORE_ETAG_MAX);
	char *xml = malloc(cap), id[1100], q[1200];
	struct req *r = NULL;
	if (!xml || uri_encode(id, sizeof id, m->upload_id, 0) < 0 ||
	    snprintf(q, sizeof q, "uploadId=%s", id) >= (int)sizeof q || !(r = req_new(x, R_MPU_COMPLETE, m->op, m->op->key)) ||
	    !(r->url = object_url(x, m->op->key, q))) {
		free(xml);
		req_free(r);
		if (!m->failed) {
			m->failed = 1;
			m->rc = -ENOMEM;
			snprintf(m->errmsg, sizeof m->errmsg, "s3://%s/%s: out of memory completing the upload",
				 x->s->url.root, m->op->key);
		}
		mpu_abort(x, m);
		return;
	}
	size_t o = (size_t)snprintf(xml, cap, "<CompleteMultipartUpload>");
	for (int i = 0; i < m->nparts; i++) {
		o += (size_t)snprintf(xml + o, cap - o, "<Part><PartNumber>%d</PartNumber><ETag>", i + 1);
		for (const char *p = m->etags[i]; *p; p++) {
			const char *ent = *p == '"' ? "&quot;" : *p == '&' ? "&amp;" : *p == '<' ? "&lt;" : *p == '>' ? "&gt;" : NULL;
			if (ent) {
				memcpy(xml + o, ent, strlen(ent));
				o += strlen(ent);
			} else {
				xml[o++] = *p;
			}
		}
		o += (size_t)snprintf(xml + o, cap - o, "</ETag></Part>");
	}
	o += (size_t)snprintf(xml + o, cap - o, "</CompleteMultipartUpload>");
	r->up_owned = xml;
	r->up = (const unsigned char *)xml;
	r->up_len = o;
	r->mpu = m;
	r->body_max = XMLBODY_MAX;
	r->finish = finish_complete;
	r->deadline_ns = now_ns() + x->s->cfg.max_total_ms * 1000000ull;
	ready_push(x, r, 1);
}

static void finish_part(struct req *r)
{
	struct s3 *x = r->x;
	struct mpu *m = r->mpu;
	m->inflight--;
	if (r->attempts > m->attempts)
		m->attempts = r->attempts;
	if (r->rc == 0 && !r->etag[0]) {
		r->rc = -EIO;
		snprintf(r->errmsg, sizeof r->errmsg, "s3://%s/%s: UploadPart %d answered without an ETag",
			 x->s->url.root, r->key, r->part);
	}
	if (r->rc < 0)
		mpu_note_failure(m, r);
	else {
		xstrlcpy(m->etags[r->part - 1], r->etag, STORE_ETAG_MAX);
		m->done_parts++;
	}
	req_free(r);
	mpu_step(x, m);
}

/* Keep MPU_PARTS_INFLIGHT parts going; complete or abort when all are in. */
static void mpu_step(struct s3 *x, struct mpu *m)
{
	if (m->failed || x->stopping) {
		if (m->inflight == 0) {
			if (x->stopping && !m->failed) {
				m->failed = 1;
				m->rc = -ECANCELED;
				snprintf(m->errmsg, sizeof m->errmsg, "s3://%s/%s: store closed during the upload",
					 x->s->url.root, m->op->key);
			}
			mpu_abort(x, m);
		}
		return;
	}
	if (m->done_parts == m->nparts) {
		mpu_complete(x, m);
		return;
	}
	while (m->inflight < MPU_PARTS_INFLIGHT && m->next_part <= m->nparts) {
		int n = m->next_part;
		char q[1200], id[1100];
		struct req *r = NULL;
		if (uri_encode(id, sizeof id, m->upload_id, 0) < 0 ||
		    snprintf(q, sizeof q, "partNumber=%d&uploadId=%s", n, id) >= (int)sizeof q ||
		    !(r = req_new(x, R_MPU_PART, m->op, m->op->key)) || !(r->url = object_url(x, m->op->key, q))) {
			req_free(r);
			m->failed = 1;
			m->rc = -ENOMEM;
			snprintf(m->errmsg, sizeof m->errmsg, "s3://%s/%s: out of memory starting part %d",
				 x->s->url.root, m->op->key, n);
			mpu_step(x, m);
			return;
		}
		uint64_t off = (uint64_t)(n - 1) * m->part_size;
		r->mpu = m;
		r->part = n;
		r->up = (const unsigned char *)m->op->buf + off;
		r->up_len = m->op->len - off < m->part_size ? m->op->len - off : m->part_size;
		r->finish = finish_part;
		r->deadline_ns = now_ns() + x->s->cfg.max_total_ms * 1000000ull;
		m->next_part++;
		m->inflight++;
		ready_push(x, r, 0);
	}
}

static void finish_create(struct req *r)
{
	struct s3 *x = r->x;
	struct mpu *m = r->mpu;
	m->attempts = r->attempts;
	if (r->rc == 0 && !xml_find(r->body, r->body_len, "UploadId", m->upload_id, sizeof m->upload_id)) {
		r->rc = -EIO;
		snprintf(r->errmsg, sizeof r->errmsg, "s3://%s/%s: CreateMultipartUpload answered without an UploadId",
			 x->s->url.root, r->key);
	}
	if (r->rc < 0) {
		int rc = r->rc;
		char msg[ERR_MSG_MAX];
		xstrlcpy(msg, r->errmsg, sizeof msg);
		req_free(r);
		mpu_done(x, m, rc, msg, NULL);
		return;
	}
	req_free(r);
	mpu_step(x, m);
}

/* ---- submit ------------------------------------------------------------------ */

static void inbox_push(struct s3 *x, struct req *r)
{
	r->next = NULL;
	if (x->inbox_tail)
		x->inbox_tail->next = r;
	else
		x->inbox = r;
	x->inbox_tail = r;
}

static void loop_wake(struct s3 *x);

/* Queue r for the loop; -ECANCELED once the store is closing. */
static int enqueue(struct s3 *x, struct req *r)
{
	pthread_mutex_lock(&x->mu);
	if (x->stop) {
		pthread_mutex_unlock(&x->mu);
		return err_set(ECANCELED, "s3://%s: store is closing", x->s->url.root);
	}
	inbox_push(x, r);
	pthread_mutex_unlock(&x->mu);
	loop_wake(x);
	return 0;
}

/* Check op and turn it into a request: 0, or <0 + err_msg. */
static int op_req(struct s3 *x, struct store_op *op, struct req **out)
{
	struct store *s = x->s;
	const char *bucket = s->url.root;
	if (!op->key[0])
		return err_set(EINVAL, "s3://%s: empty key", bucket);
	if ((op->kind == STORE_GET || op->kind == STORE_PUT) && op->len && !op->buf &&
	    !(op->kind == STORE_GET && op->sink))
		return err_set(EINVAL, "s3://%s/%s: no buffer for %llu bytes", bucket, op->key,
			       (unsigned long long)op->len);
	if (op->kind == STORE_GET && op->off + op->len < op->off)
		return err_set(EINVAL, "s3://%s/%s: range overflows", bucket, op->key);

	struct req *r = NULL;
	struct mpu *m = NULL;
	switch (op->kind) {
	case STORE_GET:
		r = req_new(x, R_GET, op, op->key);
		if (r) {
			r->dst = op->buf;
			r->off = op->off;
			r->len = op->len;
			r->as_head = op->len == 0;
		}
		break;
	case STORE_HEAD:
		r = req_new(x, R_HEAD, op, op->key);
		break;
	case STORE_DELETE:
		r = req_new(x, R_DELETE, op, op->key);
		break;
	case STORE_PUT:
		if (op->len <= s->cfg.part_size) {
			if ((r = req_new(x, R_PUT, op, op->key))) {
				r->up = op->buf;
				r->up_len = op->len;
			}
			break;
		}
		/* S3 allows 10000 parts of at least 5 MiB */
		m = calloc(1, sizeof *m);
		if (!m)
			break;
		m->op = op;
		m->part_size = s->cfg.part_size < MPU_MIN_PART ? MPU_MIN_PART : s->cfg.part_size;
		while ((op->len + m->part_size - 1) / m->part_size > MPU_MAX_PARTS)
			m->part_size *= 2;
		m->nparts = (int)((op->len + m->part_size - 1) / m->part_size);
		m->next_part = 1;
		m->etags = calloc((size_t)m->nparts, STORE_ETAG_MAX);
		if (!m->etags)
			break;
		if ((r = req_new(x, R_MPU_CREATE, op, op->key))) {
			r->mpu = m;
			r->body_max = XMLBODY_MAX;
		}
		break;
	default:
		return err_set(EINVAL, "s3://%s/%s: unknown operation %d", bucket, op->key, (int)op->kind);
	}
	if (r && !(r->url = object_url(x, op->key, r->kind == R_MPU_CREATE ? "uploads=" : NULL))) {
		req_free(r);
		r = NULL;
	}
	if (!r) {
		if (m)
			free(m->etags);
		free(m);
		return err_set(ENOMEM, "s3://%s/%s: out of memory queuing the request", bucket, op->key);
	}
	r->finish = r->kind == R_MPU_CREATE ? finish_create : finish_simple;
	r->deadline_ns = op->t_deadline_ns;
	*out = r;
	return 0;
}

static void req_free_all(struct req *r)
{
	if (r->mpu)
		free(r->mpu->etags);
	free(r->mpu);
	req_free(r);
}

static int s3_submit(struct store *s, struct store_op *op)
{
	struct s3 *x = s->priv;
	struct req *r;
	int rc = op_req(x, op, &r);
	if (rc < 0)
		return rc;
	/* once queued, op may complete (and be freed) before enqueue returns */
	enum store_op_kind kind = op->kind;
	if ((rc = enqueue(x, r)) < 0) {
		req_free_all(r);
		return rc;
	}
	switch (kind) {
	case STORE_GET: atomic_fetch_add(&s->stats.gets, 1); break;
	case STORE_HEAD: atomic_fetch_add(&s->stats.heads, 1); break;
	case STORE_PUT: atomic_fetch_add(&s->stats.puts, 1); break;
	case STORE_DELETE: atomic_fetch_add(&s->stats.deletes, 1); break;
	}
	return 0;
}

/* ---- GETs on the caller's thread (store_submit_here) ----------------------------- */

/* Callers' threads share a few idle handles rather than keeping one each:
 * libfuse starts and ends worker threads as its load changes, and a handle
 * per thread would open a new connection for each new thread (a TCP
 * handshake, and a slower first answer from most servers). */
static CURL *here_take(struct s3 *x)
{
	CURL *e = NULL;
	pthread_mutex_lock(&x->here_mu);
	if (x->nhere_idle > 0)
		e = x->here_idle[--x->nhere_idle];
	pthread_mutex_unlock(&x->here_mu);
	return e ? e : curl_easy_init();
}

static void here_put(struct s3 *x, CURL *e)
{
	pthread_mutex_lock(&x->here_mu);
	if (x->nhere_idle < HERE_IDLE_MAX) {
		x->here_idle[x->nhere_idle++] = e;
		e = NULL;
	}
	pthread_mutex_unlock(&x->here_mu);
	if (e)
		curl_easy_cleanup(e);
}

/* The loop watches for stalls between polls; a caller's thread has only
 * libcurl's progress callback (called at least once a second). */
static int here_progress(void *arg, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
	(void)dt, (void)dn, (void)ut, (void)un;
	struct req *r = arg;
	if (now_ns() - r->progress_ns < r->x->stall_ns)
		return 0;
	r->stalled = 1;
	return 1;
}

static int s3_submit_here(struct store *s, struct store_op *op)
{
	struct s3 *x = s->priv;
	pthread_mutex_lock(&x->mu);
	int stop = x->stop;
	pthread_mutex_unlock(&x->mu);
	if (stop)
		return err_set(ECANCELED, "s3://%s: store is closing", s->url.root);
	CURL *e = here_take(x);
	if (!e)
		return s3_submit(s, op);
	struct req *r;
	int rc = op_req(x, op, &r);
	if (rc < 0) {
		here_put(x, e);
		return rc;
	}
	r->here = 1;
	atomic_fetch_add(&s->stats.gets, 1);

	/* From here on r is finished (done called) or handed to the loop. */
	uint64_t now = now_ns();
	if (past_deadline(x, r, now)) {
		here_put(x, e);
		return 0;
	}
	r->easy = e;
	if ((rc = setup_easy(x, r, e, now)) < 0) {
		curl_easy_reset(e);
		here_put(x, e);
		r->easy = NULL;
		setup_failed(x, r, rc);
		return 0;
	}
	attempt_begin(r);
	CURLcode res = curl_easy_perform(e);
	if (res == CURLE_ABORTED_BY_CALLBACK && r->stalled)
		res = CURLE_OPERATION_TIMEDOUT;
	curl_slist_free_all(r->hdrs);
	r->hdrs = NULL;
	attempt_outcome(x, r, res); /* reads e (CURLINFO_OS_ERRNO) before the reset */
	curl_easy_reset(e);          /* keeps the connection */
	here_put(x, e);
	return 0;
}

/* ---- the loop thread ---------------------------------------------------------- */

static void reap(struct s3 *x)
{
	CURLMsg *msg;
	int left;
	while ((msg = curl_multi_info_read(x->multi, &left))) {
		if (msg->msg != CURLMSG_DONE)
			continue;
		CURL *e = msg->easy_handle;
		CURLcode res = msg->data.result;
		struct req *r = NULL;
		curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&r);
		attempt_done(x, r, res);
		pool_put(x, e);
	}
}

/* curl's own low-speed check averages over several seconds, so a stream that
 * stops dead is caught late; watch each transfer's last byte instead.
 * Returns the ms until the next transfer could stall (for the poll). */
static long check_stalls(struct s3 *x)
{
	uint64_t now = now_ns(), next = UINT64_MAX;
	struct req *r = x->running;
	while (r) {
		struct req *n = r->next;
		/* Complete may think silently for a long time (S3 sends blanks,
		 * s3rver sends nothing while it joins the parts), and a retry after
		 * it succeeded would find the upload gone: only the deadline bounds it. */
		if (r->kind == R_MPU_COMPLETE) {
			r = n;
			continue;
		}
		uint64_t due = r->progress_ns + x->stall_ns;
		if (r->lowat > 1) {
			uint64_t idle = r->progress_ns + LOWAT_IDLE_MS * 1000000ull;
			if (idle <= now)
				get_lowat(r, 0); /* as if the body were in: back to 1 */
			else if (idle < next)
				next = idle;
		}
		if (due <= now) {
			CURL *e = r->easy;
			r->stalled = 1;
			attempt_done(x, r, CURLE_OPERATION_TIMEDOUT);
			pool_put(x, e);
		} else if (due < next) {
			next = due;
		}
		r = n;
	}
	if (next == UINT64_MAX)
		return POLL_MAX_MS;
	return (long)ms_until(next, now);
}

static void cancel_req(struct req *r)
{
	req_fail(r, -ECANCELED, "s3://%s/%s: %s canceled: the store was closed", r->x->s->url.root, r->key,
		 rkind_name[r->kind]);
}

static void cancel_all(struct s3 *x)
{
	x->stopping = 1;
	while (x->running) {
		struct req *r = x->running;
		x->running = r->next;
		x->nrunning--;
		curl_multi_remove_handle(x->multi, r->easy);
		pool_put(x, r->easy);
		cancel_req(r);
	}
	/* finishing can queue more (an upload's abort is skipped when stopping,
	 * but be safe): drain until every list is empty */
	for (;;) {
		struct req *r;
		if ((r = x->timers)) {
			x->timers = r->next;
		} else if ((r = x->ready)) {
			x->ready = r->next;
			if (!x->ready)
				x->ready_tail = NULL;
			if (x->urgent_tail == r)
				x->urgent_tail = NULL;
		} else {
			pthread_mutex_lock(&x->mu);
			if ((r = x->inbox)) {
				x->inbox = r->next;
				if (!x->inbox)
					x->inbox_tail = NULL;
			}
			pthread_mutex_unlock(&x->mu);
			if (!r)
				break;
		}
		cancel_req(r);
	}
}

/* curl's CURLMOPT_SOCKETFUNCTION: keep socket fd in the epoll set, watched
 * for what curl waits for. */
static int on_socket(CURL *e, curl_socket_t fd, int what, void *userp, void *sockp)
{
	(void)sockp;
	struct s3 *x = userp;
	/* HTTP/1.1: a connection serves one transfer at a time.  A pooled
	 * handle's private pointer is NULL (pool_put resets it). */
	struct req *r = NULL;
	if (curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&r) != CURLE_OK)
		r = NULL;
	if (what == CURL_POLL_REMOVE) {
		epoll_ctl(x->epfd, EPOLL_CTL_DEL, fd, NULL); /* ENOENT/EBADF: already gone with the socket */
		if (r && r->fd == fd)
			r->fd = CURL_SOCKET_BAD; /* its number may soon name another socket */
		return 0;
	}
	if (r)
		r->fd = fd;
	struct epoll_event ev = { .events = (what & CURL_POLL_IN ? EPOLLIN : 0u) | (what & CURL_POLL_OUT ? EPOLLOUT : 0u),
				  .data.fd = fd };
	if (epoll_ctl(x->epfd, EPOLL_CTL_MOD, fd, &ev) == 0)
		return 0;
	if (errno == ENOENT && epoll_ctl(x->epfd, EPOLL_CTL_ADD, fd, &ev) == 0)
		return 0;
	log_error("s3://%s: cannot watch a connection's socket (epoll_ctl: %s)", x->s->url.root, strerror(errno));
	return -1; /* curl fails the transfers on that socket */
}

/* curl's CURLMOPT_TIMERFUNCTION: when curl wants to be called with
 * CURL_SOCKET_TIMEOUT (timeouts, and at once after a handle is added). */
static int on_timer(CURLM *m, long timeout_ms, void *userp)
{
	(void)m;
	struct s3 *x = userp;
	x->curl_due_ns = timeout_ms < 0 ? UINT64_MAX : now_ns() + (uint64_t)timeout_ms * 1000000ull;
	return 0;
}

static void loop_wake(struct s3 *x)
{
	uint64_t one = 1;
	/* EAGAIN: the counter is full, so the loop is woken anyway. */
	if (write(x->wakefd, &one, sizeof one) < 0 && errno != EAGAIN)
		log_error("s3://%s: cannot wake the transfer loop: %s", x->s->url.root, strerror(errno));
}

#define LOOP_EVENTS 32

static void *loop_main(void *arg)
{
	struct s3 *x = arg;
	struct epoll_event ev[LOOP_EVENTS];
	for (;;) {
		pthread_mutex_lock(&x->mu);
		struct req *in = x->inbox;
		x->inbox = x->inbox_tail = NULL;
		int stop = x->stop;
		pthread_mutex_unlock(&x->mu);
		uint64_t t_in = in ? now_ns() : 0;
		while (in) {
			struct req *n = in->next;
			if (in->wake_ns > t_in) /* a retry handed over by a caller's thread */
				timer_add(x, in);
			else
				ready_push(x, in, in->op && in->op->urgent ? 2 : 0);
			in = n;
		}
		if (stop)
			break;

		uint64_t now = now_ns();
		while (x->timers && x->timers->wake_ns <= now) {
			struct req *r = x->timers;
			x->timers = r->next;
			ready_push(x, r, 1); /* retries go before new work */
		}
		while (x->ready && x->nrunning < x->s->cfg.max_inflight) {
			struct req *r = x->ready;
			x->ready = r->next;
			if (!x->ready)
				x->ready_tail = NULL;
			if (x->urgent_tail == r)
				x->urgent_tail = NULL;
			start_req(x, r);
		}

		int still = 0;
		if (x->curl_due_ns <= now_ns()) {
			x->curl_due_ns = UINT64_MAX;
			curl_multi_socket_action(x->multi, CURL_SOCKET_TIMEOUT, 0, &still);
		}
		reap(x);
		long wait_ms = check_stalls(x);

		/* Sleep until a socket is ready, a timer is due, or someone wakes us. */
		if (wait_ms > POLL_MAX_MS)
			wait_ms = POLL_MAX_MS;
		if (x->ready && x->nrunning < x->s->cfg.max_inflight)
			wait_ms = 0;
		uint64_t t = now_ns();
		uint64_t due = x->timers ? x->timers->wake_ns : UINT64_MAX;
		if (x->curl_due_ns < due)
			due = x->curl_due_ns;
		long d = due == UINT64_MAX ? wait_ms : (long)ms_until(due, t);
		if (d < wait_ms)
			wait_ms = d;
		int n = epoll_wait(x->epfd, ev, LOOP_EVENTS, (int)wait_ms);
		for (int i = 0; i < n; i++) {
			if (ev[i].data.fd == x->wakefd) {
				uint64_t v;
				if (read(x->wakefd, &v, sizeof v) < 0 && errno != EAGAIN)
					log_error("s3://%s: reading the loop's eventfd: %s", x->s->url.root, strerror(errno));
				continue;
			}
			uint32_t e = ev[i].events;
			int act = (e & (EPOLLIN | EPOLLHUP) ? CURL_CSELECT_IN : 0) | (e & EPOLLOUT ? CURL_CSELECT_OUT : 0) |
				  (e & EPOLLERR ? CURL_CSELECT_ERR : 0);
			curl_multi_socket_action(x->multi, ev[i].data.fd, act, &still);
		}
		reap(x);
	}
	cancel_all(x);
	return NULL;
}

/* ---- LIST (caller's thread; pages fetched by the loop) ------------------------- */

struct list_wait {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int done;
};

static void finish_list(struct req *r)
{
	struct list_wait *w = r->arg;
	pthread_mutex_lock(&w->mu);
	w->done = 1;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

struct page_entry {
	char *key, *etag;
	uint64_t size;
	int64_t mtime;
	int is_prefix;
};

static int entry_cmp(const void *a, const void *b)
{
	return strcmp(((const struct page_entry *)a)->key, ((const struct page_entry *)b)->key);
}

/* Parse one ListObjectsV2 page into entries (sorted: S3 lists keys and
 * common prefixes apart; callers see one ordered sequence). */
static int parse_page(const char *doc, size_t len, struct page_entry **out, int *nout, int *truncated,
		      char *token, size_t token_n)
{
	struct xml x = { doc, doc + len, NULL, 0 };
	struct xtok t;
	int ty, in_contents = 0, in_cp = 0, n = 0, cap = 0, saw_root = 0;
	struct page_entry *v = NULL, cur;
	char key[STORE_KEY_MAX * 2], etag[STORE_ETAG_MAX], num[64];
	*truncated = 0;
	token[0] = 0;
	memset(&cur, 0, sizeof cur);
	key[0] = etag[0] = 0;
	while ((ty = xml_next(&x, &t)) != X_EOF) {
		if (ty == X_ERR)
			goto bad;
		if (ty == X_OPEN) {
			if (tok_is(&t, "ListBucketResult")) {
				saw_root = 1;
			} else if (tok_is(&t, "Contents")) {
				in_contents = 1;
				memset(&cur, 0, sizeof cur);
				key[0] = etag[0] = 0;
			} else if (tok_is(&t, "CommonPrefixes")) {
				in_cp = 1;
				key[0] = 0;
			} else if (in_contents && tok_is(&t, "Key")) {
				if (xml_leaf(&x, key, sizeof key) < 0)
					goto bad;
			} else if (in_contents && tok_is(&t, "ETag")) {
				if (xml_leaf(&x, etag, sizeof etag) < 0)
					goto bad;
			} else if (in_contents && tok_is(&t, "Size")) {
				if (xml_leaf(&x, num, sizeof num) < 0)
					goto bad;
				cur.size = strtoull(num, NULL, 10);
			} else if (in_contents && tok_is(&t, "LastModified")) {
				if (xml_leaf(&x, num, sizeof num) < 0)
					goto bad;
				cur.mtime = iso8601_to_epoch(num);
			} else if (in_cp && tok_is(&t, "Prefix")) {
				if (xml_leaf(&x, key, sizeof key) < 0)
					goto bad;
			} else if (!in_contents && !in_cp && tok_is(&t, "IsTruncated")) {
				if (xml_leaf(&x, num, sizeof num) < 0)
					goto bad;
				*truncated = !strcmp(num, "true");
			} else if (!in_contents && !in_cp && tok_is(&t, "NextContinuationToken")) {
				if (xml_leaf(&x, token, token_n) < 0)
					goto bad;
			}
			continue;
		}
		if (ty != X_CLOSE || !(tok_is(&t, "Contents") || tok_is(&t, "CommonPrefixes")))
			continue;
		int is_prefix = tok_is(&t, "CommonPrefixes");
		if ((is_prefix && !in_cp) || (!is_prefix && !in_contents) || !key[0])
			goto bad;
		in_contents = in_cp = 0;
		if (n == cap) {
			cap = cap ? cap * 2 : 256;
			struct page_entry *nv = realloc(v, (size_t)cap * sizeof *v);
			if (!nv)
				goto nomem;
			v = nv;
		}
		cur.is_prefix = is_prefix;
		cur.key = strdup(key);
		cur.etag = strdup(is_prefix ? "" : etag);
		if (!cur.key || !cur.etag) {
			free(cur.key);
			free(cur.etag);
			goto nomem;
		}
		if (is_prefix)
			cur.size = 0, cur.mtime = 0;
		v[n++] = cur;
		memset(&cur, 0, sizeof cur);
	}
	if (!saw_root)
		goto bad;
	if (n)
		qsort(v, (size_t)n, sizeof *v, entry_cmp);
	*out = v;
	*nout = n;
	return 0;
bad:
	for (int i = 0; i < n; i++)
		free(v[i].key), free(v[i].etag);
	free(v);
	return -EPROTO;
nomem:
	for (int i = 0; i < n; i++)
		free(v[i].key), free(v[i].etag);
	free(v);
	return -ENOMEM;
}

static int s3_list(struct store *s, const char *prefix, const char *delim, store_list_cb cb, void *arg)
{
	struct s3 *x = s->priv;
	const char *bucket = s->url.root;
	char *token = malloc(8192), *etoken = malloc(8192 * 3);
	char eprefix[STORE_KEY_MAX * 3 + 1], edelim[64];
	int rc = 0, pages = 0;
	if (!token || !etoken) {
		rc = err_set(ENOMEM, "s3://%s/%s: out of memory listing", bucket, prefix);
		goto out;
	}
	token[0] = 0;
	if (uri_encode(eprefix, sizeof eprefix, prefix, 0) < 0 ||
	    uri_encode(edelim, sizeof edelim, delim ? delim : "", 0) < 0) {
		rc = err_set(EINVAL, "s3://%s/%s: prefix or delimiter too long to list", bucket, prefix);
		goto out;
	}
	for (;;) {
		if (uri_encode(etoken, 8192 * 3, token, 0) < 0) {
			rc = err_set(EPROTO, "s3://%s/%s: continuation token too long", bucket, prefix);
			goto out;
		}
		/* canonical order: continuation-token, delimiter, list-type, prefix */
		char *url = NULL;
		if (asprintf(&url, "%s?%s%s%s%s%s%slist-type=2%s%s", x->list_url, etoken[0] ? "continuation-token=" : "",
			     etoken, etoken[0] ? "&" : "", edelim[0] ? "delimiter=" : "", edelim, edelim[0] ? "&" : "",
			     eprefix[0] ? "&prefix=" : "", eprefix) < 0) {
			rc = err_set(ENOMEM, "s3://%s/%s: out of memory listing", bucket, prefix);
			goto out;
		}
		struct req *r = req_new(x, R_LIST, NULL, prefix);
		if (!r) {
			free(url);
			rc = err_set(ENOMEM, "s3://%s/%s: out of memory listing", bucket, prefix);
			goto out;
		}
		struct list_wait w = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0 };
		r->url = url;
		r->body_max = XMLBODY_MAX;
		r->finish = finish_list;
		r->arg = &w;
		r->deadline_ns = now_ns() + s->cfg.max_total_ms * 1000000ull;
		if ((rc = enqueue(x, r)) < 0) {
			req_free(r);
			goto out;
		}
		/* finish_list always comes: the loop bounds every request by its
		 * deadline and cancels the rest when the store closes */
		pthread_mutex_lock(&w.mu);
		while (!w.done)
			pthread_cond_wait(&w.cv, &w.mu);
		pthread_mutex_unlock(&w.mu);
		pages++;
		if (r->rc < 0) {
			rc = err_set(-r->rc, "%s", r->errmsg);
			atomic_fetch_add(&s->stats.failures, 1);
			req_free(r);
			goto out;
		}
		struct page_entry *v = NULL;
		int n = 0, truncated = 0;
		int prc = parse_page(r->body ? r->body : "", r->body_len, &v, &n, &truncated, token, 8192);
		req_free(r);
		if (prc < 0) {
			rc = err_set(-prc, "s3://%s/%s: %s ListObjectsV2 page %d", bucket, prefix,
				     prc == -ENOMEM ? "out of memory parsing" : "cannot parse", pages);
			goto out;
		}
		int stop = 0;
		for (int i = 0; i < n; i++) {
			if (!stop) {
				struct store_entry e = { v[i].key, v[i].size, v[i].mtime, v[i].etag, v[i].is_prefix };
				stop = cb(&e, arg);
			}
			free(v[i].key);
			free(v[i].etag);
		}
		free(v);
		if (stop) {
			rc = stop;
			goto out;
		}
		if (!truncated)
			break;
		if (!token[0]) {
			rc = err_set(EPROTO, "s3://%s/%s: list page %d is truncated but has no NextContinuationToken",
				     bucket, prefix, pages);
			goto out;
		}
	}
out:
	free(token);
	free(etoken);
	return rc;
}

/* ---- open / close -------------------------------------------------------------- */

static void s3_free(struct s3 *x)
{
	for (int i = 0; i < x->npool; i++)
		curl_easy_cleanup(x->pool[i]);
	free(x->pool);
	for (int i = 0; i < x->nhere_idle; i++)
		curl_easy_cleanup(x->here_idle[i]);
	pthread_mutex_destroy(&x->here_mu);
	if (x->multi)
		curl_multi_cleanup(x->multi);
	if (x->epfd >= 0)
		close(x->epfd);
	if (x->wakefd >= 0)
		close(x->wakefd);
	if (x->userpwd) {
		explicit_bzero(x->userpwd, strlen(x->userpwd));
		free(x->userpwd);
	}
	if (x->token_hdr) {
		explicit_bzero(x->token_hdr, strlen(x->token_hdr));
		free(x->token_hdr);
	}
	awsconf_clear(&x->conf);
	pthread_mutex_destroy(&x->mu);
	free(x);
}

static void s3_close(struct store *s)
{
	struct s3 *x = s->priv;
	pthread_mutex_lock(&x->mu);
	x->stop = 1;
	pthread_mutex_unlock(&x->mu);
	loop_wake(x);
	pthread_join(x->thread, NULL);
	s3_free(x);
	s->priv = NULL;
}

static const struct store_impl s3_impl = {
	.name = "s3",
	.submit = s3_submit,
	.submit_here = s3_submit_here,
	.list = s3_list,
	.close = s3_close,
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;
static void curl_init(void) { curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT); }

int store_s3_open(struct store *s)
{
	const char *bucket = s->url.root;
	pthread_once(&curl_once, curl_init);
	if (curl_init_rc != CURLE_OK)
		return err_set(EIO, "s3://%s: curl_global_init: %s", bucket, curl_easy_strerror(curl_init_rc));
	struct s3 *x = calloc(1, sizeof *x);
	if (!x)
		return err_set(ENOMEM, "s3://%s: out of memory opening the store", bucket);
	pthread_mutex_init(&x->mu, NULL);
	pthread_mutex_init(&x->here_mu, NULL);
	x->s = s;
	x->epfd = x->wakefd = -1;
	int rc = awsconf_load(&x->conf);
	if (rc < 0) {
		s3_free(x);
		return err_wrap(rc, "s3://%s", bucket);
	}

	char ebucket[256];
	if (uri_encode(ebucket, sizeof ebucket, bucket, 0) < 0) {
		s3_free(x);
		return err_set(EINVAL, "s3://%s: bad bucket name", bucket);
	}
	if (x->conf.endpoint[0]) {
		/* a custom endpoint: path-style, as the AWS CLI does */
		snprintf(x->base, sizeof x->base, "%s/%s", x->conf.endpoint, ebucket);
		snprintf(x->list_url, sizeof x->list_url, "%s/%s", x->conf.endpoint, ebucket);
		xstrlcpy(x->endpoint_shown, x->conf.endpoint, sizeof x->endpoint_shown);
	} else if (strchr(bucket, '.')) {
		/* a dotted bucket breaks the wildcard certificate of virtual hosts */
		snprintf(x->base, sizeof x->base, "https://s3.%s.amazonaws.com/%s", x->conf.region, ebucket);
		snprintf(x->list_url, sizeof x->list_url, "%s", x->base);
		snprintf(x->endpoint_shown, sizeof x->endpoint_shown, "https://s3.%s.amazonaws.com", x->conf.region);
	} else {
		snprintf(x->base, sizeof x->base, "https://%s.s3.%s.amazonaws.com", bucket, x->conf.region);
		snprintf(x->list_url, sizeof x->list_url, "%s/", x->base);
		xstrlcpy(x->endpoint_shown, x->base, sizeof x->endpoint_shown);
	}
	snprintf(x->sigv4, sizeof x->sigv4, "aws:amz:%s:s3", x->conf.region);
	if (asprintf(&x->userpwd, "%s:%s", x->conf.access_key, x->conf.secret_key) < 0) {
		x->userpwd = NULL;
		s3_free(x);
		return err_set(ENOMEM, "s3://%s: out of memory", bucket);
	}
	if (x->conf.session_token[0] &&
	    asprintf(&x->token_hdr, "x-amz-security-token: %s", x->conf.session_token) < 0) {
		x->token_hdr = NULL;
		s3_free(x);
		return err_set(ENOMEM, "s3://%s: out of memory", bucket);
	}
	x->stall_ns = (s->cfg.stall_timeout_ms ? s->cfg.stall_timeout_ms : 10000) * 1000000ull;
	x->pool_cap = s->cfg.max_inflight;
	x->pool = calloc((size_t)x->pool_cap, sizeof *x->pool);
	x->multi = curl_multi_init();
	if (!x->pool || !x->multi) {
		s3_free(x);
		return err_set(ENOMEM, "s3://%s: out of memory creating the curl multi handle", bucket);
	}
	x->curl_due_ns = UINT64_MAX;
	x->epfd = epoll_create1(EPOLL_CLOEXEC);
	x->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	struct epoll_event wev = { .events = EPOLLIN, .data.fd = x->wakefd };
	if (x->epfd < 0 || x->wakefd < 0 || epoll_ctl(x->epfd, EPOLL_CTL_ADD, x->wakefd, &wev) < 0) {
		int e = errno;
		s3_free(x);
		return err_set(e, "s3://%s: cannot set up the transfer loop's epoll and eventfd: %s", bucket, strerror(e));
	}
	curl_multi_setopt(x->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
	curl_multi_setopt(x->multi, CURLMOPT_SOCKETDATA, x);
	curl_multi_setopt(x->multi, CURLMOPT_TIMERFUNCTION, on_timer);
	curl_multi_setopt(x->multi, CURLMOPT_TIMERDATA, x);
	curl_multi_setopt(x->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)s->cfg.max_inflight);
	curl_multi_setopt(x->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)s->cfg.max_inflight);
	curl_multi_setopt(x->multi, CURLMOPT_MAXCONNECTS, (long)s->cfg.max_inflight + 4);

	s->priv = x;
	s->impl = &s3_impl;
	int e = pthread_create(&x->thread, NULL, loop_main, x);
	if (!e)
		pthread_setname_np(x->thread, "thaw-s3loop");
	if (e) {
		s->priv = NULL;
		s3_free(x);
		return err_set(e, "s3://%s: cannot start the transfer thread: %s", bucket, strerror(e));
	}
	log_debug("s3://%s: endpoint %s, region %s, credentials from %s", bucket, x->endpoint_shown, x->conf.region,
		  x->conf.cred_source);
	return 0;
}
