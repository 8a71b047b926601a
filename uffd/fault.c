/* fault.c - one connection's thread: the handshake, then the loop that reads
 * the userfaultfd and answers it, until the client goes away.
 *
 * Faults are answered without ever blocking this thread on the network: a
 * fault whose chunk is in memory is installed at once (its whole block: one
 * chunk, or one huge page), a fault whose chunk is missing asks the blob for
 * it at demand priority and becomes a waiter, woken through the connection's
 * eventfd when the blob's listener reports the chunk.  So one slow fetch does
 * not hold up other vCPUs whose pages are already here.
 *
 * Events before faults (what Firecracker's example handler recommends but
 * does not do): every batch read from the userfaultfd applies its REMOVE,
 * UNMAP and REMAP events first, so a page the balloon removed is answered
 * with zeros even when its fault was queued ahead of the remove.  While an
 * event is queued and unread the kernel refuses installs with EAGAIN; such a
 * fault is kept and retried after the next read, which applies the event.
 *
 * How this thread waits is a latency decision measured on this machine (see
 * docs): sleeping in poll() costs 55-75 us per round trip when the wake-up
 * crosses CPUs, a busy poll 20-27 us but a whole CPU; WAIT_ADAPTIVE spins for
 * a short window after each fault (faults come in bursts) and then sleeps. */
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../common/err.h"
#include "../common/log.h"
#include "../common/timeutil.h"
#include "install.h"
#include "session.h"

#define BATCH 64

struct pending {
	uint64_t addr, t_recv;
};

struct loop {
	struct pending *def; /* faults deferred by EAGAIN */
	size_t ndef, defcap;
	uint64_t last_activity;
	int warned_sockdata;
};

static uint64_t max_u64(uint64_t a, uint64_t b) { return a > b ? a : b; }
static uint64_t min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }

/* --- bookkeeping --- */

static void fault_read(struct session *s, uint64_t t)
{
	if (s->outstanding++ == 0)
		s->t_busy = t;
}

/* t_wake: when the faulting thread was let go (0 = now). */
static void fault_answered_at(struct session *s, enum fault_kind k, uint64_t t_recv, uint64_t t_wake)
{
	uint64_t t = t_wake ? t_wake : now_ns();
	if (k != FK_COUNT) {
		metrics_fault(s->m, k, t - t_recv);
		if (k != FK_POISON)
			metrics_set_time(&s->m->t_first_fault, t);
	}
	if (s->outstanding && --s->outstanding == 0)
		metrics_add(&s->m->blocked_any_ns, t - s->t_busy);
}

static void fault_answered(struct session *s, enum fault_kind k, uint64_t t_recv)
{
	fault_answered_at(s, k, t_recv, 0);
}

/* The block a fault installs: its chunk (clipped to the extent), or its huge
 * page when pages are larger than chunks. */
static void block_of(struct session *s, const struct extent *e, uint64_t off, uint64_t *lo, uint64_t *hi)
{
	uint64_t u = max_u64(blob_chunk_size(s->blob), e->ps);
	uint64_t b = off & ~(u - 1);
	*lo = max_u64(b, e->off);
	*hi = min_u64(b + u, e->off + e->len);
}

/* --- extents: the client's current mapping of the image --- */

static int ext_insert(struct session *s, size_t at, struct extent e)
{
	if (s->next == s->ext_cap) {
		size_t nc = s->ext_cap ? s->ext_cap * 2 : 8;
		struct extent *n = realloc(s->ext, nc * sizeof *n);
		if (!n)
			return -ENOMEM;
		s->ext = n;
		s->ext_cap = nc;
	}
	memmove(&s->ext[at + 1], &s->ext[at], (s->next - at) * sizeof *s->ext);
	s->ext[at] = e;
	s->next++;
	return 0;
}

/* Make va an extent boundary (no-op if it is one or lies outside all). */
static int ext_split(struct session *s, uint64_t va)
{
	for (size_t i = 0; i < s->next; i++) {
		struct extent *e = &s->ext[i];
		if (va > e->va && va < e->va + e->len) {
			struct extent tail = { va, e->len - (va - e->va), e->off + (va - e->va), e->ps };
			e->len = va - e->va;
			return ext_insert(s, i + 1, tail);
		}
	}
	return 0;
}

