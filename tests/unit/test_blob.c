/* test_blob.c - the lazy blob over a real file:// store: byte-exact reads of
 * images and plain objects, one fetch per chunk however many readers wait,
 * priorities, hydration order, verification failures, a changed object, the
 * persistent cache surviving a reopen (and refusing a damaged chunk), and a
 * format 2 image read in sub-blocks. */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../common/err.h"
#include "../../objstore/blob.h"
#include "check.h"

#define CS (64u << 10)
static char dir[256];
static uint8_t *src;
static uint64_t srclen;

/* Write src as an image at key, the way `thaw push` lays it out; with
 * sub-block hashes of 2^sub_shift bytes (format 2) unless sub_shift is 0. */
static void put_image(struct store *s, const char *key, uint32_t shift, uint32_t sub_shift)
{
	struct img_index ix = { .size = srclen, .chunk_shift = shift, .sub_shift = sub_shift };
	uint64_t cs = 1ull << shift, subs = sub_shift ? cs >> sub_shift : 0;
	ix.nchunks = (srclen + cs - 1) / cs;
	ix.map = calloc(ix.nchunks + 1, 4);
	ix.hashes = calloc(ix.nchunks + 1, 16);
	if (subs)
		ix.sub = calloc((ix.nchunks + 1) * subs, 8);
	for (uint64_t i = 0; i < ix.nchunks; i++) {
		uint64_t len = img_chunk_len(&ix, i);
		if (img_is_zero(src + i * cs, len))
			continue;
		struct img_hash h;
		img_hash_chunk(src + i * cs, len, &h);
		uint64_t u;
		for (u = 0; u < ix.nunique && memcmp(&ix.hashes[u], &h, 16); u++)
			;
		if (u == ix.nunique) {
			if (subs)
				img_sub_hash(src + i * cs, len, sub_shift, subs, ix.sub + ix.nunique * subs);
			ix.hashes[ix.nunique++] = h;
			char k[128];
			img_chunk_key(&h, k, sizeof k);
			CHECK_RC(store_put(s, k, src + i * cs, len));
		}
		ix.map[i] = (uint32_t)u + 1;
	}
	void *enc;
	size_t elen;
	CHECK_RC(img_encode(&ix, &enc, &elen));
	CHECK_RC(store_put(s, key, enc, elen));
	free(enc);
	img_index_free(&ix);
}

static void make_src(uint64_t len)
{
	srclen = len;
	src = malloc(len);
	unsigned seed = 7;
	for (uint64_t i = 0; i < len; i++)
		src[i] = (uint8_t)rand_r(&seed);
	memset(src + 3 * CS, 0, 2 * CS);          /* two zero chunks */
	memcpy(src + 6 * CS, src + 8 * CS, CS);   /* a repeated chunk */
}

struct reader {
	struct blob *b;
	uint64_t off, len;
	int ok;
};

static void *read_thread(void *arg)
{
	struct reader *r = arg;
	uint8_t *buf = malloc(r->len);
	ssize_t n = blob_read(r->b, buf, r->len, r->off, PRIO_DEMAND);
	r->ok = n == (ssize_t)r->len && !memcmp(buf, src + r->off, r->len);
	free(buf);
	return NULL;
}

static uint64_t order[4096];
static int norder;
static pthread_mutex_t order_mu = PTHREAD_MUTEX_INITIALIZER;
static void record(void *arg, uint64_t idx, int rc)
{
	(void)arg;
	pthread_mutex_lock(&order_mu);
	if (rc == 0 && norder < 4096)
		order[norder++] = idx;
	pthread_mutex_unlock(&order_mu);
}

