/* storecli.c - drives the store API directly, for the integration tests and
 * quick measurements.  One command per run; exit 0 on success, 1 with one line
 * "storecli: <message> [ERRNO]" on stderr otherwise.
 *
 *   storecli [-s] URL get KEY OFF LEN OUTFILE [ETAG]  -> nread=N size=S etag=E
 *   storecli [-s] URL getsink KEY OFF LEN OUTFILE     the same GET through a sink (op->sink),
 *                                                     checking every byte comes once, in order
 *                                                     -> nread=N pieces=P
 *   storecli [-s] URL put KEY INFILE                  -> etag=E
 *   storecli [-s] URL head KEY                        -> size=N etag=E mtime=T
 *   storecli [-s] URL list [PREFIX [DELIM]]           -> KEY<TAB>SIZE<TAB>ETAG, or KEY<TAB>PREFIX
 *   storecli [-s] URL delete KEY
 *   storecli [-s] URL putmany PREFIX COUNT            COUNT small objects, all submitted at once
 *   storecli [-s] URL getpar KEY OUTFILE PART INFLIGHT  whole object in PART-byte ranged GETs
 *                                                     pinned to its ETag -> bytes=N secs=T MBps=X
 *   storecli [-s] URL cancel KEY N                    submit N one-byte GETs, close the store
 *                                                     200 ms later -> canceled=C done=D close_ms=T
 *
 * URL names the store (s3://bucket or file:///dir); -s prints the store's
 * counters on stderr at exit. */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../common/log.h"
#include "../../common/timeutil.h"
#include "../../objstore/store.h"

static int die(int rc)
{
	fprintf(stderr, "storecli: %s [%s]\n", err_msg(), strerrorname_np(rc < 0 ? -rc : rc) ?: "?");
	return 1;
}

static void print_stats(struct store *s)
{
	struct store_stats *st = &s->stats;
	fprintf(stderr, "stats gets=%llu heads=%llu puts=%llu deletes=%llu lists=%llu bytes_in=%llu bytes_out=%llu "
			"retries=%llu failures=%llu\n",
		(unsigned long long)st->gets, (unsigned long long)st->heads, (unsigned long long)st->puts,
		(unsigned long long)st->deletes, (unsigned long long)st->lists, (unsigned long long)st->bytes_in,
		(unsigned long long)st->bytes_out, (unsigned long long)st->retries, (unsigned long long)st->failures);
}

/* getsink: the sink must see each byte of the range once, in order. */
struct sinkcheck {
	struct store_op op; /* first: store_run owns op.arg */
	int fd;
	uint64_t next, pieces;
};

static int check_sink(struct store_op *op, uint64_t pos, const void *p, size_t n)
{
	struct sinkcheck *sc = (struct sinkcheck *)op;
	if (pos != sc->next)
		return err_set(EPROTO, "sink got bytes at %llu, expected %llu", (unsigned long long)pos,
			       (unsigned long long)sc->next);
	if (pwrite(sc->fd, p, n, (off_t)pos) != (ssize_t)n)
		return err_set(EIO, "sink write: %s", strerror(errno));
	sc->next += n;
	sc->pieces++;
	return 0;
}

static int write_file(const char *path, const void *buf, uint64_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		return err_set(errno, "cannot create %s: %s", path, strerror(errno));
	for (uint64_t o = 0; o < len;) {
		ssize_t w = write(fd, (const char *)buf + o, len - o);
		if (w < 0) {
			int e = errno;
			close(fd);
			return err_set(e, "cannot write %s: %s", path, strerror(e));
		}
		o += (uint64_t)w;
	}
	if (close(fd) < 0)
		return err_set(errno, "cannot write %s: %s", path, strerror(errno));
	return 0;
}