/* Waiters for pages in [start, end) lose their address (unmapped or moved):
 * wake them so they fault again wherever the page is now. */
static void drop_waiters_in(struct session *s, uint64_t start, uint64_t end)
{
	for (size_t i = 0; i < s->nw;) {
		if (s->w[i].addr >= start && s->w[i].addr < end) {
			ufd_wake(s->uffd, s->w[i].addr, UNIT);
			fault_answered(s, FK_COUNT, s->w[i].t_recv);
			s->w[i] = s->w[--s->nw];
		} else {
			i++;
		}
	}
	__atomic_store_n(&s->nwaiters, (int)s->nw, __ATOMIC_RELAXED);
}

static void apply_remove(struct session *s, uint64_t start, uint64_t end)
{
	metrics_add(&s->m->ev_remove, 1);
	for (size_t i = 0; i < s->next; i++) {
		struct extent *e = &s->ext[i];
		uint64_t a = max_u64(start, e->va), b = min_u64(end, e->va + e->len);
		if (a >= b)
			continue;
		uint64_t lo = e->off + (a - e->va), hi = e->off + (b - e->va);
		for (uint64_t u = lo / UNIT; u < (hi + UNIT - 1) / UNIT; u++)
			__atomic_fetch_or(&s->zero[u / 64], 1ull << (u % 64), __ATOMIC_RELAXED);
		mark_done(s, lo, hi);
		metrics_add(&s->m->removed_bytes, hi - lo);
	}
	log_debug("connection %d: REMOVE 0x%llx-0x%llx", s->id, (unsigned long long)start, (unsigned long long)end);
}

static void apply_unmap(struct session *s, uint64_t start, uint64_t end)
{
	metrics_add(&s->m->ev_unmap, 1);
	if (ext_split(s, start) < 0 || ext_split(s, end) < 0)
		log_error("connection %d: out of memory tracking an UNMAP", s->id);
	for (size_t i = 0; i < s->next;) {
		struct extent *e = &s->ext[i];
		if (e->va >= start && e->va + e->len <= end) {
			mark_done(s, e->off, e->off + e->len); /* nothing left to serve there */
			memmove(e, e + 1, (s->next - i - 1) * sizeof *e);
			s->next--;
		} else {
			i++;
		}
	}
	s->ext_hint = 0;
	drop_waiters_in(s, start, end);
	log_info("connection %d: client unmapped 0x%llx-0x%llx", s->id, (unsigned long long)start,
		 (unsigned long long)end);
}

static void apply_remap(struct session *s, uint64_t from, uint64_t to, uint64_t len)
{
	metrics_add(&s->m->ev_remap, 1);
	if (ext_split(s, from) < 0 || ext_split(s, from + len) < 0)
		log_error("connection %d: out of memory tracking a REMAP", s->id);
	for (size_t i = 0; i < s->next; i++) {
		struct extent *e = &s->ext[i];
		if (e->va >= from && e->va + e->len <= from + len)
			e->va = e->va - from + to;
	}
	s->ext_hint = 0;
	drop_waiters_in(s, from, from + len);
	log_info("connection %d: client moved 0x%llx-0x%llx to 0x%llx", s->id, (unsigned long long)from,
		 (unsigned long long)(from + len), (unsigned long long)to);
}

/* Read what is queued (up to BATCH messages), apply the events, return the
 * faults.  Under evlock: see session.h for why. */
