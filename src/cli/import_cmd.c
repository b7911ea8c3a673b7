/*
 * ember import — folded stacks (`frame;frame;frame VALUE` per line: stackcollapse-perf.pl,
 * bpftrace, `profile -f`) into a server through the ingest protocol.
 *
 * The whole input is parsed before anything is sent: a file with a bad line stores nothing, and
 * every bad line is reported with its number. Rows go out in batches of at most --batch-rows;
 * a batch the server could not take (503, connection refused) is retried with the same id, so
 * nothing is stored twice.
 */
#define LOG_MODULE "import"
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "common/folded.h"
#include "common/httpc.h"
#include "common/log.h"
#include "common/wire.h"

#define IMPORT_MAX_INPUT (1ull << 30)
#define IMPORT_MAX_ERRORS_SHOWN 20
#define IMPORT_BATCH_ROWS 50000
#define IMPORT_RETRIES 8

struct import_opts {
	const char *server, *app_service, *event_type, *language, *file, *host, *agent;
	int64_t time, pid, org;
	const char *tag_names[ROW_MAX_TAGS];
	const char *tag_values[ROW_MAX_TAGS];
	size_t n_tags;
};

struct import_rows {
	struct profile_row *rows;
	size_t n, cap;
	const struct import_opts *o;
};

static int import_add(void *arg, const char *stack, size_t len, int64_t value, size_t line)
{
	struct import_rows *ir = arg;
	struct profile_row *r;
	char *s;

	if (ir->n == ir->cap) {
		size_t cap = ir->cap ? ir->cap * 2 : 1024;
		struct profile_row *nr = realloc(ir->rows, cap * sizeof(*nr));

		if (!nr)
			return -ENOMEM;
		ir->rows = nr;
		ir->cap = cap;
	}
	s = strndup(stack, len);
	if (!s)
		return -ENOMEM;
	r = &ir->rows[ir->n++];
	memset(r, 0, sizeof(*r));
	r->time = ir->o->time;
	r->app_service = ir->o->app_service;
	r->profile_location_str = s;
	r->profile_value = (int64_t)value;
	r->profile_event_type = ir->o->event_type;
	r->profile_language_type = ir->o->language;
	r->process_id = ir->o->pid;
	r->n_tags = ir->o->n_tags;
	r->tag_names = (const char **)ir->o->tag_names;
	r->tag_values = (const char **)ir->o->tag_values;
	return 0;
}

/* POSTs one batch, retrying what may succeed later. 0 when the server acknowledged it. */
static int import_send(const struct import_opts *o, const char *url, const struct strbuf *body)
{
	char org_hdr[32], err[512];
	const char *headers[] = {"Content-Type: application/json", "Content-Encoding: zstd",
				 org_hdr, NULL};
	struct httpc_req req = {.url = url, .body = body->buf, .body_len = body->len,
				.headers = headers, .timeout_ms = 120000};
	struct httpc_resp resp = {0};
	int rc = -EIO;

	snprintf(org_hdr, sizeof(org_hdr), "X-Org-Id: %" PRId64, o->org);
	for (int attempt = 0; attempt < IMPORT_RETRIES; attempt++) {
		if (attempt)
			sleep(attempt < 4 ? 1u << (attempt - 1) : 8);
		rc = httpc_do(&req, &resp, err, sizeof(err));
		if (rc < 0) {
			fprintf(stderr, "ember import: %s (attempt %d)\n", err, attempt + 1);
			continue;
		}
		if (resp.status == 200) {
			rc = 0;
			break;
		}
		fprintf(stderr, "ember import: server answered %ld: %s\n", resp.status,
			resp.body.buf ? resp.body.buf : "");
		rc = -EIO;
		if (resp.status != 503 && resp.status < 500)
			break;
	}
	sb_free(&resp.body);
	return rc;
}

static void import_usage(FILE *f)
{
	fprintf(f,
		"usage: ember import --server URL --app-service NAME [--event-type on-cpu]\n"
		"                    [--language eBPF] [--time UNIX_SECONDS] [--process-id N]\n"
		"                    [--tag KEY=VALUE]... [--org N] FILE|-\n"
		"Reads folded stacks ('frame;frame;frame VALUE' per line) and stores them.\n");
}

