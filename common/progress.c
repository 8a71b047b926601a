/* progress.c - the progress bar (see progress.h). */
#include <stdio.h>
#include <unistd.h>

#include "progress.h"
#include "timeutil.h"

void fmt_bytes(double n, char *out, int len)
{
	const char *u[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	int i = 0;
	while (n >= 1024 && i < 4) {
		n /= 1024;
		i++;
	}
	snprintf(out, (size_t)len, i ? "%.1f %s" : "%.0f %s", n, u[i]);
}

void progress_init(struct progress *p, const char *label, uint64_t total)
{
	p->label = label;
	p->total = total;
	p->done = 0;
	p->t0_ns = p->last_ns = now_ns();
	p->tty = isatty(2);
}

static void draw(struct progress *p, const char *extra)
{
	char a[32], b[32], r[32];
	double secs = (double)(now_ns() - p->t0_ns) / 1e9;
	double rate = secs > 0 ? (double)p->done / secs : 0;
	int pct = p->total ? (int)(100.0 * (double)p->done / (double)p->total) : 100;
	char bar[31];
	int fill = pct * 30 / 100;
	for (int i = 0; i < 30; i++)
		bar[i] = i < fill ? '#' : '.';
	bar[30] = 0;
	fmt_bytes((double)p->done, a, sizeof a);
	fmt_bytes((double)p->total, b, sizeof b);
	fmt_bytes(rate, r, sizeof r);
	fprintf(stderr, "\r%s [%s] %3d%% %s / %s  %s/s %s\033[K", p->label, bar, pct, a, b, r, extra ? extra : "");
}

void progress_update(struct progress *p, uint64_t done, const char *extra)
{
	p->done = done;
	if (!p->tty)
		return;
	uint64_t t = now_ns();
	if (t - p->last_ns < 100000000ull)
		return;
	p->last_ns = t;
	draw(p, extra);
}

void progress_finish(struct progress *p)
{
	if (!p->tty)
		return;
	draw(p, NULL);
	fputc('\n', stderr);
}
