/* cmd_push.c - `thaw push FILE URL`: store a file as a thaw image.
 *
 * The file is mapped and walked chunk by chunk on this thread: an all-zero
 * chunk is only noted in the map, a chunk seen earlier in this file points at
 * its twin, and a new one is hashed (XXH3-128) and handed to the store: a HEAD
 * asks whether the bucket already holds it (content addressing makes pushes of
 * similar images cheap), and only then a PUT.  At most --jobs chunks are in
 * flight.  The index goes last, so a reader never sees an image whose chunks
 * are not all there yet. */
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/progress.h"
#include "../common/timeutil.h"
#include "../objstore/format.h"
#include "cli.h"

#define DEFAULT_CHUNK (1u << 20)

struct push {
	struct store *s;
	const uint8_t *data;
	struct img_index ix;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int inflight, jobs;
	int failed;
	char err[ERR_MSG_MAX];
	uint64_t done_bytes, uploaded, existed, up_bytes;
};

struct pjob {
	struct store_op op;
	struct push *p;
	uint64_t len;
};

static void job_finish(struct push *p, struct pjob *j, int rc, const char *msg)
{
	pthread_mutex_lock(&p->mu);
	if (rc < 0 && !p->failed) {
		p->failed = 1;
		snprintf(p->err, sizeof p->err, "%s", msg);
	}
	p->done_bytes += j->len;
	p->inflight--;
	pthread_cond_signal(&p->cv);
	pthread_mutex_unlock(&p->mu);
	free(j);
}

static void put_done(struct store_op *op)
{
	struct pjob *j = op->arg;
	if (op->rc == 0) {
		__atomic_add_fetch(&j->p->uploaded, 1, __ATOMIC_RELAXED);
		__atomic_add_fetch(&j->p->up_bytes, j->len, __ATOMIC_RELAXED);
	}
	job_finish(j->p, j, op->rc, op->errmsg);
}

static void head_done(struct store_op *op)
{
	struct pjob *j = op->arg;
	struct push *p = j->p;
	if (op->rc == 0 && op->obj_size == j->len) {
		__atomic_add_fetch(&p->existed, 1, __ATOMIC_RELAXED);
		job_finish(p, j, 0, NULL);
		return;
	}
	if (op->rc < 0 && op->rc != -ENOENT) {
		job_finish(p, j, op->rc, op->errmsg);
		return;
	}
	/* Missing (or a stray object of the wrong size under our key): store it. */
	const void *buf = op->buf;
	char key[STORE_KEY_MAX];
	memcpy(key, op->key, sizeof key);
	memset(op, 0, sizeof *op);
	memcpy(op->key, key, sizeof key);
	op->kind = STORE_PUT;
	op->buf = (void *)buf;
	op->len = j->len;
	op->done = put_done;
	op->arg = j;
	if (store_submit(p->s, op) < 0)
		job_finish(p, j, -EIO, err_msg());
}

/* Open-addressing set of unique hashes: slot holds 1 + index into ix.hashes. */
static uint32_t *find_slot(uint32_t *tab, uint64_t mask, const struct img_index *ix, const struct img_hash *h)
{
	uint64_t k;
	memcpy(&k, h->b, 8);
	for (uint64_t i = k & mask;; i = (i + 1) & mask)
		if (!tab[i] || !memcmp(&ix->hashes[tab[i] - 1], h, sizeof *h))
			return &tab[i];
}

static void usage(FILE *f)
{
	fprintf(f, "usage: thaw push FILE URL [--chunk-size N] [--sub-block N] [--jobs N]\n\n"
		   "Store FILE at URL as a thaw image: fixed-size chunks, all-zero chunks not stored,\n"
		   "identical chunks stored once per bucket (for file://, per directory) under\n"
		   ".thaw/chunks/, and an index at URL itself.\n\n"
		   "  --chunk-size N  power of two from 4K to 64M (default 1M; see docs/FORMAT.md)\n"
		   "  --sub-block N   power of two from 4K to the chunk size (default 64K): the index\n"
		   "                  holds a hash of every sub-block, so a mount's random read fetches\n"
		   "                  one sub-block, not its whole chunk (8 bytes of index per sub-block)\n"
		   "  --jobs N        uploads in flight (default 16)\n");
}

