/* awsconf.c - finds S3 settings and credentials the way the AWS CLI does (see
 * awsconf.h for the order).  Only static keys are supported: no SSO, no
 * credential_process, no instance metadata.  Never prints a secret. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/err.h"
#include "awsconf.h"

#define INI_MAX (1u << 20) /* bigger than any sane credentials file */

static const char *env(const char *name)
{
	const char *v = getenv(name);
	return v && *v ? v : NULL;
}

/* Copy a value, refusing to truncate: a cut-off key would only fail later, as
 * a baffling signature error. */
static int put(char *dst, size_t n, const char *src, const char *what)
{
	size_t l = strlen(src);
	if (l >= n)
		return err_set(EINVAL, "%s is too long (%zu bytes, at most %zu)", what, l, n - 1);
	memcpy(dst, src, l + 1);
	return 0;
}

/* Read a whole small file.  A missing file is not an error (*out = NULL). */
static int slurp(const char *path, char **out)
{
	*out = NULL;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT || errno == ENOTDIR)
			return 0;
		return err_set(errno, "cannot open %s: %s", path, strerror(errno));
	}
	struct stat st;
	if (fstat(fd, &st) < 0 || st.st_size > (off_t)INI_MAX) {
		close(fd);
		return err_set(EFBIG, "%s is not a small regular file", path);
	}
	char *buf = malloc((size_t)st.st_size + 1);
	if (!buf) {
		close(fd);
		return err_set(ENOMEM, "out of memory reading %s", path);
	}
	size_t got = 0;
	while (got < (size_t)st.st_size) {
		ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			int e = errno;
			free(buf);
			close(fd);
			return err_set(e, "cannot read %s: %s", path, strerror(e));
		}
		if (r == 0)
			break;
		got += (size_t)r;
	}
	close(fd);
	buf[got] = 0;
	*out = buf;
	return 0;
}

/* [a, b) with blanks trimmed from both ends. */
static void trim(const char **a, const char **b)
{
	while (*a < *b && isspace((unsigned char)**a))
		(*a)++;
	while (*b > *a && isspace((unsigned char)(*b)[-1]))
		(*b)--;
}

/* Section headers match with inner runs of blanks collapsed, so
 * "[profile   dev]" is the "profile dev" section, as botocore sees it. */
static int section_is(const char *a, const char *b, const char *want)
{
	while (a < b && *want) {
		if (isspace((unsigned char)*a)) {
			if (*want != ' ')
				return 0;
			while (a < b && isspace((unsigned char)*a))
				a++;
			want++;
			continue;
		}
		if (*a++ != *want++)
			return 0;
	}
	return a == b && !*want;
}

int awsconf_ini_get(const char *text, const char *section, const char *key, char *out, size_t n)
{
	if (!text)
		return 0;
	size_t klen = strlen(key);
	int in = 0;
	const char *p = text;
	if (!strncmp(p, "\xEF\xBB\xBF", 3)) /* editors on other systems add a BOM */
		p += 3;
	while (*p) {
		const char *eol = strchr(p, '\n');
		const char *end = eol ? eol : p + strlen(p);
		const char *a = p, *b = end;
		p = eol ? eol + 1 : end;
		/* Indented lines continue the previous value (nested "s3 =" blocks):
		 * never read them as keys of the section. */
		if (a < b && (*a == ' ' || *a == '\t'))
			continue;
		trim(&a, &b);
		if (a == b || *a == '#' || *a == ';')
			continue;
		if (*a == '[') {
			const char *c = memchr(a, ']', (size_t)(b - a));
			if (!c) {
				in = 0;
				continue;
			}
			const char *sa = a + 1, *sb = c;
			trim(&sa, &sb);
			in = section_is(sa, sb, section);
			continue;
		}
		if (!in)
			continue;
		const char *eq = a;
		while (eq < b && *eq != '=' && *eq != ':')
			eq++;
		if (eq == b)
			continue;
		const char *ka = a, *kb = eq;
		trim(&ka, &kb);
		if ((size_t)(kb - ka) != klen || strncasecmp(ka, key, klen))
			continue;
		const char *va = eq + 1, *vb = b;
		trim(&va, &vb);
		size_t vl = (size_t)(vb - va);
		if (vl >= n)
			return -ENAMETOOLONG;
		memcpy(out, va, vl);
		out[vl] = 0;
		return 1;
	}
	return 0;
}

