/* err.c - thread-local error messages (see err.h for the convention). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "err.h"

static __thread char msg[ERR_MSG_MAX];

int err_set(int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	return code > 0 ? -code : (code < 0 ? code : -EIO);
}

int err_wrap(int rc, const char *fmt, ...)
{
	char pre[ERR_MSG_MAX], old[ERR_MSG_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(pre, sizeof pre, fmt, ap);
	va_end(ap);
	memcpy(old, msg, sizeof old);
	if (old[0])
		snprintf(msg, sizeof msg, "%s: %s", pre, old);
	else
		snprintf(msg, sizeof msg, "%s", pre);
	return rc;
}

const char *err_msg(void) { return msg; }
void err_clear(void) { msg[0] = 0; }
void err_copy(char *dst, size_t n)
{
	if (n) {
		strncpy(dst, msg, n - 1);
		dst[n - 1] = 0;
	}
}
