/*
 * ember query — ProfileTracing from the command line: a top-down text tree with percentages,
 * folded stacks (one line per stack with self value, the flamegraph.pl input), the raw JSON or
 * an export; with --compare, what changed against the same range an hour (a day...) earlier.
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
#include "common/diff.h"
#include "common/export.h"
#include "common/httpc.h"
#include "common/strbuf.h"

enum query_format { QF_TREE, QF_FOLDED, QF_JSON, QF_EXPORT };

#define QUERY_COMPARE_TOP 20 /* leaf frames in --compare's table */

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
		"                   [--min-percent P] [--org N] [-o FILE] [--compare 1h]\n"
		"--compare D: the same range D earlier is the baseline: a table of the leaf frames\n"
		"whose share changed most (tree), 'stack BEFORE AFTER' (folded) or a red/blue SVG.\n");
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

/* The nodes of a ProfileTracing result, parents linked by id; *out malloc'ed. 0 or -ENOMEM. */
static int query_nodes(json_t *result, struct qnode **out, size_t *count)
{
	size_t n = json_array_size(result);
	struct qnode *nodes = calloc(n ? n : 1, sizeof(*nodes));
	json_t *ids = json_object();

	if (!nodes || !ids) {
		free(nodes);
		json_decref(ids);
		return -ENOMEM;
	}
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
	json_decref(ids);
	*out = nodes;
	*count = n;
	return 0;
}

/* Folded stacks of the tree: one line per node with self value, root excluded. */
static void query_folded(const struct qnode *nodes, size_t n, struct strbuf *folded)
{
	for (size_t i = 1; i < n; i++) {
		struct strbuf sb = STRBUF_INIT;

		if (nodes[i].self <= 0)
			continue;
		query_path(nodes, (long)i, &sb);
		sb_printf(folded, "%s %" PRId64 "\n", sb.buf, nodes[i].self);
		sb_free(&sb);
	}
}

static const char *query_unit(const char *event)
{
	return strncmp(event, "mem-", 4) == 0 ? "bytes" : "microseconds";
}

static int query_print(json_t *result, enum query_format fmt, enum export_format efmt,
		       double min_percent, const char *title, const char *event, FILE *out)
{
	struct strbuf folded = STRBUF_INIT;
	struct qnode *nodes;
	size_t n;
	int64_t root_total;
	int rc = 0;

	if (query_nodes(result, &nodes, &n) < 0)
		return -ENOMEM;
	root_total = n ? nodes[0].total : 0;
	if (fmt == QF_TREE) {
		for (size_t i = 0; i < n; i++) {
			double pct = root_total ? 100.0 * (double)nodes[i].total / (double)root_total
						: 0;

			if (pct < min_percent)
				continue;
			fprintf(out, "%6.2f%% %12" PRId64 "  %*s%s\n", pct, nodes[i].total,
				nodes[i].depth * 2, "", nodes[i].label ? nodes[i].label : "");
		}
	} else {
		query_folded(nodes, n, &folded);
	}
	if (fmt == QF_FOLDED) {
		fwrite(folded.buf ? folded.buf : "", 1, folded.len, out);
	} else if (fmt == QF_EXPORT) {
		struct export_opts eo = {
			.title = title,
			.unit = query_unit(event),
			/* pprof's type: "cpu" (on-CPU), "space" (memory) or the event itself */
			.sample_type = strcmp(event, "on-cpu") == 0 || strncmp(event, "mem-", 4) == 0
					   ? NULL
					   : event,
		};
		rc = export_write_folded_text(efmt, &eo, folded.buf ? folded.buf : "", folded.len,
					      out, NULL);
		if (rc < 0)
			fprintf(stderr, "ember query: writing %s failed: %s\n",
				export_format_name(efmt), strerror(-rc));
	}
	sb_free(&folded);
	free(nodes);
	if (rc == 0 && (fflush(out) != 0 || ferror(out)))
		rc = -EIO;
	return rc;
}

struct query_req {
	const char *server, *app, *event, *lang, *filter;
	int64_t kdepth, org;
};

/* POSTs ProfileTracing for [from, to] into *resp. 0, or httpc's negative errno with the
 * reason printed. */
