/* url.c - see url.h for the location grammar. */
#include <stdio.h>
#include <string.h>

#include "../common/err.h"
#include "url.h"

static int valid_bucket(const char *b, size_t n)
{
	if (n < 3 || n > 63)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = b[i];
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
		      c == '_' || (c >= 'A' && c <= 'Z')))
			return 0;
	}
	return 1;
}

static int valid_key(const char *k)
{
	/* ".." components would escape a file:// root; reject them everywhere for one rule. */
	const char *p = k;
	while (*p) {
		const char *e = strchr(p, '/');
		size_t n = e ? (size_t)(e - p) : strlen(p);
		if (n == 2 && p[0] == '.' && p[1] == '.')
			return 0;
		if (!e)
			break;
		p = e + 1;
	}
	for (p = k; *p; p++)
		if ((unsigned char)*p < 0x20)
			return 0;
	return 1;
}

int url_parse(const char *s, struct thaw_url *u)
{
	memset(u, 0, sizeof *u);
	if (!s || !*s)
		return err_set(EINVAL, "empty location (expected file:///abs/path or s3://bucket/key)");
	if (!strncmp(s, "s3://", 5)) {
		const char *b = s + 5, *slash = strchr(b, '/');
		size_t bn = slash ? (size_t)(slash - b) : strlen(b);
		if (!valid_bucket(b, bn))
			return err_set(EINVAL, "'%s': bad bucket name (3-63 characters of a-z 0-9 . - _)", s);
		u->scheme = URL_S3;
		memcpy(u->root, b, bn);
		const char *k = slash ? slash + 1 : "";
		if (strlen(k) >= sizeof u->key)
			return err_set(EINVAL, "key longer than %zu bytes in '%.60s...'", sizeof u->key - 1, s);
		if (!valid_key(k))
			return err_set(EINVAL, "'%s': key has a '..' component or a control character", s);
		strcpy(u->key, k);
		return 0;
	}
	if (!strncmp(s, "file://", 7)) {
		const char *p = s + 7;
		if (*p != '/')
			return err_set(EINVAL, "'%s': file:// needs an absolute path (file:///dir/key)", s);
		if (!valid_key(p))
			return err_set(EINVAL, "'%s': path has a '..' component or a control character", s);
		size_t n = strlen(p);
		if (n >= sizeof u->root)
			return err_set(EINVAL, "'%s': path too long", s);
		u->scheme = URL_FILE;
		const char *last = strrchr(p, '/');
		size_t rn = (size_t)(last - p);
		if (rn == 0)
			strcpy(u->root, "/");
		else
			memcpy(u->root, p, rn);
		if (strlen(last + 1) >= sizeof u->key)
			return err_set(EINVAL, "'%s': name too long", s);
		strcpy(u->key, last + 1);
		return 0;
	}
	if (strstr(s, "://"))
		return err_set(EINVAL, "'%s': unsupported scheme (use file:// or s3://)", s);
	return err_set(EINVAL, "'%s' is not a location (expected file:///abs/path or s3://bucket/key)", s);
}

void url_format(const struct thaw_url *u, char *buf, unsigned n)
{
	if (u->scheme == URL_S3)
		snprintf(buf, n, "s3://%s/%s", u->root, u->key);
	else
		snprintf(buf, n, "file://%s%s%s", u->root, strcmp(u->root, "/") ? "/" : "", u->key);
}
