/* progress.h - a one-line progress bar on stderr, drawn only when stderr is a
 * terminal and at most ten times a second. */
#ifndef THAW_PROGRESS_H
#define THAW_PROGRESS_H

#include <stdint.h>

struct progress {
	const char *label;
	uint64_t total, done;
	uint64_t t0_ns, last_ns;
	int tty;
};

void progress_init(struct progress *p, const char *label, uint64_t total);
/* done is absolute; extra is a short note appended to the line (may be NULL). */
void progress_update(struct progress *p, uint64_t done, const char *extra);
void progress_finish(struct progress *p);
/* "12.3 MiB" style. */
void fmt_bytes(double n, char *out, int len);

#endif