static int read_batch(struct session *s, struct pending *faults, size_t *nf)
{
	struct uffd_msg msgs[BATCH];
	*nf = 0;
	__atomic_fetch_add(&s->evwant, 1, __ATOMIC_ACQUIRE);
	pthread_mutex_lock(&s->evlock);
	__atomic_fetch_sub(&s->evwant, 1, __ATOMIC_RELEASE);
	ssize_t n = read(s->uffd, msgs, sizeof msgs);
	int e = errno;
	uint64_t t = now_ns();
	for (ssize_t i = 0; n > 0 && i < n / (ssize_t)sizeof msgs[0]; i++) {
		struct uffd_msg *m = &msgs[i];
		switch (m->event) {
		case UFFD_EVENT_PAGEFAULT:
			log_debug("connection %d: fault at 0x%llx%s", s->id, (unsigned long long)m->arg.pagefault.address,
				  m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WRITE ? " (write)" : "");
			faults[*nf].addr = m->arg.pagefault.address;
			faults[(*nf)++].t_recv = t;
			break;
		case UFFD_EVENT_REMOVE:
			apply_remove(s, m->arg.remove.start, m->arg.remove.end);
			break;
		case UFFD_EVENT_UNMAP:
			apply_unmap(s, m->arg.remove.start, m->arg.remove.end);
			break;
		case UFFD_EVENT_REMAP:
			apply_remap(s, m->arg.remap.from, m->arg.remap.to, m->arg.remap.len);
			break;
		case UFFD_EVENT_FORK:
			/* A child we were never asked to serve; closing its uffd
			 * unregisters it, so the child sees plain anonymous memory. */
			metrics_add(&s->m->ev_fork, 1);
			log_warn("connection %d: client forked; its child is not served by thaw", s->id);
			close((int)m->arg.fork.ufd);
			break;
		default:
			log_warn("connection %d: unexpected userfaultfd event %u", s->id, m->event);
		}
	}
	pthread_mutex_unlock(&s->evlock);
	if (n < 0 && e != EAGAIN && e != EINTR)
		return -e;
	return n > 0 ? (int)(n / (ssize_t)sizeof msgs[0]) : 0;
}

/* --- answering faults --- */

static void add_waiter(struct session *s, uint64_t addr, uint64_t t_recv, uint64_t t_req, uint64_t c0, uint64_t c1)
{
	if (s->nw == s->wcap) {
		size_t nc = s->wcap ? s->wcap * 2 : 16;
		struct waiter *n = realloc(s->w, nc * sizeof *n);
		if (!n) {
			/* Cannot track it: let it fault again later rather than hang. */
			ufd_wake(s->uffd, addr, UNIT);
			fault_answered(s, FK_COUNT, t_recv);
			return;
		}
		s->w = n;
		s->wcap = nc;
	}
	s->w[s->nw++] = (struct waiter){ addr, t_recv, t_req, c0, c1 };
	__atomic_store_n(&s->nwaiters, (int)s->nw, __ATOMIC_RELAXED);
	/* Pairs with the fence in on_chunk (server.c): either the listener sees
	 * nwaiters and kicks the eventfd, or service_waiters (later in this
	 * round) sees the chunk present.  Without it the store can sit in the
	 * store buffer past our presence check while the listener reads 0, and
	 * the waiter is only served at the next 10 ms poll timeout. */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
}

static void log_poison(struct session *s, uint64_t chunk, uint64_t addr, int64_t bytes, const char *why)
{
	log_error("connection %d: chunk %llu of the image %s: answered the fault at 0x%llx with UFFDIO_POISON "
		  "(%lld bytes; the client gets SIGBUS there)",
		  s->id, (unsigned long long)chunk, why, (unsigned long long)addr, (long long)bytes);
}

/* Poison a fault's block; 0 or -EAGAIN/-ESRCH. */
static int poison_block(struct session *s, const struct extent *e, uint64_t addr, uint64_t lo, uint64_t hi,
			uint64_t chunk, const char *why)
{
	int64_t n = fill_poison(s, lo, hi);
	if (n == -EAGAIN || n == -ESRCH)
		return (int)n;
	if (n < 0) {
		/* No UFFDIO_POISON (kernel < 6.6, or an unsupported mapping): the
		 * only answer left that is not a hang is the signal itself. */
		log_error("connection %d: UFFDIO_POISON failed (%s); sending SIGBUS to pid %d", s->id,
			  strerror((int)-n), (int)s->pid);
		kill(s->pid, SIGBUS);
		return 0;
	}
	ufd_wake(s->uffd, e->va + (lo - e->off), hi - lo);
	log_poison(s, chunk, addr, n, why);
	return 0;
}

/* Try to answer a fault at addr.  0 = answered (or parked as a waiter),
 * -EAGAIN = retry after reading events, -ESRCH = client gone. */