static int query_post(const struct query_req *q, int64_t from, int64_t to,
		      struct httpc_resp *resp)
{
	struct strbuf body = STRBUF_INIT;
	char url[1024], err[512], org_hdr[32];
	const char *headers[] = {"Content-Type: application/json", org_hdr, NULL};
	int rc;

	sb_puts(&body, "{\"app_service\":");
	sb_json_str(&body, q->app);
	sb_puts(&body, ",\"profile_event_type\":");
	sb_json_str(&body, q->event);
	sb_puts(&body, ",\"profile_language_type\":");
	sb_json_str(&body, q->lang);
	sb_puts(&body, ",\"tag_filter\":");
	sb_json_str(&body, q->filter);
	sb_printf(&body, ",\"time_start\":%" PRId64 ",\"time_end\":%" PRId64
			 ",\"max_kernel_stack_depth\":%" PRId64 "}",
		  from, to, q->kdepth);
	snprintf(url, sizeof(url), "%s/v1/profile/ProfileTracing", q->server);
	snprintf(org_hdr, sizeof(org_hdr), "X-Org-Id: %" PRId64, q->org);
	{
		struct httpc_req req = {.url = url, .body = body.buf, .body_len = body.len,
					.headers = headers, .timeout_ms = 300000,
					.max_response = 1u << 30};

		rc = httpc_do(&req, resp, err, sizeof(err));
	}
	sb_free(&body);
	if (rc < 0)
		fprintf(stderr, "ember query: %s\n", err);
	return rc < 0 ? rc : 0;
}

/* The answer of a 200, its DESCRIPTION (if any) printed; NULL with the reason printed. */
static json_t *query_parse(const struct httpc_resp *resp)
{
	json_error_t jerr;
	json_t *root = json_loadb(resp->body.buf ? resp->body.buf : "", resp->body.len, 0, &jerr);
	const char *desc;

	if (!root) {
		fprintf(stderr, "ember query: HTTP %ld, unreadable answer: %s\n", resp->status,
			jerr.text);
		return NULL;
	}
	if (resp->status != 200) {
		const char *status = json_string_value(json_object_get(root, "OPT_STATUS"));
		const char *why = json_string_value(json_object_get(root, "DESCRIPTION"));

		fprintf(stderr, "ember query: HTTP %ld %s: %s\n", resp->status, status ? status : "?",
			why ? why : "(no description)");
		json_decref(root);
		return NULL;
	}
	desc = json_string_value(json_object_get(root, "DESCRIPTION"));
	if (desc && *desc)
		fprintf(stderr, "ember query: %s\n", desc);
	return root;
}

/*
 * Folded stacks of [from, to] into folded (empty when there is no data). 0, or a negative errno
 * with the reason printed (-EPROTO: the server refused the query or answered nonsense).
 */
static int query_fetch_folded(const struct query_req *q, int64_t from, int64_t to,
			      struct strbuf *folded)
{
	struct httpc_resp resp = {0};
	json_t *root = NULL, *result;
	struct qnode *nodes;
	size_t n;
	int rc;

	rc = query_post(q, from, to, &resp);
	if (rc < 0)
		goto out;
	root = query_parse(&resp);
	if (!root) {
		rc = -EPROTO;
		goto out;
	}
	result = json_object_get(root, "result");
	if (json_is_array(result)) {
		rc = query_nodes(result, &nodes, &n);
		if (rc < 0)
			goto out;
		query_folded(nodes, n, folded);
		free(nodes);
	}
out:
	json_decref(root);
	sb_free(&resp.body);
	return rc;
}

/* The format a file name asks for: .svg, .folded, .pb.gz / .pprof, .json; others keep the tree. */
static void query_format_from_path(const char *path, enum query_format *fmt,
				   enum export_format *efmt)
{
	static const struct {
		const char *suffix;
		enum query_format fmt;
		enum export_format efmt;
	} by_suffix[] = {{".svg", QF_EXPORT, EXPORT_SVG},
			 {".json", QF_JSON, EXPORT_FOLDED}, /* the API's answer, as --format json */
			 {".folded", QF_FOLDED, EXPORT_FOLDED},
			 {".pb.gz", QF_EXPORT, EXPORT_PPROF},
			 {".pprof", QF_EXPORT, EXPORT_PPROF}};
	size_t n = strlen(path);

