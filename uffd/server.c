/* server.c - the uffd server's shell: the listening socket, the accept loop,
 * signals, the connections list, the one lazy blob all connections share
 * (and its listener, which wakes whichever connection waits on a chunk), the
 * working-set objects, and the metrics file.  What happens on a connection
 * is fault.c's business. */
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "../common/err.h"
#include "../common/json.h"
#include "../common/log.h"
#include "../common/timeutil.h"
#include "server.h"
#include "session.h"

struct userver {
	struct userver_config cfg;
	char socket_path[108];
	char record_url[4096];
	struct store *store, *ws_store;
	char ws_key[STORE_KEY_MAX];
	struct blob *blob;
	uint64_t *fail_ns;
	uint64_t *ws;
	size_t nws;
	char ws_from[4096];

	int listen_fd, sig_fd, wake_fd;
	pthread_mutex_t mu;
	struct session *sessions;
	struct sess_metrics **all;
	size_t nall, allcap;
	int next_id, recorder_claimed, hydrating;
	int exit_rc, exit_now, exit_complete;
	uint64_t t_start;
	/* Every connection whose thread has not been joined yet. */
	struct session *reap_list;
	pthread_mutex_t reap_mu;
};

void userver_config_default(struct userver_config *c)
{
	memset(c, 0, sizeof *c);
	c->push = 1;
	c->wait = WAIT_ADAPTIVE;
	c->spin_us = 200;
	c->jobs = 16;
	c->bg_jobs = 4;
	c->fault_timeout_ms = 90000;
	c->handshake_timeout_ms = 5000;
}

struct blob *userver_blob(struct userver *srv) { return srv->blob; }
const struct userver_config *userver_cfg(struct userver *srv) { return &srv->cfg; }

uint64_t userver_fail_ns(struct userver *srv, uint64_t idx)
{
	return __atomic_load_n(&srv->fail_ns[idx], __ATOMIC_ACQUIRE);
}

const uint64_t *userver_ws(struct userver *srv, size_t *n)
{
	*n = srv->nws;
	return srv->nws ? srv->ws : NULL;
}

int userver_claim_recorder(struct userver *srv)
{
	int expected = 0;
	return __atomic_compare_exchange_n(&srv->recorder_claimed, &expected, 1, 0, __ATOMIC_ACQ_REL,
					   __ATOMIC_RELAXED);
}

int userver_store_ws(struct userver *srv, const void *buf, size_t len)
{
	if (!srv->ws_store)
		return err_set(EINVAL, "no --record location");
	int rc = store_put(srv->ws_store, srv->ws_key, buf, len);
	return rc < 0 ? err_wrap(rc, "storing the working set at %s", srv->record_url) : 0;
}

void userver_hydrate_once(struct userver *srv)
{
	pthread_mutex_lock(&srv->mu);
	int first = !srv->hydrating;
	srv->hydrating = 1;
	pthread_mutex_unlock(&srv->mu);
	if (first && blob_hydrate_start(srv->blob, srv->cfg.prefetch ? srv->ws : NULL,
					srv->cfg.prefetch ? srv->nws : 0) < 0)
		log_error("background transfer not started: %s", err_msg());
}

/* A chunk settled (store thread): remember failures, wake who waits. */
static void on_chunk(void *arg, uint64_t idx, int rc)
{
	struct userver *srv = arg;
	if (rc < 0)
		__atomic_store_n(&srv->fail_ns[idx], now_ns(), __ATOMIC_RELEASE);
	/* Pairs with the fence in add_waiter (fault.c): the chunk's state was
	 * stored before this call, nwaiters is read after. */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	pthread_mutex_lock(&srv->mu);
	for (struct session *s = srv->sessions; s; s = s->next_s) {
		if (__atomic_load_n(&s->nwaiters, __ATOMIC_RELAXED)) {
			uint64_t one = 1;
			if (write(s->evfd, &one, sizeof one) < 0 && errno != EAGAIN)
				log_debug("eventfd: %s", strerror(errno));
		}
		if (s->pusher_started)
			pusher_poke(s);
	}
	pthread_mutex_unlock(&srv->mu);
}

void userver_session_ready(struct userver *srv, struct session *s)
{
	(void)srv;
	snprintf(s->m->state, sizeof s->m->state, "serving");
}

