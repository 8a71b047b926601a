/* test_url.c - location parsing: the two schemes, their edges, and refusals. */
#include <string.h>

#include "../../objstore/url.h"
#include "../../common/err.h"
#include "check.h"

int main(void)
{
	struct thaw_url u;
	char buf[8192];
	CHECK(url_parse("s3://bucket/a/b/img", &u) == 0);
	CHECK(u.scheme == URL_S3 && !strcmp(u.root, "bucket") && !strcmp(u.key, "a/b/img"));
	CHECK(url_parse("s3://bucket", &u) == 0 && !strcmp(u.key, ""));
	CHECK(url_parse("s3://bucket/", &u) == 0 && !strcmp(u.key, ""));
	CHECK(url_parse("s3://bucket/dir/", &u) == 0 && !strcmp(u.key, "dir/"));
	url_format(&u, buf, sizeof buf);
	CHECK(!strcmp(buf, "s3://bucket/dir/"));
	CHECK(url_parse("file:///srv/x/img", &u) == 0);
	CHECK(u.scheme == URL_FILE && !strcmp(u.root, "/srv/x") && !strcmp(u.key, "img"));
	url_format(&u, buf, sizeof buf);
	CHECK(!strcmp(buf, "file:///srv/x/img"));
	CHECK(url_parse("file:///srv/x/", &u) == 0 && !strcmp(u.root, "/srv/x") && !strcmp(u.key, ""));
	CHECK(url_parse("file:///img", &u) == 0 && !strcmp(u.root, "/") && !strcmp(u.key, "img"));
	url_format(&u, buf, sizeof buf);
	CHECK(!strcmp(buf, "file:///img"));

	/* Refusals, each with a message. */
	CHECK(url_parse("", &u) == -EINVAL && strstr(err_msg(), "empty"));
	CHECK(url_parse("http://x/y", &u) == -EINVAL && strstr(err_msg(), "unsupported scheme"));
	CHECK(url_parse("file://relative/x", &u) == -EINVAL && strstr(err_msg(), "absolute"));
	CHECK(url_parse("s3://ab/x", &u) == -EINVAL && strstr(err_msg(), "bucket"));
	CHECK(url_parse("s3://bad bucket/x", &u) == -EINVAL);
	CHECK(url_parse("s3://bucket/../x", &u) == -EINVAL && strstr(err_msg(), ".."));
	CHECK(url_parse("file:///srv/../etc/passwd", &u) == -EINVAL);
	CHECK(url_parse("s3://bucket/a\nb", &u) == -EINVAL);
	CHECK(url_parse("/just/a/path", &u) == -EINVAL && strstr(err_msg(), "not a location"));
	CHECK(url_parse("s3://bucket/a..b/c", &u) == 0); /* ".." only as a whole component */
	char longk[2100];
	memset(longk, 'k', sizeof longk);
	memcpy(longk, "s3://bucket/", 12);
	longk[sizeof longk - 1] = 0;
	CHECK(url_parse(longk, &u) == -EINVAL && strstr(err_msg(), "longer"));
	return check_summary("test_url");
}