static void test_image_reads(struct store *s)
{
	struct blob *b;
	CHECK_RC(blob_open(s, "img", NULL, &b));
	CHECK(blob_is_image(b) && blob_size(b) == srclen && blob_chunk_size(b) == CS);
	CHECK(blob_chunk_is_zero(b, 3) && blob_chunk_is_zero(b, 4) && !blob_chunk_is_zero(b, 0));
	uint64_t gets0 = atomic_load(&s->stats.gets);
	/* Eight threads hit the same chunk: one fetch. */
	pthread_t t[8];
	struct reader r[8];
	for (int i = 0; i < 8; i++) {
		r[i] = (struct reader){ b, 10 * CS + (uint64_t)i * 100, 5000, 0 };
		pthread_create(&t[i], NULL, read_thread, &r[i]);
	}
	int all = 1;
	for (int i = 0; i < 8; i++) {
		pthread_join(t[i], NULL);
		all &= r[i].ok;
	}
	CHECK(all);
	CHECK(atomic_load(&s->stats.gets) - gets0 == 1);
	/* Random reads across chunk boundaries, then the whole thing. */
	unsigned seed = 3;
	uint8_t *buf = malloc(srclen);
	int good = 1;
	for (int i = 0; i < 200; i++) {
		uint64_t off = (uint64_t)rand_r(&seed) % srclen, len = 1 + (uint64_t)rand_r(&seed) % (3 * CS);
		if (len > srclen - off)
			len = srclen - off;
		good &= blob_read(b, buf, len, off, PRIO_DEMAND) == (ssize_t)len && !memcmp(buf, src + off, len);
	}
	CHECK(good);
	CHECK(blob_read(b, buf, srclen + 100, 0, PRIO_DEMAND) == (ssize_t)srclen && !memcmp(buf, src, srclen));
	CHECK(blob_read(b, buf, 10, srclen, PRIO_DEMAND) == 0);
	struct blob_stats st;
	blob_get_stats(b, &st);
	CHECK(st.chunks_present == st.nchunks && st.chunks_zero == 2);
	/* Zero chunks and repeats cost nothing extra: at most one GET per non-zero chunk. */
	CHECK(st.fetches == st.nchunks - 2);
	CHECK(blob_complete(b));
	/* Dropping the memory makes every fetched chunk absent; reads fetch again, correctly. */
	CHECK_RC(blob_drop_memory(b));
	blob_get_stats(b, &st);
	CHECK(st.chunks_present == st.chunks_zero && !blob_chunk_present(b, 0) && blob_chunk_present(b, 3));
	CHECK(blob_read(b, buf, srclen, 0, PRIO_DEMAND) == (ssize_t)srclen && !memcmp(buf, src, srclen));
	blob_get_stats(b, &st);
	CHECK(st.fetches == 2 * (st.nchunks - 2));
	free(buf);
	blob_close(b);
}

static void test_hydrate_order(const struct thaw_url *u)
{
	/* One store thread, so completions (and listener calls) come in fetch order. */
	struct store_config cfg;
	store_config_default(&cfg);
	cfg.max_inflight = 1;
	struct store *s;
	CHECK_RC(store_open(u, &cfg, &s));
	struct blob_opts o;
	blob_opts_default(&o);
	o.jobs = 1; /* one fetch at a time makes the order observable */
	struct blob *b;
	CHECK_RC(blob_open(s, "img", &o, &b));
	blob_set_listener(b, record, NULL);
	norder = 0;
	uint64_t first[] = { 20, 15 };
	CHECK_RC(blob_hydrate_start(b, first, 2));
	CHECK_RC(blob_hydrate_wait(b, 30000));
	CHECK(blob_complete(b));
	pthread_mutex_lock(&order_mu);
	CHECK(norder >= 3 && order[0] == 20 && order[1] == 15);
	uint64_t last = blob_nchunks(b) - 1;
	/* After the working set, address order. */
	int ascending = 1;
	uint64_t prev = 0;
	for (int i = 0; i < norder; i++) {
		if (order[i] == 20 || order[i] == 15)
			continue;
		ascending &= order[i] >= prev;
		prev = order[i];
	}
	CHECK(ascending);
	if (!ascending)
		for (int i = 0; i < norder; i++)
			fprintf(stderr, "order[%d] = %llu\n", i, (unsigned long long)order[i]);
	pthread_mutex_unlock(&order_mu);
	blob_close(b);
	store_close(s);

	/* A demand jumps the background queue.  The background is capped at one
	 * chunk a second, so whatever the scheduler does, only the chunk started
	 * at once can come before the demanded one. */
	CHECK_RC(store_open(u, &cfg, &s));
	o.bg_bytes_per_sec = CS;
	CHECK_RC(blob_open(s, "img", &o, &b));
	blob_set_listener(b, record, NULL);
	pthread_mutex_lock(&order_mu);
	norder = 0;
	pthread_mutex_unlock(&order_mu);
	CHECK_RC(blob_hydrate_start(b, NULL, 0));
	CHECK_RC(blob_ensure(b, last, PRIO_DEMAND));
	/* The listener runs just after waiters wake; give it a moment. */
	for (int i = 0; i < 200; i++) {
		pthread_mutex_lock(&order_mu);
		int seen = norder && order[norder - 1] == last;
		pthread_mutex_unlock(&order_mu);
		if (seen)
			break;
		usleep(5000);
	}
	pthread_mutex_lock(&order_mu);
	CHECK(norder >= 1 && norder <= 2 && order[norder - 1] == last);
	pthread_mutex_unlock(&order_mu);
	blob_close(b);
	store_close(s);
}

