/* url.h - parsing thaw locations: file:///abs/dir/key and s3://bucket/key.
 *
 * A location splits into the store it lives in and a key inside that store:
 *   s3://bucket/a/b/img   -> store "s3://bucket",  key "a/b/img"
 *   file:///srv/x/img     -> store "file:///srv/x", key "img"
 *   file:///srv/x/        -> store "file:///srv/x", key ""   (a "directory")
 * For file:// the store root is the directory that holds the key, so an
 * image's content-addressed chunks live beside it (DESIGN: "once per bucket";
 * for file:// a directory plays the bucket). */
#ifndef THAW_URL_H
#define THAW_URL_H

enum url_scheme { URL_FILE = 1, URL_S3 = 2 };

struct thaw_url {
	enum url_scheme scheme;
	char root[4096];   /* file: absolute directory, no trailing '/'; s3: bucket name */
	char key[1024];    /* key within the root; may be "" or end in '/' for a prefix */
};

/* Returns 0, or -EINVAL with err_msg() naming what is wrong with the URL. */
int url_parse(const char *s, struct thaw_url *u);
/* Format back to text (for messages). */
void url_format(const struct thaw_url *u, char *buf, unsigned n);

#endif
