/*
 * api_profile — see api_profile.h.
 *
 * Request flow: parse (jansson) → X-Org-Id → tag_filter → [service discovery] → store query
 * (one callback per distinct stack, already summed by SQL) → optional kernel-frame clipping →
 * flame tree → streamed JSON. Errors follow DeepFlow's mapping (§1.4 of deepflow-behaviour.md):
 * binding errors are 400 INVALID_POST_DATA, engine errors 500 FAIL; ember adds 400 for a bad
 * tag_filter (DeepFlow answers 500 after ClickHouse rejects the pasted text).
 */
#define LOG_MODULE "api"
#include "server/api_profile.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "common/log.h"
#include "common/row.h"
#include "server/flametree.h"
#include "server/metrics.h"
#include "server/tagfilter.h"
#include "store/store.h"

/* The request keys, their Go field names (for gin-style messages) and JSON types. */
enum pt_kind { PT_STRING, PT_INT, PT_BOOL, PT_INT_OR_NULL };

struct pt_field {
	const char *key;
	const char *go_name;
	enum pt_kind kind;
	int required;
};

static const struct pt_field pt_fields[] = {
	{"app_service", "AppService", PT_STRING, 0},
	{"profile_event_type", "ProfileEventType", PT_STRING, 1},
	{"profile_language_type", "ProfileLanguageType", PT_STRING, 1},
	{"tag_filter", "TagFilter", PT_STRING, 0},
	{"group_by", "GroupBy", PT_STRING, 0},
	{"time_start", "TimeStart", PT_INT, 1},
	{"time_end", "TimeEnd", PT_INT, 1},
	{"debug", "Debug", PT_BOOL, 0},
	{"max_kernel_stack_depth", "MaxKernelStackDepth", PT_INT_OR_NULL, 0},
	{"format", "Format", PT_STRING, 0},
};
#define PT_NFIELDS (sizeof(pt_fields) / sizeof(pt_fields[0]))

static const char *json_type_go(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT: return "object";
	case JSON_ARRAY: return "array";
	case JSON_STRING: return "string";
	case JSON_INTEGER:
	case JSON_REAL: return "number";
	case JSON_TRUE:
	case JSON_FALSE: return "bool";
	default: return "null";
	}
}

static void api_type_error(struct strbuf *err, const json_t *v, const struct pt_field *f)
{
	static const char *const go_types[] = {"string", "int", "bool", "int"};
	const char *got = json_type_go(v);

	if (json_is_real(v))
		got = "number";
	sb_printf(err, "json: cannot unmarshal %s into Go struct field ProfileTracing.%s of type %s",
		  got, f->key, go_types[f->kind]);
}