static int read_file(const char *path, void **buf, uint64_t *len)
{
	int fd = open(path, O_RDONLY);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) {
		int e = errno;
		if (fd >= 0)
			close(fd);
		return err_set(e, "cannot open %s: %s", path, strerror(e));
	}
	*len = (uint64_t)st.st_size;
	*buf = malloc(*len ? *len : 1);
	if (!*buf) {
		close(fd);
		return err_set(ENOMEM, "out of memory for %s", path);
	}
	for (uint64_t o = 0; o < *len;) {
		ssize_t r = read(fd, (char *)*buf + o, *len - o);
		if (r <= 0) {
			int e = r < 0 ? errno : EIO;
			close(fd);
			free(*buf);
			return err_set(e, "cannot read %s", path);
		}
		o += (uint64_t)r;
	}
	close(fd);
	return 0;
}

static int print_entry(const struct store_entry *e, void *arg)
{
	(void)arg;
	if (e->is_prefix)
		printf("%s\tPREFIX\n", e->key);
	else
		printf("%s\t%llu\t%s\t%lld\n", e->key, (unsigned long long)e->size, e->etag, (long long)e->mtime);
	return 0;
}

/* Asynchronous completions for putmany/getpar: a counter and a condvar. */
struct waiter {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int pending, failed;
	char first_err[ERR_MSG_MAX];
	int first_rc;
};

static struct waiter W = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, "", 0 };

static void on_done(struct store_op *op)
{
	pthread_mutex_lock(&W.mu);
	if (op->rc < 0 && !W.failed++) {
		snprintf(W.first_err, sizeof W.first_err, "%s", op->errmsg);
		W.first_rc = op->rc;
	}
	W.pending--;
	pthread_cond_signal(&W.cv);
	pthread_mutex_unlock(&W.mu);
}

static int wait_below(int n)
{
	pthread_mutex_lock(&W.mu);
	while (W.pending > n)
		pthread_cond_wait(&W.cv, &W.mu);
	int failed = W.failed;
	pthread_mutex_unlock(&W.mu);
	if (failed)
		return err_set(-W.first_rc, "%s (and %d more failures)", W.first_err, failed - 1);
	return 0;
}

static int submit_counted(struct store *s, struct store_op *op)
{
	pthread_mutex_lock(&W.mu);
	W.pending++;
	pthread_mutex_unlock(&W.mu);
	op->done = on_done;
	int rc = store_submit(s, op);
	if (rc < 0) {
		pthread_mutex_lock(&W.mu);
		W.pending--;
		pthread_mutex_unlock(&W.mu);
	}
	return rc;
}

static int cmd_putmany(struct store *s, const char *prefix, int count)
{
	struct store_op *ops = calloc((size_t)count, sizeof *ops);
	if (!ops)
		return err_set(ENOMEM, "out of memory");
	int rc = 0;
	for (int i = 0; i < count && rc == 0; i++) {
		struct store_op *op = &ops[i];
		op->kind = STORE_PUT;
		snprintf(op->key, sizeof op->key, "%s%05d", prefix, i);
		op->buf = op->key; /* the body is the key's own name */
		op->len = strlen(op->key);
		rc = submit_counted(s, op);
	}
	int wrc = wait_below(0);
	free(ops);
	return rc < 0 ? rc : wrc;
}

