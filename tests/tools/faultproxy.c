/* faultproxy.c - a fault-injecting HTTP/1.1 reverse proxy for the tests.
 *
 * Owns: the test tool that sits between thaw and s3rver so the integration
 * tests can prove thaw survives a misbehaving object store (errors, resets,
 * truncated and corrupted bodies, stalls, a changed ETag, dropped requests).
 *
 * usage: faultproxy --listen HOST:PORT --upstream HOST:PORT
 *                   [--port-file F] [--log F] [--seed N] [--quiet]
 *
 * Clients talk to it as if it were the S3 endpoint (AWS_ENDPOINT_URL=
 * http://127.0.0.1:PROXYPORT).  Each request is forwarded to the upstream on a
 * per-client keep-alive connection and the response relayed.  Bodies framed
 * by Content-Length or chunked are relayed in both directions; a request with
 * "Expect: 100-continue" is answered "100 Continue" by the proxy itself and
 * forwarded without the Expect header.  One thread per client connection.
 *
 * Control endpoint (answered by the proxy, never forwarded or counted):
 *   GET /__fault/set?rule=RULE      add a rule; answers {"id":N}
 *   GET /__fault/clear              remove every rule
 *   GET /__fault/clear?stats=1      ... and zero the counters and request log
 *   GET /__fault/stats              JSON counters, rules and the request log
 *   GET /__fault/log                the request log as text, one line each
 *
 * RULE syntax: comma-separated items (or '&'-separated query parameters),
 * exactly one fault kind plus optional match fields; values may be
 * percent-encoded (the whole rule= value may be, too):
 *   fault kinds
 *     status=CODE     answer CODE with an S3-style XML <Error> body without
 *                     contacting upstream (503 SlowDown, 500 InternalError,
 *                     403 AccessDenied, 404 NoSuchKey, 412 PreconditionFailed,
 *                     429 SlowDown, ...); code=NAME overrides the <Code>.
 *     reset_mid_body  forward; send the headers and half the body, then close
 *                     with RST (SO_LINGER 0).
 *     short_body      forward; send the headers (full Content-Length) and half
 *                     the body, then close normally (FIN).
 *     stall=MS        forward; send the headers and half the body, pause MS
 *                     milliseconds, then send the rest: a client that waits
 *                     long enough gets a correct response, an impatient one
 *                     times out.
 *     rate=KIB        forward; send the body at KIB KiB per second, in 4 KiB
 *                     pieces: a slow link, not a stall (bytes keep coming).
 *     delay=MS        forward; hold the whole response (headers included) MS
 *                     milliseconds before sending it.
 *     corrupt         forward; XOR 0xff into every body byte whose offset is a
 *                     multiple of 4096 (length unchanged).
 *     etag=VALUE      forward; replace the ETag response header with "VALUE"
 *                     (quotes added unless present; added if missing on 2xx).
 *     drop            close the connection without answering or forwarding.
 *   All but status and drop act on the response, so the request (a PUT, say)
 *   has already reached upstream and taken effect there.
 *   "Half the body" is Content-Length/2; for chunked bodies, half the first
 *   chunk; for bodies delimited by close, half the first read.  When there is no body (HEAD, 204, Content-Length: 0) the cut comes
 *   before the headers: reset_mid_body resets, short_body closes, stall pauses.
 *   match fields (all must hold)
 *     method=GET|HEAD|PUT|POST|DELETE|ANY   default ANY
 *     path=SUBSTR     substring of the request target (path and query);
 *                     cannot contain ',' or '&' unescaped
 *     range=1|0|any   Range header present / absent / either (default any)
 *     count=N         fire on the next N matching requests; -1 = forever
 *                     (the default)
 *     prob=P          fire with probability P (0..1) on a match; a miss
 *                     consumes nothing
 *   Rules are tried in the order they were added; the first one that fires
 *   wins, so a request gets at most one fault.
 *   example: /__fault/set?rule=status=503,method=GET,path=/thaw/.thaw/chunks,count=3
 *
 * Every forwarded request is logged (in memory, the last 20000, and appended
 * to --log if given) as one line:
 *   METHOD TARGET range=VALUE|- status=CODE fault=KIND|- bytes=N up=N ms=N
 * (bytes: response body bytes sent to the client; up: request body bytes
 * read from the client; status=0 when no response was sent).
 * so tests can count e.g. `grep -c 'GET /bucket/.thaw/chunks' LOG`.
 *
 * SIGTERM/SIGINT: stop accepting, shut every connection down, exit 0. */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <linux/sockios.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUF_CAP (256 * 1024)
#define MAX_HEAD (64 * 1024)
#define MAX_HDRS 128
#define LOG_RING 20000
#define CORRUPT_STRIDE 4096

enum kind { K_NONE, K_STATUS, K_RESET, K_SHORT, K_STALL, K_DELAY, K_CORRUPT, K_ETAG, K_DROP, K_RATE, K__N };
static const char *kind_names[K__N] = { "-", "status", "reset_mid_body", "short_body", "stall",
					"delay", "corrupt", "etag", "drop", "rate" };

struct rule {
	int id;
	enum kind kind;
	int arg;		/* status code, milliseconds or KiB/s */
	char *etag, *s3code, *path, *spec;
	char method[16];	/* "" = any */
	int range;		/* -1 any, 0 absent, 1 present */
	long count;		/* remaining; -1 forever */
	double prob;
	uint64_t matched, fired;
	struct rule *next;
};

/* What one request is to suffer, copied out of the rule under the lock so a
 * concurrent /__fault/clear cannot free it underneath. */
struct fault {
	enum kind kind;
	int arg;
	char etag[256], s3code[64];
};

enum { M_GET, M_HEAD, M_PUT, M_POST, M_DELETE, M_OTHER, M__N };
static const char *method_names[M__N] = { "GET", "HEAD", "PUT", "POST", "DELETE", "OTHER" };

struct client {
	int cfd, ufd;
	struct client *prev, *next;
};

/* Everything below is guarded by g_lock. */
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cond;	/* CLOCK_MONOTONIC; signalled on stop and thread exit */
static bool g_stopping;
static struct client *g_clients;
static int g_active;
static struct rule *g_rules, **g_rules_tail = &g_rules;
static int g_next_rule_id = 1;
static uint64_t g_rng;
static struct {
	uint64_t requests, methods[M__N], bytes_up, bytes_down, faults, by_kind[K__N];
	uint64_t connections, upstream_errors, control;
} g_st;
static char *g_log[LOG_RING];
static uint64_t g_log_total;	/* lines ever logged; ring holds the last LOG_RING */
static int g_logfd = -1;

static struct addrinfo *g_upstream;
static bool g_quiet;

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	va_list ap;
	fputs("faultproxy: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(2);
}

static void warnx_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void warnx_(const char *fmt, ...)
{
	char line[512];
	va_list ap;
	if (g_quiet)
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	fprintf(stderr, "faultproxy: %s\n", line);
}

/* ---------- small helpers ---------- */

struct sb {
	char *p;
	size_t len, cap;
};

static void sb_add(struct sb *s, const char *d, size_t n)
{
	if (s->len + n + 1 > s->cap) {
		size_t c = s->cap ? s->cap : 1024;
		while (c < s->len + n + 1)
			c *= 2;
		char *np = realloc(s->p, c);
		if (!np)
			abort();
		s->p = np;
		s->cap = c;
	}
	memcpy(s->p + s->len, d, n);
	s->len += n;
	s->p[s->len] = 0;
}