static int serve_fault(struct session *s, uint64_t addr, uint64_t t_recv, int first_time)
{
	struct extent *e = ext_by_va(s, addr);
	int rc;
	if (!e) {
		/* Registered but outside every region we were told about (a
		 * region grown by mremap, say): what the kernel would give. */
		uint64_t done;
		rc = ufd_zero(s->uffd, addr & ~(UNIT - 1), UNIT, 0, &done);
		if (rc == -EAGAIN || rc == -ESRCH)
			return rc;
		if (rc == -EEXIST || rc < 0)
			ufd_wake(s->uffd, addr & ~(UNIT - 1), UNIT);
		if (!s->warned_unknown++)
			log_warn("connection %d: fault at 0x%llx outside every region; served zeros", s->id,
				 (unsigned long long)addr);
		fault_answered(s, FK_UNKNOWN, t_recv);
		return 0;
	}
	uint64_t cs = blob_chunk_size(s->blob);
	uint64_t page = addr & ~(e->ps - 1), off = e->off + (page - e->va);
	if (first_time)
		record_touch(s, off / cs);
	uint64_t lo, hi;
	block_of(s, e, off, &lo, &hi);
	if (unit_test(s->zero, off)) {
		rc = fill_zero_page(s, e, off);
		if (rc == -EAGAIN || rc == -ESRCH)
			return rc;
		if (rc < 0) /* never leave the thread asleep: let it fault again */
			ufd_wake(s->uffd, page, e->ps);
		fault_answered(s, FK_ZERO, t_recv);
		/* Zeros need no chunk: widen to the 2 MiB around the fault. */
		uint64_t w = off & ~((2ull << 20) - 1);
		fill_zero_rest(s, e, max_u64(w, e->off), min_u64(w + (2ull << 20), e->off + e->len));
		return 0;
	}
	uint64_t c0 = lo / cs, c1 = (hi - 1) / cs, t_req = now_ns();
	int missing = 0, all_zero = 1;
	for (uint64_t c = c0; c <= c1; c++) {
		if (!blob_chunk_present(s->blob, c)) {
			missing = 1;
			if (userver_fail_ns(s->srv, c)) {
				/* Its fetch already failed after the store's retries. */
				rc = poison_block(s, e, page, lo, hi, c, "could not be fetched earlier");
				if (rc < 0)
					return rc;
				fault_answered(s, FK_POISON, t_recv);
				return 0;
			}
		} else if (!blob_chunk_is_zero(s->blob, c)) {
			all_zero = 0;
		}
	}
	if (missing) {
		for (uint64_t c = c0; c <= c1; c++)
			if (!blob_chunk_present(s->blob, c))
				blob_request(s->blob, c, PRIO_DEMAND);
		add_waiter(s, page, t_recv, t_req, c0, c1);
		return 0;
	}
	struct fill_result r;
	rc = fill_range(s, lo, hi, page, 0, 0, &r);
	metrics_add(&s->m->bytes_fault, r.installed + r.zeroed);
	metrics_add(&s->m->bytes_zero, r.zeroed);
	if (rc == -EAGAIN || rc == -ESRCH)
		return rc;
	if (rc < 0) {
		log_error("connection %d: installing 0x%llx: %s", s->id, (unsigned long long)page, strerror(-rc));
		ufd_wake(s->uffd, page, e->ps);
	}
	fault_answered_at(s, r.installed + r.zeroed == 0 ? FK_DUP : all_zero ? FK_ZERO : FK_MEMORY, t_recv, r.t_wake);
	return 0;
}

