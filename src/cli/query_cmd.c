/*
 * ember query — ProfileTracing from the command line: a top-down text tree with percentages,
 * folded stacks (one line per stack with self value, the flamegraph.pl input) or the raw JSON.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/cli.h"
#include "common/export.h"
#include "common/httpc.h"
#include "common/strbuf.h"

enum query_format { QF_TREE, QF_FOLDED, QF_JSON, QF_EXPORT };

struct qnode {
	const char *label;
	int64_t self, total;
	long parent; /* index, -1 for the root */
	int depth;
};

static void query_usage(FILE *f)
{
	fprintf(f,
		"usage: ember query --server URL --app-service NAME [--event-type on-cpu]\n"
		"                   [--language eBPF] [--since 10m | --from T --to T]\n"
		"                   [--tag-filter EXPR] [--max-kernel-depth D]\n"
		"                   [--format tree|folded|json|svg|speedscope|pprof]\n"
		"                   [--min-percent P] [--org N] [-o FILE]\n");
}

/* The path of node i, root excluded, into sb. */
static void query_path(const struct qnode *nodes, long i, struct strbuf *sb)
{
	if (i <= 0)
		return;
	query_path(nodes, nodes[i].parent, sb);
	if (sb->len)
		sb_putc(sb, ';');
	sb_puts(sb, nodes[i].label);
}

static int query_print(json_t *result, enum query_format fmt, enum export_format efmt,
		       double min_percent, const char *title, const char *event, FILE *out)
{
	struct strbuf folded = STRBUF_INIT;
	size_t n = json_array_size(result);
	struct qnode *nodes = calloc(n ? n : 1, sizeof(*nodes));
	json_t *ids = json_object();
	int64_t root_total;

	if (!nodes || !ids)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		json_t *o = json_array_get(result, i);
		const char *id = json_string_value(json_object_get(o, "node_id"));
		const char *parent = json_string_value(json_object_get(o, "parent_node_id"));
		json_t *p;

		nodes[i].label = json_string_value(json_object_get(o, "profile_location_str"));
		nodes[i].self = json_integer_value(json_object_get(o, "self_value"));
		nodes[i].total = json_integer_value(json_object_get(o, "total_value"));
		nodes[i].parent = -1;
		if (parent && strcmp(parent, "-1") != 0 && (p = json_object_get(ids, parent))) {
			nodes[i].parent = (long)json_integer_value(p);
			nodes[i].depth = nodes[nodes[i].parent].depth + 1;
		}
		if (id)
			json_object_set_new(ids, id, json_integer((json_int_t)i));
	}
	root_total = n ? nodes[0].total : 0;
	for (size_t i = 0; i < n; i++) {
		double pct = root_total ? 100.0 * (double)nodes[i].total / (double)root_total : 0;

		if (fmt == QF_TREE) {
			if (pct < min_percent)
				continue;
			fprintf(out, "%6.2f%% %12" PRId64 "  %*s%s\n", pct, nodes[i].total,
				nodes[i].depth * 2, "", nodes[i].label ? nodes[i].label : "");
		} else if (nodes[i].self > 0 && i > 0) {
			struct strbuf sb = STRBUF_INIT;

			query_path(nodes, (long)i, &sb);
			sb_printf(&folded, "%s %" PRId64 "\n", sb.buf, nodes[i].self);
			sb_free(&sb);
		}
	}
	if (fmt == QF_FOLDED) {
		fwrite(folded.buf ? folded.buf : "", 1, folded.len, out);
	} else if (fmt == QF_EXPORT) {
		struct export_opts eo = {
			.title = title,
			.unit = strncmp(event, "mem-", 4) == 0 ? "bytes" : "microseconds",
			/* pprof's type: "cpu" (on-CPU), "space" (memory) or the event itself */
			.sample_type = strcmp(event, "on-cpu") == 0 || strncmp(event, "mem-", 4) == 0
					   ? NULL
					   : event,
		};
		int rc = export_write_folded_text(efmt, &eo, folded.buf ? folded.buf : "",
						  folded.len, out, NULL);

		if (rc < 0)
			fprintf(stderr, "ember query: writing %s failed: %s\n",
				export_format_name(efmt), strerror(-rc));
	}
	sb_free(&folded);
	json_decref(ids);
	free(nodes);
	return 0;
}