	for (size_t i = 0; i < sizeof(by_suffix) / sizeof(by_suffix[0]); i++) {
		size_t k = strlen(by_suffix[i].suffix);

		if (n > k && strcmp(path + n - k, by_suffix[i].suffix) == 0) {
			*fmt = by_suffix[i].fmt;
			*efmt = by_suffix[i].efmt;
			return;
		}
	}
}

/* Opens output (NULL: stdout) once the answer is in hand, so a failed query truncates nothing. */
static FILE *query_open_out(const char *output)
{
	FILE *f;

	if (!output)
		return stdout;
	f = fopen(output, "w");
	if (!f)
		fprintf(stderr, "ember query: cannot write %s: %s\n", output, strerror(errno));
	return f;
}

/*
 * --compare: the same query shifted back by `shift` seconds is the baseline; the answer is the
 * table of changes (tree), "stack BEFORE AFTER" (folded) or a differential SVG, the baseline
 * drawn scaled to now's total. 0, or a negative errno with the reason printed (-ENODATA: one of
 * the two ranges has no data).
 */
static int query_compare(const struct query_req *q, int64_t from, int64_t to, int64_t shift,
			 enum query_format fmt, enum export_format efmt, const char *output)
{
	struct strbuf now = STRBUF_INIT, then = STRBUF_INIT;
	struct diff_set d = {0};
	FILE *out = NULL;
	int rc;