/* Answer the waiters whose chunks settled.  -ESRCH if the client is gone. */
static int service_waiters(struct session *s)
{
	const struct userver_config *cfg = userver_cfg(s->srv);
	uint64_t t = now_ns();
	for (size_t i = 0; i < s->nw;) {
		struct waiter *w = &s->w[i];
		struct extent *e = ext_by_va(s, w->addr);
		int rc = 0, answered = 0;
		if (!e) {
			ufd_wake(s->uffd, w->addr, UNIT);
			fault_answered(s, FK_COUNT, w->t_recv);
			answered = 1;
		} else {
			uint64_t off = e->off + (w->addr - e->va), lo, hi;
			block_of(s, e, off, &lo, &hi);
			int ready = 1;
			uint64_t failed = UINT64_MAX;
			for (uint64_t c = w->c0; c <= w->c1; c++)
				if (!blob_chunk_present(s->blob, c)) {
					ready = 0;
					if (userver_fail_ns(s->srv, c) >= w->t_req)
						failed = c;
				}
			if (unit_test(s->zero, off)) {
				rc = fill_zero_page(s, e, off);
				if (rc == 0 || (rc != -EAGAIN && rc != -ESRCH)) {
					if (rc < 0) /* as in serve_fault: never leave it asleep */
						ufd_wake(s->uffd, w->addr, e->ps);
					fault_answered(s, FK_ZERO, w->t_recv);
					answered = 1;
				}
			} else if (ready) {
				struct fill_result r;
				rc = fill_range(s, lo, hi, w->addr, 0, 0, &r);
				metrics_add(&s->m->bytes_fault, r.installed + r.zeroed);
				metrics_add(&s->m->bytes_zero, r.zeroed);
				if (rc != -EAGAIN && rc != -ESRCH) {
					if (rc < 0) {
						log_error("connection %d: installing 0x%llx: %s", s->id,
							  (unsigned long long)w->addr, strerror(-rc));
						ufd_wake(s->uffd, w->addr, e->ps);
					}
					fault_answered_at(s, FK_STORE, w->t_recv, r.t_wake);
					answered = 1;
				}
			} else if (failed != UINT64_MAX ||
				   (cfg->fault_timeout_ms && t - w->t_req > cfg->fault_timeout_ms * 1000000ull)) {
				char why[96];
				if (failed != UINT64_MAX)
					snprintf(why, sizeof why, "could not be fetched");
				else
					snprintf(why, sizeof why, "did not arrive within %llu ms",
						 (unsigned long long)cfg->fault_timeout_ms);
				rc = poison_block(s, e, w->addr, lo, hi, failed != UINT64_MAX ? failed : w->c0, why);
				if (rc == 0) {
					fault_answered(s, FK_POISON, w->t_recv);
					answered = 1;
				}
			}
		}
		if (rc == -ESRCH)
			return rc;
		if (answered)
			s->w[i] = s->w[--s->nw];
		else
			i++;
	}
	__atomic_store_n(&s->nwaiters, (int)s->nw, __ATOMIC_RELAXED);
	return 0;
}

/* --- waiting --- */

static int defer(struct loop *L, uint64_t addr, uint64_t t_recv)
{
	if (L->ndef == L->defcap) {
		size_t nc = L->defcap ? L->defcap * 2 : 16;
		struct pending *n = realloc(L->def, nc * sizeof *n);
		if (!n)
			return -ENOMEM;
		L->def = n;
		L->defcap = nc;
	}
	L->def[L->ndef++] = (struct pending){ addr, t_recv };
	return 0;
}

static void on_socket(struct session *s, struct loop *L)
{
	char scratch[4096];
	ssize_t n = recv(s->sock, scratch, sizeof scratch, MSG_DONTWAIT);
	if (n > 0) {
		if (!L->warned_sockdata++)
			log_warn("connection %d: client sent %zd unexpected bytes after the handshake; ignored", s->id, n);
		return;
	}
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	s->sock_open = 0;
	/* Firecracker before v1.7 closed its end right after the handshake; only
	 * the process exiting means the VM is gone, when we can watch for that. */
	if (s->pidfd < 0 || s->released) {
		s->gone = 1;
		log_info("connection %d: client closed the connection", s->id);
	} else {
		log_info("connection %d: client closed its socket; serving until pid %d exits", s->id, (int)s->pid);
	}
}