void userver_session_ended(struct userver *srv, struct session *s)
{
	/* Off the list first: after this the listener no longer touches s. */
	pthread_mutex_lock(&srv->mu);
	for (struct session **pp = &srv->sessions; *pp; pp = &(*pp)->next_s)
		if (*pp == s) {
			*pp = s->next_s;
			break;
		}
	pthread_mutex_unlock(&srv->mu);
	__atomic_store_n(&s->finished, 1, __ATOMIC_RELEASE);
	uint64_t one = 1;
	if (write(srv->wake_fd, &one, sizeof one) < 0)
		log_debug("wake eventfd: %s", strerror(errno));
}

static void session_free(struct session *s)
{
	if (s->sock >= 0)
		close(s->sock);
	if (s->evfd >= 0)
		close(s->evfd);
	if (s->pidfd >= 0)
		close(s->pidfd);
	pthread_mutex_destroy(&s->evlock);
	pthread_mutex_destroy(&s->pmu);
	pthread_cond_destroy(&s->pcv);
	free(s->ext);
	free(s->done);
	free(s->zero);
	free(s->w);
	free(s->rec);
	free(s->rec_seen);
	free(s);
}

/* Join, account for and free every connection whose thread has finished. */
static void reap(struct userver *srv)
{
	pthread_mutex_lock(&srv->reap_mu);
	for (struct session **pp = &srv->reap_list; *pp;) {
		struct session *s = *pp;
		if (!__atomic_load_n(&s->finished, __ATOMIC_ACQUIRE)) {
			pp = &s->next_reap;
			continue;
		}
		*pp = s->next_reap;
		pthread_join(s->thread, NULL);
		int completed = s->complete;
		int refused = !strcmp(s->m->state, "refused");
		log_info("connection %d: closed (%s)", s->id,
			 refused ? "handshake refused" : completed ? "transfer was complete" : "transfer incomplete");
		/* --exit-when-done: the first client served is done once it has
		 * gone, whatever became of its transfer; nothing is left to wait
		 * for (waiting for a completed client instead hung the server for
		 * good when that one left early).  The status tells the two apart;
		 * with --no-push an incomplete transfer is the normal outcome. */
		if (srv->cfg.exit_when_done && !refused && !srv->exit_now) {
			srv->exit_now = 1;
			srv->exit_rc = completed || !srv->cfg.push ? 0 : 1;
			srv->exit_complete = completed;
		}
		session_free(s);
	}
	pthread_mutex_unlock(&srv->reap_mu);
}

static int add_metrics(struct userver *srv, struct sess_metrics *m)
{
	pthread_mutex_lock(&srv->mu);
	if (srv->nall == srv->allcap) {
		size_t nc = srv->allcap ? srv->allcap * 2 : 16;
		struct sess_metrics **n = realloc(srv->all, nc * sizeof *n);
		if (!n) {
			pthread_mutex_unlock(&srv->mu);
			return -ENOMEM;
		}
		srv->all = n;
		srv->allcap = nc;
	}
	srv->all[srv->nall++] = m;
	pthread_mutex_unlock(&srv->mu);
	return 0;
}

static void accept_one(struct userver *srv)
{
	int fd = accept4(srv->listen_fd, NULL, NULL, SOCK_CLOEXEC);
	if (fd < 0) {
		if (errno != EAGAIN && errno != EINTR)
			log_warn("accept on %s: %s", srv->socket_path, strerror(errno));
		return;
	}
	struct session *s = calloc(1, sizeof *s);
	struct sess_metrics *m = calloc(1, sizeof *m);
	if (!s || !m || add_metrics(srv, m) < 0) {
		log_error("out of memory accepting a connection; closed it");
		free(s);
		free(m);
		close(fd);
		return;
	}
	s->srv = srv;
	s->blob = srv->blob;
	s->sock = fd;
	s->sock_open = 1;
	s->uffd = -1;
	s->pidfd = -1;
	s->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	s->m = m;
	pthread_mutex_init(&s->evlock, NULL);
	pthread_mutex_init(&s->pmu, NULL);
	pthread_cond_init(&s->pcv, NULL);
	pthread_mutex_lock(&srv->mu);
	s->id = ++srv->next_id;
	m->id = s->id;
	m->t_accept = now_ns();
	snprintf(m->state, sizeof m->state, "handshake");
	s->next_s = srv->sessions;
	srv->sessions = s;
	pthread_mutex_unlock(&srv->mu);
	pthread_mutex_lock(&srv->reap_mu);
	s->next_reap = srv->reap_list;
	srv->reap_list = s;
	pthread_mutex_unlock(&srv->reap_mu);
	int rc = s->evfd < 0 ? errno : pthread_create(&s->thread, NULL, session_main, s);
	if (rc) {
		log_error("connection %d: cannot start its thread: %s; closed it", s->id, strerror(rc));
		snprintf(m->state, sizeof m->state, "refused");
		userver_session_ended(srv, s);
		/* Nothing to join: mark it so reap only frees it. */
		pthread_mutex_lock(&srv->reap_mu);
		for (struct session **pp = &srv->reap_list; *pp; pp = &(*pp)->next_reap)
			if (*pp == s) {
				*pp = s->next_reap;
				break;
			}
		pthread_mutex_unlock(&srv->reap_mu);
		session_free(s);
	}
}

