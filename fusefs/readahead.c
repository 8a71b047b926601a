/* readahead.c - the sequential-read window (see readahead.h). */
#include "readahead.h"

void ra_init(struct ra *r, uint64_t min, uint64_t max)
{
	r->next = r->issued = 0;
	r->min = min ? min : 1;
	r->max = max < r->min ? r->min : max;
	r->win = r->min;
	r->reads = 0;
}

int ra_advance(struct ra *r, uint64_t off, uint64_t len, uint64_t size, uint64_t *from, uint64_t *to)
{
	uint64_t end = off + len;
	/* A stream that starts at 0 is taken as sequential from its first read:
	 * waiting for the second would cost every cold `cat` a round trip. */
	int seq = r->reads ? off + RA_SLACK >= r->next && off <= r->next + RA_SLACK : off == 0;
	if (!seq) {
		r->win = r->min;
		r->next = r->issued = end;
		r->reads = 1;
		return 0;
	}
	r->reads++;
	if (end > r->next)
		r->next = end;
	if (r->issued < r->next)
		r->issued = r->next;
	if (r->issued >= size)
		return 0;
	/* Top up when less than half a window is still ahead of the reader. */
	if (r->issued - r->next >= r->win / 2)
		return 0;
	uint64_t target = r->next + r->win;
	if (target > size)
		target = size;
	if (target <= r->issued)
		return 0;
	*from = r->issued;
	*to = target;
	r->issued = target;
	r->win = r->win * 2 > r->max ? r->max : r->win * 2;
	return 1;
}