/* A key from the first section that has it: the credentials file's [p] first,
 * then the config file's [profile p] (or [default]). */
struct src {
	const char *text, *section, *path;
};

static int lookup(const struct src *srcs, int nsrc, const char *key, char *out, size_t n)
{
	for (int i = 0; i < nsrc; i++) {
		int r = awsconf_ini_get(srcs[i].text, srcs[i].section, key, out, n);
		if (r == -ENAMETOOLONG)
			return err_set(EINVAL, "%s in [%s] of %s is too long (at most %zu bytes)", key,
				       srcs[i].section, srcs[i].path, n - 1);
		if (r == 1)
			return 1;
	}
	return 0;
}

static void home_path(char *dst, size_t n, const char *rel)
{
	const char *home = env("HOME");
	if (!home) {
		struct passwd *pw = getpwuid(getuid());
		home = pw && pw->pw_dir ? pw->pw_dir : "/";
	}
	snprintf(dst, n, "%s/%s", home, rel);
}

static int load(struct awsconf *c, char **cred_text, char **conf_text)
{
	int rc;
	const char *v;

	if ((rc = put(c->profile, sizeof c->profile, (v = env("AWS_PROFILE")) ? v : "default",
		      "AWS_PROFILE")) < 0)
		return rc;

	char cred_path[1024], conf_path[1024];
	const char *cred_shown = "~/.aws/credentials";
	if ((v = env("AWS_SHARED_CREDENTIALS_FILE"))) {
		snprintf(cred_path, sizeof cred_path, "%s", v);
		cred_shown = cred_path;
	} else {
		home_path(cred_path, sizeof cred_path, ".aws/credentials");
	}
	if ((v = env("AWS_CONFIG_FILE")))
		snprintf(conf_path, sizeof conf_path, "%s", v);
	else
		home_path(conf_path, sizeof conf_path, ".aws/config");
	if ((rc = slurp(cred_path, cred_text)) < 0 || (rc = slurp(conf_path, conf_text)) < 0)
		return rc;

	/* The config file names profiles "[profile x]", except the default one,
	 * which may be "[default]" or "[profile default]". */
	char conf_section[160];
	snprintf(conf_section, sizeof conf_section, "profile %s", c->profile);
	int is_default = !strcmp(c->profile, "default");
	struct src srcs[3] = {
		{ *cred_text, c->profile, cred_path },
		{ *conf_text, is_default ? "default" : conf_section, conf_path },
		{ *conf_text, conf_section, conf_path },
	};
	const struct src *conf_only = &srcs[1];
	int nconf = is_default ? 2 : 1;

	/* Settings: environment, then the config file. */
	if ((v = env("AWS_ENDPOINT_URL_S3")) || (v = env("AWS_ENDPOINT_URL"))) {
		if ((rc = put(c->endpoint, sizeof c->endpoint, v, "AWS_ENDPOINT_URL")) < 0)
			return rc;
	} else if ((rc = lookup(conf_only, nconf, "endpoint_url", c->endpoint, sizeof c->endpoint)) < 0) {
		return rc;
	}
	size_t el = strlen(c->endpoint);
	while (el && c->endpoint[el - 1] == '/')
		c->endpoint[--el] = 0;
	if (el && !strstr(c->endpoint, "://"))
		return err_set(EINVAL, "endpoint '%s' has no scheme (expected http://host:port or https://host)",
			       c->endpoint);

	if ((v = env("AWS_REGION")) || (v = env("AWS_DEFAULT_REGION"))) {
		if ((rc = put(c->region, sizeof c->region, v, "AWS_REGION")) < 0)
			return rc;
	} else if ((rc = lookup(conf_only, nconf, "region", c->region, sizeof c->region)) < 0) {
		return rc;
	}
	if (!c->region[0])
		strcpy(c->region, "us-east-1");

	if ((v = env("AWS_CA_BUNDLE"))) {
		if ((rc = put(c->ca_bundle, sizeof c->ca_bundle, v, "AWS_CA_BUNDLE")) < 0)
			return rc;
	} else if ((rc = lookup(conf_only, nconf, "ca_bundle", c->ca_bundle, sizeof c->ca_bundle)) < 0) {
		return rc;
	}

	/* Credentials: a complete pair in the environment wins outright. */
	const char *ek = env("AWS_ACCESS_KEY_ID"), *es = env("AWS_SECRET_ACCESS_KEY");
	if (ek || es) {
		if (!ek || !es)
			return err_set(EINVAL, "%s is set but %s is not", ek ? "AWS_ACCESS_KEY_ID" : "AWS_SECRET_ACCESS_KEY",
				       ek ? "AWS_SECRET_ACCESS_KEY" : "AWS_ACCESS_KEY_ID");
		if ((rc = put(c->access_key, sizeof c->access_key, ek, "AWS_ACCESS_KEY_ID")) < 0 ||
		    (rc = put(c->secret_key, sizeof c->secret_key, es, "AWS_SECRET_ACCESS_KEY")) < 0)
			return rc;
		if ((v = env("AWS_SESSION_TOKEN")) &&
		    (rc = put(c->session_token, sizeof c->session_token, v, "AWS_SESSION_TOKEN")) < 0)
			return rc;
		strcpy(c->cred_source, "environment");
		return 0;
	}

	/* Then the profile: its key id, secret and token must come from one
	 * section, or a stale token could ride along with fresh keys. */
	for (int i = 0; i < (is_default ? 3 : 2); i++) {
		const struct src *s = &srcs[i];
		int hk = lookup(s, 1, "aws_access_key_id", c->access_key, sizeof c->access_key);
		if (hk < 0)
			return hk;
		int hs = lookup(s, 1, "aws_secret_access_key", c->secret_key, sizeof c->secret_key);
		if (hs < 0)
			return hs;
		if (!hk && !hs)
			continue;
		if (!hk || !hs || !c->access_key[0] || !c->secret_key[0])
			return err_set(EINVAL, "profile '%s' in %s has %s but no %s", c->profile, s->path,
				       hk && c->access_key[0] ? "aws_access_key_id" : "aws_secret_access_key",
				       hk && c->access_key[0] ? "aws_secret_access_key" : "aws_access_key_id");
		int ht = lookup(s, 1, "aws_session_token", c->session_token, sizeof c->session_token);
		if (ht < 0)
			return ht;
		snprintf(c->cred_source, sizeof c->cred_source, "profile '%s' in %s", c->profile, s->path);
		return 0;
	}
	return err_set(ENOENT,
		       "no AWS credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or add profile '%s' to %s",
		       c->profile, cred_shown);
}

int awsconf_load(struct awsconf *c)
{
	char *cred = NULL, *conf = NULL;
	memset(c, 0, sizeof *c);
	int rc = load(c, &cred, &conf);
	/* The file buffers hold secrets too. */
	if (cred) {
		explicit_bzero(cred, strlen(cred));
		free(cred);
	}
	if (conf) {
		explicit_bzero(conf, strlen(conf));
		free(conf);
	}
	if (rc < 0)
		awsconf_clear(c);
	return rc;
}

void awsconf_clear(struct awsconf *c)
{
	explicit_bzero(c->access_key, sizeof c->access_key);
	explicit_bzero(c->secret_key, sizeof c->secret_key);
	explicit_bzero(c->session_token, sizeof c->session_token);
}
