/* cmd_pull.c - `thaw pull URL FILE`: the whole download, every chunk checked.
 *
 * This is the stop-and-copy baseline (Tdown = Vm/R), so it is built to be
 * fast rather than lazy: --jobs GETs in flight straight into per-job buffers,
 * each unique chunk fetched once and written to every place it occurs, zero
 * chunks left as holes.  Output goes to FILE.thaw-part and is renamed over
 * FILE only when every byte is in, so a failure (a corrupt chunk, a store that
 * goes away, a full disk) never leaves a half-written FILE behind. */
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/progress.h"
#include "../common/timeutil.h"
#include "../objstore/blob.h"
#include "cli.h"

struct pull {
	struct store *s;
	const struct img_index *ix; /* NULL: plain object */
	const char *key, *etag;
	uint64_t size, cs;
	int fd;
	const char *out;
	uint64_t *order;  /* image: chunk positions grouped by unique entry */
	uint64_t *start;  /* image: order[start[u]..start[u+1]) holds entry u+1 */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int inflight, failed;
	char err[ERR_MSG_MAX];
	uint64_t done_bytes, fetched;
};

struct job {
	struct store_op op;
	struct pull *p;
	uint64_t unit; /* unique entry (image) or chunk index (plain) */
	int tries;
};

static int write_at(struct pull *p, const void *buf, uint64_t len, uint64_t off, char *err, size_t n)
{
	uint64_t done = 0;
	while (done < len) {
		ssize_t w = pwrite(p->fd, (const char *)buf + done, len - done, (off_t)(off + done));
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0) {
			snprintf(err, n, "writing %s: %s", p->out, strerror(errno));
			return -errno;
		}
		done += (uint64_t)w;
	}
	return 0;
}

static void job_done(struct store_op *op)
{
	struct job *j = op->arg;
	struct pull *p = j->p;
	char err[ERR_MSG_MAX] = "";
	int rc = op->rc;
	uint64_t written = 0;
	if (rc < 0)
		snprintf(err, sizeof err, "%s", op->errmsg);
	else if (op->nread != op->len) {
		rc = -EIO;
		snprintf(err, sizeof err, "%s: got %llu of %llu bytes", op->key, (unsigned long long)op->nread,
			 (unsigned long long)op->len);
	} else if (p->ix) {
		struct img_hash h;
		img_hash_chunk(op->buf, op->len, &h);
		if (memcmp(&h, &p->ix->hashes[j->unit], sizeof h)) {
			if (j->tries++ < 1) {
				/* Fetch once more: a flipped bit in transit heals, a corrupt object won't. */
				uint64_t len = op->len;
				void *buf = op->buf;
				char key[STORE_KEY_MAX];
				memcpy(key, op->key, sizeof key);
				memset(op, 0, sizeof *op);
				memcpy(op->key, key, sizeof key);
				op->kind = STORE_GET;
				op->buf = buf;
				op->len = len;
				op->done = job_done;
				op->arg = j;
				if (store_submit(p->s, op) == 0)
					return;
			}
			rc = -EBADMSG;
			snprintf(err, sizeof err, "%s: content does not match its XXH3-128 (corrupt chunk)", op->key);
		}
		for (uint64_t k = p->start[j->unit]; rc == 0 && k < p->start[j->unit + 1]; k++) {
			rc = write_at(p, op->buf, op->len, p->order[k] * p->cs, err, sizeof err);
			written += op->len;
		}
	} else {
		rc = write_at(p, op->buf, op->len, op->off, err, sizeof err);
		written = op->len;
	}
	pthread_mutex_lock(&p->mu);
	if (rc < 0 && !p->failed) {
		p->failed = 1;
		snprintf(p->err, sizeof p->err, "%s", err);
	}
	p->done_bytes += written;
	p->fetched += op->nread;
	p->inflight--;
	pthread_cond_signal(&p->cv);
	pthread_mutex_unlock(&p->mu);
	free(op->buf);
	free(j);
}

