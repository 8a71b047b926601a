/* check.h - the unit tests' assertion macros.  A failed CHECK prints where and
 * what, counts, and the test continues; main returns check_summary(). */
#ifndef THAW_CHECK_H
#define THAW_CHECK_H

#include <stdio.h>

static int check_failed, check_total;

#define CHECK(cond)                                                                        \
	do {                                                                               \
		check_total++;                                                             \
		if (!(cond)) {                                                             \
			check_failed++;                                                    \
			fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
		}                                                                          \
	} while (0)

#define CHECK_RC(expr)                                                                     \
	do {                                                                               \
		int rc_ = (expr);                                                          \
		check_total++;                                                             \
		if (rc_ < 0) {                                                             \
			check_failed++;                                                    \
			fprintf(stderr, "%s:%d: %s returned %d: %s\n", __FILE__, __LINE__, #expr, rc_, \
				err_msg());                                                \
		}                                                                          \
	} while (0)

static inline int check_summary(const char *name)
{
	printf("%s: %d checks, %d failed\n", name, check_total, check_failed);
	return check_failed ? 1 : 0;
}

#endif