static void sb_printf(struct sb *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(struct sb *s, const char *fmt, ...)
{
	char tmp[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n < sizeof tmp) {
		sb_add(s, tmp, (size_t)n);
		return;
	}
	char *big = malloc((size_t)n + 1);
	if (!big)
		abort();
	va_start(ap, fmt);
	vsnprintf(big, (size_t)n + 1, fmt, ap);
	va_end(ap);
	sb_add(s, big, (size_t)n);
	free(big);
}

static void sb_json_str(struct sb *s, const char *v)
{
	sb_add(s, "\"", 1);
	for (; *v; v++) {
		unsigned char c = (unsigned char)*v;
		if (c == '"' || c == '\\')
			sb_printf(s, "\\%c", c);
		else if (c < 0x20 || c >= 0x7f)
			sb_printf(s, "\\u%04x", c);
		else
			sb_add(s, (const char *)&c, 1);
	}
	sb_add(s, "\"", 1);
}

static uint64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Sleep, but wake at once when the proxy is told to stop. */
static void sleep_ms(int ms)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&g_lock);
	while (!g_stopping && pthread_cond_timedwait(&g_cond, &g_lock, &ts) != ETIMEDOUT)
		;
	pthread_mutex_unlock(&g_lock);
}

static int send_all(int fd, const void *p, size_t n, int flags)
{
	const char *c = p;
	while (n) {
		ssize_t w = send(fd, c, n, MSG_NOSIGNAL | flags);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		c += w;
		n -= (size_t)w;
	}
	return 0;
}

static int pct_decode(const char *in, size_t n, char *out, size_t cap)
{
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		char c = in[i];
		if (c == '%' && i + 2 < n && isxdigit((unsigned char)in[i + 1]) &&
		    isxdigit((unsigned char)in[i + 2])) {
			char hex[3] = { in[i + 1], in[i + 2], 0 };
			c = (char)strtol(hex, NULL, 16);
			i += 2;
		}
		if (o + 1 >= cap)
			return -1;
		out[o++] = c;
	}
	out[o] = 0;
	return 0;
}

/* ---------- buffered socket reading ---------- */

struct bconn {
	int fd;
	char *buf;
	size_t r, w;	/* unread bytes are buf[r..w) */
};