int api_parse_request(const char *body, size_t len, struct pt_request *req, struct strbuf *err)
{
	const json_t *vals[PT_NFIELDS] = {0};
	json_error_t jerr;
	json_t *root;
	const char *key;
	json_t *v;
	int missing = 0;

	memset(req, 0, sizeof(*req));
	req->max_kernel_stack_depth = -1;
	sb_reset(err);
	size_t blank = 0;

	while (blank < len && strchr(" \t\r\n", body[blank]) && body[blank])
		blank++;
	if (blank == len) {
		sb_puts(err, "EOF: the request body is empty; send a JSON object");
		return -EINVAL;
	}
	root = json_loadb(body, len, 0, &jerr);
	if (!root) {
		sb_printf(err, "invalid JSON at line %d, column %d: %s", jerr.line, jerr.column,
			  jerr.text);
		return -EINVAL;
	}
	if (!json_is_object(root)) {
		sb_printf(err, "json: cannot unmarshal %s into Go value of type model.ProfileTracing",
			  json_type_go(root));
		json_decref(root);
		return -EINVAL;
	}
	/* Go's decoder matches keys case-insensitively; the last occurrence wins. */
	json_object_foreach(root, key, v) {
		for (size_t i = 0; i < PT_NFIELDS; i++)
			if (strcasecmp(key, pt_fields[i].key) == 0)
				vals[i] = v;
	}
	for (size_t i = 0; i < PT_NFIELDS; i++) {
		const struct pt_field *f = &pt_fields[i];

		v = (json_t *)vals[i];
		if (!v || json_is_null(v))
			continue;
		if ((f->kind == PT_STRING && !json_is_string(v)) ||
		    ((f->kind == PT_INT || f->kind == PT_INT_OR_NULL) && !json_is_integer(v)) ||
		    (f->kind == PT_BOOL && !json_is_boolean(v))) {
			api_type_error(err, v, f);
			json_decref(root);
			return -EINVAL;
		}
	}
#define STR_OR_EMPTY(i) strdup(vals[i] && json_is_string(vals[i]) ? json_string_value(vals[i]) : "")
	req->app_service = STR_OR_EMPTY(0);
	req->event_type = STR_OR_EMPTY(1);
	req->language_type = STR_OR_EMPTY(2);
	req->tag_filter = STR_OR_EMPTY(3);
#undef STR_OR_EMPTY
	req->time_start = vals[5] && json_is_integer(vals[5]) ? json_integer_value(vals[5]) : 0;
	req->time_end = vals[6] && json_is_integer(vals[6]) ? json_integer_value(vals[6]) : 0;
	req->debug = vals[7] && json_is_true(vals[7]);
	if (vals[8] && json_is_integer(vals[8]))
		req->max_kernel_stack_depth = json_integer_value(vals[8]);
	if (vals[9] && json_is_string(vals[9])) {
		const char *fmt = json_string_value(vals[9]);

		if (strcmp(fmt, "compact") == 0) {
			req->format = API_FORMAT_COMPACT;
		} else if (*fmt && strcmp(fmt, "flat") != 0) {
			sb_printf(err, "format '%s' is not known: use \"flat\" (default) or \"compact\"",
				  fmt);
			json_decref(root);
			api_request_free(req);
			return -EINVAL;
		}
	}
	json_decref(root);

	/* gin's "required" rejects the zero value; report every failing field, one per line. */
	for (size_t i = 0; i < PT_NFIELDS; i++) {
		const struct pt_field *f = &pt_fields[i];
		int zero;

		if (!f->required)
			continue;
		if (f->kind == PT_STRING)
			zero = !*(i == 1 ? req->event_type : req->language_type);
		else
			zero = (i == 5 ? req->time_start : req->time_end) == 0;
		if (!zero)
			continue;
		if (missing++)
			sb_putc(err, '\n');
		sb_printf(err,
			  "Key: 'ProfileTracing.%s' Error:Field validation for '%s' failed on the 'required' tag",
			  f->go_name, f->go_name);
	}
	if (missing) {
		api_request_free(req);
		return -EINVAL;
	}
	if (req->max_kernel_stack_depth < -1) {
		sb_printf(err, "max_kernel_stack_depth %" PRId64 " is invalid: use -1 (no clipping) or a depth >= 0",
			  req->max_kernel_stack_depth);
		api_request_free(req);
		return -EINVAL;
	}
	return 0;
}

void api_request_free(struct pt_request *req)
{
	free(req->app_service);
	free(req->event_type);
	free(req->language_type);
	free(req->tag_filter);
	memset(req, 0, sizeof(*req));
}

int api_parse_org(const char *header, int *org, struct strbuf *err)
{
	char *end;
	long v;

	*org = 1;
	if (!header || !*header)
		return 0;
	errno = 0;
	v = strtol(header, &end, 10);
	if (errno || *end || end == header) {
		sb_printf(err, "strconv.Atoi: parsing \"%s\": invalid syntax (X-Org-Id must be an integer)",
			  header);
		return -EINVAL;
	}
	if (v < STORE_ORG_MIN || v > STORE_ORG_MAX) {
		sb_printf(err, "X-Org-Id %ld is out of range %d..%d", v, STORE_ORG_MIN, STORE_ORG_MAX);
		return -ERANGE;
	}
	*org = (int)v;
	return 0;
}

/* Per-request state while the store streams stacks into the tree. */
struct api_feed {
	struct flame_tree *tree;
	int64_t clip;
	int clip_enabled;
	int tree_error;
	struct http_exchange *x;
	uint64_t rows;
};

static int api_feed_stack(void *arg, const char *stack, size_t len, int64_t value)
{
	struct api_feed *f = arg;
	int rc;

	if (f->clip_enabled)
		len = flame_clip_kernel(stack, len, (int)f->clip);
	rc = flame_tree_add(f->tree, stack, len, value);
	if (rc < 0) {
		f->tree_error = rc;
		return rc;
	}
	/* A client that hung up cannot read the answer: stop the query early. */
	if ((++f->rows & 4095) == 0 && http_client_gone(f->x))
		return -ECANCELED;
	return 0;
}

static int api_client_gone(void *arg)
{
	return http_client_gone(arg);
}

static double ts_diff(const struct timespec *a, const struct timespec *b)
{
	return (double)(b->tv_sec - a->tv_sec) + (double)(b->tv_nsec - a->tv_nsec) / 1e9;
}

