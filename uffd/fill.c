/* fill.c - putting image bytes into a client's address space: walk a range of
 * the image page by page, group pages into runs that one ioctl can install
 * (UFFDIO_COPY straight from the blob's memory, UFFDIO_ZEROPAGE for zero
 * chunks on 4 KiB pages), and keep the done bitmap exact whatever the kernel
 * answers.  Shared by the fault path and the pusher (see session.h). */
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>

#include "../common/log.h"
#include "../common/timeutil.h"
#include "install.h"
#include "session.h"

#define HUGE_2M (2ull << 20)

static const uint8_t *zero_2m;
static pthread_once_t zero_once = PTHREAD_ONCE_INIT;

/* A read-only anonymous mapping reads as the shared zero page: a source of
 * zeros for hugetlbfs, where UFFDIO_ZEROPAGE does not exist. */
static void zero_init(void)
{
	void *p = mmap(NULL, HUGE_2M, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	zero_2m = p == MAP_FAILED ? NULL : p;
}

uint64_t mark_done(struct session *s, uint64_t lo, uint64_t hi)
{
	uint64_t u0 = lo / UNIT, u1 = (hi + UNIT - 1) / UNIT, fresh = 0;
	while (u0 < u1) {
		uint64_t w = u0 / 64, b = u0 % 64, n = 64 - b < u1 - u0 ? 64 - b : u1 - u0;
		uint64_t mask = (n == 64 ? ~0ull : ((1ull << n) - 1)) << b;
		uint64_t old = __atomic_fetch_or(&s->done[w], mask, __ATOMIC_RELAXED);
		fresh += (uint64_t)__builtin_popcountll(mask & ~old);
		u0 += n;
	}
	if (fresh) {
		uint64_t now_done = __atomic_add_fetch(&s->units_done, fresh, __ATOMIC_RELEASE);
		metrics_add(&s->m->bytes_done, fresh * UNIT);
		/* The client may read its last page and exit before the connection
		 * thread sees this and releases: completion is this moment. */
		if (now_done >= s->units_total && now_done - fresh < s->units_total)
			metrics_set_time(&s->m->t_complete, now_ns());
	}
	return fresh;
}

struct extent *ext_by_off(struct session *s, uint64_t off)
{
	size_t lo = 0, hi = s->next;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		struct extent *e = &s->ext[mid];
		if (off < e->off)
			hi = mid;
		else if (off >= e->off + e->len)
			lo = mid + 1;
		else
			return e;
	}
	return NULL;
}

struct extent *ext_by_va(struct session *s, uint64_t va)
{
	if (s->ext_hint < s->next) {
		struct extent *e = &s->ext[s->ext_hint];
		if (va >= e->va && va - e->va < e->len)
			return e;
	}
	for (size_t i = 0; i < s->next; i++) {
		struct extent *e = &s->ext[i];
		if (va >= e->va && va - e->va < e->len) {
			s->ext_hint = i;
			return e;
		}
	}
	return NULL;
}

enum run_op { RUN_NONE, RUN_COPY, RUN_ZERO };

struct walker {
	struct session *s;
	struct extent *e;
	int dontwake, pusher;
	struct fill_result *r;
	enum run_op op;
	uint64_t rs, re;     /* current run, image offsets */
	const uint8_t *src;  /* source of rs for a copy run */
};

/* Install the pending run; 0 or a -errno the caller must act on. */
static int flush(struct walker *w)
{
	struct session *s = w->s;
	struct extent *e = w->e;
	uint64_t pos = w->rs;
	int rc = 0;
	if (w->op == RUN_NONE)
		return 0;
	while (pos < w->re) {
		uint64_t done = 0, len = w->re - pos, va = e->va + (pos - e->off);
		if (w->op == RUN_COPY)
			rc = ufd_copy(s->uffd, va, w->src + (pos - w->rs), len, w->dontwake, &done);
		else
			rc = ufd_zero(s->uffd, va, len, w->dontwake, &done);
		if (done) {
			mark_done(s, pos, pos + done);
			if (w->op == RUN_COPY)
				w->r->installed += done;
			else
				w->r->zeroed += done;
			pos += done;
		}
		if (rc == 0)
			break;
		if (rc == -EEXIST) {
			/* Someone got there first (another fault, the pusher): it is in. */
			mark_done(s, pos, pos + e->ps);
			pos += e->ps;
			rc = 0;
			continue;
		}
		if (rc == -ENOENT) {
			/* No registered mapping there any more; an UNMAP event says so too. */
			log_debug("connection %d: nothing mapped at 0x%llx any more", s->id, (unsigned long long)va);
			mark_done(s, pos, w->re);
			rc = 0;
			break;
		}
		w->r->next = pos;
		break;
	}
	w->op = RUN_NONE;
	return rc;
}