/* Read more; 1 = got bytes, 0 = EOF, -1 = error or buffer full. */
static int bc_fill(struct bconn *c)
{
	if (c->r == c->w)
		c->r = c->w = 0;
	else if (c->w == BUF_CAP && c->r > 0) {
		memmove(c->buf, c->buf + c->r, c->w - c->r);
		c->w -= c->r;
		c->r = 0;
	}
	if (c->w == BUF_CAP)
		return -1;
	for (;;) {
		ssize_t n = recv(c->fd, c->buf + c->w, BUF_CAP - c->w, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		if (n == 0)
			return 0;
		c->w += (size_t)n;
		return 1;
	}
}

/* Read one header block (through the blank line) into a fresh NUL-terminated
 * copy.  1 = got it, 0 = clean EOF before any byte, -1 = error/too big. */
static int bc_read_head(struct bconn *c, char **out)
{
	size_t scanned = 0;
	for (;;) {
		size_t avail = c->w - c->r;
		char *base = c->buf + c->r;
		size_t from = scanned > 3 ? scanned - 3 : 0;
		char *end = avail >= 4 ? memmem(base + from, avail - from, "\r\n\r\n", 4) : NULL;
		if (end) {
			size_t n = (size_t)(end - base) + 4;
			char *h = malloc(n + 1);
			if (!h)
				abort();
			memcpy(h, base, n);
			h[n] = 0;
			c->r += n;
			*out = h;
			return 1;
		}
		scanned = avail;
		if (avail >= MAX_HEAD)
			return -1;
		if (c->r > 0 && c->w + 4096 > BUF_CAP) {
			memmove(c->buf, base, avail);
			c->r = 0;
			c->w = avail;
		}
		int rc = bc_fill(c);
		if (rc <= 0)
			return rc == 0 && avail == 0 ? 0 : -1;
	}
}

/* Read one CRLF-terminated line (for chunk sizes and trailers).  The line,
 * CRLF included, is buf[r..r+*len); the caller consumes it. */
static int bc_line(struct bconn *c, size_t *len)
{
	for (;;) {
		char *base = c->buf + c->r;
		size_t avail = c->w - c->r;
		char *nl = memchr(base, '\n', avail);
		if (nl) {
			*len = (size_t)(nl - base) + 1;
			return 0;
		}
		if (avail > 8192)
			return -1;
		if (bc_fill(c) <= 0)
			return -1;
	}
}

/* ---------- HTTP messages ---------- */

struct hdr {
	char *name, *value;
};

struct msg {
	char *raw;
	char *a, *b, *c;	/* request: method target version; response: version code reason */
	int nh;
	struct hdr h[MAX_HDRS];
};

static int parse_head(char *raw, struct msg *m)
{
	memset(m, 0, sizeof *m);
	m->raw = raw;
	char *save = NULL;
	char *line = strtok_r(raw, "\r\n", &save);
	if (!line)
		return -1;
	m->a = line;
	char *sp = strchr(line, ' ');
	if (!sp)
		return -1;
	*sp = 0;
	m->b = sp + 1;
	sp = strchr(m->b, ' ');
	if (sp) {
		*sp = 0;
		m->c = sp + 1;
	} else {
		m->c = m->b + strlen(m->b);
	}
	while ((line = strtok_r(NULL, "\r\n", &save))) {
		char *colon = strchr(line, ':');
		if (!colon || m->nh == MAX_HDRS)
			return -1;
		*colon = 0;
		char *v = colon + 1;
		while (*v == ' ' || *v == '\t')
			v++;
		size_t vl = strlen(v);
		while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
			v[--vl] = 0;
		m->h[m->nh].name = line;
		m->h[m->nh].value = v;
		m->nh++;
	}
	return 0;
}

static const char *hget(const struct msg *m, const char *name)
{
	for (int i = 0; i < m->nh; i++)
		if (!strcasecmp(m->h[i].name, name))
			return m->h[i].value;
	return NULL;
}

static bool hhas_token(const struct msg *m, const char *name, const char *tok)
{
	for (int i = 0; i < m->nh; i++)
		if (!strcasecmp(m->h[i].name, name) && strcasestr(m->h[i].value, tok))
			return true;
	return false;
}

enum framing { F_NONE, F_LEN, F_CHUNKED, F_EOF };

static int body_framing(const struct msg *m, bool response, uint64_t *len)
{
	*len = 0;
	if (hhas_token(m, "transfer-encoding", "chunked"))
		return F_CHUNKED;
	const char *cl = hget(m, "content-length");
	if (cl) {
		char *end;
		errno = 0;
		unsigned long long v = strtoull(cl, &end, 10);
		if (errno || end == cl || *end)
			return -1;
		*len = v;
		return v ? F_LEN : F_NONE;
	}
	return response ? F_EOF : F_NONE;
}

/* ---------- body relay with fault hooks ---------- */

struct xfer {
	int out;		/* destination fd; -1 discards */
	uint64_t off;		/* body bytes passed so far */
	uint64_t cut;		/* body offset where the fault strikes */
	bool cut_at_first;	/* unknown length: cut at half the first block */
	bool cut_done;
	enum kind kind;		/* K_RESET / K_SHORT / K_STALL act at cut; K_CORRUPT flips; K_RATE paces */
	int arg;
};

#define RATE_PIECE 4096

enum { XF_OK = 0, XF_ERR = -1, XF_CUT = -2 };

static int x_send(struct xfer *x, char *p, size_t n)
{
	if (x->kind == K_CORRUPT) {
		uint64_t first = (x->off + CORRUPT_STRIDE - 1) / CORRUPT_STRIDE * CORRUPT_STRIDE;
		for (uint64_t o = first; o < x->off + n; o += CORRUPT_STRIDE)
			p[o - x->off] ^= (char)0xff;
	}
	bool cutting = x->kind == K_RESET || x->kind == K_SHORT || x->kind == K_STALL;
	if (cutting && !x->cut_done && x->cut_at_first && n) {
		x->cut = x->off + n / 2;
		x->cut_at_first = false;
	}
	if (cutting && !x->cut_done && !x->cut_at_first && x->off + n >= x->cut) {
		size_t first = (size_t)(x->cut - x->off);
		if (x->out >= 0 && first && send_all(x->out, p, first, 0) < 0)
			return XF_ERR;
		x->off += first;
		p += first;
		n -= first;
		x->cut_done = true;
		if (x->kind != K_STALL)
			return XF_CUT;
		sleep_ms(x->arg);
	}
	while (x->kind == K_RATE && n) {
		size_t k = n < RATE_PIECE ? n : RATE_PIECE;
		if (x->out >= 0 && send_all(x->out, p, k, 0) < 0)
			return XF_ERR;
		x->off += k;
		p += k;
		n -= k;
		sleep_ms((int)(k * 1000 / ((size_t)x->arg * 1024)));
	}
	if (x->out >= 0 && n && send_all(x->out, p, n, 0) < 0)
		return XF_ERR;
	x->off += n;
	return XF_OK;
}

static int relay_len(struct bconn *src, struct xfer *x, uint64_t left)
{
	while (left) {
		if (src->r == src->w && bc_fill(src) <= 0)
			return XF_ERR;
		size_t n = src->w - src->r;
		if (n > left)
			n = (size_t)left;
		int rc = x_send(x, src->buf + src->r, n);
		src->r += n;
		if (rc)
			return rc;
		left -= n;
	}
	return XF_OK;
}

static int relay_eof(struct bconn *src, struct xfer *x)
{
	for (;;) {
		if (src->r == src->w) {
			int rc = bc_fill(src);
			if (rc == 0)
				return XF_OK;
			if (rc < 0)
				return XF_ERR;
		}
		size_t n = src->w - src->r;
		int rc = x_send(x, src->buf + src->r, n);
		src->r += n;
		if (rc)
			return rc;
	}
}

/* Chunk framing is passed through verbatim; only chunk data goes through the
 * fault hooks, so offsets count payload bytes. */
static int relay_chunked(struct bconn *src, struct xfer *x)
{
	for (;;) {
		size_t ll;
		if (bc_line(src, &ll) < 0)
			return XF_ERR;
		char *line = src->buf + src->r;
		char *end;
		unsigned long long sz = strtoull(line, &end, 16);
		if (end == line)
			return XF_ERR;
		if (x->out >= 0 && send_all(x->out, line, ll, 0) < 0)
			return XF_ERR;
		src->r += ll;
		if (sz == 0) {
			for (;;) {	/* trailers through the blank line */
				if (bc_line(src, &ll) < 0)
					return XF_ERR;
				line = src->buf + src->r;
				bool blank = ll <= 2;
				if (x->out >= 0 && send_all(x->out, line, ll, 0) < 0)
					return XF_ERR;
				src->r += ll;
				if (blank)
					return XF_OK;
			}
		}
		bool cutting = x->kind == K_RESET || x->kind == K_SHORT || x->kind == K_STALL;
		if (cutting && x->cut_at_first) {	/* half the first chunk, as documented */
			x->cut = x->off + sz / 2;
			x->cut_at_first = false;
		}
		int rc = relay_len(src, x, sz);
		if (rc)
			return rc;
		if (bc_line(src, &ll) < 0 || ll > 2)
			return XF_ERR;
		if (x->out >= 0 && send_all(x->out, src->buf + src->r, ll, 0) < 0)
			return XF_ERR;
		src->r += ll;
	}
}

static int relay_body(struct bconn *src, struct xfer *x, int framing, uint64_t len)
{
	switch (framing) {
	case F_LEN: return relay_len(src, x, len);
	case F_CHUNKED: return relay_chunked(src, x);
	case F_EOF: return relay_eof(src, x);
	default: return XF_OK;
	}
}

/* ---------- rules ---------- */

static void rule_free(struct rule *r)
{
	free(r->etag);
	free(r->s3code);
	free(r->path);
	free(r->spec);
	free(r);
}

/* A decimal integer in [lo, hi], all of v. */
static int parse_int(const char *v, long lo, long hi, int *out)
{
	char *end;
	long n = strtol(v, &end, 10);
	if (end == v || *end || n < lo || n > hi)
		return -1;
	*out = (int)n;
	return 0;
}

/* One "key=value" or bare "key" item of a rule. */
static int rule_item(struct rule *r, const char *item, char *err, size_t errn)
{
	char key[64];
	const char *eq = strchr(item, '=');
	size_t kl = eq ? (size_t)(eq - item) : strlen(item);
	const char *v = eq ? eq + 1 : NULL;
	if (kl == 0 || kl >= sizeof key) {
		snprintf(err, errn, "bad rule item '%s'", item);
		return -1;
	}
	memcpy(key, item, kl);
	key[kl] = 0;
	enum kind k = K_NONE;
	if (!strcmp(key, "status")) k = K_STATUS;
	else if (!strcmp(key, "reset_mid_body") || !strcmp(key, "reset")) k = K_RESET;
	else if (!strcmp(key, "short_body")) k = K_SHORT;
	else if (!strcmp(key, "stall")) k = K_STALL;
	else if (!strcmp(key, "delay")) k = K_DELAY;
	else if (!strcmp(key, "corrupt")) k = K_CORRUPT;
	else if (!strcmp(key, "etag")) k = K_ETAG;
	else if (!strcmp(key, "drop")) k = K_DROP;
	else if (!strcmp(key, "rate")) k = K_RATE;
	if (k != K_NONE) {
		if (r->kind != K_NONE) {
			snprintf(err, errn, "a rule takes exactly one fault kind ('%s' after '%s')", key,
				 kind_names[r->kind]);
			return -1;
		}
		r->kind = k;
		bool needs = k == K_STATUS || k == K_STALL || k == K_DELAY || k == K_ETAG || k == K_RATE;
		if (needs && (!v || !*v)) {
			snprintf(err, errn, "fault '%s' needs a value (%s=...)", key, key);
			return -1;
		}
		if (!needs && v) {
			snprintf(err, errn, "fault '%s' takes no value", key);
			return -1;
		}
		if (k == K_STATUS) {
			if (parse_int(v, 200, 599, &r->arg) < 0) {
				snprintf(err, errn, "status must be a code 200..599, not '%s'", v);
				return -1;
			}
		} else if (k == K_STALL || k == K_DELAY) {
			if (parse_int(v, 0, 3600000, &r->arg) < 0) {
				snprintf(err, errn, "%s wants milliseconds 0..3600000, not '%s'", key, v);
				return -1;
			}
		} else if (k == K_RATE) {
			if (parse_int(v, 1, 1048576, &r->arg) < 0) {
				snprintf(err, errn, "rate wants KiB per second 1..1048576, not '%s'", v);
				return -1;
			}
		} else if (k == K_ETAG) {
			if (strlen(v) > 200 || strpbrk(v, "\r\n")) {
				snprintf(err, errn, "bad etag value");
				return -1;
			}
			r->etag = strdup(v);
		}
		return 0;
	}
	if (!v) {
		snprintf(err, errn, "unknown rule item '%s'", key);
		return -1;
	}
	if (!strcmp(key, "method")) {
		if (!strcasecmp(v, "ANY") || !*v) {
			r->method[0] = 0;
		} else {
			static const char *ok[] = { "GET", "HEAD", "PUT", "POST", "DELETE" };
			bool found = false;
			for (size_t i = 0; i < sizeof ok / sizeof *ok; i++)
				if (!strcasecmp(v, ok[i])) {
					snprintf(r->method, sizeof r->method, "%s", ok[i]);
					found = true;
				}
			if (!found) {
				snprintf(err, errn, "method must be GET, HEAD, PUT, POST, DELETE or ANY, not '%s'", v);
				return -1;
			}
		}
	} else if (!strcmp(key, "path")) {
		free(r->path);
		r->path = strdup(v);
	} else if (!strcmp(key, "range")) {
		if (!strcmp(v, "1") || !strcasecmp(v, "yes") || !strcasecmp(v, "true"))
			r->range = 1;
		else if (!strcmp(v, "0") || !strcasecmp(v, "no") || !strcasecmp(v, "false"))
			r->range = 0;
		else if (!strcasecmp(v, "any"))
			r->range = -1;
		else {
			snprintf(err, errn, "range must be 1, 0 or any, not '%s'", v);
			return -1;
		}
	} else if (!strcmp(key, "count")) {
		char *end;
		long c = strtol(v, &end, 10);
		if (end == v || *end || c < -1) {
			snprintf(err, errn, "count must be N >= 0 or -1, not '%s'", v);
			return -1;
		}
		r->count = c;
	} else if (!strcmp(key, "prob")) {
		char *end;
		double p = strtod(v, &end);
		if (end == v || *end || !(p >= 0 && p <= 1)) {
			snprintf(err, errn, "prob must be 0..1, not '%s'", v);
			return -1;
		}
		r->prob = p;
	} else if (!strcmp(key, "code")) {
		if (strlen(v) > 60 || strpbrk(v, "<>&\r\n")) {
			snprintf(err, errn, "bad S3 error code '%s'", v);
			return -1;
		}
		free(r->s3code);
		r->s3code = strdup(v);
	} else {
		snprintf(err, errn, "unknown rule item '%s'", key);
		return -1;
	}
	return 0;
}

/* Split on ',' and '&'; a "rule=" parameter is percent-decoded as a whole
 * first so clients may encode the rule either way. */
static struct rule *rule_parse(const char *query, char *err, size_t errn)
{
	struct rule *r = calloc(1, sizeof *r);
	if (!r)
		abort();
	r->range = -1;
	r->count = -1;
	r->prob = 1.0;
	struct sb spec = { 0 };
	size_t qn = strlen(query);
	char *params = malloc(qn + 1);
	char *item = malloc(qn + 1);
	if (!params || !item)
		abort();
	memcpy(params, query, qn + 1);
	int rc = 0;
	char *save = NULL;
	for (char *p = strtok_r(params, "&", &save); p && !rc; p = strtok_r(NULL, "&", &save)) {
		char *dec = malloc(strlen(p) + 1);
		if (!dec)
			abort();
		if (!strncmp(p, "rule=", 5))
			pct_decode(p + 5, strlen(p + 5), dec, strlen(p) + 1);
		else
			strcpy(dec, p);
		char *save2 = NULL;
		for (char *it = strtok_r(dec, ",", &save2); it && !rc; it = strtok_r(NULL, ",", &save2)) {
			if (!*it)
				continue;
			if (pct_decode(it, strlen(it), item, qn + 1) < 0) {
				snprintf(err, errn, "bad rule item");
				rc = -1;
				break;
			}
			rc = rule_item(r, item, err, errn);
			if (!rc) {
				if (spec.len)
					sb_add(&spec, ",", 1);
				sb_add(&spec, item, strlen(item));
			}
		}
		free(dec);
	}
	free(params);
	free(item);
	if (!rc && r->kind == K_NONE) {
		snprintf(err, errn, "rule names no fault kind (status=, reset_mid_body, short_body, stall=, "
			 "delay=, rate=, corrupt, etag=, drop)");
		rc = -1;
	}
	r->spec = spec.p ? spec.p : strdup("");
	if (rc) {
		rule_free(r);
		return NULL;
	}
	return r;
}

static double rng_unit(void)
{
	/* xorshift64*: only needs to be cheap and seedable (under g_lock). */
	g_rng ^= g_rng >> 12;
	g_rng ^= g_rng << 25;
	g_rng ^= g_rng >> 27;
	return (double)((g_rng * 2685821657736338717ull) >> 11) / (double)(1ull << 53);
}

/* Under g_lock: pick the fault for a request and count it. */
static void rule_match(const char *method, const char *target, bool has_range, struct fault *f)
{
	memset(f, 0, sizeof *f);
	for (struct rule *r = g_rules; r; r = r->next) {
		if (r->count == 0)
			continue;
		if (r->method[0] && strcmp(r->method, method))
			continue;
		if (r->path && !strstr(target, r->path))
			continue;
		if (r->range >= 0 && r->range != (int)has_range)
			continue;
		r->matched++;
		if (r->prob < 1.0 && rng_unit() >= r->prob)
			continue;
		r->fired++;
		if (r->count > 0)
			r->count--;
		f->kind = r->kind;
		f->arg = r->arg;
		if (r->etag)
			snprintf(f->etag, sizeof f->etag, "%s", r->etag);
		if (r->s3code)
			snprintf(f->s3code, sizeof f->s3code, "%s", r->s3code);
		g_st.faults++;
		g_st.by_kind[r->kind]++;
		return;
	}
}

/* ---------- request log ---------- */

static void log_request(const char *method, const char *target, const char *range, int status,
			enum kind k, uint64_t up, uint64_t bytes, uint64_t ms)
{
	char *line = NULL;
	int n = asprintf(&line,
			 "%s %s range=%s status=%d fault=%s bytes=%" PRIu64 " up=%" PRIu64 " ms=%" PRIu64 "\n",
			 method, target, range ? range : "-", status, kind_names[k], bytes, up, ms);
	if (n < 0)
		abort();
	pthread_mutex_lock(&g_lock);
	if (g_logfd >= 0 && write(g_logfd, line, (size_t)n) != n)
		warnx_("writing the request log: %s", strerror(errno));
	line[n - 1] = 0;
	size_t slot = g_log_total % LOG_RING;
	free(g_log[slot]);
	g_log[slot] = line;
	g_log_total++;
	pthread_mutex_unlock(&g_lock);
}

/* ---------- responses the proxy writes itself ---------- */

static const char *reason_of(int code)
{
	switch (code) {
	case 200: return "OK";
	case 204: return "No Content";
	case 206: return "Partial Content";
	case 400: return "Bad Request";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 409: return "Conflict";
	case 412: return "Precondition Failed";
	case 416: return "Requested Range Not Satisfiable";
	case 429: return "Too Many Requests";
	case 431: return "Request Header Fields Too Large";
	case 500: return "Internal Server Error";
	case 501: return "Not Implemented";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	default: return "Injected Fault";
	}
}

static const char *s3code_of(int code)
{
	switch (code) {
	case 400: return "InvalidRequest";
	case 403: return "AccessDenied";
	case 404: return "NoSuchKey";
	case 405: return "MethodNotAllowed";
	case 409: return "OperationAborted";
	case 412: return "PreconditionFailed";
	case 416: return "InvalidRange";
	case 429: return "SlowDown";
	case 500: return "InternalError";
	case 501: return "NotImplemented";
	case 502: return "BadGateway";
	case 503: return "SlowDown";
	case 504: return "RequestTimeout";
	default: return "InjectedFault";
	}
}

static int send_simple(int fd, int code, const char *ctype, const char *body, bool head_only, bool close_after)
{
	struct sb s = { 0 };
	size_t bl = body ? strlen(body) : 0;
	sb_printf(&s,
		  "HTTP/1.1 %d %s\r\nServer: faultproxy\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
		  "x-amz-request-id: faultproxy\r\n%s\r\n",
		  code, reason_of(code), ctype, bl, close_after ? "Connection: close\r\n" : "");
	if (body && !head_only)
		sb_add(&s, body, bl);
	int rc = send_all(fd, s.p, s.len, 0);
	free(s.p);
	return rc;
}

static int send_s3_error(int fd, int code, const char *s3code, const char *resource, bool head_only,
			 bool close_after)
{
	struct sb b = { 0 };
	sb_printf(&b,
		  "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>%s</Code>"
		  "<Message>Injected by faultproxy (HTTP %d).</Message><Resource>",
		  s3code && *s3code ? s3code : s3code_of(code), code);
	for (const char *p = resource; *p; p++) {	/* XML-escape the path */
		if (*p == '<') sb_add(&b, "&lt;", 4);
		else if (*p == '>') sb_add(&b, "&gt;", 4);
		else if (*p == '&') sb_add(&b, "&amp;", 5);
		else sb_add(&b, p, 1);
	}
	sb_printf(&b, "</Resource><RequestId>faultproxy</RequestId></Error>");
	int rc = send_simple(fd, code, "application/xml", b.p, head_only, close_after);
	free(b.p);
	return rc;
}

/* ---------- control endpoint ---------- */

static void stats_json(struct sb *s, bool with_log)
{
	pthread_mutex_lock(&g_lock);
	sb_printf(s, "{\"requests\":%" PRIu64 ",\"methods\":{", g_st.requests);
	for (int i = 0; i < M__N; i++)
		sb_printf(s, "%s\"%s\":%" PRIu64, i ? "," : "", method_names[i], g_st.methods[i]);
	sb_printf(s,
		  "},\"bytes_up\":%" PRIu64 ",\"bytes_down\":%" PRIu64 ",\"bytes\":%" PRIu64
		  ",\"connections\":%" PRIu64 ",\"active_connections\":%d,\"upstream_errors\":%" PRIu64
		  ",\"control_requests\":%" PRIu64 ",\"faults\":%" PRIu64 ",\"faults_by_kind\":{",
		  g_st.bytes_up, g_st.bytes_down, g_st.bytes_up + g_st.bytes_down, g_st.connections, g_active,
		  g_st.upstream_errors, g_st.control, g_st.faults);
	for (int k = 1; k < K__N; k++)
		sb_printf(s, "%s\"%s\":%" PRIu64, k > 1 ? "," : "", kind_names[k], g_st.by_kind[k]);
	sb_printf(s, "},\"rules\":[");
	for (struct rule *r = g_rules; r; r = r->next) {
		sb_printf(s, "%s{\"id\":%d,\"kind\":\"%s\",\"spec\":", r == g_rules ? "" : ",", r->id,
			  kind_names[r->kind]);
		sb_json_str(s, r->spec);
		sb_printf(s, ",\"matched\":%" PRIu64 ",\"fired\":%" PRIu64 ",\"remaining\":%ld}", r->matched,
			  r->fired, r->count);
	}
	uint64_t kept = g_log_total < LOG_RING ? g_log_total : LOG_RING;
	sb_printf(s, "],\"log_total\":%" PRIu64 ",\"log_dropped\":%" PRIu64, g_log_total, g_log_total - kept);
	if (with_log) {
		sb_printf(s, ",\"log\":[");
		for (uint64_t i = g_log_total - kept; i < g_log_total; i++) {
			if (i != g_log_total - kept)
				sb_add(s, ",", 1);
			sb_json_str(s, g_log[i % LOG_RING]);
		}
		sb_add(s, "]", 1);
	}
	sb_add(s, "}\n", 2);
	pthread_mutex_unlock(&g_lock);
}

static void clear_rules(bool stats)
{
	pthread_mutex_lock(&g_lock);
	while (g_rules) {
		struct rule *r = g_rules;
		g_rules = r->next;
		rule_free(r);
	}
	g_rules_tail = &g_rules;
	if (stats) {
		memset(&g_st, 0, sizeof g_st);
		for (int i = 0; i < LOG_RING; i++) {
			free(g_log[i]);
			g_log[i] = NULL;
		}
		g_log_total = 0;
	}
	pthread_mutex_unlock(&g_lock);
}

static int control(int cfd, const struct msg *req, bool close_after)
{
	const char *target = req->b;
	const char *q = strchr(target, '?');
	size_t pl = q ? (size_t)(q - target) : strlen(target);
	q = q ? q + 1 : "";
	bool head = !strcmp(req->a, "HEAD");
	pthread_mutex_lock(&g_lock);
	g_st.control++;
	pthread_mutex_unlock(&g_lock);
#define IS(p) (pl == strlen(p) && !strncmp(target, p, pl))
	if (IS("/__fault/set")) {
		char err[256];
		struct rule *r = rule_parse(q, err, sizeof err);
		if (!r) {
			struct sb b = { 0 };
			sb_printf(&b, "{\"error\":");
			sb_json_str(&b, err);
			sb_printf(&b, "}\n");
			int rc = send_simple(cfd, 400, "application/json", b.p, head, close_after);
			free(b.p);
			return rc;
		}
		pthread_mutex_lock(&g_lock);
		r->id = g_next_rule_id++;
		*g_rules_tail = r;
		g_rules_tail = &r->next;
		int id = r->id;
		pthread_mutex_unlock(&g_lock);
		char body[64];
		snprintf(body, sizeof body, "{\"id\":%d}\n", id);
		return send_simple(cfd, 200, "application/json", body, head, close_after);
	}
	if (IS("/__fault/clear")) {
		clear_rules(strstr(q, "stats=1") != NULL);
		return send_simple(cfd, 200, "application/json", "{\"cleared\":true}\n", head, close_after);
	}
	if (IS("/__fault/stats")) {
		struct sb b = { 0 };
		stats_json(&b, !strstr(q, "log=0"));
		int rc = send_simple(cfd, 200, "application/json", b.p, head, close_after);
		free(b.p);
		return rc;
	}
	if (IS("/__fault/log")) {
		struct sb b = { 0 };
		pthread_mutex_lock(&g_lock);
		uint64_t kept = g_log_total < LOG_RING ? g_log_total : LOG_RING;
		for (uint64_t i = g_log_total - kept; i < g_log_total; i++)
			sb_printf(&b, "%s\n", g_log[i % LOG_RING]);
		pthread_mutex_unlock(&g_lock);
		int rc = send_simple(cfd, 200, "text/plain", b.p ? b.p : "", head, close_after);
		free(b.p);
		return rc;
	}
#undef IS
	return send_simple(cfd, 404, "application/json",
			   "{\"error\":\"unknown control path; try /__fault/set, clear, stats, log\"}\n", head,
			   close_after);
}

/* ---------- upstream connection ---------- */

static void set_ufd(struct client *cl, int fd)
{
	pthread_mutex_lock(&g_lock);
	int old = cl->ufd;
	cl->ufd = fd;
	pthread_mutex_unlock(&g_lock);
	if (old >= 0)
		close(old);
}

static int upstream_connect(void)
{
	for (struct addrinfo *ai = g_upstream; ai; ai = ai->ai_next) {
		int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
		if (fd < 0)
			continue;
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
			int one = 1;
			setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
			return fd;
		}
		close(fd);
	}
	return -1;
}