static void corrupt_file(const char *path, off_t at)
{
	int fd = open(path, O_RDWR);
	uint8_t c;
	CHECK(pread(fd, &c, 1, at) == 1);
	c ^= 0x40;
	CHECK(pwrite(fd, &c, 1, at) == 1);
	close(fd);
}

static void test_corrupt_chunk(struct store *s)
{
	/* Damage the stored object of chunk 0 of a fresh copy of the image. */
	struct blob *b;
	CHECK_RC(blob_open(s, "img", NULL, &b));
	char key[128], path[512];
	img_chunk_key(&blob_index(b)->hashes[blob_index(b)->map[0] - 1], key, sizeof key);
	snprintf(path, sizeof path, "%s/%s", dir, key);
	corrupt_file(path, 100);
	uint8_t buf[64];
	ssize_t n = blob_read(b, buf, sizeof buf, 0, PRIO_DEMAND);
	CHECK(n < 0 && strstr(err_msg(), "XXH3"));
	struct blob_stats st;
	blob_get_stats(b, &st);
	CHECK(st.verify_failures == 2); /* fetched, refused, fetched again, refused */
	/* Other chunks still read fine. */
	CHECK(blob_read(b, buf, sizeof buf, 2 * CS, PRIO_DEMAND) == sizeof buf && !memcmp(buf, src + 2 * CS, 64));
	corrupt_file(path, 100); /* heal it */
	CHECK(blob_read(b, buf, sizeof buf, 0, PRIO_DEMAND) == sizeof buf && !memcmp(buf, src, 64));
	/* A missing chunk object is an error naming the chunk. */
	img_chunk_key(&blob_index(b)->hashes[blob_index(b)->map[1] - 1], key, sizeof key);
	snprintf(path, sizeof path, "%s/%s", dir, key);
	char moved[600];
	snprintf(moved, sizeof moved, "%s.away", path);
	CHECK(rename(path, moved) == 0);
	n = blob_read(b, buf, sizeof buf, CS, PRIO_DEMAND);
	CHECK(n < 0 && strstr(err_msg(), "chunk 1"));
	CHECK(rename(moved, path) == 0);
	/* A background request does not retry a failed chunk; a demand request does. */
	blob_request(b, 1, PRIO_BACKGROUND);
	usleep(50000);
	CHECK(!blob_chunk_present(b, 1));
	blob_request(b, 1, PRIO_DEMAND);
	for (int i = 0; i < 200 && !blob_chunk_present(b, 1); i++)
		usleep(5000);
	CHECK(blob_chunk_present(b, 1));
	CHECK(blob_read(b, buf, sizeof buf, CS, PRIO_DEMAND) == sizeof buf);
	blob_close(b);
}

/* Format 2 read in sub-blocks (4 KiB of 64 KiB chunks): a read fetches its
 * sub-block alone, zero chunks need no fetch, every byte is right, and a
 * damaged sub-block fails by itself while the rest of its chunk reads.  The
 * same image opened without image_sub_blocks is read in whole chunks. */
