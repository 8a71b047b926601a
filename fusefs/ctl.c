/* ctl.c - the control socket of a mount: where it lives, the server thread,
 * and the client `thaw status` uses (see fusefs.h for the protocol).
 *
 * The socket sits in a per-user directory that must be ours and mode 0700
 * (under /tmp anyone could otherwise pre-create it), and is itself 0600;
 * the server also checks the peer's uid, so only the mount's owner (or root)
 * can read its status or queue work. */
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "../common/err.h"
#include "../common/log.h"
#include "../common/xxh.h"
#include "ctl.h"
#include "fusefs.h"

#define MAX_DIRS 2

struct ctl_server {
	int lfd;
	int wake[2];
	pthread_t thread;
	ctl_handler fn;
	void *arg;
	ino_t ino; /* of the socket we bound */
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
};

/* Candidate directories for sockets, most preferred first. */
static int runtime_dirs(char dirs[MAX_DIRS][4096])
{
	int n = 0;
	const char *x = getenv("XDG_RUNTIME_DIR");
	if (x && *x)
		snprintf(dirs[n++], 4096, "%s/thaw", x);
	snprintf(dirs[n++], 4096, "/tmp/thaw-%u", (unsigned)getuid());
	return n;
}

int ctl_canon_mountpoint(const char *mp, char *out, size_t n)
{
	char tmp[4096], dir[4096];
	if (!*mp)
		return err_set(EINVAL, "empty mountpoint");
	snprintf(tmp, sizeof tmp, "%s", mp);
	size_t l = strlen(tmp);
	while (l > 1 && tmp[l - 1] == '/')
		tmp[--l] = 0;
	char *slash = strrchr(tmp, '/');
	const char *base = slash ? slash + 1 : tmp;
	const char *parent = !slash ? "." : slash == tmp ? "/" : tmp;
	if (slash && slash != tmp)
		*slash = 0;
	if (!*base || !strcmp(base, ".") || !strcmp(base, "..")) {
		if (!realpath(mp, dir))
			return err_set(errno, "resolve %s: %s", mp, strerror(errno));
		snprintf(out, n, "%s", dir);
		return 0;
	}
	if (!realpath(parent, dir))
		return err_set(errno, "resolve %s: %s", parent, strerror(errno));
	snprintf(out, n, "%s/%s", strcmp(dir, "/") ? dir : "", base);
	return 0;
}

static void sock_name(const char *dir, const char *abs, const char *ext, char *out, size_t n)
{
	snprintf(out, n, "%s/mnt-%016llx.%s", dir, (unsigned long long)XXH3_64bits(abs, strlen(abs)), ext);
}

int fusefs_ctl_paths(const char *mountpoint, char *sock, size_t socklen, char *log, size_t loglen)
{
	char abs[4096], dirs[MAX_DIRS][4096];
	int rc = ctl_canon_mountpoint(mountpoint, abs, sizeof abs);
	if (rc < 0)
		return rc;
	runtime_dirs(dirs);
	sock_name(dirs[0], abs, "sock", sock, socklen);
	if (log)
		sock_name(dirs[0], abs, "log", log, loglen);
	if (strlen(sock) >= sizeof(((struct sockaddr_un *)0)->sun_path))
		return err_set(ENAMETOOLONG, "control socket path %s is too long", sock);
	return 0;
}

/* Make dir (0700, ours) or check that it already is. */
static int secure_dir(const char *dir)
{
	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		return err_set(errno, "create %s: %s", dir, strerror(errno));
	struct stat st;
	if (lstat(dir, &st) < 0)
		return err_set(errno, "stat %s: %s", dir, strerror(errno));
	if (!S_ISDIR(st.st_mode) || st.st_uid != getuid() || (st.st_mode & 077))
		return err_set(EPERM, "%s is not a private directory of uid %u (mode %o, owner %u); refusing to "
			       "put a control socket there", dir, (unsigned)getuid(), st.st_mode & 07777,
			       (unsigned)st.st_uid);
	return 0;
}

static int sock_connect(const char *path, int *fd_out)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof sa.sun_path)
		return -ENAMETOOLONG;
	snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
		int e = errno;
		close(fd);
		return -e;
	}
	*fd_out = fd;
	return 0;
}

static void set_timeouts(int fd, unsigned ms)
{
	struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

static int write_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -errno;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static void serve_one(struct ctl_server *c, int fd)
{
	struct ucred cred;
	socklen_t cl = sizeof cred;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0 || (cred.uid != getuid() && cred.uid != 0))
		return;
	set_timeouts(fd, 5000);
	char req[4096];
	size_t n = 0;
	while (n < sizeof req - 1) {
		ssize_t r = read(fd, req + n, sizeof req - 1 - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		n += (size_t)r;
		if (memchr(req, '\n', n))
			break;
	}
	req[n] = 0;
	req[strcspn(req, "\r\n")] = 0;
	char *out = NULL;
	size_t outlen = 0;
	FILE *fp = open_memstream(&out, &outlen);
	if (!fp)
		return;
	c->fn(c->arg, req, fp);
	fclose(fp);
	write_all(fd, out, outlen);
	free(out);
}

static void *ctl_main(void *arg)
{
	struct ctl_server *c = arg;
	for (;;) {
		struct pollfd p[2] = { { .fd = c->lfd, .events = POLLIN }, { .fd = c->wake[0], .events = POLLIN } };
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			log_error("control socket: poll: %s", strerror(errno));
			return NULL;
		}
		if (p[1].revents)
			return NULL;
		int fd = accept4(c->lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0)
			continue;
		serve_one(c, fd);
		close(fd);
	}
}