	rc = query_fetch_folded(q, from, to, &now);
	if (rc == 0)
		rc = query_fetch_folded(q, from - shift, to - shift, &then);
	if (rc < 0)
		goto out;
	rc = diff_merge(then.buf ? then.buf : "", then.len, now.buf ? now.buf : "", now.len, &d,
			NULL, NULL);
	if (rc == 0)
		rc = diff_scale(&d, 0);
	if (rc < 0) {
		fprintf(stderr, "ember query: comparing: %s\n",
			rc == -E2BIG ? "more stacks than DIFF_MAX_STACKS" : strerror(-rc));
		goto out;
	}
	if (d.total_after == 0 || d.total_before == 0) {
		fprintf(stderr, "ember query: no data for %s between %" PRId64 " and %" PRId64 "%s\n",
			q->app, d.total_after ? from - shift : from, d.total_after ? to - shift : to,
			d.total_after ? " (the baseline)" : "");
		rc = -ENODATA;
		goto out;
	}
	fprintf(stderr,
		"ember query: %zu stacks; %" PRId64 " s earlier %" PRId64 " %s, now %" PRId64 "\n",
		d.n, shift, d.total_before, query_unit(q->event), d.total_after);
	out = query_open_out(output);
	if (!out) {
		rc = -EIO;
		goto out;
	}
	if (fmt == QF_TREE) {
		rc = diff_write_table(&d, QUERY_COMPARE_TOP, query_unit(q->event), out);
	} else if (fmt == QF_FOLDED) {
		rc = diff_write_folded(&d, out);
	} else {
		char title[300];
		struct export_opts eo = {.title = title, .unit = query_unit(q->event),
					 .before = d.scaled};

		snprintf(title, sizeof(title),
			 "%s: now against %" PRId64 " s earlier (baseline scaled to this total; "
			 "red grew, blue shrank)",
			 q->app, shift);
		rc = export_write(efmt, &eo, d.stacks, d.lens, d.after, d.n, out);
	}
	if (rc < 0)
		fprintf(stderr, "ember query: writing failed: %s\n", strerror(-rc));
out:
	if (out && out != stdout && fclose(out) != 0 && rc == 0) {
		fprintf(stderr, "ember query: writing %s failed: %s\n", output, strerror(errno));
		rc = -EIO;
	}
	diff_free(&d);
	sb_free(&now);
	sb_free(&then);
	return rc;
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
		{"compare", required_argument, NULL, 'c'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct query_req q = {.event = "on-cpu", .lang = "eBPF", .filter = "", .kdepth = -1,
			      .org = 1};
	int64_t since = 600, from = 0, to = 0, shift = 0;
	enum query_format fmt = QF_TREE;
	enum export_format efmt = EXPORT_FOLDED;
	const char *output = NULL;
	FILE *out = NULL;
	double min_percent = -1;
	struct httpc_resp resp = {0};
	int fmt_given = 0;
	json_t *root = NULL;
	int opt, ret = 1;

	while ((opt = getopt_long(argc, argv, "ho:", longopts, NULL)) != -1) {
		switch (opt) {
		case 's': q.server = optarg; break;
		case 'a': q.app = optarg; break;
		case 'e': q.event = optarg; break;
		case 'l': q.lang = optarg; break;
		case 'f': q.filter = optarg; break;
		case 'S':
			if (cli_parse_duration(optarg, &since) < 0 || since <= 0) {
				fprintf(stderr, "ember query: --since wants a duration like 90s, 10m, 2h\n");
				return 2;
			}
			break;
		case 'c':
			if (cli_parse_duration(optarg, &shift) < 0 || shift <= 0) {
				fprintf(stderr, "ember query: --compare wants how far back, like 1h or 1d\n");
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
			if (cli_parse_int(optarg, -1, 1000, &q.kdepth) < 0) {
				fprintf(stderr, "ember query: --max-kernel-depth wants -1..1000\n");
				return 2;
			}
			break;
		case 'r':
			fmt_given = 1;
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
		case 'm': {
			char *end;

			min_percent = strtod(optarg, &end);
			if (*end || !(min_percent >= 0 && min_percent <= 100)) {
				fprintf(stderr, "ember query: --min-percent wants 0..100\n");
				return 2;
			}
			break;
		}
		case 'g':
			if (cli_parse_int(optarg, 1, 9999, &q.org) < 0) {
				fprintf(stderr, "ember query: --org must be 1..9999\n");
				return 2;
			}
			break;
		case 'o': output = optarg; break;
		case 'h': query_usage(stdout); return 0;
		default: query_usage(stderr); return 2;
		}
	}
	if (!q.server || !q.app || optind != argc) {
		fprintf(stderr, "ember query: --server and --app-service are required\n");
		query_usage(stderr);
		return 2;
	}
	/* -o x.svg, x.folded, x.pb.gz, x.json (the API's answer): the format from the name */
	if (!fmt_given && output)
		query_format_from_path(output, &fmt, &efmt);
	if (shift && min_percent >= 0) {
		fprintf(stderr, "ember query: --min-percent is for the tree, not --compare's table\n");
		return 2;
	}
	if (min_percent < 0)
		min_percent = 0;
	if (shift && (fmt == QF_JSON || (fmt == QF_EXPORT && efmt != EXPORT_SVG))) {
		fprintf(stderr, "ember query: --compare writes tree (a table of changes), folded "
				"or svg\n");
		return 2;
	}
	if (!from || !to) {
		to = to ? to : (int64_t)time(NULL);
		from = from ? from : to - since;
	}
	if (shift) {
		ret = query_compare(&q, from, to, shift, fmt, efmt, output) < 0 ? 1 : 0;
		goto out;
	}
	if (query_post(&q, from, to, &resp) < 0)
		goto out;
	if (fmt == QF_JSON) {
		if (!(out = query_open_out(output)))
			goto out;
		fwrite(resp.body.buf ? resp.body.buf : "", 1, resp.body.len, out);
		fputc('\n', out);
		ret = resp.status == 200 ? 0 : 1;
		if (fflush(out) != 0 || ferror(out)) {
			fprintf(stderr, "ember query: writing %s failed: %s\n",
				output ? output : "stdout", strerror(errno));
			ret = 1;
		}
		goto out;
	}
	root = query_parse(&resp);
	if (!root || !(out = query_open_out(output)))
		goto out;
	if (json_is_null(json_object_get(root, "result"))) {
		fprintf(stderr, "ember query: no data for %s between %" PRId64 " and %" PRId64 "\n",
			q.app, from, to);
		ret = 0;
		goto out;
	}
	ret = query_print(json_object_get(root, "result"), fmt, efmt, min_percent, q.app, q.event,
			  out) < 0
		      ? 1
		      : 0;
out:
	if (out && out != stdout && fclose(out) != 0 && ret == 0) {
		fprintf(stderr, "ember query: writing %s failed: %s\n", output, strerror(errno));
		ret = 1;
	}
	json_decref(root);
	sb_free(&resp.body);
	return ret;
}
