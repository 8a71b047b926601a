/* test_awsconf.c - the AWS settings loader: INI parsing (comments, blanks,
 * case, continuation lines, section spelling, CRLF, BOM, size limits) and the
 * precedence environment > credentials file > config file > defaults. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../objstore/awsconf.h"
#include "../../common/err.h"
#include "check.h"

static char dir[64];

static const char *write_tmp(const char *name, const char *text)
{
	static char path[4][128];
	static int i;
	char *p = path[i++ % 4];
	snprintf(p, sizeof path[0], "%s/%s", dir, name);
	FILE *f = fopen(p, "w");
	if (!f) {
		perror(p);
		exit(1);
	}
	fputs(text, f);
	fclose(f);
	return p;
}

static void clean_env(void)
{
	static const char *vars[] = { "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
				      "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
				      "AWS_CA_BUNDLE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE" };
	for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
		unsetenv(vars[i]);
	/* never read the real ~/.aws of whoever runs the tests */
	char p[128];
	snprintf(p, sizeof p, "%s/none", dir);
	setenv("AWS_SHARED_CREDENTIALS_FILE", p, 1);
	setenv("AWS_CONFIG_FILE", p, 1);
}

static void test_ini(void)
{
	char v[64];
	const char *text = "\xEF\xBB\xBF# comment\n"
			   "; another = comment\n"
			   "[default]\n"
			   "  \n"
			   "aws_access_key_id=AKIADEFAULT\r\n"
			   "Aws_Secret_Access_Key   =   with spaces inside  \n"
			   "s3 =\n"
			   "    region = nested-not-a-key\n"
			   "[ profile   dev ]\n"
			   "region: eu-west-3\n"
			   "empty =\n"
			   "endpoint_url = http://h:9000/x=y\n"
			   "[broken\n"
			   "region = after-broken\n";
	CHECK(awsconf_ini_get(text, "default", "aws_access_key_id", v, sizeof v) == 1 && !strcmp(v, "AKIADEFAULT"));
	CHECK(awsconf_ini_get(text, "default", "AWS_SECRET_ACCESS_KEY", v, sizeof v) == 1 &&
	      !strcmp(v, "with spaces inside"));
	/* an indented line continues "s3 =": it is not the section's region */
	CHECK(awsconf_ini_get(text, "default", "region", v, sizeof v) == 0);
	CHECK(awsconf_ini_get(text, "profile dev", "region", v, sizeof v) == 1 && !strcmp(v, "eu-west-3"));
	CHECK(awsconf_ini_get(text, "profile dev", "empty", v, sizeof v) == 1 && !strcmp(v, ""));
	CHECK(awsconf_ini_get(text, "profile dev", "endpoint_url", v, sizeof v) == 1 &&
	      !strcmp(v, "http://h:9000/x=y"));
	/* section names are exact: "dev" is not "profile dev" */
	CHECK(awsconf_ini_get(text, "dev", "region", v, sizeof v) == 0);
	/* a malformed header ends the previous section instead of extending it */
	CHECK(awsconf_ini_get("[a]\nk=1\n[broken\nj=2\n", "a", "j", v, sizeof v) == 0);
	CHECK(awsconf_ini_get(text, "nosuch", "region", v, sizeof v) == 0);
	CHECK(awsconf_ini_get(NULL, "default", "region", v, sizeof v) == 0);
	char tiny[4];
	CHECK(awsconf_ini_get(text, "default", "aws_access_key_id", tiny, sizeof tiny) == -ENAMETOOLONG);
	/* the first definition wins */
	CHECK(awsconf_ini_get("[a]\nk=1\n[a]\nk=2\n", "a", "k", v, sizeof v) == 1 && !strcmp(v, "1"));
	/* no trailing newline */
	CHECK(awsconf_ini_get("[a]\nk = last", "a", "k", v, sizeof v) == 1 && !strcmp(v, "last"));
}