static void wait_activity(struct session *s, struct loop *L)
{
	const struct userver_config *cfg = userver_cfg(s->srv);
	struct pollfd p[4];
	int n = 0, iu = -1, ie, is = -1, ip = -1;
	if (!s->released) {
		iu = n;
		p[n++] = (struct pollfd){ .fd = s->uffd, .events = POLLIN };
	}
	ie = n;
	p[n++] = (struct pollfd){ .fd = s->evfd, .events = POLLIN };
	if (s->sock_open) {
		is = n;
		p[n++] = (struct pollfd){ .fd = s->sock, .events = POLLIN | POLLRDHUP };
	}
	if (s->pidfd >= 0) {
		ip = n;
		p[n++] = (struct pollfd){ .fd = s->pidfd, .events = POLLIN };
	}
	int timeout = s->nw ? 10 : 250;
	int r = 0;
	if (iu >= 0 && cfg->wait != WAIT_BLOCK) {
		/* Busy-poll: always (WAIT_SPIN), or for a while after the last
		 * fault (WAIT_ADAPTIVE), since faults come in bursts. */
		uint64_t until = cfg->wait == WAIT_SPIN ? now_ns() + (uint64_t)timeout * 1000000ull
							: L->last_activity + (uint64_t)cfg->spin_us * 1000ull;
		while (!(r = poll(p, (nfds_t)n, 0)) && now_ns() < until &&
		       !__atomic_load_n(&s->stop, __ATOMIC_RELAXED))
			;
		if (cfg->wait == WAIT_SPIN && r == 0)
			return;
	}
	if (r == 0)
		r = poll(p, (nfds_t)n, timeout);
	if (r <= 0)
		return;
	if (p[ie].revents & POLLIN) {
		uint64_t v;
		if (read(s->evfd, &v, sizeof v) < 0 && errno != EAGAIN)
			log_warn("connection %d: eventfd read: %s", s->id, strerror(errno));
	}
	if (is >= 0 && p[is].revents)
		on_socket(s, L);
	if (ip >= 0 && (p[ip].revents & POLLIN)) {
		s->gone = 1;
		log_info("connection %d: client pid %d exited", s->id, (int)s->pid);
	}
	(void)iu;
}

/* --- release and teardown --- */

static void release(struct session *s)
{
	pusher_stop(s);
	for (size_t i = 0; i < s->next; i++) {
		int rc = ufd_unregister(s->uffd, s->ext[i].va, s->ext[i].len);
		if (rc < 0 && rc != -ESRCH)
			log_warn("connection %d: unregistering 0x%llx-0x%llx: %s", s->id,
				 (unsigned long long)s->ext[i].va, (unsigned long long)(s->ext[i].va + s->ext[i].len),
				 strerror(-rc));
	}
	close(s->uffd);
	s->uffd = -1;
	s->released = 1;
	s->complete = 1;
	metrics_set_time(&s->m->t_complete, now_ns()); /* normally mark_done stamped it already */
	uint64_t t = __atomic_load_n(&s->m->t_complete, __ATOMIC_RELAXED);
	snprintf(s->m->state, sizeof s->m->state, "complete");
	double secs = (double)(t - s->m->t_handshake) / 1e9;
	double mib = (double)s->m->bytes_total / 1048576.0;
	log_info("connection %d: transfer complete %.3f s after the handshake: %.1f MiB in place (%.1f MiB/s; "
		 "%llu faults, %.1f MiB pushed, %.1f MiB poisoned); userfaultfd released",
		 s->id, secs, mib, secs > 0 ? mib / secs : 0.0,
		 (unsigned long long)(metrics_get(&s->m->faults[FK_MEMORY]) + metrics_get(&s->m->faults[FK_STORE]) +
				      metrics_get(&s->m->faults[FK_ZERO]) + metrics_get(&s->m->faults[FK_DUP]) +
				      metrics_get(&s->m->faults[FK_POISON]) + metrics_get(&s->m->faults[FK_UNKNOWN])),
		 (double)metrics_get(&s->m->bytes_push) / 1048576.0,
		 (double)metrics_get(&s->m->bytes_poisoned) / 1048576.0);
	if (s->recording && !s->rec_saved)
		record_save(s);
	if (!s->sock_open && s->pidfd < 0)
		s->gone = 1;
}

static void refuse(struct session *s, const char *why)
{
	log_warn("connection %d (pid %d uid %u): handshake refused: %s", s->id, (int)s->pid, (unsigned)s->uid, why);
	snprintf(s->m->state, sizeof s->m->state, "refused");
	snprintf(s->m->refused, sizeof s->m->refused, "%s", why);
}

