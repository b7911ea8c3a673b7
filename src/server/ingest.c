/*
 * ingest — see ingest.h. Row keys are looked up by binary search in a sorted table, and each
 * table entry says where in struct profile_row the value goes, so a row costs one pass over its
 * keys and no string copies: the rows borrow the strings of the parsed JSON document.
 */
#define LOG_MODULE "ingest"
#include "server/ingest.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "common/log.h"
#include "common/wire.h"
#include "server/api_profile.h"
#include "server/metrics.h"
#include "store/store.h"

/* The largest time whose microseconds (the default profile_create_timestamp) fit an int64. */
#define INGEST_MAX_TIME (INT64_MAX / 1000000)

enum field_kind { F_STR, F_INT, F_STACK, F_TAGS };

struct row_field {
	const char *key;
	enum field_kind kind;
	size_t offset; /* into struct profile_row */
};

#define RF(name, kind) {#name, kind, offsetof(struct profile_row, name)}
/* Sorted by key for bsearch. */
static const struct row_field row_fields[] = {
	RF(agent, F_STR),
	RF(app_instance, F_STR),
	RF(app_service, F_STR),
	RF(container_id, F_STR),
	RF(host, F_STR),
	RF(host_ip, F_STR),
	RF(pod, F_STR),
	RF(pod_cluster, F_STR),
	RF(pod_group, F_STR),
	RF(pod_node, F_STR),
	RF(pod_ns, F_STR),
	RF(process_id, F_INT),
	RF(process_start_time, F_INT),
	RF(profile_create_timestamp, F_INT),
	RF(profile_event_type, F_STR),
	RF(profile_id, F_STR),
	RF(profile_language_type, F_STR),
	RF(profile_location_str, F_STR),
	RF(profile_value, F_INT),
	RF(profile_value_unit, F_STR),
	RF(span_name, F_STR),
	{"stack", F_STACK, 0},
	{"tags", F_TAGS, 0},
	RF(time, F_INT),
	RF(trace_id, F_STR),
};
#undef RF
#define N_ROW_FIELDS (sizeof(row_fields) / sizeof(row_fields[0]))

static int row_field_cmp(const void *key, const void *elem)
{
	return strcmp(key, ((const struct row_field *)elem)->key);
}

static const char *json_kind(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT: return "an object";
	case JSON_ARRAY: return "an array";
	case JSON_STRING: return "a string";
	case JSON_INTEGER: return "an integer";
	case JSON_REAL: return "a fractional number";
	case JSON_TRUE:
	case JSON_FALSE: return "a boolean";
	default: return "null";
	}
}

static int batch_string(json_t *root, const char *key, const char **out, struct strbuf *err)
{
	json_t *v = json_object_get(root, key);

	*out = "";
	if (!v)
		return 0;
	if (!json_is_string(v)) {
		sb_printf(err, "batch field '%s': expected a string, got %s", key, json_kind(v));
		return -EINVAL;
	}
	*out = json_string_value(v);
	return 0;
}