static void test_image_sub_blocks(struct store *s)
{
	put_image(s, "imgsub", 16, 12);
	struct blob *b;
	CHECK_RC(blob_open(s, "imgsub", NULL, &b));
	CHECK(blob_chunk_size(b) == CS && blob_nchunks(b) == (srclen + CS - 1) / CS);
	blob_close(b);
	struct blob_opts o;
	blob_opts_default(&o);
	o.image_sub_blocks = 1;
	CHECK_RC(blob_open(s, "imgsub", &o, &b));
	CHECK(blob_is_image(b) && blob_size(b) == srclen && blob_chunk_size(b) == 4096);
	CHECK(blob_nchunks(b) == (srclen + 4095) / 4096);
	CHECK(blob_chunk_is_zero(b, 3 * 16) && blob_chunk_is_zero(b, 5 * 16 - 1) && !blob_chunk_is_zero(b, 5 * 16));
	struct blob_stats st;
	uint8_t buf[100];
	CHECK(blob_read(b, buf, sizeof buf, 7 * CS + 5 * 4096 + 7, PRIO_DEMAND) == sizeof buf &&
	      !memcmp(buf, src + 7 * CS + 5 * 4096 + 7, sizeof buf));
	blob_get_stats(b, &st);
	CHECK(st.bytes_fetched == 4096 && st.fetches == 1);
	CHECK(blob_read(b, buf, sizeof buf, 3 * CS + 100, PRIO_DEMAND) == sizeof buf && img_is_zero(buf, sizeof buf));
	blob_get_stats(b, &st);
	CHECK(st.fetches == 1);
	uint8_t *all = malloc(srclen);
	CHECK(blob_read(b, all, srclen, 0, PRIO_DEMAND) == (ssize_t)srclen && !memcmp(all, src, srclen));
	free(all);
	blob_close(b);

	/* Damage sub-block 2 of chunk 9's object: it fails (after one more
	 * try); sub-blocks 0 and 3 of the same chunk still read. */
	CHECK_RC(blob_open(s, "imgsub", &o, &b));
	char key[128], path[512];
	img_chunk_key(&blob_index(b)->hashes[blob_index(b)->map[9] - 1], key, sizeof key);
	snprintf(path, sizeof path, "%s/%s", dir, key);
	corrupt_file(path, 2 * 4096 + 10);
	ssize_t n = blob_read(b, buf, sizeof buf, 9 * CS + 2 * 4096, PRIO_DEMAND);
	CHECK(n < 0 && strstr(err_msg(), "sub-block 2"));
	blob_get_stats(b, &st);
	CHECK(st.verify_failures == 2);
	CHECK(blob_read(b, buf, sizeof buf, 9 * CS, PRIO_DEMAND) == sizeof buf && !memcmp(buf, src + 9 * CS, sizeof buf));
	CHECK(blob_read(b, buf, sizeof buf, 9 * CS + 3 * 4096, PRIO_DEMAND) == sizeof buf &&
	      !memcmp(buf, src + 9 * CS + 3 * 4096, sizeof buf));
	blob_close(b);
	/* One GET for the whole chunk: the sub-blocks before the bad one are
	 * published as they land, the fetch is asked again from the bad one on
	 * (and fails again); a later read of one past it succeeds. */
	CHECK_RC(blob_open(s, "imgsub", &o, &b));
	uint8_t *chunk = malloc(CS);
	CHECK(blob_read(b, chunk, CS, 9 * CS, PRIO_DEMAND) < 0 && strstr(err_msg(), "sub-block 2"));
	blob_get_stats(b, &st);
	CHECK(st.verify_failures == 2 && st.fetches == 1);
	CHECK(blob_chunk_present(b, 9 * 16) && blob_chunk_present(b, 9 * 16 + 1) && !blob_chunk_present(b, 9 * 16 + 2));
	CHECK(blob_read(b, buf, sizeof buf, 9 * CS + 5 * 4096, PRIO_DEMAND) == sizeof buf &&
	      !memcmp(buf, src + 9 * CS + 5 * 4096, sizeof buf));
	corrupt_file(path, 2 * 4096 + 10); /* heal it */
	CHECK(blob_read(b, chunk, CS, 9 * CS, PRIO_DEMAND) == CS && !memcmp(chunk, src + 9 * CS, CS));
	free(chunk);
	blob_close(b);
}