/* --- opening --- */

static int load_ws(struct userver *srv, const char *url)
{
	struct thaw_url u;
	struct store *st;
	int rc = url_parse(url, &u);
	if (rc < 0)
		return rc;
	rc = store_open(&u, NULL, &st);
	if (rc < 0)
		return rc;
	uint64_t size = 0;
	rc = store_head(st, u.key, &size, NULL, NULL);
	if (rc == 0 && size > (64u << 20))
		rc = err_set(EFBIG, "%s is %llu bytes: too large for a working set", url, (unsigned long long)size);
	void *buf = NULL;
	if (rc == 0) {
		buf = malloc(size ? size : 1);
		uint64_t got = 0;
		rc = buf ? store_get(st, u.key, 0, size, buf, NULL, &got, NULL, NULL) : err_set(ENOMEM, "out of memory");
		if (rc == 0 && got != size)
			rc = err_set(EIO, "%s: read %llu of %llu bytes", url, (unsigned long long)got,
				     (unsigned long long)size);
	}
	if (rc == 0)
		rc = ws_decode(buf, size, (uint32_t)__builtin_ctzll(blob_chunk_size(srv->blob)), blob_size(srv->blob),
			       blob_nchunks(srv->blob), &srv->ws, &srv->nws);
	free(buf);
	store_close(st);
	return rc < 0 ? err_wrap(rc, "%s", url) : 0;
}

static int listen_on(struct userver *srv, const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof a.sun_path)
		return err_set(ENAMETOOLONG, "socket path %s is longer than %zu bytes", path, sizeof a.sun_path - 1);
	strcpy(a.sun_path, path);
	struct stat st;
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode))
			return err_set(EEXIST, "%s exists and is not a socket", path);
		/* A socket file nobody answers on is a leftover: replace it. */
		int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		int live = probe >= 0 && connect(probe, (struct sockaddr *)&a, sizeof a) == 0;
		if (probe >= 0)
			close(probe);
		if (live)
			return err_set(EADDRINUSE, "%s: another server is listening there", path);
		unlink(path);
	}
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return err_set(errno, "socket: %s", strerror(errno));
	mode_t old = umask(0177); /* born 0600: only our uid may hand us a userfaultfd */
	int rc = bind(fd, (struct sockaddr *)&a, sizeof a);
	int e = errno;
	umask(old);
	if (rc < 0) {
		close(fd);
		return err_set(e, "bind %s: %s", path, strerror(e));
	}
	chmod(path, 0600);
	if (listen(fd, 64) < 0) {
		e = errno;
		close(fd);
		unlink(path);
		return err_set(e, "listen on %s: %s", path, strerror(e));
	}
	srv->listen_fd = fd;
	return 0;
}

static int write_ready(const char *file, const char *content)
{
	char tmp[4200];
	snprintf(tmp, sizeof tmp, "%s.tmp.%d", file, (int)getpid());
	FILE *f = fopen(tmp, "w");
	if (!f)
		return err_set(errno, "cannot write %s: %s", tmp, strerror(errno));
	fprintf(f, "%s\n", content);
	if (fclose(f) != 0 || rename(tmp, file) != 0) {
		int e = errno;
		unlink(tmp);
		return err_set(e, "cannot write %s: %s", file, strerror(e));
	}
	return 0;
}