static int decode_row(json_t *obj, size_t i, json_t *stacks, struct profile_row *r,
		      const char **tagslot, struct strbuf *err)
{
	const char *key;
	json_t *v;
	int have_value = 0, have_time = 0, have_stack = 0;

	if (!json_is_object(obj)) {
		sb_printf(err, "row %zu: expected an object, got %s", i, json_kind(obj));
		return -EINVAL;
	}
	json_object_foreach(obj, key, v) {
		const struct row_field *f =
			bsearch(key, row_fields, N_ROW_FIELDS, sizeof(row_fields[0]), row_field_cmp);

		if (!f) {
			sb_printf(err, "row %zu: unknown field '%s'", i, key);
			return -EINVAL;
		}
		switch (f->kind) {
		case F_STR:
			if (!json_is_string(v)) {
				sb_printf(err, "row %zu: field '%s': expected a string, got %s", i, key,
					  json_kind(v));
				return -EINVAL;
			}
			*(const char **)((char *)r + f->offset) = json_string_value(v);
			if (f->offset == offsetof(struct profile_row, profile_location_str)) {
				if (have_stack++) {
					sb_printf(err, "row %zu: both 'stack' and 'profile_location_str' given; send one",
						  i);
					return -EINVAL;
				}
			}
			break;
		case F_INT:
			if (!json_is_integer(v)) {
				sb_printf(err, "row %zu: field '%s': expected an integer, got %s", i,
					  key, json_kind(v));
				return -EINVAL;
			}
			*(int64_t *)((char *)r + f->offset) = json_integer_value(v);
			if (f->offset == offsetof(struct profile_row, profile_value))
				have_value = 1;
			if (f->offset == offsetof(struct profile_row, time))
				have_time = 1;
			break;
		case F_STACK: {
			json_int_t idx;
			json_t *s;

			if (!json_is_integer(v)) {
				sb_printf(err, "row %zu: field 'stack': expected an integer index into 'stacks', got %s",
					  i, json_kind(v));
				return -EINVAL;
			}
			idx = json_integer_value(v);
			s = stacks ? json_array_get(stacks, (size_t)idx) : NULL;
			if (idx < 0 || !s) {
				sb_printf(err, "row %zu: field 'stack': index %" JSON_INTEGER_FORMAT
					       " is outside 'stacks' (%zu entries)",
					  i, idx, stacks ? json_array_size(stacks) : (size_t)0);
				return -EINVAL;
			}
			if (have_stack++) {
				sb_printf(err, "row %zu: both 'stack' and 'profile_location_str' given; send one",
					  i);
				return -EINVAL;
			}
			r->profile_location_str = json_string_value(s);
			break;
		}
		case F_TAGS: {
			const char *tk;
			json_t *tv;
			size_t n = json_object_size(v), j = 0;

			if (!json_is_object(v)) {
				sb_printf(err, "row %zu: field 'tags': expected an object of strings, got %s",
					  i, json_kind(v));
				return -EINVAL;
			}
			if (n > ROW_MAX_TAGS) {
				sb_printf(err, "row %zu: field 'tags': %zu tags, at most %d allowed", i, n,
					  ROW_MAX_TAGS);
				return -EINVAL;
			}
			json_object_foreach(v, tk, tv) {
				if (!json_is_string(tv)) {
					sb_printf(err, "row %zu: field 'tags': tag '%s': expected a string, got %s",
						  i, tk, json_kind(tv));
					return -EINVAL;
				}
				if (!*tk) {
					sb_printf(err, "row %zu: field 'tags': empty tag name", i);
					return -EINVAL;
				}
				tagslot[j] = tk;
				tagslot[ROW_MAX_TAGS + j] = json_string_value(tv);
				j++;
			}
			r->n_tags = n;
			r->tag_names = tagslot;
			r->tag_values = tagslot + ROW_MAX_TAGS;
			break;
		}
		}
	}
	if (!have_time || r->time <= 0 || r->time > INGEST_MAX_TIME) {
		sb_printf(err, "row %zu: field 'time': %s", i,
			  !have_time ? "missing (unix seconds)"
			  : r->time <= 0 ? "must be unix seconds > 0"
					 : "too large: unix seconds whose microseconds fit in 64 bits");
		return -EINVAL;
	}
	if (!r->app_service || !*r->app_service) {
		sb_printf(err, "row %zu: field 'app_service': missing or empty", i);
		return -EINVAL;
	}
	if (!have_stack || !*r->profile_location_str) {
		sb_printf(err, "row %zu: field 'profile_location_str': %s", i,
			  have_stack ? "empty stack" : "missing (or 'stack')");
		return -EINVAL;
	}
	if (!have_value || r->profile_value < 0) {
		sb_printf(err, "row %zu: field 'profile_value': %s", i,
			  have_value ? "must be >= 0" : "missing");
		return -EINVAL;
	}
	if (r->process_id < 0 || r->process_id > UINT32_MAX || r->process_start_time < 0) {
		sb_printf(err, "row %zu: field '%s': out of range", i,
			  r->process_start_time < 0 ? "process_start_time" : "process_id");
		return -EINVAL;
	}
	return 0;
}

