/* test_stage.c - write-behind staging on a real file with O_DIRECT: staged
 * bytes are served before they reach the disk and land there intact; the
 * writer reports each chunk once; a full pool evicts only written, unpinned
 * slots (a pinned chunk's bytes stay put); a written and served chunk leaves
 * memory; the short last chunk, a chunk starting mid-way and a chunk written
 * again while queued are refused as the contract says. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../common/err.h"
#include "../../objstore/stage.h"
#include "check.h"

#define CS (64u << 10)
#define NCH 8
#define SIZE ((uint64_t)NCH * CS + 1000) /* and a short ninth chunk */

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int done_count[NCH + 1], done_err;
static uint64_t done_sum[NCH + 1];

static void on_done(void *arg, uint64_t idx, uint64_t sum, int err)
{
	(void)arg;
	pthread_mutex_lock(&mu);
	if (idx <= NCH) {
		done_count[idx]++;
		done_sum[idx] = sum;
	}
	if (err)
		done_err = err;
	pthread_mutex_unlock(&mu);
}

static uint8_t src[SIZE];

/* Chunk k's bytes in the file equal the source's. */
static int on_disk(int fd, uint64_t k)
{
	static uint8_t buf[CS];
	return pread(fd, buf, CS, (off_t)(k * CS)) == CS && !memcmp(buf, src + k * CS, CS);
}

/* Stage chunk k in two pieces and commit it. */
static int stage_chunk(struct stage *s, uint64_t k)
{
	int a = stage_write(s, k, 0, src + k * CS, CS / 2);
	int b = a == 1 ? stage_write(s, k, CS / 2, src + k * CS + CS / 2, CS / 2) : a;
	return a == 1 && b == 1 && stage_commit(s, k, 1000 + k) == 1;
}

int main(void)
{
	char dir[] = "/var/tmp/thaw-test-stage.XXXXXX", path[64];
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	snprintf(path, sizeof path, "%s/data", dir);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	CHECK(fd >= 0 && ftruncate(fd, (off_t)SIZE) == 0);
	for (size_t i = 0; i < SIZE; i++)
		src[i] = (uint8_t)(i * 2654435761u >> 13);

	struct stage *s = NULL;
	CHECK(stage_open(path, 1000, SIZE, 4 * CS, on_done, NULL, &s) == -EINVAL); /* not a block multiple */
	CHECK(stage_open(path, CS, SIZE, 2 * CS, on_done, NULL, &s) == -EINVAL);   /* too few slots */
	CHECK_RC(stage_open(path, CS, SIZE, 4 * CS, on_done, NULL, &s));
	if (!s)
		return check_summary("test_stage");

	/* Refused: the short last chunk, and a chunk whose first piece is not its start. */
	CHECK(stage_write(s, NCH, 0, src + NCH * CS, 1000) == 0);
	CHECK(stage_write(s, 5, 4096, src + 5 * CS + 4096, 4096) == 0);

	/* A staged chunk is served from memory at once, and reaches the disk. */
	CHECK(stage_chunk(s, 0));
	const uint8_t *p[4];
	int unwritten;
	CHECK(stage_pin(s, 0, 0, p, &unwritten) == 1 && p[0] && !memcmp(p[0], src, CS));
	stage_unpin(s, 0, 0, p);
	CHECK(stage_write(s, 0, 0, src, 4096) < 0); /* complete: not written again */
	CHECK(stage_drain(s, 10000) == 0);
	CHECK(on_disk(fd, 0));
	CHECK(done_count[0] == 1 && done_sum[0] == 1000);

	/* Fill the pool (chunks 0-3, written, not served) and go on: each new
	 * chunk takes the oldest written slot, unless it is pinned. */
	for (uint64_t k = 1; k < 4; k++)
		CHECK(stage_chunk(s, k));
	CHECK(stage_drain(s, 10000) == 0);
	CHECK(stage_pin(s, 1, 1, p, &unwritten) == 1 && !unwritten); /* chunk 1 pinned */
	const uint8_t *pinned1 = p[0];
	CHECK(stage_chunk(s, 4)); /* evicts chunk 0 */
	CHECK(stage_pin(s, 0, 0, p + 1, &unwritten) == 0 && !p[1]);
	CHECK(on_disk(fd, 0));
	CHECK(stage_drain(s, 10000) == 0);
	CHECK(stage_chunk(s, 5)); /* chunk 1 is pinned: evicts 2 */
	CHECK(stage_drain(s, 10000) == 0);
	CHECK(stage_chunk(s, 6)); /* evicts 3 */
	CHECK(!memcmp(pinned1, src + CS, CS));
	const uint8_t *q[8];
	CHECK(stage_pin(s, 0, 6, q, &unwritten) == 4 && !q[0] && q[1] && !q[2] && !q[3] && q[4] && q[5] && q[6]);
	stage_unpin(s, 0, 6, q);
	CHECK(stage_drain(s, 10000) == 0);
	stage_unpin(s, 1, 1, &pinned1);

	/* Written and served: the slot goes; the bytes are on disk. */
	stage_served(s, 4, 4);
	CHECK(stage_pin(s, 4, 4, p, &unwritten) == 0 && !p[0]);
	for (uint64_t k = 0; k < 7; k++)
		CHECK(on_disk(fd, k));
	pthread_mutex_lock(&mu);
	for (uint64_t k = 0; k < 7; k++)
		CHECK(done_count[k] == 1 && done_sum[k] == 1000 + k);
	CHECK(done_err == 0);
	pthread_mutex_unlock(&mu);

	/* Close writes what is queued first. */
	CHECK(stage_chunk(s, 7));
	stage_close(s);
	CHECK(on_disk(fd, 7) && done_count[7] == 1);

	close(fd);
	unlink(path);
	rmdir(dir);
	return check_summary("test_stage");
}
