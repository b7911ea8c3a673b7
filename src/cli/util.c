/*
 * cli util — flag value parsers, whole-file reading and signal waiting shared by the subcommands.
 */
#include "cli/cli.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/strbuf.h"

int cli_parse_int(const char *text, int64_t min, int64_t max, int64_t *out)
{
	char *end;
	long long v;

	errno = 0;
	v = strtoll(text, &end, 10);
	if (errno || end == text || *end || v < min || v > max)
		return -EINVAL;
	*out = v;
	return 0;
}

static int cli_parse_scaled(const char *text, const char *units, const uint64_t *mult,
			    uint64_t *out)
{
	char *end;
	unsigned long long v;
	const char *u;

	if (!*text || *text == '-')
		return -EINVAL;
	errno = 0;
	v = strtoull(text, &end, 10);
	if (errno || end == text)
		return -EINVAL;
	if (*end) {
		if (end[1] || !(u = strchr(units, *end)))
			return -EINVAL;
		if (v > UINT64_MAX / mult[u - units])
			return -EINVAL;
		v *= mult[u - units];
	}
	*out = v;
	return 0;
}

int cli_parse_duration(const char *text, int64_t *seconds)
{
	static const uint64_t mult[] = {1, 60, 3600, 86400};
	uint64_t v;

	if (cli_parse_scaled(text, "smhd", mult, &v) < 0 || v > INT64_MAX)
		return -EINVAL;
	*seconds = (int64_t)v;
	return 0;
}

int cli_parse_size(const char *text, uint64_t *bytes)
{
	static const uint64_t mult[] = {1024, 1024, 1 << 20, 1 << 20, 1 << 30, 1 << 30};

	return cli_parse_scaled(text, "kKmMgG", mult, bytes);
}

void cli_block_signals(void)
{
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
}

void cli_wait_for_signal(void)
{
	sigset_t set;
	int sig;

	cli_block_signals();
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigwait(&set, &sig);
}

int cli_read_file(const char *cmd, const char *path, uint64_t max, char **buf, size_t *len)
{
	FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
	struct strbuf sb = STRBUF_INIT;
	char chunk[65536];
	size_t n;
	int rc = 0;

	if (!f) {
		rc = -errno;
		fprintf(stderr, "%s: cannot open %s: %s\n", cmd, path, strerror(errno));
		return rc;
	}
	while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
		if (sb.len + n > max) {
			fprintf(stderr, "%s: %s is larger than %llu bytes\n", cmd, path,
				(unsigned long long)max);
			rc = -EFBIG;
			break;
		}
		sb_append(&sb, chunk, n);
	}
	if (rc == 0 && ferror(f)) {
		fprintf(stderr, "%s: reading %s: %s\n", cmd, path, strerror(errno));
		rc = -EIO;
	}
	if (f != stdin)
		fclose(f);
	if (rc < 0) {
		sb_free(&sb);
		return rc;
	}
	*buf = sb_detach(&sb, len);
	return 0;
}