static void row_defaults(struct profile_row *r, const char *host, const char *agent,
			 const char *host_ip, int64_t in_ts)
{
	if (!r->profile_event_type || !*r->profile_event_type)
		r->profile_event_type = "on-cpu";
	if (!r->profile_language_type || !*r->profile_language_type)
		r->profile_language_type = "eBPF";
	if (!r->profile_value_unit || !*r->profile_value_unit)
		r->profile_value_unit = strncmp(r->profile_event_type, "mem-", 4) == 0 ||
						strncmp(r->profile_event_type, "hbm-", 4) == 0
					? "bytes"
					: "microseconds";
	if (!r->app_instance || !*r->app_instance)
		r->app_instance = r->app_service;
	if (!r->profile_create_timestamp)
		r->profile_create_timestamp = r->time * 1000000;
	r->profile_in_timestamp = in_ts;
	if (!r->host)
		r->host = host;
	if (!r->agent)
		r->agent = agent;
	if (!r->host_ip)
		r->host_ip = host_ip;
}

int ingest_decode(const char *text, size_t len, size_t max_rows, int64_t in_ts_us,
		  struct ingest_batch *b, struct strbuf *err)
{
	static const char *const batch_keys[] = {"version", "batch_id", "host", "agent",
						 "host_ip", "stacks", "rows"};
	json_error_t jerr;
	json_t *root, *v, *stacks, *rows;
	const char *key, *host, *agent, *host_ip;
	size_t n;

	memset(b, 0, sizeof(*b));
	root = json_loadb(text, len, 0, &jerr);
	if (!root) {
		sb_printf(err, "invalid JSON at line %d, column %d: %s", jerr.line, jerr.column,
			  jerr.text);
		return -EINVAL;
	}
	b->json = root;
	if (!json_is_object(root)) {
		sb_printf(err, "the batch must be a JSON object, got %s", json_kind(root));
		goto fail;
	}
	json_object_foreach(root, key, v) {
		size_t k;

		for (k = 0; k < sizeof(batch_keys) / sizeof(batch_keys[0]); k++)
			if (strcmp(key, batch_keys[k]) == 0)
				break;
		if (k == sizeof(batch_keys) / sizeof(batch_keys[0])) {
			sb_printf(err, "unknown batch field '%s'", key);
			goto fail;
		}
	}
	v = json_object_get(root, "version");
	if (!v || !json_is_integer(v) || json_integer_value(v) != WIRE_VERSION) {
		sb_printf(err, "batch field 'version': must be %d (this server speaks protocol version %d)",
			  WIRE_VERSION, WIRE_VERSION);
		goto fail;
	}
	v = json_object_get(root, "batch_id");
	if (!v || !json_is_string(v) || !wire_batch_id_valid(json_string_value(v))) {
		sb_puts(err, "batch field 'batch_id': required, 1-128 characters of A-Z a-z 0-9 . _ : -");
		goto fail;
	}
	b->batch_id = json_string_value(v);
	if (batch_string(root, "host", &host, err) < 0 ||
	    batch_string(root, "agent", &agent, err) < 0 ||
	    batch_string(root, "host_ip", &host_ip, err) < 0)
		goto fail;
	stacks = json_object_get(root, "stacks");
	if (stacks) {
		if (!json_is_array(stacks)) {
			sb_printf(err, "batch field 'stacks': expected an array of strings, got %s",
				  json_kind(stacks));
			goto fail;
		}
		for (size_t i = 0; i < json_array_size(stacks); i++) {
			if (!json_is_string(json_array_get(stacks, i))) {
				sb_printf(err, "stacks[%zu]: expected a string", i);
				goto fail;
			}
		}
	}
	rows = json_object_get(root, "rows");
	if (!rows || !json_is_array(rows)) {
		sb_puts(err, "batch field 'rows': required, an array of row objects");
		goto fail;
	}
	n = json_array_size(rows);
	if (n == 0 || n > max_rows) {
		sb_printf(err, "batch field 'rows': %zu rows; a batch holds 1 to %zu rows", n, max_rows);
		goto fail;
	}
	b->rows = calloc(n, sizeof(*b->rows));
	b->tags = calloc(n, 2 * ROW_MAX_TAGS * sizeof(char *));
	if (!b->rows || !b->tags) {
		sb_puts(err, "out of memory decoding the batch");
		goto fail;
	}
	for (size_t i = 0; i < n; i++) {
		struct profile_row *r = &b->rows[i];

		if (decode_row(json_array_get(rows, i), i, stacks, r, b->tags + i * 2 * ROW_MAX_TAGS,
			       err) < 0)
			goto fail;
		row_defaults(r, host, agent, host_ip, in_ts_us);
	}
	b->n = n;
	return 0;
fail:
	ingest_batch_free(b);
	return -EINVAL;
}