static int handshake(struct session *s)
{
	const struct userver_config *cfg = userver_cfg(s->srv);
	struct ucred cr;
	socklen_t crl = sizeof cr;
	if (getsockopt(s->sock, SOL_SOCKET, SO_PEERCRED, &cr, &crl) == 0) {
		s->pid = cr.pid;
		s->uid = cr.uid;
		s->m->pid = cr.pid;
		s->m->uid = cr.uid;
	}
	log_info("connection %d: peer pid %d uid %u", s->id, (int)s->pid, (unsigned)s->uid);
	char *buf = malloc(HS_MAX_MSG);
	if (!buf) {
		refuse(s, "out of memory");
		return -ENOMEM;
	}
	size_t len;
	int fd;
	int rc = hs_recv(s->sock, cfg->handshake_timeout_ms, buf, HS_MAX_MSG, &len, &fd);
	if (rc < 0) {
		refuse(s, err_msg());
		free(buf);
		return rc;
	}
	if (!ufd_is_userfaultfd(fd)) {
		close(fd);
		free(buf);
		refuse(s, "the descriptor sent is not a userfaultfd");
		return -EINVAL;
	}
	struct hs_msg msg;
	rc = hs_parse(buf, len, blob_size(s->blob), &msg);
	free(buf);
	if (rc < 0) {
		close(fd);
		refuse(s, err_msg());
		return rc;
	}
	s->uffd = fd;
	int fl = fcntl(fd, F_GETFL);
	if (fl >= 0 && !(fl & O_NONBLOCK))
		fcntl(fd, F_SETFL, fl | O_NONBLOCK);
	s->features = ufd_features(fd);

	/* Extents in image-offset order. */
	s->ext = calloc(msg.n, sizeof *s->ext);
	uint64_t nunits = (blob_size(s->blob) + UNIT - 1) / UNIT, words = (nunits + 63) / 64;
	s->done = calloc(words ? words : 1, sizeof *s->done);
	s->zero = calloc(words ? words : 1, sizeof *s->zero);
	if (!s->ext || !s->done || !s->zero) {
		hs_free(&msg);
		refuse(s, "out of memory for the page maps");
		return -ENOMEM;
	}
	s->ext_cap = msg.n;
	uint64_t pmin = UINT64_MAX, pmax = 0;
	for (size_t i = 0; i < msg.n; i++) {
		const struct hs_region *r = &msg.r[i];
		size_t at = s->next;
		while (at > 0 && s->ext[at - 1].off > r->offset)
			at--;
		ext_insert(s, at, (struct extent){ r->base, r->size, r->offset, r->page_size });
		s->units_total += r->size / UNIT;
		s->m->bytes_total += r->size;
		pmin = min_u64(pmin, r->page_size);
		pmax = max_u64(pmax, r->page_size);
	}
	s->m->nregions = msg.n;
	s->m->page_size_min = pmin;
	s->m->page_size_max = pmax;
	char feat[256];
	ufd_features_str(s->features, feat, sizeof feat);
	log_info("connection %d: pid %d: %zu region%s, %.1f MiB, %s pages, %s; userfaultfd features %s", s->id,
		 (int)s->pid, msg.n, msg.n == 1 ? "" : "s", (double)s->m->bytes_total / 1048576.0,
		 pmin == pmax ? (pmax == UNIT ? "4 KiB" : "2 MiB") : "4 KiB and 2 MiB", hs_fieldset_name(msg.fields),
		 feat);
	if (pmax > UNIT && s->features && !(s->features & UFFD_FEATURE_MISSING_HUGETLBFS))
		log_warn("connection %d: 2 MiB pages but the client did not negotiate MISSING_HUGETLBFS", s->id);
	hs_free(&msg);
	if (s->pid > 0) {
		s->pidfd = (int)syscall(SYS_pidfd_open, s->pid, 0);
		if (s->pidfd < 0)
			log_debug("connection %d: pidfd_open(%d): %s", s->id, (int)s->pid, strerror(errno));
	}
	metrics_set_time(&s->m->t_handshake, now_ns());
	return 0;
}