static void test_plain_object(struct store *s)
{
	CHECK_RC(store_put(s, "plain.bin", src, srclen));
	struct blob_opts o;
	blob_opts_default(&o);
	o.plain_chunk_size = 16384;
	struct blob *b;
	CHECK_RC(blob_open(s, "plain.bin", &o, &b));
	CHECK(!blob_is_image(b) && blob_size(b) == srclen && blob_nchunks(b) == (srclen + 16383) / 16384);
	/* The probe GET at open brought the first 64 KiB: those chunks cost no fetch. */
	struct blob_stats st0;
	blob_get_stats(b, &st0);
	CHECK(blob_chunk_present(b, 0) && blob_chunk_present(b, 3) && !blob_chunk_present(b, 4) && st0.fetches == 0);
	uint8_t *buf = malloc(srclen);
	CHECK(blob_read(b, buf, 70000, 5000, PRIO_DEMAND) == 70000 && !memcmp(buf, src + 5000, 70000));
	/* The object changes under the reader: an error, never a mix of versions. */
	usleep(10000);
	src[0] ^= 1;
	CHECK_RC(store_put(s, "plain.bin", src, srclen));
	src[0] ^= 1;
	CHECK_RC(store_put(s, "plain.bin", src, srclen)); /* back to the original for what follows */
	ssize_t n = blob_read(b, buf, 100, srclen - 100, PRIO_DEMAND);
	CHECK(n < 0 && strstr(err_msg(), "changed"));
	/* Chunks fetched before the change are still served (they are the old version, consistently). */
	CHECK(blob_read(b, buf, 1000, 16384, PRIO_DEMAND) == 1000 && !memcmp(buf, src + 16384, 1000));
	blob_close(b);
	/* Hydrating a plain object coalesces adjacent chunks into few ranged GETs;
	 * every byte still lands where it belongs. */
	for (int co = 1; co <= 8; co += 7) {
		struct blob_opts o2 = o;
		o2.coalesce_bytes = (uint64_t)co * o.plain_chunk_size;
		o2.jobs = 2;
		CHECK_RC(blob_open(s, "plain.bin", &o2, &b));
		CHECK_RC(blob_hydrate_start(b, NULL, 0));
		CHECK_RC(blob_hydrate_wait(b, 30000));
		struct blob_stats st;
		blob_get_stats(b, &st);
		if (co == 1) /* the first 64 KiB came with the probe at open */
			CHECK(st.fetches == st.nchunks - IMG_PROBE_LEN / 16384);
		else
			CHECK(st.fetches <= st.nchunks / 4 + 2 && st.bytes_fetched == srclen);
		memset(buf, 0, srclen);
		CHECK(blob_read(b, buf, srclen, 0, PRIO_DEMAND) == (ssize_t)srclen && !memcmp(buf, src, srclen));
		blob_close(b);
	}
	free(buf);
	/* Tiny and empty objects. */
	CHECK_RC(store_put(s, "one", "x", 1));
	CHECK_RC(blob_open(s, "one", NULL, &b));
	char c = 0;
	CHECK(blob_size(b) == 1 && blob_read(b, &c, 10, 0, PRIO_DEMAND) == 1 && c == 'x');
	blob_close(b);
	CHECK_RC(store_put(s, "empty", "", 0));
	CHECK_RC(blob_open(s, "empty", NULL, &b));
	CHECK(blob_size(b) == 0 && blob_nchunks(b) == 0 && blob_complete(b));
	blob_close(b);
	CHECK(blob_open(s, "no-such-key", NULL, &b) == -ENOENT && strstr(err_msg(), "no-such-key"));
	/* The default chunk size: 64 KiB, doubled until the object has at most
	 * 2^20 chunks (a sparse 80 GiB file plays a large object). */
	CHECK_RC(blob_open(s, "one", NULL, &b));
	CHECK(blob_chunk_size(b) == 65536);
	blob_close(b);
	char path[512];
	snprintf(path, sizeof path, "%s/big-sparse", dir);
	int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0600);
	CHECK(fd >= 0 && ftruncate(fd, 80ll << 30) == 0);
	close(fd);
	CHECK_RC(blob_open(s, "big-sparse", NULL, &b));
	CHECK(blob_chunk_size(b) == 128u << 10 && blob_nchunks(b) == (80ull << 30) / (128u << 10));
	blob_close(b);
	unlink(path);
}