void ingest_batch_free(struct ingest_batch *b)
{
	if (b->json)
		json_decref(b->json);
	free(b->rows);
	free(b->tags);
	memset(b, 0, sizeof(*b));
}

void ingest_handle(void *ctx, struct http_exchange *x)
{
	struct ingest_ctx *ing = ctx;
	struct strbuf err = STRBUF_INIT, plain = STRBUF_INIT, result = STRBUF_INIT;
	struct ingest_batch b;
	const char *enc = http_header(x, "Content-Encoding");
	const char *body = x->body;
	size_t len = x->body_len;
	size_t max_body = ing->max_body ? ing->max_body : 64u << 20;
	struct timespec now;
	int org, rc, duplicate = 0;

	rc = api_parse_org(http_header(x, "X-Org-Id"), &org, &err);
	if (rc < 0) {
		http_reply_envelope(x, 400, "INVALID_POST_DATA", err.buf, NULL);
		goto out;
	}
	if (enc && *enc && strcasecmp(enc, "identity") != 0) {
		if (strcasecmp(enc, "zstd") != 0) {
			sb_printf(&err, "Content-Encoding '%s' is not supported: send zstd or none", enc);
			http_reply_envelope(x, 400, "INVALID_POST_DATA", err.buf, NULL);
			goto out;
		}
		rc = wire_decompress(body, len, max_body, &plain);
		if (rc == -EFBIG) {
			sb_printf(&err, "decompressed body larger than the limit of %zu bytes", max_body);
			http_reply_envelope(x, 413, "INVALID_POST_DATA", err.buf, NULL);
			goto out;
		}
		if (rc < 0) {
			http_reply_envelope(x, 400, "INVALID_POST_DATA",
					    "body is not a valid zstd frame (Content-Encoding: zstd)",
					    NULL);
			goto out;
		}
		body = plain.buf;
		len = plain.len;
	}
	clock_gettime(CLOCK_REALTIME, &now);
	rc = ingest_decode(body, len, ing->max_rows ? ing->max_rows : INGEST_MAX_ROWS_DEFAULT,
			   (int64_t)now.tv_sec * 1000000 + now.tv_nsec / 1000, &b, &err);
	if (rc < 0) {
		if (ing->metrics)
			metrics_add(&ing->metrics->batches_invalid, 1);
		log_info("batch rejected: %s", err.buf);
		http_reply_envelope(x, 400, "INVALID_POST_DATA", err.buf, NULL);
		goto out;
	}
	rc = store_insert(ing->store, org, b.batch_id, b.rows, b.n, &duplicate);
	if (ing->metrics) {
		struct server_metrics *m = ing->metrics;

		metrics_add(rc == 0 ? (duplicate ? &m->batches_duplicate : &m->batches_stored)
			    : rc == -EINVAL ? &m->batches_invalid
					    : &m->batches_unavailable,
			    1);
		metrics_add(&m->rows_stored, rc == 0 && !duplicate ? b.n : 0);
	}
	if (rc == 0) {
		sb_puts(&result, "{\"batch_id\":");
		sb_json_str(&result, b.batch_id);
		sb_printf(&result, ",\"rows\":%zu,\"duplicate\":%s}", b.n,
			  duplicate ? "true" : "false");
		http_reply_envelope(x, 200, "SUCCESS", "", result.buf);
	} else if (rc == -EINVAL) {
		http_reply_envelope(x, 400, "INVALID_POST_DATA", store_errmsg(ing->store), NULL);
	} else {
		int ra = ing->retry_after > 0 ? ing->retry_after : 5;

		log_warn("batch %s (%zu rows) not stored, client will retry: %s", b.batch_id, b.n,
			 store_errmsg(ing->store));
		snprintf(x->extra_header_name, sizeof(x->extra_header_name), "Retry-After");
		snprintf(x->extra_header_value, sizeof(x->extra_header_value), "%d", ra);
		sb_printf(&err, "store unavailable, retry later: %s", store_errmsg(ing->store));
		http_reply_envelope(x, 503, "SERVER_ERROR", err.buf, NULL);
	}
	ingest_batch_free(&b);
out:
	sb_free(&err);
	sb_free(&plain);
	sb_free(&result);
}