static int submit(struct pull *p, uint64_t unit, uint64_t jobs)
{
	struct job *j = calloc(1, sizeof *j);
	if (!j)
		return err_set(ENOMEM, "out of memory");
	j->p = p;
	j->unit = unit;
	struct store_op *op = &j->op;
	op->kind = STORE_GET;
	if (p->ix) {
		uint64_t pos = p->order[p->start[unit]];
		op->len = img_chunk_len(p->ix, pos);
		img_chunk_key(&p->ix->hashes[unit], op->key, sizeof op->key);
	} else {
		op->off = unit * p->cs;
		op->len = p->size - op->off < p->cs ? p->size - op->off : p->cs;
		snprintf(op->key, sizeof op->key, "%s", p->key);
		snprintf(op->if_match, sizeof op->if_match, "%s", p->etag);
	}
	op->buf = malloc(op->len);
	op->done = job_done;
	op->arg = j;
	if (!op->buf) {
		free(j);
		return err_set(ENOMEM, "out of memory");
	}
	pthread_mutex_lock(&p->mu);
	while (p->inflight >= (int)jobs)
		pthread_cond_wait(&p->cv, &p->mu);
	p->inflight++;
	pthread_mutex_unlock(&p->mu);
	if (store_submit(p->s, op) < 0) {
		pthread_mutex_lock(&p->mu);
		p->inflight--;
		pthread_mutex_unlock(&p->mu);
		free(op->buf);
		free(j);
		return -EIO;
	}
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: thaw pull URL FILE [--jobs N] [--part-size N]\n\n"
		   "Download a whole thaw image (every chunk checked against its XXH3-128) or a plain\n"
		   "object (every part pinned to one ETag) into FILE.  FILE appears only when complete.\n\n"
		   "  --jobs N       GETs in flight (default 16)\n"
		   "  --part-size N  ranged-GET size for plain objects (default 8M)\n");
}