static void api_uuid4(char out[37])
{
	unsigned char b[16];
	static const char hex[] = "0123456789abcdef";
	int j = 0;

	if (getrandom(b, sizeof(b), 0) != sizeof(b))
		memset(b, 0, sizeof(b));
	b[6] = (b[6] & 0x0f) | 0x40;
	b[8] = (b[8] & 0x3f) | 0x80;
	for (int i = 0; i < 16; i++) {
		if (i == 4 || i == 6 || i == 8 || i == 10)
			out[j++] = '-';
		out[j++] = hex[b[i] >> 4];
		out[j++] = hex[b[i] & 15];
	}
	out[j] = '\0';
}

/* One entry of the debug object's querier_debug list. */
static void api_debug_entry(struct strbuf *d, const struct store_query_info *info, int rc,
			    const char *error)
{
	char uuid[37];

	api_uuid4(uuid);
	if (d->len > 1)
		sb_putc(d, ',');
	sb_puts(d, "{\"ip\":");
	sb_json_str(d, info->host);
	sb_puts(d, ",\"sql\":\"");
	sb_json_escape(d, info->sql.buf ? info->sql.buf : "", info->sql.len);
	sb_puts(d, "\",\"sql_CH\":\"");
	sb_json_escape(d, info->sql.buf ? info->sql.buf : "", info->sql.len);
	sb_printf(d, "\",\"query_time\":\"%.9fs\",\"query_uuid\":\"%s\",\"error\":", info->seconds,
		  uuid);
	sb_json_str(d, rc < 0 && error ? error : "");
	sb_putc(d, '}');
}

struct api_stream {
	struct flame_tree *tree;
	struct flame_emit *emit;
	struct strbuf tail;
};

static int api_stream_pull(void *arg, struct strbuf *out, size_t want)
{
	struct api_stream *st = arg;
	int rc = flame_emit_next(st->emit, out, want);

	if (rc < 0)
		return rc;
	if (rc == 1) {
		sb_append(out, st->tail.buf, st->tail.len);
		return 1;
	}
	return 0;
}

static void api_stream_free(void *arg)
{
	struct api_stream *st = arg;

	flame_emit_free(st->emit);
	flame_tree_free(st->tree);
	sb_free(&st->tail);
	free(st);
}

static void api_fail(struct api_ctx *api, struct http_exchange *x, int status, const char *opt,
		     const char *msg)
{
	if (api->metrics)
		metrics_add(status == 400 ? &api->metrics->queries_invalid
					  : &api->metrics->queries_failed, 1);
	log_info("ProfileTracing -> %d %s: %s", status, opt, msg);
	http_reply_envelope(x, status, opt, msg, NULL);
}

