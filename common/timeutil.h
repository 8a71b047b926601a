/* timeutil.h - monotonic clock helpers. */
#ifndef THAW_TIMEUTIL_H
#define THAW_TIMEUTIL_H

#include <stdint.h>
#include <time.h>

static inline uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline double now_s(void) { return (double)now_ns() / 1e9; }

/* Whole milliseconds from now to due (both now_ns values), rounded up so a
 * wait of that long reaches it; 0 once it has passed. */
static inline uint64_t ms_until(uint64_t due, uint64_t now) { return due <= now ? 0 : (due - now + 999999) / 1000000; }

/* Absolute CLOCK_REALTIME deadline ms from now, for pthread_cond_timedwait. */
static inline struct timespec deadline_after_ms(uint64_t ms)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += (time_t)(ms / 1000);
	ts.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	return ts;
}

#endif
