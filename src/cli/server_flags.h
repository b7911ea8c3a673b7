/*
 * server_flags — the server's flags, shared by `ember server` and `ember run`.
 */
#ifndef EMBER_CLI_SERVER_FLAGS_H
#define EMBER_CLI_SERVER_FLAGS_H

#include <getopt.h>
#include <stdio.h>

#include "server/server.h"

enum server_flag {
	SF_LISTEN = 1000,
	SF_STORE,
	SF_THREADS,
	SF_MAX_BODY,
	SF_MAX_BATCH_ROWS,
	SF_MAX_STACKS,
	SF_QUERY_TIMEOUT,
	SF_RETENTION,
	SF_LOG_LEVEL,
};

extern const struct option server_long_options[];
void server_opts_defaults(struct server_opts *o);
/* 0 handled, 1 not a server flag, -1 bad value (message printed). */
int server_flags_parse(int opt, const char *arg, struct server_opts *o);
void server_flags_usage(FILE *f);
const char *server_flag_name(int opt);

#endif