static void test_env_wins(void)
{
	struct awsconf c;
	clean_env();
	setenv("AWS_SHARED_CREDENTIALS_FILE",
	       write_tmp("creds1", "[default]\naws_access_key_id = FILEKEY\naws_secret_access_key = FILESECRET\n"
				   "aws_session_token = FILETOKEN\n"),
	       1);
	setenv("AWS_ACCESS_KEY_ID", "ENVKEY", 1);
	setenv("AWS_SECRET_ACCESS_KEY", "ENVSECRET", 1);
	CHECK_RC(awsconf_load(&c));
	CHECK(!strcmp(c.access_key, "ENVKEY") && !strcmp(c.secret_key, "ENVSECRET"));
	/* a token from the file must not ride along with keys from the environment */
	CHECK(c.session_token[0] == 0);
	CHECK(!strcmp(c.cred_source, "environment"));
	CHECK(!strcmp(c.region, "us-east-1"));
	CHECK(!strcmp(c.profile, "default"));
	CHECK(c.endpoint[0] == 0);

	setenv("AWS_SESSION_TOKEN", "ENVTOKEN", 1);
	setenv("AWS_DEFAULT_REGION", "eu-central-1", 1);
	setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000///", 1);
	CHECK_RC(awsconf_load(&c));
	CHECK(!strcmp(c.session_token, "ENVTOKEN"));
	CHECK(!strcmp(c.region, "eu-central-1"));
	CHECK(!strcmp(c.endpoint, "http://127.0.0.1:9000"));
	setenv("AWS_REGION", "ap-south-1", 1); /* AWS_REGION beats AWS_DEFAULT_REGION */
	setenv("AWS_ENDPOINT_URL_S3", "https://s3.example", 1);
	CHECK_RC(awsconf_load(&c));
	CHECK(!strcmp(c.region, "ap-south-1"));
	CHECK(!strcmp(c.endpoint, "https://s3.example"));

	/* half a pair is an error, not a silent fall-through to the file */
	unsetenv("AWS_SECRET_ACCESS_KEY");
	CHECK(awsconf_load(&c) == -EINVAL);
	CHECK(strstr(err_msg(), "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not") != NULL);
	CHECK(c.access_key[0] == 0); /* cleared on failure */

	setenv("AWS_SECRET_ACCESS_KEY", "S", 1);
	setenv("AWS_ENDPOINT_URL_S3", "127.0.0.1:9000", 1);
	CHECK(awsconf_load(&c) == -EINVAL);
	CHECK(strstr(err_msg(), "has no scheme") != NULL);
}

