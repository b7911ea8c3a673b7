/*
 * ember — continuous profiler. Dispatches `ember COMMAND [FLAGS]` to the files of src/cli.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "common/log.h"

#define EMBER_VERSION "0.1.0"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: ember COMMAND [FLAGS]\n"
		"\n"
		"  run       profile this host, store in ./ember.db, serve the API and page (127.0.0.1:20416)\n"
		"  server    serve the API, ingest and page over a store (sqlite:PATH | clickhouse://...)\n"
		"  agent     profile this host and send rows to a server (--server URL)\n"
		"  record    one-shot profile to folded stacks: record [-F HZ] [-d S] [-p PID | -- CMD]\n"
		"  top       the functions burning the CPU now, refreshed (as perf top)\n"
		"  import    load folded stacks into a server\n"
		"  query     print a flame tree, folded stacks or JSON from a server\n"
		"  diff      what changed between two folded profiles: a table, or a red/blue SVG\n"
		"  version   print the version\n"
		"\n"
		"`ember COMMAND --help` lists a command's flags. Log level: --log-level or EMBER_LOG.\n");
}

int main(int argc, char **argv)
{
	const char *env = getenv("EMBER_LOG");
	enum log_level lv;

	signal(SIGPIPE, SIG_IGN);
	if (env && log_parse_level(env, &lv) == 0)
		log_set_level(lv);
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	argv++;
	argc--;
	if (strcmp(argv[0], "server") == 0)
		return cli_server(argc, argv);
	if (strcmp(argv[0], "import") == 0)
		return cli_import(argc, argv);
	if (strcmp(argv[0], "query") == 0)
		return cli_query(argc, argv);
	if (strcmp(argv[0], "agent") == 0)
		return cli_agent(argc, argv);
	if (strcmp(argv[0], "run") == 0)
		return cli_run(argc, argv);
	if (strcmp(argv[0], "record") == 0)
		return cli_record(argc, argv);
	if (strcmp(argv[0], "diff") == 0)
		return cli_diff(argc, argv);
	if (strcmp(argv[0], "top") == 0)
		return cli_top(argc, argv);
	if (strcmp(argv[0], "version") == 0 || strcmp(argv[0], "--version") == 0) {
		printf("ember %s\n", EMBER_VERSION);
		return 0;
	}
	if (strcmp(argv[0], "help") == 0 || strcmp(argv[0], "--help") == 0 ||
	    strcmp(argv[0], "-h") == 0) {
		usage(stdout);
		return 0;
	}
	fprintf(stderr, "ember: unknown command '%s'\n\n", argv[0]);
	usage(stderr);
	return 2;
}