int cmd_pull(int argc, char **argv)
{
	int jobs = 16;
	uint64_t part = 8u << 20;
	static const struct option opts[] = { { "jobs", 1, 0, 'j' }, { "part-size", 1, 0, 'p' },
					      { "help", 0, 0, 'h' }, { 0, 0, 0, 0 } };
	int c;
	while ((c = getopt_long(argc, argv, "j:p:h", opts, NULL)) != -1) {
		uint64_t v;
		switch (c) {
		case 'j':
			if (cli_parse_size(optarg, &v) < 0 || v < 1 || v > 256) {
				fprintf(stderr, "thaw pull: --jobs must be 1..256\n");
				return 2;
			}
			jobs = (int)v;
			break;
		case 'p':
			if (cli_parse_size(optarg, &part) < 0 || part < 4096 || part > (1ull << 30)) {
				fprintf(stderr, "thaw pull: --part-size must be 4K..1G\n");
				return 2;
			}
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (argc - optind != 2) {
		usage(stderr);
		return 2;
	}
	const char *url = argv[optind];
	struct pull p = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .fd = -1 };
	p.out = argv[optind + 1];
	char key[STORE_KEY_MAX], tmp[4200];
	if (cli_open(url, jobs, &p.s, key, sizeof key) < 0)
		return cli_fail("pull");
	struct blob_opts bo;
	blob_opts_default(&bo);
	bo.plain_chunk_size = 1u << 20; /* the blob only describes the object here; it fetches nothing */
	struct blob *b = NULL;
	uint64_t t0 = now_ns();
	int rc = blob_open(p.s, key, &bo, &b);
	if (rc < 0) {
		store_close(p.s);
		return cli_fail("pull");
	}
	p.ix = blob_index(b);
	p.key = key;
	p.etag = blob_etag(b);
	p.size = blob_size(b);
	p.cs = p.ix ? blob_chunk_size(b) : part;
	snprintf(tmp, sizeof tmp, "%s.thaw-part", p.out);
	p.fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (p.fd < 0) {
		rc = err_set(errno, "create %s: %s", tmp, strerror(errno));
		goto out;
	}
	if (ftruncate(p.fd, (off_t)p.size) < 0) {
		rc = err_set(errno, "size %s to %llu bytes: %s", tmp, (unsigned long long)p.size, strerror(errno));
		goto out;
	}
	uint64_t units;
	if (p.ix) {
		/* Group chunk positions by unique entry (a counting sort). */
		units = p.ix->nunique;
		p.start = calloc(units + 2, sizeof *p.start);
		p.order = malloc((p.ix->nchunks + 1) * sizeof *p.order);
		if (!p.start || !p.order) {
			rc = err_set(ENOMEM, "out of memory");
			goto out;
		}
		for (uint64_t i = 0; i < p.ix->nchunks; i++)
			if (p.ix->map[i])
				p.start[p.ix->map[i]]++;
		for (uint64_t u = 1; u <= units + 1; u++)
			p.start[u] += p.start[u - 1];
		uint64_t *fill = calloc(units + 1, sizeof *fill);
		if (!fill) {
			rc = err_set(ENOMEM, "out of memory");
			goto out;
		}
		for (uint64_t i = 0; i < p.ix->nchunks; i++) {
			uint32_t m = p.ix->map[i];
			if (m)
				p.order[p.start[m - 1] + fill[m - 1]++] = i;
		}
		free(fill);
	} else {
		units = (p.size + p.cs - 1) / p.cs;
	}
	struct progress pr;
	progress_init(&pr, "pull", p.size);
	for (uint64_t u = 0; u < units && !p.failed; u++) {
		if (p.ix && p.start[u] == p.start[u + 1])
			continue; /* an entry nothing refers to */
		if (submit(&p, u, (uint64_t)jobs) < 0) {
			pthread_mutex_lock(&p.mu);
			if (!p.failed) {
				p.failed = 1;
				snprintf(p.err, sizeof p.err, "%s", err_msg());
			}
			pthread_mutex_unlock(&p.mu);
		}
		progress_update(&pr, p.done_bytes, NULL);
	}
	pthread_mutex_lock(&p.mu);
	while (p.inflight > 0) {
		struct timespec dl = deadline_after_ms(100);
		pthread_cond_timedwait(&p.cv, &p.mu, &dl);
		progress_update(&pr, p.done_bytes, NULL);
	}
	pthread_mutex_unlock(&p.mu);
	progress_finish(&pr);
	if (p.failed)
		rc = err_set(EIO, "%s", p.err);
	if (rc == 0 && fsync(p.fd) < 0)
		rc = err_set(errno, "flushing %s: %s", tmp, strerror(errno));
	if (rc == 0 && rename(tmp, p.out) < 0)
		rc = err_set(errno, "rename %s to %s: %s", tmp, p.out, strerror(errno));
	if (rc == 0) {
		double secs = (double)(now_ns() - t0) / 1e9;
		char a[32], r[32], f[32];
		fmt_bytes((double)p.size, a, sizeof a);
		fmt_bytes((double)p.fetched, f, sizeof f);
		fmt_bytes(secs > 0 ? (double)p.size / secs : 0, r, sizeof r);
		printf("pulled %s (%s %s) into %s in %.2f s (%s/s), %s fetched, every %s\n", url,
		       p.ix ? "thaw image," : "plain object,", a, p.out, secs, r, f,
		       p.ix ? "chunk verified" : "part pinned to one ETag");
	}
out:
	if (p.fd >= 0) {
		close(p.fd);
		if (rc < 0)
			unlink(tmp);
	}
	free(p.order);
	free(p.start);
	blob_close(b);
	store_close(p.s);
	return rc < 0 ? cli_fail("pull") : 0;
}