/* A kept-alive upstream socket that is readable while idle has been closed
 * by the server (node closes idle sockets after 5 s): start afresh. */
static bool upstream_stale(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	return poll(&p, 1, 0) != 0;
}

/* Wait (briefly) until the kernel has sent what we queued, so an RST does not
 * discard the half body that reset_mid_body promises to deliver first. */
static void drain_outq(int fd)
{
	for (int i = 0; i < 200; i++) {
		int q = 0;
		if (ioctl(fd, SIOCOUTQ, &q) < 0 || q == 0)
			return;
		usleep(5000);
	}
}

/* ---------- one request ---------- */

enum outcome { KEEP, CLOSE, RESET, CLOSED_FIN };

static int method_index(const char *m)
{
	for (int i = 0; i < M_OTHER; i++)
		if (!strcmp(m, method_names[i]))
			return i;
	return M_OTHER;
}

static enum outcome handle_request(struct client *cl, struct bconn *cc, struct bconn *uc, struct msg *req)
{
	uint64_t t0 = mono_ms();
	const char *method = req->a, *target = req->b;
	const char *range = hget(req, "range");
	bool head_req = !strcmp(method, "HEAD");
	bool client_close = hhas_token(req, "connection", "close") || !strcmp(req->c, "HTTP/1.0");
	bool expect = hhas_token(req, "expect", "100-continue");
	uint64_t req_len;
	int req_framing = body_framing(req, false, &req_len);
	if (req_framing < 0) {
		send_simple(cl->cfd, 400, "text/plain", "bad Content-Length\n", false, true);
		return CLOSE;
	}
	bool req_body = req_framing != F_NONE;