int userver_open(const struct userver_config *c, struct userver **out)
{
	struct userver *srv = calloc(1, sizeof *srv);
	if (!srv)
		return err_set(ENOMEM, "out of memory");
	srv->cfg = *c;
	srv->listen_fd = srv->sig_fd = srv->wake_fd = -1;
	srv->t_start = now_ns();
	pthread_mutex_init(&srv->mu, NULL);
	pthread_mutex_init(&srv->reap_mu, NULL);
	int rc = 0;
	if (!c->socket_path || !c->mem_url)
		rc = err_set(EINVAL, "both a socket path and a memory image URL are needed");
	if (rc == 0 && strlen(c->socket_path) >= sizeof srv->socket_path)
		rc = err_set(ENAMETOOLONG, "socket path %s is longer than %zu bytes", c->socket_path,
			     sizeof srv->socket_path - 1);
	if (rc == 0)
		snprintf(srv->socket_path, sizeof srv->socket_path, "%s", c->socket_path);
	srv->cfg.socket_path = srv->socket_path;

	struct thaw_url mu;
	if (rc == 0)
		rc = url_parse(c->mem_url, &mu);
	struct store_config sc;
	store_config_default(&sc);
	if (c->jobs > 0)
		sc.max_inflight = c->jobs;
	if (rc == 0)
		rc = store_open(&mu, &sc, &srv->store);
	struct blob_opts bo;
	blob_opts_default(&bo);
	/* A plain object served as memory keeps 1 MiB chunks (what bench-uffd
	 * measured): a fault installs a whole chunk, and a vCPU touching memory
	 * in order wants few, large installs more than small first fetches. */
	bo.plain_chunk_size = 1u << 20;
	if (c->jobs > 0)
		bo.jobs = c->jobs;
	/* The store runs its queue in order and may run fewer transfers at once
	 * than bo.jobs (file:// uses 8 threads): keep background fetches well
	 * below that, or a demand fetch queues behind a wall of them. */
	bo.bg_jobs = c->bg_jobs > 0 && c->bg_jobs <= bo.jobs ? c->bg_jobs : (bo.jobs > 4 ? 4 : 1);
	if (rc == 0) {
		rc = blob_open(srv->store, mu.key, &bo, &srv->blob);
		if (rc < 0)
			err_wrap(rc, "opening the memory image %s", c->mem_url);
	}
	if (rc == 0) {
		uint64_t n = blob_nchunks(srv->blob);
		srv->fail_ns = calloc(n ? n : 1, sizeof *srv->fail_ns);
		if (!srv->fail_ns)
			rc = err_set(ENOMEM, "out of memory");
	}
	/* The record goes where --record says; --prefetch reads from there too,
	 * unless told otherwise, else from "<memory key>.ws" beside the image. */
	if (rc == 0 && c->record_url) {
		struct thaw_url ru;
		snprintf(srv->record_url, sizeof srv->record_url, "%s", c->record_url);
		srv->cfg.record_url = srv->record_url;
		rc = url_parse(c->record_url, &ru);
		if (rc == 0 && (!ru.key[0] || ru.key[strlen(ru.key) - 1] == '/'))
			rc = err_set(EINVAL, "--record %s names a directory, not an object", c->record_url);
		if (rc == 0)
			rc = store_open(&ru, NULL, &srv->ws_store);
		if (rc == 0)
			snprintf(srv->ws_key, sizeof srv->ws_key, "%s", ru.key);
	}
	if (rc == 0 && c->prefetch) {
		if (c->prefetch_url)
			snprintf(srv->ws_from, sizeof srv->ws_from, "%s", c->prefetch_url);
		else if (c->record_url)
			snprintf(srv->ws_from, sizeof srv->ws_from, "%s", c->record_url);
		else
			snprintf(srv->ws_from, sizeof srv->ws_from, "%s.ws", c->mem_url);
		srv->cfg.prefetch_url = srv->ws_from;
		if (load_ws(srv, srv->ws_from) < 0)
			log_warn("prefetch: no usable working set (%s); starting without one", err_msg());
		else
			log_info("prefetch: %zu chunks (%.1f MiB) from %s", srv->nws,
				 (double)srv->nws * (double)blob_chunk_size(srv->blob) / 1048576.0, srv->ws_from);
	}
	if (rc == 0) {
		sigset_t set;
		sigemptyset(&set);
		sigaddset(&set, SIGINT);
		sigaddset(&set, SIGTERM);
		sigaddset(&set, SIGUSR1);
		pthread_sigmask(SIG_BLOCK, &set, NULL);
		srv->sig_fd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
		srv->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (srv->sig_fd < 0 || srv->wake_fd < 0)
			rc = err_set(errno, "signalfd/eventfd: %s", strerror(errno));
	}
	if (rc == 0)
		rc = listen_on(srv, srv->socket_path);
	if (rc == 0 && c->ready_file && write_ready(c->ready_file, srv->socket_path) < 0) {
		rc = -EIO;
		unlink(srv->socket_path);
	}
	if (rc < 0) {
		char msg[ERR_MSG_MAX];
		err_copy(msg, sizeof msg);
		userver_close(srv);
		err_set(-rc, "%s", msg);
		return rc;
	}
	blob_set_listener(srv->blob, on_chunk, srv);
	log_info("listening on %s for %s (%.1f MiB %s, %llu-KiB chunks)", srv->socket_path, c->mem_url,
		 (double)blob_size(srv->blob) / 1048576.0, blob_is_image(srv->blob) ? "thaw image" : "plain object",
		 (unsigned long long)(blob_chunk_size(srv->blob) >> 10));
	*out = srv;
	return 0;
}

