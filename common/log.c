/* log.c - leveled logging; one fprintf per line so lines from threads don't interleave. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

static enum log_level level = LOG_WARN;

void log_set_level(enum log_level l) { level = l; }
int log_enabled(enum log_level l) { return l >= level; }

void log_init_from_env(enum log_level dflt)
{
	const char *e = getenv("THAW_LOG");
	level = dflt;
	if (!e)
		return;
	if (!strcmp(e, "debug"))
		level = LOG_DEBUG;
	else if (!strcmp(e, "info"))
		level = LOG_INFO;
	else if (!strcmp(e, "warn"))
		level = LOG_WARN;
	else if (!strcmp(e, "error"))
		level = LOG_ERROR;
}

void log_msg(enum log_level l, const char *fmt, ...)
{
	static const char *names[] = { "debug", "info", "warn", "error" };
	char line[1024];
	struct timespec ts;
	va_list ap;
	if (l < level)
		return;
	clock_gettime(CLOCK_REALTIME, &ts);
	struct tm tm;
	gmtime_r(&ts.tv_sec, &tm);
	int n = snprintf(line, sizeof line, "thaw %02d:%02d:%02d.%03ld %s: ", tm.tm_hour, tm.tm_min,
			 tm.tm_sec, ts.tv_nsec / 1000000, names[l]);
	va_start(ap, fmt);
	vsnprintf(line + n, sizeof line - n, fmt, ap);
	va_end(ap);
	fprintf(stderr, "%s\n", line);
}