static int cmd_getpar(struct store *s, const char *key, const char *out, uint64_t part, int inflight)
{
	uint64_t size;
	char etag[STORE_ETAG_MAX];
	int rc = store_head(s, key, &size, etag, NULL);
	if (rc < 0)
		return rc;
	if (!part || inflight < 1)
		return err_set(EINVAL, "PART and INFLIGHT must be positive");
	/* pre-faulted, so the timing is the transfer's and not page allocation's */
	void *buf = size ? mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0)
			 : NULL;
	if (size && buf == MAP_FAILED)
		return err_set(ENOMEM, "cannot map %llu bytes", (unsigned long long)size);
	uint64_t nparts = (size + part - 1) / part;
	struct store_op *ops = calloc(nparts ? nparts : 1, sizeof *ops);
	if (!ops)
		return err_set(ENOMEM, "out of memory");
	double t0 = now_s();
	for (uint64_t i = 0; i < nparts && rc == 0; i++) {
		if ((rc = wait_below(inflight - 1)) < 0)
			break;
		struct store_op *op = &ops[i];
		op->kind = STORE_GET;
		snprintf(op->key, sizeof op->key, "%s", key);
		snprintf(op->if_match, sizeof op->if_match, "%s", etag);
		op->off = i * part;
		op->len = size - op->off < part ? size - op->off : part;
		op->buf = (char *)buf + op->off;
		rc = submit_counted(s, op);
	}
	int wrc = wait_below(0);
	double secs = now_s() - t0;
	if (rc == 0)
		rc = wrc;
	for (uint64_t i = 0; i < nparts && rc == 0; i++)
		if (ops[i].nread != ops[i].len)
			rc = err_set(EIO, "part %llu: got %llu of %llu bytes", (unsigned long long)i,
				     (unsigned long long)ops[i].nread, (unsigned long long)ops[i].len);
	if (rc == 0) {
		printf("bytes=%llu secs=%.3f MBps=%.1f\n", (unsigned long long)size, secs, size / secs / 1e6);
		rc = write_file(out, buf, size);
	}
	free(ops);
	if (size)
		munmap(buf, size);
	return rc;
}

/* close() must finish every op, queued or in flight, before it returns. */
static int cmd_cancel(struct store **sp, const char *key, int n)
{
	struct store_op *ops = calloc((size_t)(n > 0 ? n : 1), sizeof *ops);
	static char byte[1];
	if (!ops)
		return err_set(ENOMEM, "out of memory");
	int rc = 0;
	for (int i = 0; i < n && rc == 0; i++) {
		ops[i].kind = STORE_GET;
		snprintf(ops[i].key, sizeof ops[i].key, "%s", key);
		ops[i].len = 1;
		ops[i].buf = byte;
		rc = submit_counted(*sp, &ops[i]);
	}
	usleep(200000); /* let the first max_inflight start; the rest stay queued */
	double t0 = now_s();
	store_close(*sp);
	*sp = NULL;
	double ms = (now_s() - t0) * 1e3;
	pthread_mutex_lock(&W.mu);
	int pending = W.pending;
	pthread_mutex_unlock(&W.mu);
	int canceled = 0, done = 0;
	for (int i = 0; i < n; i++) {
		canceled += ops[i].rc == -ECANCELED;
		done += ops[i].rc == 0;
	}
	free(ops);
	if (rc < 0)
		return rc;
	if (pending)
		return err_set(EIO, "store_close returned with %d ops never completed", pending);
	printf("canceled=%d done=%d close_ms=%.0f\n", canceled, done, ms);
	return 0;
}

static int usage(void)
{
	fprintf(stderr, "usage: storecli [-s] URL get KEY OFF LEN OUTFILE [ETAG] | put KEY INFILE | head KEY |\n"
			"       list [PREFIX [DELIM]] | delete KEY | putmany PREFIX COUNT |\n"
			"       getpar KEY OUTFILE PART INFLIGHT | cancel KEY N\n");
	return 2;
}

