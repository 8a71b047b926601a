/* cmd_ls.c - `thaw ls URL`: list objects and common prefixes under a location,
 * one level deep like `aws s3 ls`; thaw's own chunk store (.thaw/) is hidden. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cli.h"

struct ls {
	int recursive;
	size_t strip; /* one level: show names relative to the listed directory, like `aws s3 ls` */
	uint64_t n, bytes;
};

static int print_entry(const struct store_entry *e, void *arg)
{
	struct ls *l = arg;
	if (!strncmp(e->key, ".thaw/", 6) || strstr(e->key, "/.thaw/"))
		return 0;
	const char *name = e->key + (strlen(e->key) >= l->strip ? l->strip : 0);
	if (e->is_prefix) {
		printf("%19s %12s  %s\n", "", "PRE", name);
		return 0;
	}
	char when[32] = "";
	struct tm tm;
	time_t t = (time_t)e->mtime;
	if (e->mtime && gmtime_r(&t, &tm))
		strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", &tm);
	printf("%19s %12llu  %s\n", when, (unsigned long long)e->size, name);
	l->n++;
	l->bytes += e->size;
	return 0;
}

int cmd_ls(int argc, char **argv)
{
	struct ls l = { 0 };
	static const struct option opts[] = { { "recursive", 0, 0, 'r' }, { "help", 0, 0, 'h' }, { 0, 0, 0, 0 } };
	int c;
	while ((c = getopt_long(argc, argv, "rh", opts, NULL)) != -1) {
		switch (c) {
		case 'r': l.recursive = 1; break;
		case 'h':
			printf("usage: thaw ls URL [--recursive]\n\nList the objects under URL (a key prefix; end it "
			       "with '/' for a directory).\nThaw images show as the single object they are; "
			       "their chunk store (.thaw/) is hidden.\n");
			return 0;
		default: return 2;
		}
	}
	if (argc - optind != 1) {
		fprintf(stderr, "usage: thaw ls URL [--recursive]\n");
		return 2;
	}
	struct store *s;
	char key[STORE_KEY_MAX];
	if (cli_open(argv[optind], 0, &s, key, sizeof key) < 0)
		return cli_fail("ls");
	const char *slash = strrchr(key, '/');
	if (!l.recursive && slash)
		l.strip = (size_t)(slash - key) + 1;
	int rc = store_list(s, key, l.recursive ? NULL : "/", print_entry, &l);
	store_close(s);
	if (rc < 0)
		return cli_fail("ls");
	return 0;
}