	struct fault f;
	pthread_mutex_lock(&g_lock);
	g_st.requests++;
	g_st.methods[method_index(method)]++;
	rule_match(method, target, range != NULL, &f);
	pthread_mutex_unlock(&g_lock);

	int status = 0;
	uint64_t sent = 0;
	enum outcome out = KEEP;
	struct xfer up = { .out = -1, .cut = UINT64_MAX };

	if (f.kind == K_STATUS || f.kind == K_DROP) {
		/* Swallow the body so the connection stays in step, unless the
		 * client is still waiting for 100 Continue: then it will not send
		 * one, and we close after answering. */
		bool swallowed = false;
		if (req_body && !expect) {
			if (relay_body(cc, &up, req_framing, req_len) != XF_OK)
				return CLOSE;
			swallowed = true;
		}
		if (f.kind == K_DROP) {
			log_request(method, target, range, 0, f.kind, up.off, 0, mono_ms() - t0);
			return CLOSED_FIN;
		}
		bool close_after = client_close || (req_body && !swallowed);
		status = f.arg;
		if (send_s3_error(cl->cfd, f.arg, f.s3code, target, head_req, close_after) < 0)
			out = CLOSE;
		else
			out = close_after ? CLOSED_FIN : KEEP;
		log_request(method, target, range, status, f.kind, up.off, 0, mono_ms() - t0);
		return out;
	}