int userver_run(struct userver *srv)
{
	while (!srv->exit_now) {
		struct pollfd p[3] = { { srv->listen_fd, POLLIN, 0 }, { srv->sig_fd, POLLIN, 0 }, { srv->wake_fd, POLLIN, 0 } };
		int r = poll(p, 3, 1000);
		if (r < 0 && errno != EINTR) {
			log_error("poll: %s", strerror(errno));
			return 1;
		}
		if (p[1].revents & POLLIN) {
			struct signalfd_siginfo si;
			while (read(srv->sig_fd, &si, sizeof si) == sizeof si) {
				if (si.ssi_signo == SIGUSR1) {
					if (srv->cfg.metrics_path) {
						if (userver_write_metrics(srv, srv->cfg.metrics_path) < 0)
							log_error("%s", err_msg());
					} else {
						userver_write_metrics(srv, NULL);
					}
				} else {
					log_info("%s: shutting down", strsignal((int)si.ssi_signo));
					return 0;
				}
			}
		}
		if (p[2].revents & POLLIN) {
			uint64_t v;
			if (read(srv->wake_fd, &v, sizeof v) < 0 && errno != EAGAIN)
				log_debug("wake eventfd: %s", strerror(errno));
		}
		reap(srv);
		if (p[0].revents & POLLIN)
			accept_one(srv);
	}
	if (srv->exit_complete)
		log_info("--exit-when-done: the first client is done and gone; exiting");
	else
		log_info("--exit-when-done: the first client has gone before its transfer completed; exiting%s",
			 srv->exit_rc ? " with status 1" : "");
	return srv->exit_rc;
}

/* --- metrics --- */

