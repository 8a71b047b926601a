/* awsconf.h - S3 settings the way the AWS CLI finds them.
 *
 * Environment first, then the shared files:
 *   endpoint  AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, config "endpoint_url"
 *   region    AWS_REGION, AWS_DEFAULT_REGION, config "region", else us-east-1
 *   keys      AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN),
 *             else profile AWS_PROFILE (default "default") in the credentials
 *             file (AWS_SHARED_CREDENTIALS_FILE, ~/.aws/credentials), else in
 *             the config file (AWS_CONFIG_FILE, ~/.aws/config, "[profile x]")
 *   CA        AWS_CA_BUNDLE, config "ca_bundle"
 *
 * The secret and the token live only in this struct: nothing here prints them,
 * and callers must not either. */
#ifndef THAW_AWSCONF_H
#define THAW_AWSCONF_H

#include <stddef.h>

struct awsconf {
	char endpoint[512];     /* "" = AWS itself (virtual-hosted addressing) */
	char region[64];
	char profile[128];
	char access_key[256];
	char secret_key[256];
	char session_token[4096];
	char ca_bundle[1024];
	char cred_source[1100]; /* where the keys came from, for messages: never the keys */
};

/* Fill c from the environment and the shared files.  Fails with -ENOENT and a
 * message naming what to set when no credentials are found, -EINVAL when only
 * half of a key pair is set or a value does not fit. */
int awsconf_load(struct awsconf *c);

/* Look up key in [section] of INI text (AWS flavour: '#'/';' comment lines,
 * "key = value", keys case-insensitive, indented lines continue the previous
 * value and are never keys).  Returns 1 and copies the trimmed value when found,
 * 0 when absent, -ENAMETOOLONG when the value does not fit in n. */
int awsconf_ini_get(const char *text, const char *section, const char *key, char *out, size_t n);

/* Wipe the secrets before the struct goes away. */
void awsconf_clear(struct awsconf *c);

#endif
