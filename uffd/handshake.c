/* handshake.c - parsing and receiving Firecracker's UFFD handshake (see
 * handshake.h).  The parser is a small strict JSON reader for exactly this
 * shape: an array of flat objects.  It is exposed to whatever connects to the
 * socket, so every read is bounds-checked and nesting is capped. */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../common/err.h"
#include "../common/timeutil.h"
#include "handshake.h"

#define MAX_DEPTH 32
#define PAGE_4K 4096ull
#define PAGE_2M (2ull << 20)
#define VA_LIMIT (1ull << 57) /* above any user address with 5-level paging */

struct cur {
	const char *p, *end;
	const char *start;
};

static void skip_ws(struct cur *c)
{
	while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
		c->p++;
}

static size_t pos(const struct cur *c) { return (size_t)(c->p - c->start); }

static int expect(struct cur *c, char ch, const char *what)
{
	skip_ws(c);
	if (c->p >= c->end)
		return err_set(EINVAL, "handshake JSON ends early: expected %s at byte %zu", what, pos(c));
	if (*c->p != ch)
		return err_set(EINVAL, "handshake JSON: expected %s at byte %zu, found '%c'", what, pos(c),
			       (unsigned char)*c->p >= 0x20 && (unsigned char)*c->p < 0x7f ? *c->p : '?');
	c->p++;
	return 0;
}

static int hexval(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	return -1;
}

/* A string; its decoded ASCII form goes to out (truncated, flagged by *long_).
 * Non-ASCII escapes decode to '?': no key we know has them. */
static int parse_string(struct cur *c, char *out, size_t cap, int *long_)
{
	size_t n = 0;
	*long_ = 0;
	if (expect(c, '"', "a string") < 0)
		return -EINVAL;
	for (;;) {
		if (c->p >= c->end)
			return err_set(EINVAL, "handshake JSON: unterminated string at byte %zu", pos(c));
		unsigned char ch = (unsigned char)*c->p++;
		if (ch == '"')
			break;
		if (ch < 0x20)
			return err_set(EINVAL, "handshake JSON: control character in a string at byte %zu", pos(c) - 1);
		if (ch == '\\') {
			if (c->p >= c->end)
				return err_set(EINVAL, "handshake JSON: unterminated escape at byte %zu", pos(c));
			char e = *c->p++;
			switch (e) {
			case '"': ch = '"'; break;
			case '\\': ch = '\\'; break;
			case '/': ch = '/'; break;
			case 'b': ch = '\b'; break;
			case 'f': ch = '\f'; break;
			case 'n': ch = '\n'; break;
			case 'r': ch = '\r'; break;
			case 't': ch = '\t'; break;
			case 'u': {
				unsigned v = 0;
				for (int i = 0; i < 4; i++) {
					int h = c->p < c->end ? hexval(*c->p) : -1;
					if (h < 0)
						return err_set(EINVAL, "handshake JSON: bad \\u escape at byte %zu", pos(c));
					v = v << 4 | (unsigned)h;
					c->p++;
				}
				ch = v < 0x80 && v >= 0x20 ? (unsigned char)v : '?';
				break;
			}
			default:
				return err_set(EINVAL, "handshake JSON: bad escape '\\%c' at byte %zu",
					       e >= 0x20 && e < 0x7f ? e : '?', pos(c) - 1);
			}
		}
		if (n + 1 < cap)
			out[n++] = (char)ch;
		else
			*long_ = 1;
	}
	if (cap)
		out[n] = 0;
	return 0;
}

/* A JSON number; *is_uint says whether it was a plain non-negative integer
 * that fits in 64 bits (then *v holds it); *too_big flags integer overflow. */