static int all_present(struct session *s, uint64_t c0, uint64_t c1, int *all_zero, uint64_t *missing)
{
	*all_zero = 1;
	for (uint64_t c = c0; c <= c1; c++) {
		if (!blob_chunk_present(s->blob, c)) {
			if (c < *missing)
				*missing = c;
			return 0;
		}
		if (!blob_chunk_is_zero(s->blob, c))
			*all_zero = 0;
	}
	return 1;
}

/* Walk pages [lo, hi) of extent e (both page-aligned, inside e). */
static int walk(struct walker *w, uint64_t lo, uint64_t hi, int force, uint64_t budget)
{
	struct session *s = w->s;
	struct extent *e = w->e;
	uint64_t cs = blob_chunk_size(s->blob), ps = e->ps;
	int rc;
	for (uint64_t p = lo; p < hi; p += ps) {
		if (budget && w->r->installed + w->r->zeroed + (w->op != RUN_NONE ? w->re - w->rs : 0) >= budget) {
			if ((rc = flush(w)) < 0)
				return rc;
			w->r->next = p;
			return 0;
		}
		int zero;
		if ((!force && unit_test(s->done, p)) || unit_test(s->zero, p) ||
		    !all_present(s, p / cs, (p + ps - 1) / cs, &zero, &w->r->missing)) {
			if ((rc = flush(w)) < 0)
				return rc;
			continue;
		}
		enum run_op op = zero && ps == UNIT ? RUN_ZERO : RUN_COPY;
		const uint8_t *src = NULL;
		if (op == RUN_COPY) {
			uint64_t c = p / cs;
			src = (const uint8_t *)blob_chunk_ptr(s->blob, c) + (p - c * cs);
			/* A page larger than a chunk needs its chunks side by side. */
			for (uint64_t k = c + 1; k <= (p + ps - 1) / cs; k++)
				if ((const uint8_t *)blob_chunk_ptr(s->blob, k) != src + (k * cs - p)) {
					log_error("connection %d: chunks %llu-%llu are not contiguous in memory; "
						  "cannot install a %llu-byte page",
						  s->id, (unsigned long long)c, (unsigned long long)k,
						  (unsigned long long)ps);
					return -EINVAL;
				}
		}
		if (w->op == op && w->re == p && (op == RUN_ZERO || w->src + (p - w->rs) == src)) {
			w->re = p + ps;
			continue;
		}
		if ((rc = flush(w)) < 0)
			return rc;
		w->op = op;
		w->rs = p;
		w->re = p + ps;
		w->src = src;
	}
	if ((rc = flush(w)) < 0)
		return rc;
	w->r->next = hi;
	return 0;
}

static uint64_t align_down(uint64_t v, uint64_t a) { return v & ~(a - 1); }
static uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) & ~(a - 1); }

