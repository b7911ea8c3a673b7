/*
 * ember server — the API, ingest and page over a store, until SIGINT/SIGTERM.
 */
#define LOG_MODULE "server"
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/server_flags.h"
#include "common/log.h"
#include "server/server.h"

void server_flags_usage(FILE *f)
{
	fprintf(f,
		"  --listen ADDR:PORT     where to serve (default 127.0.0.1:20416)\n"
		"  --store URL            sqlite:PATH (default sqlite:./ember.db) or\n"
		"                         clickhouse://[USER[:PASSWORD]@]HOST:PORT[/DATABASE]\n"
		"  --threads N            HTTP worker threads (default 4)\n"
		"  --max-body SIZE        request body limit (default 64M)\n"
		"  --max-batch-rows N     rows per ingest batch (default 200000)\n"
		"  --max-stacks N         distinct stacks per query (default 1000000)\n"
		"  --query-timeout DUR    engine time limit per query (default 60s)\n"
		"  --retention DUR        keep rows this long (default 72h; 0 = forever)\n"
		"  --log-level LEVEL      debug, info, warn, error\n");
}

int server_flags_parse(int opt, const char *arg, struct server_opts *o)
{
	int64_t v;
	uint64_t u;
	enum log_level lv;

	switch (opt) {
	case SF_LISTEN: o->listen = arg; return 0;
	case SF_STORE: o->store_url = arg; return 0;
	case SF_THREADS:
		if (cli_parse_int(arg, 1, 256, &v) < 0)
			break;
		o->threads = (unsigned)v;
		return 0;
	case SF_MAX_BODY:
		if (cli_parse_size(arg, &u) < 0 || u < 1024)
			break;
		o->max_body = u;
		return 0;
	case SF_MAX_BATCH_ROWS:
		if (cli_parse_int(arg, 1, 10000000, &v) < 0)
			break;
		o->max_batch_rows = (size_t)v;
		return 0;
	case SF_MAX_STACKS:
		if (cli_parse_int(arg, 1, 100000000, &v) < 0)
			break;
		o->max_stacks = (uint64_t)v;
		return 0;
	case SF_QUERY_TIMEOUT:
		if (cli_parse_duration(arg, &v) < 0 || v < 1)
			break;
		o->query_seconds = (double)v;
		return 0;
	case SF_RETENTION:
		if (cli_parse_duration(arg, &v) < 0)
			break;
		o->retention_s = v;
		return 0;
	case SF_LOG_LEVEL:
		if (log_parse_level(arg, &lv) < 0)
			break;
		log_set_level(lv);
		return 0;
	default:
		return 1;
	}
	fprintf(stderr, "ember: invalid value '%s' for --%s\n", arg, server_flag_name(opt));
	return -1;
}

const char *server_flag_name(int opt)
{
	for (const struct option *o = server_long_options; o->name; o++)
		if (o->val == opt)
			return o->name;
	return "?";
}

const struct option server_long_options[] = {
	{"listen", required_argument, NULL, SF_LISTEN},
	{"store", required_argument, NULL, SF_STORE},
	{"threads", required_argument, NULL, SF_THREADS},
	{"max-body", required_argument, NULL, SF_MAX_BODY},
	{"max-batch-rows", required_argument, NULL, SF_MAX_BATCH_ROWS},
	{"max-stacks", required_argument, NULL, SF_MAX_STACKS},
	{"query-timeout", required_argument, NULL, SF_QUERY_TIMEOUT},
	{"retention", required_argument, NULL, SF_RETENTION},
	{"log-level", required_argument, NULL, SF_LOG_LEVEL},
	{NULL, 0, NULL, 0},
};

void server_opts_defaults(struct server_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->listen = "127.0.0.1:20416";
	o->store_url = "sqlite:./ember.db";
	o->retention_s = 72 * 3600;
}

int cli_server(int argc, char **argv)
{
	struct server_opts o;
	struct server *srv;
	int opt, rc;

	server_opts_defaults(&o);
	while ((opt = getopt_long(argc, argv, "h", server_long_options, NULL)) != -1) {
		if (opt == 'h') {
			printf("usage: ember server [FLAGS]\n");
			server_flags_usage(stdout);
			return 0;
		}
		rc = server_flags_parse(opt, optarg, &o);
		if (rc != 0) {
			if (rc > 0)
				server_flags_usage(stderr);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "ember server: unexpected argument '%s'\n", argv[optind]);
		return 2;
	}
	cli_block_signals();
	if (server_start(&o, &srv) < 0)
		return 1;
	cli_wait_for_signal();
	log_info("signal received, shutting down");
	server_stop(srv);
	return 0;
}
