/*
 * cli — ember's command line. main.c dispatches to one function per subcommand; each parses
 * its own flags (getopt_long) and returns the process exit code (0 ok, 1 failure, 2 usage).
 */
#ifndef EMBER_CLI_CLI_H
#define EMBER_CLI_CLI_H

#include <stddef.h>
#include <stdint.h>

int cli_server(int argc, char **argv);
int cli_import(int argc, char **argv);
int cli_query(int argc, char **argv);
int cli_agent(int argc, char **argv);
int cli_run(int argc, char **argv);
int cli_record(int argc, char **argv);
int cli_diff(int argc, char **argv);
int cli_top(int argc, char **argv);

/* "90", "30s", "10m", "72h", "7d" → seconds. Returns 0 or -EINVAL. */
int cli_parse_duration(const char *text, int64_t *seconds);
/* "1048576", "64k", "16M", "1G" → bytes. */
int cli_parse_size(const char *text, uint64_t *bytes);
/* Strict integer parse in [min, max]. */
int cli_parse_int(const char *text, int64_t min, int64_t max, int64_t *out);
/*
 * The whole of path ("-": stdin) in *buf (malloc'ed, NUL-terminated, *len bytes). Errors are
 * printed as "CMD: ..." to stderr: -errno (cannot open), -EFBIG (more than max bytes), -EIO.
 */
int cli_read_file(const char *cmd, const char *path, uint64_t max, char **buf, size_t *len);

/*
 * Blocks SIGINT and SIGTERM in the calling thread and the threads it starts later: call it before
 * starting any thread, so that a signal arriving before cli_wait_for_signal() waits for it
 * (e.g. right after the server said it serves) is held, not fatal.
 */
void cli_block_signals(void);
/* Blocks until SIGINT or SIGTERM. */
void cli_wait_for_signal(void);

#endif