int cmd_push(int argc, char **argv)
{
	uint64_t cs = DEFAULT_CHUNK, sb = 1ull << IMG_SUB_SHIFT_DEFAULT;
	int jobs = 16, sb_given = 0;
	static const struct option opts[] = { { "chunk-size", 1, 0, 'c' }, { "jobs", 1, 0, 'j' },
					      { "sub-block", 1, 0, 's' }, { "help", 0, 0, 'h' },
					      { 0, 0, 0, 0 } };
	int c;
	while ((c = getopt_long(argc, argv, "c:j:s:h", opts, NULL)) != -1) {
		uint64_t v;
		switch (c) {
		case 'c':
			if (cli_parse_size(optarg, &cs) < 0)
				return cli_fail("push");
			break;
		case 's':
			if (cli_parse_size(optarg, &sb) < 0)
				return cli_fail("push");
			sb_given = 1;
			break;
		case 'j':
			if (cli_parse_size(optarg, &v) < 0 || v < 1 || v > 256) {
				fprintf(stderr, "thaw push: --jobs must be 1..256\n");
				return 2;
			}
			jobs = (int)v;
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (argc - optind != 2) {
		usage(stderr);
		return 2;
	}
	if (cs & (cs - 1) || cs < (1u << IMG_MIN_SHIFT) || cs > (1u << IMG_MAX_SHIFT)) {
		fprintf(stderr, "thaw push: --chunk-size must be a power of two from 4K to 64M\n");
		return 2;
	}
	if (!sb_given && sb > cs)
		sb = cs; /* small chunks: one sub-block each */
	if (sb & (sb - 1) || sb < (1u << IMG_MIN_SHIFT) || sb > cs) {
		fprintf(stderr, "thaw push: --sub-block must be a power of two from 4K to the chunk size\n");
		return 2;
	}
	const char *file = argv[optind], *url = argv[optind + 1];
	int fd = open(file, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) {
		fprintf(stderr, "thaw push: %s: %s\n", file, strerror(errno));
		return 1;
	}
	if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
		fprintf(stderr, "thaw push: %s is not a regular file\n", file);
		return 1;
	}
	uint64_t size = (uint64_t)st.st_size;
	struct push p = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .jobs = jobs };
	char key[STORE_KEY_MAX];
	if (cli_open(url, jobs, &p.s, key, sizeof key) < 0)
		return cli_fail("push");
	if (!key[0] || key[strlen(key) - 1] == '/') {
		fprintf(stderr, "thaw push: %s names a directory; give the image a name\n", url);
		store_close(p.s);
		return 2;
	}
	if (size) {
		p.data = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
		if (p.data == MAP_FAILED) {
			fprintf(stderr, "thaw push: map %s: %s\n", file, strerror(errno));
			return 1;
		}
		madvise((void *)p.data, size, MADV_SEQUENTIAL);
	}
	p.ix.size = size;
	p.ix.chunk_shift = (uint32_t)__builtin_ctzll(cs);
	p.ix.nchunks = (size + cs - 1) / cs;
	uint64_t tabn = 16;
	while (tabn < 2 * p.ix.nchunks)
		tabn <<= 1;
	p.ix.sub_shift = (uint32_t)__builtin_ctzll(sb);
	uint64_t subs = cs / sb;
	p.ix.map = calloc(p.ix.nchunks + 1, sizeof *p.ix.map);
	p.ix.hashes = malloc((p.ix.nchunks + 1) * sizeof *p.ix.hashes);
	p.ix.sub = malloc((p.ix.nchunks + 1) * subs * sizeof *p.ix.sub);
	uint32_t *tab = calloc(tabn, sizeof *tab);
	if (!p.ix.map || !p.ix.hashes || !p.ix.sub || !tab) {
		fprintf(stderr, "thaw push: out of memory for %llu chunks\n", (unsigned long long)p.ix.nchunks);
		return 1;
	}
	struct progress pr;
	progress_init(&pr, "push", size);
	uint64_t t0 = now_ns(), zero = 0, dup = 0;
	for (uint64_t i = 0; i < p.ix.nchunks && !p.failed; i++) {
		uint64_t len = img_chunk_len(&p.ix, i);
		const uint8_t *d = p.data + i * cs;
		if (img_is_zero(d, len)) {
			zero++;
			p.done_bytes += len;
			continue;
		}
		struct img_hash h;
		img_hash_chunk(d, len, &h);
		uint32_t *slot = find_slot(tab, tabn - 1, &p.ix, &h);
		if (*slot) {
			p.ix.map[i] = *slot;
			dup++;
			pthread_mutex_lock(&p.mu);
			p.done_bytes += len;
			pthread_mutex_unlock(&p.mu);
			continue;
		}
		img_sub_hash(d, len, p.ix.sub_shift, subs, p.ix.sub + p.ix.nunique * subs);
		p.ix.hashes[p.ix.nunique++] = h;
		*slot = (uint32_t)p.ix.nunique;
		p.ix.map[i] = *slot;
		struct pjob *j = calloc(1, sizeof *j);
		if (!j) {
			p.failed = 1;
			snprintf(p.err, sizeof p.err, "out of memory");
			break;
		}
		j->p = &p;
		j->len = len;
		j->op.kind = STORE_HEAD;
		img_chunk_key(&h, j->op.key, sizeof j->op.key);
		j->op.buf = (void *)d;
		j->op.done = head_done;
		j->op.arg = j;
		pthread_mutex_lock(&p.mu);
		while (p.inflight >= p.jobs)
			pthread_cond_wait(&p.cv, &p.mu);
		p.inflight++;
		uint64_t db = p.done_bytes;
		pthread_mutex_unlock(&p.mu);
		if (store_submit(p.s, &j->op) < 0) {
			snprintf(p.err, sizeof p.err, "%s", err_msg());
			p.failed = 1;
			pthread_mutex_lock(&p.mu);
			p.inflight--;
			pthread_mutex_unlock(&p.mu);
			free(j);
			break;
		}
		progress_update(&pr, db, NULL);
	}
	/* Each op is bounded by the store's retry budget, so this wait ends. */
	pthread_mutex_lock(&p.mu);
	while (p.inflight > 0) {
		struct timespec dl = deadline_after_ms(100);
		pthread_cond_timedwait(&p.cv, &p.mu, &dl);
		progress_update(&pr, p.done_bytes, NULL);
	}
	pthread_mutex_unlock(&p.mu);
	int rc = 0;
	if (p.failed) {
		err_set(EIO, "%s", p.err);
		rc = -EIO;
	}
	if (rc == 0) {
		void *enc;
		size_t enclen;
		rc = img_encode(&p.ix, &enc, &enclen);
		if (rc == 0) {
			rc = store_put(p.s, key, enc, enclen);
			free(enc);
		}
	}
	progress_finish(&pr);
	double secs = (double)(now_ns() - t0) / 1e9;
	if (rc == 0) {
		char a[32], b[32], r[32];
		fmt_bytes((double)size, a, sizeof a);
		fmt_bytes((double)p.up_bytes, b, sizeof b);
		fmt_bytes(secs > 0 ? (double)size / secs : 0, r, sizeof r);
		printf("pushed %s to %s in %.2f s (%s/s): %llu chunks of %llu KiB, %llu zero, %llu repeated, "
		       "%llu already in the store, %llu uploaded (%s)\n",
		       a, url, secs, r, (unsigned long long)p.ix.nchunks, (unsigned long long)(cs >> 10),
		       (unsigned long long)zero, (unsigned long long)dup, (unsigned long long)p.existed,
		       (unsigned long long)p.uploaded, b);
	}
	if (size)
		munmap((void *)p.data, size);
	close(fd);
	free(tab);
	img_index_free(&p.ix);
	store_close(p.s);
	return rc < 0 ? cli_fail("push") : 0;
}