static void test_profiles(void)
{
	struct awsconf c;
	clean_env();
	setenv("AWS_SHARED_CREDENTIALS_FILE",
	       write_tmp("creds2", "[default]\naws_access_key_id = DKEY\naws_secret_access_key = DSECRET\n"
				   "[dev]\naws_access_key_id = DEVKEY\naws_secret_access_key = DEVSECRET\n"
				   "aws_session_token = DEVTOKEN\n"
				   "[half]\naws_access_key_id = HALFKEY\n"),
	       1);
	setenv("AWS_CONFIG_FILE",
	       write_tmp("config2", "[default]\nregion = us-west-2\n"
				    "[profile dev]\nregion = eu-west-1\nendpoint_url = http://minio:9000/\n"
				    "ca_bundle = /etc/dev-ca.pem\n"
				    "[profile cfgonly]\naws_access_key_id = CKEY\naws_secret_access_key = CSECRET\n"
				    "[dev]\nregion = wrong-section-name\n"),
	       1);
	CHECK_RC(awsconf_load(&c));
	CHECK(!strcmp(c.access_key, "DKEY") && !strcmp(c.secret_key, "DSECRET") && !c.session_token[0]);
	CHECK(!strcmp(c.region, "us-west-2"));
	CHECK(strstr(c.cred_source, "profile 'default' in ") && strstr(c.cred_source, "creds2"));

	setenv("AWS_PROFILE", "dev", 1);
	CHECK_RC(awsconf_load(&c));
	CHECK(!strcmp(c.access_key, "DEVKEY") && !strcmp(c.session_token, "DEVTOKEN"));
	CHECK(!strcmp(c.region, "eu-west-1"));
	CHECK(!strcmp(c.endpoint, "http://minio:9000"));
	CHECK(!strcmp(c.ca_bundle, "/etc/dev-ca.pem"));
	/* the environment still wins over the config file */
	setenv("AWS_REGION", "sa-east-1", 1);
	setenv("AWS_CA_BUNDLE", "/env-ca.pem", 1);
	CHECK_RC(awsconf_load(&c));
	CHECK(!strcmp(c.region, "sa-east-1") && !strcmp(c.ca_bundle, "/env-ca.pem"));
	unsetenv("AWS_REGION");
	unsetenv("AWS_CA_BUNDLE");

	/* keys may live in the config file's [profile x] too */
	setenv("AWS_PROFILE", "cfgonly", 1);
	CHECK_RC(awsconf_load(&c));
	CHECK(!strcmp(c.access_key, "CKEY") && !strcmp(c.secret_key, "CSECRET"));
	CHECK(!strcmp(c.region, "us-east-1")); /* [default]'s region is not inherited */
	CHECK(strstr(c.cred_source, "config2") != NULL);

	setenv("AWS_PROFILE", "half", 1);
	CHECK(awsconf_load(&c) == -EINVAL);
	CHECK(strstr(err_msg(), "profile 'half'") && strstr(err_msg(), "no aws_secret_access_key"));

	setenv("AWS_PROFILE", "ghost", 1);
	CHECK(awsconf_load(&c) == -ENOENT);
	CHECK(strstr(err_msg(), "no AWS credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or add profile "
				"'ghost' to ") != NULL);
	CHECK(strstr(err_msg(), "creds2") != NULL);

	/* without AWS_SHARED_CREDENTIALS_FILE the message names ~/.aws/credentials */
	clean_env();
	unsetenv("AWS_SHARED_CREDENTIALS_FILE");
	setenv("HOME", dir, 1);
	CHECK(awsconf_load(&c) == -ENOENT);
	CHECK(strstr(err_msg(), "add profile 'default' to ~/.aws/credentials") != NULL);
	/* ... and does read $HOME/.aws/credentials */
	char p[128];
	snprintf(p, sizeof p, "%s/.aws", dir);
	mkdir(p, 0700);
	write_tmp(".aws/credentials", "[default]\naws_access_key_id = HOMEKEY\naws_secret_access_key = HS\n");
	CHECK_RC(awsconf_load(&c));
	CHECK(!strcmp(c.access_key, "HOMEKEY"));
}

static void test_limits(void)
{
	struct awsconf c;
	clean_env();
	char big[600];
	memset(big, 'k', sizeof big - 1);
	big[sizeof big - 1] = 0;
	setenv("AWS_ACCESS_KEY_ID", big, 1);
	setenv("AWS_SECRET_ACCESS_KEY", "s", 1);
	CHECK(awsconf_load(&c) == -EINVAL);
	CHECK(strstr(err_msg(), "AWS_ACCESS_KEY_ID is too long") != NULL);
	/* a secret is never echoed in a message */
	unsetenv("AWS_ACCESS_KEY_ID");
	unsetenv("AWS_SECRET_ACCESS_KEY");
	char text[800];
	snprintf(text, sizeof text, "[default]\naws_access_key_id = K\naws_secret_access_key = %s\n", big);
	setenv("AWS_SHARED_CREDENTIALS_FILE", write_tmp("creds3", text), 1);
	CHECK(awsconf_load(&c) == -EINVAL);
	CHECK(strstr(err_msg(), "aws_secret_access_key") && !strstr(err_msg(), "kkkk"));
}

int main(void)
{
	snprintf(dir, sizeof dir, "/tmp/thaw-awsconf.XXXXXX");
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	test_ini();
	test_env_wins();
	test_profiles();
	test_limits();
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", dir);
	return check_summary("test_awsconf");
}