int cli_query(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"server", required_argument, NULL, 's'},
		{"app-service", required_argument, NULL, 'a'},
		{"event-type", required_argument, NULL, 'e'},
		{"language", required_argument, NULL, 'l'},
		{"since", required_argument, NULL, 'S'},
		{"from", required_argument, NULL, 'F'},
		{"to", required_argument, NULL, 'T'},
		{"tag-filter", required_argument, NULL, 'f'},
		{"max-kernel-depth", required_argument, NULL, 'k'},
		{"format", required_argument, NULL, 'r'},
		{"min-percent", required_argument, NULL, 'm'},
		{"org", required_argument, NULL, 'g'},
		{"output", required_argument, NULL, 'o'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *server = NULL, *app = NULL, *event = "on-cpu", *lang = "eBPF", *filter = "";
	int64_t since = 600, from = 0, to = 0, kdepth = -1, org = 1;
	enum query_format fmt = QF_TREE;
	enum export_format efmt = EXPORT_FOLDED;
	const char *output = NULL;
	FILE *out = stdout;
	double min_percent = 0;
	struct strbuf body = STRBUF_INIT;
	struct httpc_resp resp = {0};
	char url[1024], err[512], org_hdr[32];
	json_t *root = NULL;
	json_error_t jerr;
	int opt, ret = 1;

	while ((opt = getopt_long(argc, argv, "ho:", longopts, NULL)) != -1) {
		switch (opt) {
		case 's': server = optarg; break;
		case 'a': app = optarg; break;
		case 'e': event = optarg; break;
		case 'l': lang = optarg; break;
		case 'f': filter = optarg; break;
		case 'S':
			if (cli_parse_duration(optarg, &since) < 0 || since <= 0) {
				fprintf(stderr, "ember query: --since wants a duration like 90s, 10m, 2h\n");
				return 2;
			}
			break;
		case 'F':
		case 'T':
			if (cli_parse_int(optarg, 1, INT64_MAX, opt == 'F' ? &from : &to) < 0) {
				fprintf(stderr, "ember query: --from/--to want unix seconds\n");
				return 2;
			}
			break;
		case 'k':
			if (cli_parse_int(optarg, -1, 1000, &kdepth) < 0) {
				fprintf(stderr, "ember query: --max-kernel-depth wants -1..1000\n");
				return 2;
			}
			break;
		case 'r':
			if (strcmp(optarg, "tree") == 0)
				fmt = QF_TREE;
			else if (strcmp(optarg, "folded") == 0)
				fmt = QF_FOLDED;
			else if (strcmp(optarg, "json") == 0)
				fmt = QF_JSON;
			else if (export_parse_format(optarg, &efmt) == 0)
				fmt = QF_EXPORT;
			else {
				fprintf(stderr, "ember query: --format is tree, folded, json, svg, "
						"speedscope or pprof\n");
				return 2;
			}
			break;
		case 'm': min_percent = atof(optarg); break;
		case 'g':
			if (cli_parse_int(optarg, 1, 9999, &org) < 0) {
				fprintf(stderr, "ember query: --org must be 1..9999\n");
				return 2;
			}
			break;
		case 'o': output = optarg; break;
		case 'h': query_usage(stdout); return 0;
		default: query_usage(stderr); return 2;
		}
	}
	if (!server || !app || optind != argc) {
		fprintf(stderr, "ember query: --server and --app-service are required\n");
		query_usage(stderr);
		return 2;
	}
	if (!from || !to) {
		to = to ? to : (int64_t)time(NULL);
		from = from ? from : to - since;
	}
	sb_puts(&body, "{\"app_service\":");
	sb_json_str(&body, app);
	sb_puts(&body, ",\"profile_event_type\":");
	sb_json_str(&body, event);
	sb_puts(&body, ",\"profile_language_type\":");
	sb_json_str(&body, lang);
	sb_puts(&body, ",\"tag_filter\":");
	sb_json_str(&body, filter);
	sb_printf(&body, ",\"time_start\":%" PRId64 ",\"time_end\":%" PRId64
			 ",\"max_kernel_stack_depth\":%" PRId64 "}",
		  from, to, kdepth);
	snprintf(url, sizeof(url), "%s/v1/profile/ProfileTracing", server);
	snprintf(org_hdr, sizeof(org_hdr), "X-Org-Id: %" PRId64, org);
	{
		const char *headers[] = {"Content-Type: application/json", org_hdr, NULL};
		struct httpc_req req = {.url = url, .body = body.buf, .body_len = body.len,
					.headers = headers, .timeout_ms = 300000,
					.max_response = 1u << 30};

		if (httpc_do(&req, &resp, err, sizeof(err)) < 0) {
			fprintf(stderr, "ember query: %s\n", err);
			goto out;
		}
	}
	if (output && !(out = fopen(output, "w"))) {
		fprintf(stderr, "ember query: cannot write %s: %s\n", output, strerror(errno));
		out = stdout;
		goto out;
	}
	if (fmt == QF_JSON) {
		fwrite(resp.body.buf ? resp.body.buf : "", 1, resp.body.len, out);
		fputc('\n', out);
		ret = resp.status == 200 ? 0 : 1;
		goto out;
	}
	root = json_loadb(resp.body.buf ? resp.body.buf : "", resp.body.len, 0, &jerr);
	if (!root) {
		fprintf(stderr, "ember query: HTTP %ld, unreadable answer: %s\n", resp.status, jerr.text);
		goto out;
	}
	if (resp.status != 200) {
		fprintf(stderr, "ember query: %s: %s\n",
			json_string_value(json_object_get(root, "OPT_STATUS")),
			json_string_value(json_object_get(root, "DESCRIPTION")));
		goto out;
	}
	{
		const char *desc = json_string_value(json_object_get(root, "DESCRIPTION"));

		if (desc && *desc)
			fprintf(stderr, "ember query: %s\n", desc);
	}
	if (json_is_null(json_object_get(root, "result"))) {
		fprintf(stderr, "ember query: no data for %s between %" PRId64 " and %" PRId64 "\n",
			app, from, to);
		ret = 0;
		goto out;
	}
	ret = query_print(json_object_get(root, "result"), fmt, efmt, min_percent, app, event, out) < 0
		      ? 1
		      : 0;
out:
	if (out != stdout)
		fclose(out);
	json_decref(root);
	sb_free(&resp.body);
	sb_free(&body);
	return ret;
}