	/* Forward the request head, minus Expect (answered here). */
	struct sb fwd = { 0 };
	sb_printf(&fwd, "%s %s %s\r\n", req->a, req->b, req->c);
	for (int i = 0; i < req->nh; i++) {
		if (!strcasecmp(req->h[i].name, "expect"))
			continue;
		sb_printf(&fwd, "%s: %s\r\n", req->h[i].name, req->h[i].value);
	}
	sb_add(&fwd, "\r\n", 2);

	struct msg resp;
	char *rhead = NULL;
	for (int attempt = 0;; attempt++) {
		bool reused = cl->ufd >= 0;
		if (reused && upstream_stale(cl->ufd)) {
			set_ufd(cl, -1);
			reused = false;
		}
		if (cl->ufd < 0) {
			int fd = upstream_connect();
			if (fd < 0) {
				if (attempt == 0 && req_body && !expect)	/* let the 502 be read */
					relay_body(cc, &up, req_framing, req_len);
				pthread_mutex_lock(&g_lock);
				g_st.upstream_errors++;
				pthread_mutex_unlock(&g_lock);
				warnx_("cannot connect to upstream: %s", strerror(errno));
				send_s3_error(cl->cfd, 502, "BadGateway", target, head_req, true);
				free(fwd.p);
				log_request(method, target, range, 502, f.kind, up.off, 0, mono_ms() - t0);
				return CLOSED_FIN;
			}
			set_ufd(cl, fd);
			uc->r = uc->w = 0;
		}
		uc->fd = cl->ufd;
		int rc = send_all(cl->ufd, fwd.p, fwd.len, req_body ? MSG_MORE : 0);
		if (rc == 0 && req_body) {
			if (expect && attempt == 0 &&
			    send_all(cl->cfd, "HTTP/1.1 100 Continue\r\n\r\n", 25, 0) < 0) {
				free(fwd.p);
				return CLOSE;
			}
			up.out = cl->ufd;
			int x = relay_body(cc, &up, req_framing, req_len);
			pthread_mutex_lock(&g_lock);
			g_st.bytes_up += up.off;
			pthread_mutex_unlock(&g_lock);
			if (x != XF_OK) {	/* client or upstream died mid-body */
				free(fwd.p);
				set_ufd(cl, -1);
				log_request(method, target, range, 0, f.kind, up.off, 0, mono_ms() - t0);
				return CLOSE;
			}
		}
		if (rc == 0) {
			for (;;) {	/* skip interim 1xx responses */
				int hr = bc_read_head(uc, &rhead);
				if (hr <= 0) {
					rc = -1;
					break;
				}
				if (parse_head(rhead, &resp) < 0 || strncmp(resp.a, "HTTP/1.", 7)) {
					free(rhead);
					rhead = NULL;
					rc = -1;
					break;
				}
				int code = atoi(resp.b);
				if (code >= 100 && code < 200 && code != 101) {
					free(rhead);
					rhead = NULL;
					continue;
				}
				break;
			}
		}
		if (rc == 0)
			break;
		set_ufd(cl, -1);
		/* A bodyless request that met a just-closed keep-alive socket is
		 * safe to send again; anything else is reported to the client. */
		if (reused && !req_body && attempt == 0)
			continue;
		pthread_mutex_lock(&g_lock);
		g_st.upstream_errors++;
		pthread_mutex_unlock(&g_lock);
		warnx_("upstream failed on %s %s", method, target);
		send_s3_error(cl->cfd, 502, "BadGateway", target, head_req, true);
		free(fwd.p);
		log_request(method, target, range, 502, f.kind, up.off, 0, mono_ms() - t0);
		return CLOSED_FIN;
	}
	free(fwd.p);

	status = atoi(resp.b);
	uint64_t rlen = 0;
	int rframing;
	if (head_req || status == 204 || status == 304)
		rframing = F_NONE;
	else
		rframing = body_framing(&resp, true, &rlen);
	if (rframing < 0) {
		free(rhead);
		set_ufd(cl, -1);
		send_s3_error(cl->cfd, 502, "BadGateway", target, head_req, true);
		log_request(method, target, range, 502, f.kind, up.off, 0, mono_ms() - t0);
		return CLOSED_FIN;
	}
	bool upstream_close = hhas_token(&resp, "connection", "close") || strcmp(resp.a, "HTTP/1.1") ||
			      rframing == F_EOF;
	if (upstream_close)
		client_close = true;