void api_profile_tracing(void *ctx, struct http_exchange *x)
{
	struct api_ctx *api = ctx;
	struct pt_request req;
	struct strbuf err = STRBUF_INIT, debug = STRBUF_INIT, root_label = STRBUF_INIT;
	struct store_query q;
	struct store_query_info info;
	struct tf_expr *filter = NULL;
	struct tf_error tferr;
	struct api_feed feed;
	struct api_stream *st;
	struct timespec t0, t1;
	char description[256] = "";
	int org, rc;
	char **services = NULL;
	size_t n_services = 0;

	memset(&info, 0, sizeof(info));
	if (api_parse_request(x->body, x->body_len, &req, &err) < 0) {
		api_fail(api, x, 400, "INVALID_POST_DATA", err.buf);
		sb_free(&err);
		return;
	}
	rc = api_parse_org(http_header(x, "X-Org-Id"), &org, &err);
	if (rc < 0) {
		if (rc == -ERANGE)
			api_fail(api, x, 400, "INVALID_POST_DATA", err.buf);
		else
			api_fail(api, x, 500, "FAIL", err.buf);
		goto out;
	}
	if (tagfilter_parse(req.tag_filter, &filter, &tferr) < 0) {
		sb_printf(&err, "tag_filter: %s", tferr.message);
		api_fail(api, x, 400, "INVALID_POST_DATA", err.buf);
		goto out;
	}

	memset(&q, 0, sizeof(q));
	q.time_start = req.time_start;
	q.time_end = req.time_end;
	q.app_service = req.app_service[0] ? req.app_service : NULL;
	q.language_type = req.language_type;
	q.event_type = req.event_type;
	q.filter = filter;
	q.gauge = row_event_is_gauge(req.event_type);
	q.max_stacks = api->max_stacks ? api->max_stacks : API_MAX_STACKS_DEFAULT;
	q.max_seconds = api->query_seconds;
	q.should_abort = api_client_gone;
	q.abort_arg = x;
	sb_putc(&debug, '[');

	if (!q.app_service) {
		/* DeepFlow H: discover the services; 1..10 of them are merged under one root. */
		rc = store_list_services(api->store, org, &q, API_MAX_SERVICES + 1, &services,
					 &n_services, &info);
		api_debug_entry(&debug, &info, rc, store_errmsg(api->store));
		sb_free(&info.sql);
		if (rc < 0) {
			api_fail(api, x, 500, "FAIL", store_errmsg(api->store));
			goto out;
		}
		if (n_services == 0 || n_services > API_MAX_SERVICES) {
			sb_printf(&err, "app_service count %zu is invalid", n_services);
			api_fail(api, x, 500, "FAIL", err.buf);
			goto out;
		}
		for (size_t i = 0; i < n_services; i++) {
			if (i)
				sb_puts(&root_label, ", ");
			sb_puts(&root_label, services[i]);
		}
	} else {
		sb_puts(&root_label, q.app_service);
	}

	memset(&feed, 0, sizeof(feed));
	feed.tree = flame_tree_new(api->max_nodes ? api->max_nodes : API_MAX_NODES_DEFAULT);
	if (!feed.tree) {
		api_fail(api, x, 500, "FAIL", "out of memory");
		goto out;
	}
	/* A depth beyond any real stack means "leave it alone", like -1 would for such stacks. */
	feed.clip = req.max_kernel_stack_depth > 65535 ? 65535 : req.max_kernel_stack_depth;
	feed.clip_enabled = req.max_kernel_stack_depth >= 0 && strcmp(req.language_type, "eBPF") == 0;
	feed.x = x;
	memset(&info, 0, sizeof(info));
	rc = store_query_stacks(api->store, org, &q, api_feed_stack, &feed, &info);
	api_debug_entry(&debug, &info, rc, store_errmsg(api->store));
	if (rc < 0) {
		if (feed.tree_error == -E2BIG)
			sb_printf(&err, "the flame tree exceeds %zu nodes: narrow the time range or the tag_filter",
				  api->max_nodes ? api->max_nodes : (size_t)API_MAX_NODES_DEFAULT);
		else if (rc == -ECANCELED)
			sb_puts(&err, "the client closed the connection");
		else
			sb_puts(&err, store_errmsg(api->store));
		api_fail(api, x, 500, "FAIL", err.buf);
		flame_tree_free(feed.tree);
		goto out;
	}
	if (info.truncated)
		snprintf(description, sizeof(description),
			 "result truncated: more than %" PRIu64
			 " distinct stacks matched; the largest are shown. Narrow the time range or the tag_filter",
			 q.max_stacks);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	rc = flame_tree_finish(feed.tree);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	st = rc < 0 ? NULL : calloc(1, sizeof(*st));
	if (st) {
		st->tree = feed.tree;
		st->emit = flame_emit_new(feed.tree, root_label.buf,
					  req.format == API_FORMAT_COMPACT ? FLAME_FORMAT_COMPACT
									   : FLAME_FORMAT_FLAT,
					  req.event_type);
	}
	if (!st || !st->emit) {
		log_error("cannot build the flame tree: %s", rc < 0 ? strerror(-rc) : "out of memory");
		free(st);
		flame_tree_free(feed.tree);
		api_fail(api, x, 500, "FAIL", "out of memory building the flame tree");
		goto out;
	}
	sb_puts(&st->tail, ",\"debug\":");
	if (req.debug) {
		sb_puts(&st->tail, "{\"querier_debug\":");
		sb_append(&st->tail, debug.buf, debug.len);
		sb_printf(&st->tail, "],\"format_time\":\"%.9fs\"}", ts_diff(&t0, &t1));
	} else {
		sb_puts(&st->tail, "null");
	}
	sb_putc(&st->tail, '}');

	x->status = 200;
	sb_puts(&x->out, "{\"OPT_STATUS\":\"SUCCESS\",\"DESCRIPTION\":");
	sb_json_str(&x->out, description);
	sb_puts(&x->out, ",\"result\":");
	x->pull = api_stream_pull;
	x->pull_arg = st;
	x->pull_free = api_stream_free;
	if (api->metrics) {
		metrics_add(&api->metrics->queries_ok, 1);
		metrics_add(&api->metrics->query_stacks, info.n_stacks);
		metrics_add(&api->metrics->query_us, (uint64_t)(info.seconds * 1e6));
		metrics_add(&api->metrics->queries_truncated, info.truncated ? 1 : 0);
	}
	log_debug("ProfileTracing org %d service '%s' %" PRIu64 " stacks in %.3fs", org,
		  root_label.buf, info.n_stacks, info.seconds);
out:
	sb_free(&info.sql);
	store_free_names(services, n_services);
	tagfilter_free(filter);
	api_request_free(&req);
	sb_free(&err);
	sb_free(&debug);
	sb_free(&root_label);
}