int fill_range(struct session *s, uint64_t lo, uint64_t hi, uint64_t first_va, uint64_t budget, int pusher,
	       struct fill_result *r)
{
	struct walker w = { .s = s, .pusher = pusher, .r = r };
	int rc = 0;
	memset(r, 0, sizeof *r);
	r->missing = UINT64_MAX;
	r->next = lo;
	if (first_va) {
		/* The faulting page first, woken at once; then the rest of its block
		 * in address order from it, then the part before it; one wake. */
		struct extent *e = ext_by_va(s, first_va);
		if (!e)
			return -ENOENT;
		w.e = e;
		uint64_t ps = e->ps, fo = e->off + (first_va - e->va);
		uint64_t blo = align_down(lo > e->off ? lo : e->off, ps);
		uint64_t bhi = align_up(hi < e->off + e->len ? hi : e->off + e->len, ps);
		rc = walk(&w, fo, fo + ps, 1, 0);
		if (rc < 0)
			return rc;
		/* Installed by this call (not EEXIST, not skipped): already woken. */
		int woke = r->installed + r->zeroed == ps;
		if (woke)
			r->t_wake = now_ns();
		w.dontwake = 1;
		rc = walk(&w, fo + ps, bhi, 0, 0);
		if (rc == 0)
			rc = walk(&w, blo, fo, 0, 0);
		if (bhi - blo > ps || !woke)
			ufd_wake(s->uffd, e->va + (blo - e->off), bhi - blo);
		if (!woke)
			r->t_wake = now_ns();
		r->next = hi;
		return rc;
	}
	/* Every extent overlapping [lo, hi), in offset order. */
	for (size_t i = 0; i < s->next; i++) {
		struct extent *e = &s->ext[i];
		if (e->off + e->len <= lo || e->off >= hi)
			continue;
		uint64_t a = align_down(lo > e->off ? lo : e->off, e->ps);
		uint64_t b = align_up(hi < e->off + e->len ? hi : e->off + e->len, e->ps);
		if (a < e->off)
			a = e->off;
		if (b > e->off + e->len)
			b = e->off + e->len;
		w.e = e;
		w.op = RUN_NONE;
		rc = walk(&w, a, b, 0, budget);
		if (rc < 0)
			return rc;
		if (budget && r->next < b)
			return 0; /* out of budget; resume at r->next */
	}
	r->next = hi;
	return rc;
}

int fill_zero_page(struct session *s, const struct extent *e, uint64_t off)
{
	uint64_t va = e->va + (off - e->off), done = 0;
	int rc;
	if (e->ps == UNIT) {
		rc = ufd_zero(s->uffd, va, UNIT, 0, &done);
	} else {
		pthread_once(&zero_once, zero_init);
		if (!zero_2m)
			return -ENOMEM;
		rc = ufd_copy(s->uffd, va, zero_2m, e->ps, 0, &done);
	}
	if (rc == -EEXIST) {
		ufd_wake(s->uffd, va, e->ps);
		rc = 0;
	}
	if (rc == 0) {
		mark_done(s, off, off + e->ps);
		metrics_add(&s->m->bytes_zero, e->ps);
	}
	return rc;
}

void fill_zero_rest(struct session *s, const struct extent *e, uint64_t lo, uint64_t hi)
{
	if (e->ps != UNIT)
		return;
	for (uint64_t p = lo; p < hi;) {
		if (!unit_test(s->zero, p)) {
			p += UNIT;
			continue;
		}
		uint64_t q = p;
		while (q < hi && unit_test(s->zero, q))
			q += UNIT;
		/* Pages refaulted since the remove answer EEXIST: step over them. */
		while (p < q) {
			uint64_t done = 0;
			int rc = ufd_zero(s->uffd, e->va + (p - e->off), q - p, 1, &done);
			p += done;
			if (rc == 0)
				break;
			if (rc != -EEXIST)
				goto wake; /* EAGAIN and friends: the rest will fault and be zeroed then */
			p += UNIT;
		}
		p = q;
	}
wake:
	/* Also after a failure: the pages zeroed so far went in with DONTWAKE,
	 * and a thread may already sleep on one of them. */
	ufd_wake(s->uffd, e->va + (lo - e->off), hi - lo);
}

int64_t fill_poison(struct session *s, uint64_t lo, uint64_t hi)
{
	int64_t total = 0;
	for (size_t i = 0; i < s->next; i++) {
		struct extent *e = &s->ext[i];
		if (e->off + e->len <= lo || e->off >= hi)
			continue;
		uint64_t a = align_down(lo > e->off ? lo : e->off, e->ps);
		uint64_t b = align_up(hi < e->off + e->len ? hi : e->off + e->len, e->ps);
		if (a < e->off)
			a = e->off;
		if (b > e->off + e->len)
			b = e->off + e->len;
		for (uint64_t p = a; p < b; p += e->ps) {
			if (unit_test(s->done, p))
				continue;
			uint64_t done = 0;
			int rc = ufd_poison(s->uffd, e->va + (p - e->off), e->ps, &done);
			if (rc == 0 || rc == -EEXIST || rc == -ENOENT) {
				if (rc == 0)
					total += (int64_t)e->ps;
				mark_done(s, p, p + e->ps);
				continue;
			}
			return rc;
		}
	}
	if (total)
		metrics_add(&s->m->bytes_poisoned, (uint64_t)total);
	return total;
}