static void serve(struct session *s)
{
	struct loop L = { 0 };
	struct pending faults[BATCH];
	const struct userver_config *cfg = userver_cfg(s->srv);
	if (cfg->record_url && userver_claim_recorder(s->srv)) {
		uint64_t n = blob_nchunks(s->blob);
		s->rec_seen = calloc((n + 7) / 8 + 1, 1);
		s->recording = s->rec_seen != NULL;
	}
	userver_session_ready(s->srv, s);
	if ((cfg->push || cfg->prefetch) && pusher_start(s) < 0)
		log_error("connection %d: %s; serving faults only", s->id, err_msg());
	if (cfg->prefetch && cfg->prefetch_wait) {
		/* REAP: the pusher has asked for the whole set at once; hold the
		 * faults (the kernel queues them) until it is here, so they are
		 * answered from memory.  Each wait is bounded by the blob. */
		size_t nws = 0;
		const uint64_t *ws = userver_ws(s->srv, &nws);
		uint64_t t0 = now_ns();
		size_t i = 0;
		for (; ws && i < nws; i++)
			if (blob_ensure(s->blob, ws[i], PRIO_READAHEAD) < 0) {
				log_warn("connection %d: working set not loaded (%s); serving faults now", s->id,
					 err_msg());
				break;
			}
		log_info("connection %d: %zu of %zu working-set chunks loaded in %.1f ms before the first fault",
			 s->id, i, nws, (double)(now_ns() - t0) / 1e6);
	}
	L.last_activity = now_ns();
	while (!__atomic_load_n(&s->stop, __ATOMIC_RELAXED) && !s->gone) {
		size_t nf = 0;
		int got = 0;
		if (!s->released) {
			got = read_batch(s, faults, &nf);
			if (got < 0) {
				log_error("connection %d: reading the userfaultfd: %s", s->id, strerror(-got));
				s->gone = 1;
				break;
			}
			for (size_t i = 0; i < nf; i++)
				fault_read(s, faults[i].t_recv);
			if (got)
				L.last_activity = now_ns();
		}
		/* Deferred faults are older: answer them first. */
		size_t nd = L.ndef;
		L.ndef = 0;
		int rc = 0;
		for (size_t i = 0; i < nd + nf && rc != -ESRCH; i++) {
			struct pending *p = i < nd ? &L.def[i] : &faults[i - nd];
			rc = serve_fault(s, p->addr, p->t_recv, i >= nd);
			if (rc == -EAGAIN) {
				metrics_add(&s->m->deferred, 1);
				if (defer(&L, p->addr, p->t_recv) < 0) {
					ufd_wake(s->uffd, p->addr, UNIT); /* let it fault again */
					fault_answered(s, FK_COUNT, p->t_recv);
				}
			}
		}
		if (rc != -ESRCH && s->nw)
			rc = service_waiters(s);
		if (rc == -ESRCH) {
			log_info("connection %d: client's address space is gone", s->id);
			s->gone = 1;
			break;
		}
		if (!s->released && __atomic_load_n(&s->units_done, __ATOMIC_ACQUIRE) >= s->units_total && !s->nw &&
		    !L.ndef)
			release(s);
		if (got || L.ndef)
			continue;
		wait_activity(s, &L);
	}
	free(L.def);
}

static void teardown(struct session *s)
{
	pusher_stop(s);
	if (s->uffd >= 0) {
		uint64_t ud = __atomic_load_n(&s->units_done, __ATOMIC_ACQUIRE);
		uint64_t left = ud >= s->units_total ? 0 : s->units_total - ud;
		/* The client can read its last page and exit between that page
		 * going in and this thread's next look at units_done (or while a
		 * waiter for a page the pusher installed is still on the list):
		 * the transfer was complete all the same.  Installs fail with
		 * ESRCH once the client's mm is gone, so every unit counted here
		 * was in place while the client lived. */
		if (!left && s->m->t_handshake && !s->complete) {
			s->complete = 1;
			log_info("connection %d: transfer complete %.3f s after the handshake; the client left before "
				 "the userfaultfd was released",
				 s->id, (double)(s->m->t_complete - s->m->t_handshake) / 1e9);
		}
		if (!s->gone && left)
			log_warn("connection %d: closing with %.1f MiB not yet installed; pid %d will block if it "
				 "touches them",
				 s->id, (double)(left * UNIT) / 1048576.0, (int)s->pid);
		close(s->uffd);
		s->uffd = -1;
	}
	if (s->recording && !s->rec_saved && s->nrec)
		record_save(s);
	if (strcmp(s->m->state, "refused"))
		snprintf(s->m->state, sizeof s->m->state, "%s", s->complete ? "complete" : "ended");
	metrics_set_time(&s->m->t_end, now_ns());
}

void *session_main(void *arg)
{
	struct session *s = arg;
	if (handshake(s) == 0)
		serve(s);
	teardown(s);
	userver_session_ended(s->srv, s);
	return NULL;
}
