/* cli.h - the subcommands of build/thaw and the helpers they share. */
#ifndef THAW_CLI_H
#define THAW_CLI_H

#include <stdint.h>

#include "../objstore/store.h"

int cmd_push(int argc, char **argv);
int cmd_pull(int argc, char **argv);
int cmd_ls(int argc, char **argv);
int cmd_stat(int argc, char **argv);
int cmd_demo(int argc, char **argv);
int cmd_uffd_serve(int argc, char **argv);
int cmd_mount(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_hydrate(int argc, char **argv);

/* Print "thaw <verb>: <message>" for the error on this thread; returns 1. */
int cli_fail(const char *verb);
/* 1 if argv has --help or -h. */
int cli_wants_help(int argc, char **argv);
/* Parse "64K", "1M", "8MiB", "1G" etc. */
int cli_parse_size(const char *s, uint64_t *out);
/* Open the store holding url and hand back the key; prints nothing. */
int cli_open(const char *url, int jobs, struct store **s, char *key, size_t keylen);

#endif