static void test_cache(struct store *s)
{
	char cdir[300];
	snprintf(cdir, sizeof cdir, "%s-cache", dir);
	struct blob_opts o;
	blob_opts_default(&o);
	o.cache_dir = cdir;
	struct blob *b;
	CHECK_RC(blob_open(s, "img", &o, &b));
	CHECK(blob_chunk_ptr(b, 0) == NULL);
	uint8_t *buf = malloc(srclen);
	CHECK(blob_read(b, buf, srclen / 2, 0, PRIO_DEMAND) == (ssize_t)(srclen / 2) && !memcmp(buf, src, srclen / 2));
	struct blob_stats st;
	blob_get_stats(b, &st);
	uint64_t had = st.chunks_present - st.chunks_zero;
	blob_close(b);

	/* Reopen: every chunk comes from the cache, nothing is fetched. */
	uint64_t gets0 = atomic_load(&s->stats.gets);
	CHECK_RC(blob_open(s, "img", &o, &b));
	blob_get_stats(b, &st);
	CHECK(st.cache_hits_at_open == had);
	CHECK(blob_read(b, buf, srclen / 2, 0, PRIO_DEMAND) == (ssize_t)(srclen / 2) && !memcmp(buf, src, srclen / 2));
	CHECK(atomic_load(&s->stats.gets) - gets0 == 1); /* the index probe only */
	blob_close(b);

	/* Damage one cached chunk: it is still recorded at open (opening checks
	 * nothing), refused on first use and fetched again. */
	char data[700];
	snprintf(data, sizeof data, "%s/%s/data", cdir, "");
	/* find the one object directory */
	char cmd[800];
	snprintf(cmd, sizeof cmd, "ls -d %s/*/data", cdir);
	FILE *f = popen(cmd, "r");
	CHECK(f && fgets(data, sizeof data, f));
	if (f)
		pclose(f);
	data[strcspn(data, "\n")] = 0;
	corrupt_file(data, 7);
	CHECK_RC(blob_open(s, "img", &o, &b));
	blob_get_stats(b, &st);
	CHECK(st.cache_hits_at_open == had && st.cache_rejects == 0);
	uint64_t f0 = st.fetches;
	CHECK(blob_read(b, buf, srclen, 0, PRIO_DEMAND) == (ssize_t)srclen && !memcmp(buf, src, srclen));
	blob_get_stats(b, &st);
	CHECK(st.cache_rejects == 1);
	/* the damaged chunk plus the second half never cached */
	CHECK(st.fetches - f0 == 1 + (st.nchunks - st.chunks_zero - had));
	blob_close(b);
	/* The refused chunk was fetched and recorded again: the next open finds all. */
	CHECK_RC(blob_open(s, "img", &o, &b));
	blob_get_stats(b, &st);
	CHECK(st.cache_hits_at_open == st.nchunks - st.chunks_zero);
	CHECK(blob_read(b, buf, srclen, 0, PRIO_DEMAND) == (ssize_t)srclen && !memcmp(buf, src, srclen));
	blob_get_stats(b, &st);
	CHECK(st.cache_rejects == 0 && st.fetches == 0);
	blob_close(b);
	free(buf);
	snprintf(cmd, sizeof cmd, "rm -rf %s", cdir);
	CHECK(system(cmd) == 0);
}

int main(void)
{
	snprintf(dir, sizeof dir, "/tmp/thaw-test-blob.%d", getpid());
	char url[300];
	snprintf(url, sizeof url, "file://%s/img", dir);
	struct thaw_url u;
	CHECK_RC(url_parse(url, &u));
	struct store *s;
	CHECK_RC(store_open(&u, NULL, &s));
	make_src(40 * CS + 1234);
	put_image(s, "img", 16, 0);
	test_image_reads(s);
	test_hydrate_order(&u);
	test_cache(s);
	test_plain_object(s);
	test_corrupt_chunk(s);
	test_image_sub_blocks(s);
	store_close(s);
	free(src);
	char cmd[300];
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	CHECK(system(cmd) == 0);
	return check_summary("test_blob");
}