int ctl_server_start(const char *sock_path, ctl_handler fn, void *arg, struct ctl_server **out)
{
	struct ctl_server *c = calloc(1, sizeof *c);
	if (!c)
		return err_set(ENOMEM, "out of memory");
	c->fn = fn;
	c->arg = arg;
	c->lfd = c->wake[0] = c->wake[1] = -1;
	snprintf(c->path, sizeof c->path, "%s", sock_path);
	char dir[4096];
	snprintf(dir, sizeof dir, "%s", sock_path);
	char *slash = strrchr(dir, '/');
	int rc = 0;
	if (slash) {
		*slash = 0;
		rc = secure_dir(dir);
	}
	/* A server still answering is either a live mount of this mountpoint or
	 * one that was just unmounted and is tearing down: give it a moment. */
	int probe;
	for (int i = 0; rc == 0 && sock_connect(sock_path, &probe) == 0; i++) {
		close(probe);
		if (i == 20)
			rc = err_set(EBUSY, "a thaw mount is already answering on %s", sock_path);
		else
			usleep(100 * 1000);
	}
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock_path);
	if (rc == 0) {
		unlink(sock_path); /* stale, from a mount that died */
		c->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		mode_t old = umask(077);
		struct stat st;
		if (c->lfd < 0 || bind(c->lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || chmod(sock_path, 0600) < 0 ||
		    listen(c->lfd, 16) < 0 || stat(sock_path, &st) < 0)
			rc = err_set(errno, "control socket %s: %s", sock_path, strerror(errno));
		else
			c->ino = st.st_ino;
		umask(old);
	}
	if (rc == 0 && pipe2(c->wake, O_CLOEXEC) < 0)
		rc = err_set(errno, "pipe: %s", strerror(errno));
	if (rc == 0 && pthread_create(&c->thread, NULL, ctl_main, c))
		rc = err_set(EAGAIN, "cannot start the control thread");
	if (rc < 0) {
		if (c->lfd >= 0) {
			close(c->lfd);
			unlink(sock_path);
		}
		if (c->wake[0] >= 0) {
			close(c->wake[0]);
			close(c->wake[1]);
		}
		free(c);
		return rc;
	}
	*out = c;
	return 0;
}

void ctl_server_stop(struct ctl_server *c)
{
	if (!c)
		return;
	if (write(c->wake[1], "x", 1) < 0)
		log_warn("control socket: cannot wake the server thread: %s", strerror(errno));
	pthread_join(c->thread, NULL);
	close(c->lfd);
	close(c->wake[0]);
	close(c->wake[1]);
	/* Only our own socket: a new mount of the same mountpoint may already
	 * have replaced it. */
	struct stat st;
	if (stat(c->path, &st) == 0 && st.st_ino == c->ino)
		unlink(c->path);
	free(c);
}

int fusefs_ctl_request(const char *mountpoint, const char *req, unsigned timeout_ms, char **resp)
{
	char abs[4096], dirs[MAX_DIRS][4096], path[4200];
	int rc = ctl_canon_mountpoint(mountpoint, abs, sizeof abs);
	if (rc < 0)
		return rc;
	int nd = runtime_dirs(dirs), fd = -1, last = -ENOENT;
	char tried[MAX_DIRS * 4200] = "";
	for (int i = 0; i < nd && fd < 0; i++) {
		sock_name(dirs[i], abs, "sock", path, sizeof path);
		last = sock_connect(path, &fd);
		size_t tl = strlen(tried);
		snprintf(tried + tl, sizeof tried - tl, "%s%s", tl ? " or " : "", path);
	}
	if (fd < 0)
		return err_set(last == -ECONNREFUSED ? ECONNREFUSED : ENOENT,
			       last == -ECONNREFUSED ? "the thaw mount at %s is not running (stale control socket %s)"
						     : "no thaw mount at %s (no control socket at %s)",
			       abs, tried);
	set_timeouts(fd, timeout_ms);
	char line[4200];
	snprintf(line, sizeof line, "%s\n", req);
	if (write_all(fd, line, strlen(line)) < 0) {
		rc = err_set(errno, "send to %s: %s", path, strerror(errno));
		close(fd);
		return rc;
	}
	shutdown(fd, SHUT_WR);
	size_t cap = 65536, n = 0;
	char *buf = malloc(cap);
	while (buf) {
		if (n + 1 == cap) {
			char *nb = realloc(buf, cap * 2);
			if (!nb) {
				free(buf);
				buf = NULL;
				break;
			}
			buf = nb;
			cap *= 2;
		}
		ssize_t r = read(fd, buf + n, cap - 1 - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			rc = err_set(errno == EAGAIN ? ETIMEDOUT : errno, "no answer from the thaw mount at %s within %u ms",
				     abs, timeout_ms);
			break;
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	close(fd);
	if (!buf)
		return err_set(ENOMEM, "out of memory");
	if (rc < 0) {
		free(buf);
		return rc;
	}
	buf[n] = 0;
	*resp = buf;
	return 0;
}
