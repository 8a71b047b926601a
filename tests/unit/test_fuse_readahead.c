/* test_fuse_readahead.c - the readahead window of fusefs/readahead.c: a
 * stream from 0 opens it at once, it doubles up to the cap, it never runs
 * past the end of the file, a little reordering (the kernel's own readahead
 * arrives from several threads) keeps it, a jump resets it, and random
 * reads never prefetch. */
#include <stdio.h>
#include <stdlib.h>

#include "../../common/err.h"
#include "../../fusefs/readahead.h"
#include "check.h"

#define MiB (1ull << 20)

static void test_stream(void)
{
	struct ra r;
	ra_init(&r, 1 * MiB, 16 * MiB);
	uint64_t from = 0, to = 0, size = 1024 * MiB, last_to = 0, max_ahead = 0;
	int issues = 0, contiguous = 1;
	for (uint64_t off = 0; off < 200 * MiB; off += 128 << 10) {
		if (ra_advance(&r, off, 128 << 10, size, &from, &to)) {
			issues++;
			contiguous &= from >= off + (128 << 10) && (last_to == 0 || from == last_to);
			last_to = to;
			if (to - (off + (128 << 10)) > max_ahead)
				max_ahead = to - (off + (128 << 10));
		}
	}
	CHECK(issues > 0);
	CHECK(contiguous);              /* each request starts where the last ended */
	CHECK(max_ahead <= 16 * MiB);   /* the cap */
	CHECK(max_ahead >= 8 * MiB);    /* it grew */
	CHECK(r.win == 16 * MiB);
	/* The first read of a stream from 0 already asks ahead. */
	ra_init(&r, 1 * MiB, 16 * MiB);
	CHECK(ra_advance(&r, 0, 128 << 10, size, &from, &to) && from == 128 << 10 && to == (128 << 10) + MiB);
}

static void test_end_of_file(void)
{
	struct ra r;
	ra_init(&r, 1 * MiB, 64 * MiB);
	uint64_t from, to, size = 3 * MiB + 5, maxto = 0;
	for (uint64_t off = 0; off < size; off += 1 << 20) {
		uint64_t len = size - off < MiB ? size - off : MiB;
		if (ra_advance(&r, off, len, size, &from, &to))
			maxto = to > maxto ? to : maxto;
	}
	CHECK(maxto == size);
}

static void test_reorder_and_reset(void)
{
	struct ra r;
	ra_init(&r, 1 * MiB, 64 * MiB);
	uint64_t from, to, size = 1024 * MiB;
	for (uint64_t off = 0; off < 16 * MiB; off += MiB)
		ra_advance(&r, off, MiB, size, &from, &to);
	uint64_t win = r.win;
	CHECK(win > MiB);
	/* Out of order by a few hundred KiB: still the same stream. */
	ra_advance(&r, 16 * MiB + (512 << 10), 128 << 10, size, &from, &to);
	ra_advance(&r, 16 * MiB, 128 << 10, size, &from, &to);
	CHECK(r.win >= win);
	/* A jump far away: the window starts over and nothing is prefetched. */
	CHECK(!ra_advance(&r, 700 * MiB, 4096, size, &from, &to));
	CHECK(r.win == MiB);
	/* ...and continuing from there is a new stream. */
	CHECK(ra_advance(&r, 700 * MiB + 4096, 4096, size, &from, &to) && from == 700 * MiB + 8192);
}

static void test_random(void)
{
	struct ra r;
	ra_init(&r, 1 * MiB, 64 * MiB);
	uint64_t from, to, size = 1024 * MiB;
	unsigned seed = 11;
	int issued = 0;
	for (int i = 0; i < 1000; i++) {
		uint64_t off = ((uint64_t)rand_r(&seed) * 4096 + 4096) % size; /* never offset 0 */
		issued += ra_advance(&r, off, 4096, size, &from, &to);
	}
	/* Two random reads within RA_SLACK of each other are rare in 1 GiB. */
	CHECK(issued < 20);
}

int main(void)
{
	test_stream();
	test_end_of_file();
	test_reorder_and_reset();
	test_random();
	return check_summary("test_fuse_readahead");
}