static void metrics_doc(struct userver *srv, FILE *f)
{
	struct blob_stats bs;
	blob_get_stats(srv->blob, &bs);
	struct sess_metrics *tot = calloc(1, sizeof *tot);
	fprintf(f, "{\"version\":1,\"mem\":");
	json_write_str(f, srv->cfg.mem_url);
	fprintf(f, ",\"uptime_s\":%.3f,", (double)(now_ns() - srv->t_start) / 1e9);
	fprintf(f, "\"wait\":\"%s\",\"spin_us\":%u,", srv->cfg.wait == WAIT_BLOCK ? "block" : srv->cfg.wait == WAIT_SPIN ? "spin" : "adaptive",
		srv->cfg.spin_us);
	fprintf(f,
		"\"image\":{\"kind\":\"%s\",\"size\":%llu,\"chunk_size\":%llu,\"chunks\":%llu,\"chunks_zero\":%llu,"
		"\"chunks_present\":%llu,\"bytes_fetched\":%llu,\"fetches\":%llu,\"fetch_failures\":%llu,"
		"\"verify_failures\":%llu},",
		blob_is_image(srv->blob) ? "thaw-image" : "object", (unsigned long long)bs.size,
		(unsigned long long)bs.chunk_size, (unsigned long long)bs.nchunks, (unsigned long long)bs.chunks_zero,
		(unsigned long long)bs.chunks_present, (unsigned long long)bs.bytes_fetched,
		(unsigned long long)bs.fetches, (unsigned long long)bs.fetch_failures,
		(unsigned long long)bs.verify_failures);
	fprintf(f, "\"prefetch\":{\"from\":");
	json_write_str(f, srv->cfg.prefetch ? srv->ws_from : "");
	fprintf(f, ",\"chunks\":%zu},", srv->nws);
	fprintf(f, "\"connections\":[");
	pthread_mutex_lock(&srv->mu);
	size_t refused = 0, active = 0;
	for (size_t i = 0; i < srv->nall; i++) {
		struct sess_metrics *m = srv->all[i];
		if (i)
			fputc(',', f);
		metrics_session_json(m, f);
		refused += !strcmp(m->state, "refused");
		active += !strcmp(m->state, "serving") || !strcmp(m->state, "handshake");
		if (tot)
			metrics_fold(tot, m);
	}
	size_t nall = srv->nall;
	pthread_mutex_unlock(&srv->mu);
	fprintf(f, "],\"totals\":");
	if (tot) {
		tot->id = 0;
		snprintf(tot->state, sizeof tot->state, "totals");
		metrics_session_json(tot, f);
		free(tot);
	} else {
		fprintf(f, "null");
	}
	fprintf(f, ",\"connections_total\":%zu,\"connections_refused\":%zu,\"connections_active\":%zu}\n", nall,
		refused, active);
}

int userver_write_metrics(struct userver *srv, const char *path)
{
	if (!path) {
		metrics_doc(srv, stderr);
		return 0;
	}
	char tmp[4200];
	snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
	FILE *f = fopen(tmp, "w");
	if (!f)
		return err_set(errno, "cannot write metrics to %s: %s", tmp, strerror(errno));
	metrics_doc(srv, f);
	if (fclose(f) != 0 || rename(tmp, path) != 0) {
		int e = errno;
		unlink(tmp);
		return err_set(e, "cannot write metrics to %s: %s", path, strerror(e));
	}
	return 0;
}

void userver_close(struct userver *srv)
{
	if (!srv)
		return;
	/* Stop every connection and wait for it. */
	pthread_mutex_lock(&srv->mu);
	for (struct session *s = srv->sessions; s; s = s->next_s) {
		__atomic_store_n(&s->stop, 1, __ATOMIC_RELAXED);
		__atomic_store_n(&s->pstop, 1, __ATOMIC_RELAXED);
		shutdown(s->sock, SHUT_RDWR); /* ends a handshake still being waited for */
		uint64_t one = 1;
		if (write(s->evfd, &one, sizeof one) < 0)
			log_debug("eventfd: %s", strerror(errno));
	}
	pthread_mutex_unlock(&srv->mu);
	pthread_mutex_lock(&srv->reap_mu);
	for (struct session *s = srv->reap_list; s; s = s->next_reap)
		__atomic_store_n(&s->stop, 1, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&srv->reap_mu);
	for (;;) {
		pthread_mutex_lock(&srv->reap_mu);
		int left = srv->reap_list != NULL;
		pthread_mutex_unlock(&srv->reap_mu);
		if (!left)
			break;
		reap(srv);
		struct pollfd p = { srv->wake_fd, POLLIN, 0 };
		if (srv->wake_fd >= 0)
			poll(&p, 1, 50);
		else
			usleep(10000);
	}
	if (srv->blob) {
		blob_set_listener(srv->blob, NULL, NULL);
		if (srv->cfg.metrics_path && userver_write_metrics(srv, srv->cfg.metrics_path) < 0)
			log_error("%s", err_msg());
	}
	if (srv->listen_fd >= 0) {
		close(srv->listen_fd);
		unlink(srv->socket_path);
	}
	if (srv->sig_fd >= 0)
		close(srv->sig_fd);
	if (srv->wake_fd >= 0)
		close(srv->wake_fd);
	blob_close(srv->blob);
	store_close(srv->store);
	store_close(srv->ws_store);
	for (size_t i = 0; i < srv->nall; i++)
		free(srv->all[i]);
	free(srv->all);
	free(srv->fail_ns);
	free(srv->ws);
	pthread_mutex_destroy(&srv->mu);
	pthread_mutex_destroy(&srv->reap_mu);
	free(srv);
}