static int run(struct store **sp, int argc, char **argv)
{
	struct store *s = *sp;
	const char *cmd = argv[0];
	int rc;
	if (!strcmp(cmd, "get") && (argc == 5 || argc == 6)) {
		uint64_t off = strtoull(argv[2], NULL, 0), len = strtoull(argv[3], NULL, 0), nread = 0, size = 0;
		char etag[STORE_ETAG_MAX] = "";
		void *buf = malloc(len ? len : 1);
		if (!buf)
			return err_set(ENOMEM, "out of memory for %llu bytes", (unsigned long long)len);
		rc = store_get(s, argv[1], off, len, buf, argc == 6 ? argv[5] : NULL, &nread, &size, etag);
		if (rc == 0)
			rc = write_file(argv[4], buf, nread);
		if (rc == 0)
			printf("nread=%llu size=%llu etag=%s\n", (unsigned long long)nread, (unsigned long long)size,
			       etag);
		free(buf);
		return rc;
	}
	if (!strcmp(cmd, "getsink") && argc == 5) {
		struct sinkcheck *sc = calloc(1, sizeof *sc);
		if (!sc)
			return err_set(ENOMEM, "out of memory");
		sc->fd = open(argv[4], O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (sc->fd < 0) {
			free(sc);
			return err_set(errno, "cannot create %s: %s", argv[4], strerror(errno));
		}
		struct store_op *op = &sc->op;
		op->kind = STORE_GET;
		snprintf(op->key, sizeof op->key, "%s", argv[1]);
		op->off = strtoull(argv[2], NULL, 0);
		op->len = strtoull(argv[3], NULL, 0);
		op->sink = check_sink;
		rc = store_run(s, op);
		if (rc == 0 && op->nread != sc->next)
			rc = err_set(EIO, "nread %llu but the sink saw %llu bytes", (unsigned long long)op->nread,
				     (unsigned long long)sc->next);
		if (rc == 0)
			printf("nread=%llu pieces=%llu\n", (unsigned long long)op->nread, (unsigned long long)sc->pieces);
		close(sc->fd);
		free(sc);
		return rc;
	}
	if (!strcmp(cmd, "put") && argc == 3) {
		void *buf = NULL;
		uint64_t len = 0;
		if ((rc = read_file(argv[2], &buf, &len)) < 0)
			return rc;
		struct store_op *op = calloc(1, sizeof *op);
		if (!op) {
			free(buf);
			return err_set(ENOMEM, "out of memory");
		}
		op->kind = STORE_PUT;
		snprintf(op->key, sizeof op->key, "%s", argv[1]);
		op->buf = buf;
		op->len = len;
		rc = store_run(s, op);
		if (rc == 0)
			printf("etag=%s attempts=%d\n", op->etag, op->attempts);
		free(op);
		free(buf);
		return rc;
	}
	if (!strcmp(cmd, "head") && argc == 2) {
		uint64_t size;
		char etag[STORE_ETAG_MAX];
		int64_t mtime;
		if ((rc = store_head(s, argv[1], &size, etag, &mtime)) == 0)
			printf("size=%llu etag=%s mtime=%lld\n", (unsigned long long)size, etag, (long long)mtime);
		return rc;
	}
	if (!strcmp(cmd, "list") && argc >= 1 && argc <= 3)
		return store_list(s, argc > 1 ? argv[1] : "", argc > 2 ? argv[2] : NULL, print_entry, NULL);
	if (!strcmp(cmd, "delete") && argc == 2)
		return store_delete(s, argv[1]);
	if (!strcmp(cmd, "putmany") && argc == 3)
		return cmd_putmany(s, argv[1], atoi(argv[2]));
	if (!strcmp(cmd, "cancel") && argc == 3)
		return cmd_cancel(sp, argv[1], atoi(argv[2]));
	if (!strcmp(cmd, "getpar") && argc == 5)
		return cmd_getpar(s, argv[1], argv[2], strtoull(argv[3], NULL, 0), atoi(argv[4]));
	return -EINVAL - 1000; /* usage */
}

int main(int argc, char **argv)
{
	int stats = 0;
	log_init_from_env(LOG_WARN);
	if (argc > 1 && !strcmp(argv[1], "-s")) {
		stats = 1;
		argv++;
		argc--;
	}
	if (argc < 3)
		return usage();
	struct thaw_url u;
	int rc = url_parse(argv[1], &u);
	if (rc < 0)
		return die(rc);
	struct store *s;
	if ((rc = store_open(&u, NULL, &s)) < 0)
		return die(rc);
	rc = run(&s, argc - 2, argv + 2);
	int ret = rc == -EINVAL - 1000 ? usage() : rc < 0 ? die(rc) : 0;
	if (stats && s)
		print_stats(s);
	store_close(s);
	return ret;
}