static int parse_number(struct cur *c, uint64_t *v, int *is_uint, int *too_big)
{
	const char *s = c->p;
	int neg = 0, frac = 0;
	*v = 0;
	*too_big = 0;
	if (c->p < c->end && *c->p == '-') {
		neg = 1;
		c->p++;
	}
	if (c->p >= c->end || *c->p < '0' || *c->p > '9')
		return err_set(EINVAL, "handshake JSON: bad number at byte %zu", (size_t)(s - c->start));
	if (*c->p == '0' && c->p + 1 < c->end && c->p[1] >= '0' && c->p[1] <= '9')
		return err_set(EINVAL, "handshake JSON: number with a leading zero at byte %zu", (size_t)(s - c->start));
	while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
		unsigned d = (unsigned)(*c->p - '0');
		if (*v > (UINT64_MAX - d) / 10)
			*too_big = 1;
		else
			*v = *v * 10 + d;
		c->p++;
	}
	if (c->p < c->end && *c->p == '.') {
		frac = 1;
		c->p++;
		if (c->p >= c->end || *c->p < '0' || *c->p > '9')
			return err_set(EINVAL, "handshake JSON: bad fraction at byte %zu", pos(c));
		while (c->p < c->end && *c->p >= '0' && *c->p <= '9')
			c->p++;
	}
	if (c->p < c->end && (*c->p == 'e' || *c->p == 'E')) {
		frac = 1;
		c->p++;
		if (c->p < c->end && (*c->p == '+' || *c->p == '-'))
			c->p++;
		if (c->p >= c->end || *c->p < '0' || *c->p > '9')
			return err_set(EINVAL, "handshake JSON: bad exponent at byte %zu", pos(c));
		while (c->p < c->end && *c->p >= '0' && *c->p <= '9')
			c->p++;
	}
	*is_uint = !neg && !frac && !*too_big;
	return 0;
}

static int skip_value(struct cur *c, int depth);

static int skip_literal(struct cur *c, const char *lit)
{
	size_t n = strlen(lit);
	if ((size_t)(c->end - c->p) < n || memcmp(c->p, lit, n))
		return err_set(EINVAL, "handshake JSON: unexpected token at byte %zu", pos(c));
	c->p += n;
	return 0;
}

/* Skip any JSON value (for keys we don't know). */
static int skip_value(struct cur *c, int depth)
{
	char tmp[8];
	int lg, isu, big;
	uint64_t v;
	if (depth > MAX_DEPTH)
		return err_set(EINVAL, "handshake JSON nests deeper than %d levels", MAX_DEPTH);
	skip_ws(c);
	if (c->p >= c->end)
		return err_set(EINVAL, "handshake JSON ends early: expected a value at byte %zu", pos(c));
	switch (*c->p) {
	case '"':
		return parse_string(c, tmp, sizeof tmp, &lg);
	case '{':
	case '[': {
		char close = *c->p == '{' ? '}' : ']';
		int obj = *c->p == '{';
		c->p++;
		skip_ws(c);
		if (c->p < c->end && *c->p == close) {
			c->p++;
			return 0;
		}
		for (;;) {
			if (obj) {
				if (parse_string(c, tmp, sizeof tmp, &lg) < 0 || expect(c, ':', "':'") < 0)
					return -EINVAL;
			}
			if (skip_value(c, depth + 1) < 0)
				return -EINVAL;
			skip_ws(c);
			if (c->p < c->end && *c->p == ',') {
				c->p++;
				continue;
			}
			return expect(c, close, obj ? "',' or '}'" : "',' or ']'");
		}
	}
	case 't': return skip_literal(c, "true");
	case 'f': return skip_literal(c, "false");
	case 'n': return skip_literal(c, "null");
	default:
		return parse_number(c, &v, &isu, &big);
	}
}

enum { K_BASE, K_SIZE, K_OFFSET, K_PSKIB, K_PS, K_COUNT };
static const char *const key_names[K_COUNT] = { "base_host_virt_addr", "size", "offset", "page_size_kib",
						"page_size" };