int cli_import(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"server", required_argument, NULL, 's'},
		{"app-service", required_argument, NULL, 'a'},
		{"event-type", required_argument, NULL, 'e'},
		{"language", required_argument, NULL, 'l'},
		{"time", required_argument, NULL, 't'},
		{"process-id", required_argument, NULL, 'p'},
		{"tag", required_argument, NULL, 'g'},
		{"org", required_argument, NULL, 'o'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct import_opts o = {.event_type = "on-cpu", .language = "eBPF", .org = 1};
	struct import_rows ir = {.o = &o};
	struct folded_error errs[IMPORT_MAX_ERRORS_SHOWN];
	size_t n_errs = 0, len = 0;
	char *buf = NULL, url[1024], host[256] = "";
	unsigned char rnd[4];
	int opt, rc, ret = 1;
	uint64_t total = 0;

	while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (opt) {
		case 's': o.server = optarg; break;
		case 'a': o.app_service = optarg; break;
		case 'e': o.event_type = optarg; break;
		case 'l': o.language = optarg; break;
		case 't':
			if (cli_parse_int(optarg, 1, INT64_MAX / 1000000, &o.time) < 0) {
				fprintf(stderr, "ember import: --time must be unix seconds > 0\n");
				return 2;
			}
			break;
		case 'p':
			if (cli_parse_int(optarg, 0, UINT32_MAX, &o.pid) < 0) {
				fprintf(stderr, "ember import: --process-id must be an integer pid\n");
				return 2;
			}
			break;
		case 'o':
			if (cli_parse_int(optarg, 1, 9999, &o.org) < 0) {
				fprintf(stderr, "ember import: --org must be 1..9999\n");
				return 2;
			}
			break;
		case 'g': {
			char *eq = strchr(optarg, '=');

			if (!eq || eq == optarg || o.n_tags == ROW_MAX_TAGS) {
				fprintf(stderr, "ember import: --tag wants KEY=VALUE (at most %d)\n",
					ROW_MAX_TAGS);
				return 2;
			}
			*eq = '\0';
			o.tag_names[o.n_tags] = optarg;
			o.tag_values[o.n_tags++] = eq + 1;
			break;
		}
		case 'h': import_usage(stdout); return 0;
		default: import_usage(stderr); return 2;
		}
	}
	if (!o.server || !o.app_service || !*o.app_service || optind != argc - 1) {
		fprintf(stderr, "ember import: --server, --app-service and one FILE (or -) are required\n");
		import_usage(stderr);
		return 2;
	}
	o.file = argv[optind];
	if (!o.time)
		o.time = (int64_t)time(NULL);
	if (cli_read_file("ember import", o.file, IMPORT_MAX_INPUT, &buf, &len) < 0)
		return 1;

	rc = folded_parse(buf, len, import_add, &ir, errs, IMPORT_MAX_ERRORS_SHOWN, &n_errs);
	if (rc < 0 || n_errs) {
		for (size_t i = 0; i < n_errs && i < IMPORT_MAX_ERRORS_SHOWN; i++)
			fprintf(stderr, "%s:%zu: %s\n", o.file, errs[i].line, folded_strerror(errs[i].kind));
		fprintf(stderr, "ember import: %s has %zu bad line(s); nothing was stored\n", o.file,
			n_errs);
		goto out;
	}
	if (ir.n == 0) {
		fprintf(stderr, "ember import: %s has no stacks; nothing to store\n", o.file);
		goto out;
	}

	gethostname(host, sizeof(host) - 1);
	if (getrandom(rnd, sizeof(rnd), 0) != sizeof(rnd))
		memset(rnd, 0, sizeof(rnd));
	snprintf(url, sizeof(url), "%s/v1/profile/ingest", o.server);
	for (size_t off = 0; off < ir.n; off += IMPORT_BATCH_ROWS) {
		size_t n = ir.n - off < IMPORT_BATCH_ROWS ? ir.n - off : IMPORT_BATCH_ROWS;
		char id[WIRE_BATCH_ID_MAX + 1];
		struct wire_batch_hdr hdr = {.batch_id = id, .host = "", .agent = "ember-import"};
		struct strbuf json = STRBUF_INIT, body = STRBUF_INIT;

		snprintf(id, sizeof(id), "import-%02x%02x%02x%02x-%" PRId64 "-%zu", rnd[0], rnd[1],
			 rnd[2], rnd[3], (int64_t)time(NULL), off / IMPORT_BATCH_ROWS);
		rc = wire_encode(&hdr, ir.rows + off, n, &json);
		if (rc == 0)
			rc = wire_compress(json.buf, json.len, &body);
		if (rc == 0)
			rc = import_send(&o, url, &body);
		sb_free(&json);
		sb_free(&body);
		if (rc < 0) {
			fprintf(stderr, "ember import: stored %zu of %zu stacks before the failure\n",
				off, ir.n);
			goto out;
		}
		for (size_t i = off; i < off + n; i++)
			total += (uint64_t)ir.rows[i].profile_value;
	}
	printf("imported %zu stacks (total value %" PRIu64 ") as %s\n", ir.n, total, o.app_service);
	ret = 0;
out:
	for (size_t i = 0; i < ir.n; i++)
		free((char *)ir.rows[i].profile_location_str);
	free(ir.rows);
	free(buf);
	return ret;
}
