/* main.c - build/thaw: dispatches the subcommand and holds the small helpers
 * every subcommand shares (error line, size parsing, opening a location). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "cli.h"

static const struct {
	const char *name;
	int (*fn)(int, char **);
	const char *what;
} verbs[] = {
	{ "push", cmd_push, "upload a file as a thaw image" },
	{ "pull", cmd_pull, "download and verify a whole image or object (stop-and-copy)" },
	{ "ls", cmd_ls, "list objects under a location" },
	{ "stat", cmd_stat, "describe an image or object" },
	{ "mount", cmd_mount, "serve a store location as a lazy FUSE filesystem" },
	{ "status", cmd_status, "what a mount holds locally, fetch rates, hydration progress" },
	{ "hydrate", cmd_hydrate, "pull files of a mount completely into its cache in the background" },
	{ "uffd-serve", cmd_uffd_serve, "serve a VM's memory on demand over Firecracker's UFFD handshake" },
	{ "demo", cmd_demo, "resume a memory image lazily and compare with stop-and-copy" },
};

static void usage(FILE *f)
{
	fprintf(f, "usage: thaw <command> [options]\n\n"
		   "thaw resumes workloads before their state has been downloaded: memory is served\n"
		   "on demand through userfaultfd, files through FUSE, from file:// or s3:// stores.\n\n"
		   "commands:\n");
	for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++)
		fprintf(f, "  %-11s %s\n", verbs[i].name, verbs[i].what);
	fprintf(f, "\nlocations: file:///abs/dir/key, s3://bucket/key (AWS_ENDPOINT_URL, AWS_REGION,\n"
		   "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE as the AWS CLI reads them)\n"
		   "'thaw <command> --help' describes one command.  THAW_LOG=debug|info|warn sets logging.\n");
}

int cli_fail(const char *verb)
{
	fprintf(stderr, "thaw %s: %s\n", verb, err_msg()[0] ? err_msg() : "failed");
	return 1;
}

int cli_wants_help(int argc, char **argv)
{
	for (int i = 1; i < argc; i++)
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
			return 1;
	return 0;
}

int cli_parse_size(const char *s, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s)
		return err_set(EINVAL, "'%s' is not a size", s);
	uint64_t mul = 1;
	if (*end) {
		switch (*end) {
		case 'k': case 'K': mul = 1ull << 10; break;
		case 'm': case 'M': mul = 1ull << 20; break;
		case 'g': case 'G': mul = 1ull << 30; break;
		case 't': case 'T': mul = 1ull << 40; break;
		default: return err_set(EINVAL, "'%s': unknown size suffix", s);
		}
		end++;
		if (*end == 'i')
			end++;
		if (*end == 'B' || *end == 'b')
			end++;
		if (*end)
			return err_set(EINVAL, "'%s' is not a size", s);
	}
	if (v > UINT64_MAX / mul)
		return err_set(ERANGE, "'%s' is too large", s);
	*out = v * mul;
	return 0;
}

int cli_open(const char *url, int jobs, struct store **s, char *key, size_t keylen)
{
	struct thaw_url u;
	int rc = url_parse(url, &u);
	if (rc < 0)
		return rc;
	struct store_config cfg;
	store_config_default(&cfg);
	if (jobs > 0)
		cfg.max_inflight = jobs;
	rc = store_open(&u, &cfg, s);
	if (rc < 0)
		return rc;
	snprintf(key, keylen, "%s", u.key);
	return 0;
}

int main(int argc, char **argv)
{
	log_init_from_env(LOG_WARN);
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
		usage(stdout);
		return 0;
	}
	if (!strcmp(argv[1], "--version")) {
		printf("thaw 0.1 (image format 1)\n");
		return 0;
	}
	for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++)
		if (!strcmp(argv[1], verbs[i].name)) {
			optind = 1;
			return verbs[i].fn(argc - 1, argv + 1);
		}
	fprintf(stderr, "thaw: unknown command '%s' (try 'thaw --help')\n", argv[1]);
	return 2;
}