	struct sb rh = { 0 };
	bool etag_done = false;
	sb_printf(&rh, "%s %s %s\r\n", resp.a, resp.b, resp.c);
	for (int i = 0; i < resp.nh; i++) {
		if (f.kind == K_ETAG && !strcasecmp(resp.h[i].name, "etag")) {
			sb_printf(&rh, "%s: %s%s%s\r\n", resp.h[i].name, f.etag[0] == '"' ? "" : "\"", f.etag,
				  f.etag[0] == '"' ? "" : "\"");
			etag_done = true;
			continue;
		}
		sb_printf(&rh, "%s: %s\r\n", resp.h[i].name, resp.h[i].value);
	}
	if (f.kind == K_ETAG && !etag_done && status >= 200 && status < 300)
		sb_printf(&rh, "ETag: %s%s%s\r\n", f.etag[0] == '"' ? "" : "\"", f.etag, f.etag[0] == '"' ? "" : "\"");
	sb_add(&rh, "\r\n", 2);
	free(rhead);

	if (f.kind == K_DELAY)
		sleep_ms(f.arg);

	bool cutting = f.kind == K_RESET || f.kind == K_SHORT || f.kind == K_STALL;
	if (cutting && rframing == F_NONE) {	/* nothing to cut: strike before the headers */
		if (f.kind == K_STALL) {
			sleep_ms(f.arg);
		} else {
			free(rh.p);
			if (upstream_close)
				set_ufd(cl, -1);
			log_request(method, target, range, status, f.kind, up.off, 0, mono_ms() - t0);
			return f.kind == K_RESET ? RESET : CLOSED_FIN;
		}
	}

	struct xfer down = { .out = cl->cfd, .cut = UINT64_MAX, .kind = f.kind, .arg = f.arg };
	if (cutting) {
		if (rframing == F_LEN)
			down.cut = rlen / 2;
		else
			down.cut_at_first = true;
	}
	int x = send_all(cl->cfd, rh.p, rh.len, rframing != F_NONE ? MSG_MORE : 0) < 0 ? XF_ERR : XF_OK;
	free(rh.p);
	if (x == XF_OK)
		x = relay_body(uc, &down, rframing, rlen);
	sent = down.off;
	pthread_mutex_lock(&g_lock);
	g_st.bytes_down += sent;
	pthread_mutex_unlock(&g_lock);
	log_request(method, target, range, status, f.kind, up.off, sent, mono_ms() - t0);

	if (x == XF_CUT) {
		set_ufd(cl, -1);	/* the rest of its response is unread */
		return f.kind == K_RESET ? RESET : CLOSED_FIN;
	}
	if (x != XF_OK) {
		set_ufd(cl, -1);
		return CLOSE;
	}
	if (upstream_close)
		set_ufd(cl, -1);
	return client_close ? CLOSED_FIN : KEEP;
}

/* ---------- connection threads ---------- */

static void *client_main(void *arg)
{
	struct client *cl = arg;
	struct bconn cc = { .fd = cl->cfd, .buf = malloc(BUF_CAP) };
	struct bconn uc = { .fd = -1, .buf = malloc(BUF_CAP) };
	enum outcome out = CLOSE;
	if (!cc.buf || !uc.buf)
		abort();
	for (;;) {
		char *head = NULL;
		int hr = bc_read_head(&cc, &head);
		if (hr <= 0) {
			if (hr < 0 && cc.w - cc.r >= MAX_HEAD)
				send_simple(cl->cfd, 431, "text/plain", "request head too large\n", false, true);
			out = CLOSE;
			break;
		}
		struct msg req;
		if (parse_head(head, &req) < 0 || strncmp(req.c, "HTTP/1.", 7)) {
			send_simple(cl->cfd, 400, "text/plain", "malformed request\n", false, true);
			free(head);
			out = CLOSED_FIN;
			break;
		}
		if (!strncmp(req.b, "/__fault/", 9)) {
			bool cclose = hhas_token(&req, "connection", "close");
			uint64_t len;
			int fr = body_framing(&req, false, &len);
			struct xfer sink = { .out = -1, .cut = UINT64_MAX };
			if (fr < 0 || relay_body(&cc, &sink, fr, len) != XF_OK ||
			    control(cl->cfd, &req, cclose) < 0 || cclose) {
				free(head);
				out = CLOSED_FIN;
				break;
			}
			free(head);
			continue;
		}
		out = handle_request(cl, &cc, &uc, &req);
		free(head);
		if (out != KEEP)
			break;
	}

	pthread_mutex_lock(&g_lock);
	if (cl->prev)
		cl->prev->next = cl->next;
	else
		g_clients = cl->next;
	if (cl->next)
		cl->next->prev = cl->prev;
	pthread_mutex_unlock(&g_lock);

	if (out == RESET) {
		drain_outq(cl->cfd);
		struct linger lg = { .l_onoff = 1, .l_linger = 0 };
		setsockopt(cl->cfd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
	} else if (out == CLOSED_FIN) {
		shutdown(cl->cfd, SHUT_WR);
	}
	close(cl->cfd);
	if (cl->ufd >= 0)
		close(cl->ufd);
	free(cc.buf);
	free(uc.buf);
	free(cl);

	pthread_mutex_lock(&g_lock);
	g_active--;
	pthread_cond_broadcast(&g_cond);
	pthread_mutex_unlock(&g_lock);
	return NULL;
}

/* ---------- startup ---------- */

static struct addrinfo *resolve(const char *hostport, bool passive, const char *what)
{
	char host[256];
	const char *colon = strrchr(hostport, ':');
	if (!colon || colon == hostport || !colon[1])
		die("%s wants HOST:PORT, got '%s'", what, hostport);
	size_t hl = (size_t)(colon - hostport);
	if (hl >= sizeof host)
		die("%s: host name too long", what);
	memcpy(host, hostport, hl);
	host[hl] = 0;
	if (host[0] == '[' && hl > 2 && host[hl - 1] == ']') {
		memmove(host, host + 1, hl - 2);
		host[hl - 2] = 0;
	}
	char *end;
	long port = strtol(colon + 1, &end, 10);
	if (*end || port < 0 || port > 65535)
		die("%s: bad port '%s'", what, colon + 1);
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = passive ? AI_PASSIVE : 0 };
	struct addrinfo *res;
	int rc = getaddrinfo(host, colon + 1, &hints, &res);
	if (rc)
		die("%s: cannot resolve '%s': %s", what, host, gai_strerror(rc));
	return res;
}