static int parse_region(struct cur *c, size_t idx, struct hs_region *r, unsigned *fields)
{
	uint64_t val[K_COUNT] = { 0 };
	int seen[K_COUNT] = { 0 };
	if (expect(c, '{', "'{' (a region object)") < 0)
		return err_wrap(-EINVAL, "region %zu", idx);
	skip_ws(c);
	if (c->p < c->end && *c->p == '}') {
		c->p++;
	} else {
		for (;;) {
			char key[32];
			int lg;
			if (parse_string(c, key, sizeof key, &lg) < 0 || expect(c, ':', "':'") < 0)
				return err_wrap(-EINVAL, "region %zu", idx);
			int k = -1;
			for (int i = 0; i < K_COUNT && !lg; i++)
				if (!strcmp(key, key_names[i]))
					k = i;
			skip_ws(c);
			if (k < 0) {
				if (skip_value(c, 2) < 0)
					return err_wrap(-EINVAL, "region %zu", idx);
			} else {
				uint64_t v;
				int isu, big;
				if (seen[k])
					return err_set(EINVAL, "region %zu: field '%s' appears twice", idx, key_names[k]);
				if (c->p >= c->end || !(*c->p == '-' || (*c->p >= '0' && *c->p <= '9')))
					return err_set(EINVAL, "region %zu: field '%s' is not a number", idx, key_names[k]);
				if (parse_number(c, &v, &isu, &big) < 0)
					return err_wrap(-EINVAL, "region %zu: field '%s'", idx, key_names[k]);
				if (big)
					return err_set(EINVAL, "region %zu: field '%s' does not fit in 64 bits", idx,
						       key_names[k]);
				if (!isu)
					return err_set(EINVAL, "region %zu: field '%s' is not a non-negative integer", idx,
						       key_names[k]);
				seen[k] = 1;
				val[k] = v;
			}
			skip_ws(c);
			if (c->p < c->end && *c->p == ',') {
				c->p++;
				continue;
			}
			if (expect(c, '}', "',' or '}'") < 0)
				return err_wrap(-EINVAL, "region %zu", idx);
			break;
		}
	}
	for (int k = K_BASE; k <= K_OFFSET; k++)
		if (!seen[k])
			return err_set(EINVAL, "region %zu: missing field '%s'", idx, key_names[k]);

	uint64_t ps = PAGE_4K;
	if (seen[K_PSKIB]) {
		*fields |= HS_F_PAGE_SIZE_KIB;
		/* Firecracker put bytes in this field; a literal KiB count (4, 2048)
		 * cannot be mistaken for a byte count, so take that too. */
		ps = val[K_PSKIB] == 4 || val[K_PSKIB] == 2048 ? val[K_PSKIB] << 10 : val[K_PSKIB];
	}
	if (seen[K_PS]) {
		*fields |= HS_F_PAGE_SIZE;
		if (seen[K_PSKIB] && ps != val[K_PS])
			return err_set(EINVAL, "region %zu: page_size %llu disagrees with page_size_kib %llu", idx,
				       (unsigned long long)val[K_PS], (unsigned long long)val[K_PSKIB]);
		ps = val[K_PS];
	}
	if (ps != PAGE_4K && ps != PAGE_2M)
		return err_set(EINVAL, "region %zu: page size %llu is neither 4096 nor 2097152", idx,
			       (unsigned long long)ps);
	r->base = val[K_BASE];
	r->size = val[K_SIZE];
	r->offset = val[K_OFFSET];
	r->page_size = ps;
	return 0;
}

static int cmp_base(const void *a, const void *b)
{
	const struct hs_region *x = a, *y = b;
	return x->base < y->base ? -1 : x->base > y->base;
}