static void usage(FILE *to)
{
	fputs("usage: faultproxy --listen HOST:PORT --upstream HOST:PORT [--port-file F] [--log F]\n"
	      "                  [--seed N] [--quiet]\n"
	      "A fault-injecting HTTP/1.1 reverse proxy for thaw's tests.\n"
	      "  --listen HOST:PORT    where to accept clients; port 0 picks a free one\n"
	      "  --upstream HOST:PORT  the real server (s3rver)\n"
	      "  --port-file F         write the listening port to F (atomically)\n"
	      "  --log F               append one line per forwarded request to F\n"
	      "  --seed N              seed for prob= rules (default: time)\n"
	      "  --quiet               no warnings on stderr\n"
	      "Control (answered here, never forwarded):\n"
	      "  GET /__fault/set?rule=RULE   add a rule, answers {\"id\":N}\n"
	      "  GET /__fault/clear[?stats=1] remove all rules [and zero counters and log]\n"
	      "  GET /__fault/stats[?log=0]   JSON: requests per method, bytes, faults, rules, log\n"
	      "  GET /__fault/log             request log, one line per request\n"
	      "RULE = one fault kind and match fields, separated by ',' (or '&'):\n"
	      "  status=CODE      answer CODE with an S3 XML <Error> (code=NAME sets <Code>)\n"
	      "  reset_mid_body   send headers + half the body, then RST\n"
	      "  short_body       send headers (full length) + half the body, then FIN\n"
	      "  stall=MS         send headers + half the body, pause MS, then the rest\n"
	      "  rate=KIB         send the body at KIB KiB/s (4 KiB pieces)\n"
	      "  delay=MS         hold the whole response MS before sending it\n"
	      "  corrupt          flip every byte at a body offset multiple of 4096\n"
	      "  etag=VALUE       replace the ETag response header\n"
	      "  drop             close the connection without answering\n"
	      "  method=GET|HEAD|PUT|POST|DELETE|ANY  path=SUBSTRING  range=1|0|any\n"
	      "  count=N (-1 = forever, the default)  prob=P (0..1)\n"
	      "  Bodyless responses: the cut comes before the headers.  First rule that fires wins.\n"
	      "  e.g. /__fault/set?rule=status=503,method=GET,path=/thaw/obj,count=2\n"
	      "Log line: METHOD TARGET range=R|- status=N fault=KIND|- bytes=N up=N ms=N\n",
	      to);
}

int main(int argc, char **argv)
{
	const char *listen_s = NULL, *upstream_s = NULL, *port_file = NULL, *log_file = NULL;
	uint64_t seed = 0;
	bool seeded = false;
	static const struct option opts[] = {
		{ "listen", required_argument, 0, 'l' }, { "upstream", required_argument, 0, 'u' },
		{ "port-file", required_argument, 0, 'p' }, { "log", required_argument, 0, 'L' },
		{ "seed", required_argument, 0, 's' }, { "quiet", no_argument, 0, 'q' },
		{ "help", no_argument, 0, 'h' }, { 0, 0, 0, 0 }
	};
	opterr = 0;
	int c;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'l': listen_s = optarg; break;
		case 'u': upstream_s = optarg; break;
		case 'p': port_file = optarg; break;
		case 'L': log_file = optarg; break;
		case 'q': g_quiet = true; break;
		case 's': {
			char *end;
			seed = strtoull(optarg, &end, 10);
			if (*end || end == optarg)
				die("--seed wants a number, got '%s'", optarg);
			seeded = true;
			break;
		}
		case 'h': usage(stdout); return 0;
		default:
			if (optopt)
				die("option '%s' needs a value or is unknown (see --help)", argv[optind - 1]);
			die("unknown option '%s' (see --help)", argv[optind - 1]);
		}
	}
	if (optind < argc)
		die("unexpected argument '%s' (see --help)", argv[optind]);
	if (!listen_s)
		die("--listen HOST:PORT is required (see --help)");
	if (!upstream_s)
		die("--upstream HOST:PORT is required (see --help)");

	struct addrinfo *la = resolve(listen_s, true, "--listen");
	g_upstream = resolve(upstream_s, false, "--upstream");
	g_rng = seeded ? seed : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
	if (!g_rng)
		g_rng = 0x9e3779b97f4a7c15ull;

	if (log_file) {
		g_logfd = open(log_file, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
		if (g_logfd < 0)
			die("cannot open --log %s: %s", log_file, strerror(errno));
	}

	int lfd = socket(la->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lfd < 0)
		die("socket: %s", strerror(errno));
	int one = 1;
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(lfd, la->ai_addr, la->ai_addrlen) < 0)
		die("cannot listen on %s: %s", listen_s, strerror(errno));
	if (listen(lfd, 512) < 0)
		die("listen: %s", strerror(errno));
	freeaddrinfo(la);
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	getsockname(lfd, (struct sockaddr *)&ss, &sl);
	int port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
						  : ((struct sockaddr_in *)&ss)->sin_port);
	if (port_file) {
		char tmp[4096];
		snprintf(tmp, sizeof tmp, "%s.tmp%d", port_file, (int)getpid());
		FILE *pf = fopen(tmp, "w");
		if (!pf || fprintf(pf, "%d\n", port) < 0 || fclose(pf) != 0 || rename(tmp, port_file) < 0)
			die("cannot write --port-file %s: %s", port_file, strerror(errno));
	}

	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&g_cond, &ca);
	pthread_condattr_destroy(&ca);

	/* Signals arrive through a signalfd in this loop only; every thread
	 * inherits the blocked mask. */
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);
	int sfd = signalfd(-1, &sigs, SFD_CLOEXEC);
	if (sfd < 0)
		die("signalfd: %s", strerror(errno));

	pthread_attr_t ta;
	pthread_attr_init(&ta);
	pthread_attr_setdetachstate(&ta, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&ta, 256 * 1024);

	if (!g_quiet)
		fprintf(stderr, "faultproxy: listening on port %d, upstream %s\n", port, upstream_s);
	for (;;) {
		struct pollfd p[2] = { { .fd = lfd, .events = POLLIN }, { .fd = sfd, .events = POLLIN } };
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			die("poll: %s", strerror(errno));
		}
		if (p[1].revents)
			break;
		if (!p[0].revents)
			continue;
		int cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		if (cfd < 0) {
			if (errno != EINTR && errno != ECONNABORTED && errno != EAGAIN)
				warnx_("accept: %s", strerror(errno));
			if (errno == EMFILE || errno == ENFILE)
				usleep(10000);
			continue;
		}
		setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		struct client *cl = calloc(1, sizeof *cl);
		if (!cl)
			abort();
		cl->cfd = cfd;
		cl->ufd = -1;
		pthread_mutex_lock(&g_lock);
		cl->next = g_clients;
		if (g_clients)
			g_clients->prev = cl;
		g_clients = cl;
		g_active++;
		g_st.connections++;
		pthread_mutex_unlock(&g_lock);
		pthread_t th;
		int rc = pthread_create(&th, &ta, client_main, cl);
		if (rc) {
			warnx_("pthread_create: %s", strerror(rc));
			pthread_mutex_lock(&g_lock);
			g_clients = cl->next;
			if (cl->next)
				cl->next->prev = NULL;
			g_active--;
			pthread_mutex_unlock(&g_lock);
			close(cfd);
			free(cl);
		}
	}

	/* Stop: no new clients; wake sleepers; unblock every socket read so
	 * the threads finish and free their state. */
	close(lfd);
	pthread_mutex_lock(&g_lock);
	g_stopping = true;
	for (struct client *cl = g_clients; cl; cl = cl->next) {
		shutdown(cl->cfd, SHUT_RDWR);
		if (cl->ufd >= 0)
			shutdown(cl->ufd, SHUT_RDWR);
	}
	pthread_cond_broadcast(&g_cond);
	struct timespec dl;
	clock_gettime(CLOCK_MONOTONIC, &dl);
	dl.tv_sec += 3;
	while (g_active > 0 && pthread_cond_timedwait(&g_cond, &g_lock, &dl) != ETIMEDOUT)
		;
	int left = g_active;
	pthread_mutex_unlock(&g_lock);
	if (left) {
		warnx_("%d connection threads did not stop; exiting anyway", left);
		_exit(0);
	}
	clear_rules(true);
	freeaddrinfo(g_upstream);
	pthread_attr_destroy(&ta);
	close(sfd);
	if (g_logfd >= 0)
		close(g_logfd);
	return 0;
}