static int cmp_offset(const void *a, const void *b)
{
	const struct hs_region *x = *(struct hs_region *const *)a, *y = *(struct hs_region *const *)b;
	return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static int check_regions(struct hs_msg *m, uint64_t image_size)
{
	for (size_t i = 0; i < m->n; i++) {
		const struct hs_region *r = &m->r[i];
		uint64_t ps = r->page_size;
		if (!r->size)
			return err_set(EINVAL, "region %zu is empty (size 0)", i);
		if (r->base % ps || r->size % ps || r->offset % ps)
			return err_set(EINVAL,
				       "region %zu (base 0x%llx size 0x%llx offset 0x%llx) is not aligned to its "
				       "%llu-byte pages",
				       i, (unsigned long long)r->base, (unsigned long long)r->size,
				       (unsigned long long)r->offset, (unsigned long long)ps);
		if (r->base >= VA_LIMIT || r->size > VA_LIMIT - r->base)
			return err_set(EINVAL, "region %zu (base 0x%llx size 0x%llx) is not a user address range", i,
				       (unsigned long long)r->base, (unsigned long long)r->size);
		if (r->offset > image_size || r->size > image_size - r->offset)
			return err_set(EINVAL,
				       "region %zu (offset %llu size %llu) reaches beyond the %llu-byte memory image", i,
				       (unsigned long long)r->offset, (unsigned long long)r->size,
				       (unsigned long long)image_size);
	}
	/* The message's own order names regions in the errors above; sort now. */
	qsort(m->r, m->n, sizeof *m->r, cmp_base);
	for (size_t i = 1; i < m->n; i++)
		if (m->r[i].base < m->r[i - 1].base + m->r[i - 1].size)
			return err_set(EINVAL, "regions at 0x%llx and 0x%llx overlap",
				       (unsigned long long)m->r[i - 1].base, (unsigned long long)m->r[i].base);
	struct hs_region **byoff = malloc(m->n * sizeof *byoff);
	if (!byoff)
		return err_set(ENOMEM, "out of memory");
	for (size_t i = 0; i < m->n; i++)
		byoff[i] = &m->r[i];
	qsort(byoff, m->n, sizeof *byoff, cmp_offset);
	int rc = 0;
	for (size_t i = 1; i < m->n && !rc; i++)
		if (byoff[i]->offset < byoff[i - 1]->offset + byoff[i - 1]->size)
			rc = err_set(EINVAL, "regions at 0x%llx and 0x%llx both map image bytes at offset %llu",
				     (unsigned long long)byoff[i - 1]->base, (unsigned long long)byoff[i]->base,
				     (unsigned long long)byoff[i]->offset);
	free(byoff);
	return rc;
}

int hs_parse(const char *buf, size_t len, uint64_t image_size, struct hs_msg *out)
{
	struct cur c = { buf, buf + len, buf };
	size_t cap = 0;
	int rc;
	memset(out, 0, sizeof *out);
	if (expect(&c, '[', "'[' (a JSON array of regions)") < 0)
		return -EINVAL;
	skip_ws(&c);
	if (c.p < c.end && *c.p == ']') {
		c.p++;
	} else {
		for (;;) {
			if (out->n == HS_MAX_REGIONS) {
				rc = err_set(EINVAL, "handshake has more than %d regions", HS_MAX_REGIONS);
				goto fail;
			}
			if (out->n == cap) {
				size_t nc = cap ? cap * 2 : 4;
				struct hs_region *nr = realloc(out->r, nc * sizeof *nr);
				if (!nr) {
					rc = err_set(ENOMEM, "out of memory");
					goto fail;
				}
				out->r = nr;
				cap = nc;
			}
			rc = parse_region(&c, out->n, &out->r[out->n], &out->fields);
			if (rc < 0)
				goto fail;
			out->n++;
			skip_ws(&c);
			if (c.p < c.end && *c.p == ',') {
				c.p++;
				continue;
			}
			rc = expect(&c, ']', "',' or ']'");
			if (rc < 0)
				goto fail;
			break;
		}
	}
	skip_ws(&c);
	/* A C client may count the terminating NUL in the message; allow that. */
	while (c.p < c.end && *c.p == 0)
		c.p++;
	if (c.p != c.end) {
		rc = err_set(EINVAL, "handshake has %zu bytes after the region array", (size_t)(c.end - c.p));
		goto fail;
	}
	if (!out->n) {
		rc = err_set(EINVAL, "handshake lists no regions (empty array)");
		goto fail;
	}
	rc = check_regions(out, image_size);
	if (rc < 0)
		goto fail;
	return 0;
fail:
	hs_free(out);
	return rc;
}

void hs_free(struct hs_msg *m)
{
	free(m->r);
	m->r = NULL;
	m->n = 0;
}

const char *hs_fieldset_name(unsigned fields)
{
	switch (fields & (HS_F_PAGE_SIZE | HS_F_PAGE_SIZE_KIB)) {
	case 0: return "Firecracker v1.1-1.6 fields (no page size)";
	case HS_F_PAGE_SIZE_KIB: return "Firecracker v1.7-1.11 fields (page_size_kib)";
	case HS_F_PAGE_SIZE: return "Firecracker v1.12+ fields (page_size)";
	default: return "Firecracker fields page_size and page_size_kib";
	}
}

ssize_t hs_value_len(const char *buf, size_t len)
{
	size_t i = 0;
	int depth = 0, in_str = 0;
	while (i < len && (buf[i] == ' ' || buf[i] == '\t' || buf[i] == '\n' || buf[i] == '\r'))
		i++;
	if (i == len)
		return 0;
	if (buf[i] != '[')
		return err_set(EINVAL, "handshake does not start with a JSON array");
	for (; i < len; i++) {
		char ch = buf[i];
		if (in_str) {
			if (ch == '\\')
				i++;
			else if (ch == '"')
				in_str = 0;
			continue;
		}
		if (ch == '"')
			in_str = 1;
		else if (ch == '[' || ch == '{')
			depth++;
		else if (ch == ']' || ch == '}') {
			if (--depth == 0)
				return (ssize_t)(i + 1);
		}
	}
	return 0;
}

static void close_fds(int *fds, int n)
{
	for (int i = 0; i < n; i++)
		if (fds[i] >= 0)
			close(fds[i]);
}

int hs_recv(int sock, int timeout_ms, char *buf, size_t cap, size_t *len, int *fd)
{
	uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000ull;
	int fds[HS_MAX_FDS], nfds = 0;
	size_t got = 0;
	*fd = -1;
	*len = 0;
	for (;;) {
		int64_t left = (int64_t)(deadline - now_ns()) / 1000000;
		if ((int64_t)(deadline - now_ns()) <= 0) {
			close_fds(fds, nfds);
			return err_set(ETIMEDOUT, "no complete handshake within %d ms (%zu bytes received)", timeout_ms,
				       got);
		}
		struct pollfd p = { .fd = sock, .events = POLLIN };
		int pr = poll(&p, 1, (int)(left > 0 ? left : 1));
		if (pr < 0 && errno == EINTR)
			continue;
		if (pr < 0) {
			close_fds(fds, nfds);
			return err_set(errno, "poll on the handshake socket: %s", strerror(errno));
		}
		if (pr == 0)
			continue;
		if (got == cap) {
			close_fds(fds, nfds);
			return err_set(EMSGSIZE, "handshake larger than %zu bytes", cap);
		}
		ssize_t n;
		if (got == 0) {
			union {
				struct cmsghdr h;
				char b[CMSG_SPACE(sizeof(int) * HS_MAX_FDS)];
			} ctl;
			struct iovec iov = { buf, cap };
			struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b,
					     .msg_controllen = sizeof ctl.b };
			n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
			if (n < 0 && (errno == EAGAIN || errno == EINTR))
				continue;
			if (n < 0)
				return err_set(errno, "recvmsg on the handshake socket: %s", strerror(errno));
			for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
				if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
					continue;
				int k = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
				for (int i = 0; i < k; i++) {
					int f;
					memcpy(&f, CMSG_DATA(cm) + i * sizeof(int), sizeof f);
					if (nfds < HS_MAX_FDS)
						fds[nfds++] = f;
					else
						close(f);
				}
			}
			if (mh.msg_flags & MSG_CTRUNC) {
				close_fds(fds, nfds);
				return err_set(EPROTO, "handshake carried more descriptors than the %d expected",
					       HS_MAX_FDS);
			}
			if (n == 0) {
				close_fds(fds, nfds);
				return err_set(EPROTO, "client closed the connection before sending a handshake");
			}
			if (nfds == 0)
				return err_set(EPROTO, "handshake arrived without a userfaultfd (no SCM_RIGHTS descriptor)");
			if (nfds > 1) {
				close_fds(fds, nfds);
				return err_set(EPROTO,
					       "handshake carried %d descriptors: guest_memfd (secret-free) mode is not "
					       "supported, only a userfaultfd",
					       nfds);
			}
		} else {
			n = recv(sock, buf + got, cap - got, MSG_DONTWAIT);
			if (n < 0 && (errno == EAGAIN || errno == EINTR))
				continue;
			if (n < 0) {
				close_fds(fds, nfds);
				return err_set(errno, "recv on the handshake socket: %s", strerror(errno));
			}
			if (n == 0) {
				close_fds(fds, nfds);
				return err_set(EPROTO, "client closed the connection mid-handshake (%zu bytes received)",
					       got);
			}
		}
		got += (size_t)n;
		ssize_t vl = hs_value_len(buf, got);
		if (vl < 0) {
			close_fds(fds, nfds);
			return -EINVAL;
		}
		if (vl > 0) {
			*len = got;
			*fd = fds[0];
			return 0;
		}
	}
}
