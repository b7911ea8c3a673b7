/*
 * test_flametree — the flame tree: ids, parents, values and order of the spec's worked examples
 * (deepflow-behaviour.md §2.3, §2.4, §2.6), merging, kernel clipping, escaping, bounds, and both
 * JSON forms checked byte for byte and through jansson.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <jansson.h>

#include "server/flametree.h"

struct row {
	const char *stack;
	int64_t value;
};

/* §2.4 rows A, B, C, D for app_service deepflow-agent. */
static const struct row rows_24[] = {
	{"[t] tokio-runtime-w;start_thread;main_loop;[k] entry_SYSCALL_64;[k] do_syscall_64",
	 20202},
	{"[t] tokio-runtime-w;start_thread;main_loop;parse", 10101},
	{"[p] deepflow-agent;main;run", 10101},
	{"[t] tokio-runtime-w;start_thread;main_loop;parse", 10101},
};

static struct flame_tree *tree_of(const struct row *rows, size_t n, size_t max_nodes)
{
	struct flame_tree *t = flame_tree_new(max_nodes);

	assert_non_null(t);
	for (size_t i = 0; i < n; i++)
		assert_int_equal(flame_tree_add(t, rows[i].stack, strlen(rows[i].stack),
						 rows[i].value),
				 0);
	assert_int_equal(flame_tree_finish(t), 0);
	return t;
}

/* The whole JSON value, pulled in chunks of want bytes. */
static char *emit_all(const struct flame_tree *t, const char *root, enum flame_format fmt,
		      const char *event, size_t want)
{
	struct flame_emit *e = flame_emit_new(t, root, fmt, event);
	struct strbuf sb = STRBUF_INIT;
	int rc, rounds = 0;

	assert_non_null(e);
	do {
		size_t before = sb.len;

		rc = flame_emit_next(e, &sb, want);
		assert_true(rc == 0 || rc == 1);
		/* every call makes progress: at least want bytes unless finished */
		if (rc == 0)
			assert_true(sb.len - before >= want);
		assert_true(++rounds < 1000000);
	} while (rc == 0);
	flame_emit_free(e);
	return sb_detach(&sb, NULL);
}

static json_t *parse_json(const char *text)
{
	json_error_t err;
	json_t *j = json_loads(text, JSON_DECODE_ANY, &err);

	if (!j)
		fail_msg("invalid JSON (%s at %d): %s", err.text, err.position, text);
	return j;
}

struct expect {
	const char *label; /* NULL for the root */
	const char *id;
	const char *parent;
	int64_t self, total;
};

static void assert_nodes(const struct flame_tree *t, const struct expect *x, size_t n)
{
	char *flat = emit_all(t, "app", FLAME_FORMAT_FLAT, "on-cpu", 1 << 16);
	json_t *arr = parse_json(flat);

	assert_int_equal(flame_tree_size(t), n);
	assert_int_equal(json_array_size(arr), n);
	for (size_t i = 0; i < n; i++) {
		json_t *o = json_array_get(arr, i);
		struct flame_node_info info;

		assert_int_equal(flame_tree_node_at(t, i, &info), 0);
		assert_string_equal(json_string_value(json_object_get(o, "profile_location_str")),
				    x[i].label ? x[i].label : "app");
		assert_string_equal(json_string_value(json_object_get(o, "node_id")), x[i].id);
		assert_string_equal(json_string_value(json_object_get(o, "parent_node_id")),
				    x[i].parent);
		assert_int_equal(json_integer_value(json_object_get(o, "self_value")), x[i].self);
		assert_int_equal(json_integer_value(json_object_get(o, "total_value")), x[i].total);
		assert_int_equal(json_object_size(o), 5);
		assert_string_equal(info.node_id, x[i].id);
		if (x[i].label)
			assert_string_equal(info.label, x[i].label);
		else
			assert_null(info.label);
	}
	assert_int_equal(flame_tree_node_at(t, n, &(struct flame_node_info){0}), -ERANGE);
	json_decref(arr);
	free(flat);
}

/* The seed's Total example: the three ids it shows (§2.3). */
static void test_seed_total_ids(void **state)
{
	static const struct row rows[] = {
		{"[p] process-exporte", 2512},
		{"[p] process-exporte;[t] node_exporter", 22516},
		{"[p] deepflow-agent;[t] stats-collector", 33},
	};
	static const struct expect x[] = {
		{NULL, "", "-1", 0, 25061},
		{"[p] process-exporte", "9d3c5fd3-4cd2-5d04-be22-e0f27144f638", "", 2512, 25028},
		{"[t] node_exporter", "6efac45b-4be8-556f-b12c-604f296befa6",
		 "9d3c5fd3-4cd2-5d04-be22-e0f27144f638", 22516, 22516},
		{"[p] deepflow-agent", "1762633e-a955-5c80-a5be-22529903b0bf", "", 0, 33},
		{"[t] stats-collector", "99e8ce53-e3bf-5b33-a63d-aa47e00e2ff4",
		 "1762633e-a955-5c80-a5be-22529903b0bf", 33, 33},
	};
	struct flame_tree *t = tree_of(rows, 3, 0);
	struct flame_tree_stats st;

	assert_nodes(t, x, 5);
	flame_tree_stats(t, &st);
	assert_int_equal(st.nodes, 4);
	assert_int_equal(st.stacks, 3);
	assert_int_equal(st.total, 25061);
	assert_int_equal(st.max_depth, 2);
	flame_tree_free(t);
}

#define ID_A "d720e32d-4765-5177-b65b-42dd7f6e6445"
#define ID_A_ "6093b5a0-76b9-531c-9137-6741290421b4"
#define ID_TOKIO "c04e2efa-f59e-5810-8f0c-b5d4d3074b37"
#define ID_START "3825c90e-0982-5dc8-8150-9a970fb5b72e"
#define ID_LOOP "47f9cf06-29d7-5c08-9fdb-895647d4447a"
#define ID_ENTRY "3dc5f091-df4b-5f21-a21b-91fd09354ac7"
#define ID_DOSYS "81cc4d30-3f03-5576-9c6e-20f080b7c970"
#define ID_PARSE "b5228a31-5138-54b7-8702-e1aef9b8a43d"
#define ID_PAGENT "1762633e-a955-5c80-a5be-22529903b0bf"
#define ID_MAIN "432d0931-6d0d-5e34-978c-7f61123011f1"
#define ID_RUN "6ac3e7f3-fc6c-57b0-8e89-c5de094231ea"

/* §2.4 in ember's order: totals descending; the 20202 tie under main_loop goes to "[k] …"
 * because '[' sorts before 'p'. */
static const struct expect expect_24[] = {
	{NULL, "", "-1", 0, 50505},
	{"[t] tokio-runtime-w", ID_TOKIO, "", 0, 40404},
	{"start_thread", ID_START, ID_TOKIO, 0, 40404},
	{"main_loop", ID_LOOP, ID_START, 0, 40404},
	{"[k] entry_SYSCALL_64", ID_ENTRY, ID_LOOP, 0, 20202},
	{"[k] do_syscall_64", ID_DOSYS, ID_ENTRY, 20202, 20202},
	{"parse", ID_PARSE, ID_LOOP, 20202, 20202},
	{"[p] deepflow-agent", ID_PAGENT, "", 0, 10101},
	{"main", ID_MAIN, ID_PAGENT, 0, 10101},
	{"run", ID_RUN, ID_MAIN, 10101, 10101},
};

#define NODE(label, id, parent, s, t)                                                         \
	"{\"profile_location_str\":\"" label "\",\"node_id\":\"" id "\",\"parent_node_id\":\"" \
	parent "\",\"self_value\":" #s ",\"total_value\":" #t "}"

static const char flat_24[] =
	"[" NODE("deepflow-agent", "", "-1", 0, 50505) ","
	NODE("[t] tokio-runtime-w", ID_TOKIO, "", 0, 40404) ","
	NODE("start_thread", ID_START, ID_TOKIO, 0, 40404) ","
	NODE("main_loop", ID_LOOP, ID_START, 0, 40404) ","
	NODE("[k] entry_SYSCALL_64", ID_ENTRY, ID_LOOP, 0, 20202) ","
	NODE("[k] do_syscall_64", ID_DOSYS, ID_ENTRY, 20202, 20202) ","
	NODE("parse", ID_PARSE, ID_LOOP, 20202, 20202) ","
	NODE("[p] deepflow-agent", ID_PAGENT, "", 0, 10101) ","
	NODE("main", ID_MAIN, ID_PAGENT, 0, 10101) ","
	NODE("run", ID_RUN, ID_MAIN, 10101, 10101) "]";

static void test_worked_example(void **state)
{
	struct flame_tree *t = tree_of(rows_24, 4, 0);
	char *text;

	assert_nodes(t, expect_24, 10);
	text = emit_all(t, "deepflow-agent", FLAME_FORMAT_FLAT, "on-cpu", 1 << 20);
	assert_string_equal(text, flat_24);
	free(text);
	/* byte-at-a-time pulls give the same text */
	text = emit_all(t, "deepflow-agent", FLAME_FORMAT_FLAT, "on-cpu", 1);
	assert_string_equal(text, flat_24);
	free(text);
	text = emit_all(t, "deepflow-agent", FLAME_FORMAT_FLAT, "on-cpu", 0);
	assert_string_equal(text, flat_24);
	free(text);
	flame_tree_free(t);
}

/* Same stacks in another order, and split into more rows: same output. */
static void test_merge_and_order_independence(void **state)
{
	static const struct row rows[] = {
		{"[p] deepflow-agent;main;run", 5000},
		{"[t] tokio-runtime-w;start_thread;main_loop;parse", 20202},
		{"[t] tokio-runtime-w;start_thread;main_loop;[k] entry_SYSCALL_64;"
		 "[k] do_syscall_64", 20000},
		{"[p] deepflow-agent;main;run", 5101},
		{"[t] tokio-runtime-w;start_thread;main_loop;[k] entry_SYSCALL_64;"
		 "[k] do_syscall_64", 202},
	};
	struct flame_tree *t = tree_of(rows, 5, 0);
	struct flame_tree_stats st;
	char *text = emit_all(t, "deepflow-agent", FLAME_FORMAT_FLAT, "on-cpu", 64);

	assert_string_equal(text, flat_24);
	flame_tree_stats(t, &st);
	assert_int_equal(st.nodes, 9);
	assert_int_equal(st.stacks, 5);
	free(text);
	flame_tree_free(t);
}

/* Equal totals: label bytes ascending, shorter first when one is a prefix. */
static void test_sibling_ties(void **state)
{
	static const struct row rows[] = {
		{"r;b", 1}, {"r;ab", 1}, {"r;a", 1}, {"r;B", 1}, {"r;c", 2},
	};
	static const char *want[] = {"r", "c", "B", "a", "ab", "b"};
	struct flame_tree *t = tree_of(rows, 5, 0);
	struct flame_node_info info;

	assert_int_equal(flame_tree_size(t), 7);
	for (size_t i = 1; i < 7; i++) {
		assert_int_equal(flame_tree_node_at(t, i, &info), 0);
		assert_string_equal(info.label, want[i - 1]);
		assert_int_equal(info.parent, i == 1 ? 0 : 1);
		assert_int_equal(info.depth, i == 1 ? 1 : 2);
	}
	flame_tree_free(t);
}

/* Empty segments are nodes labelled "", hashed as the exact prefix text. */
static void test_empty_segments(void **state)
{
	static const struct row rows[] = {{"a;;b", 3}, {"a;", 4}};
	static const struct expect x[] = {
		{NULL, "", "-1", 0, 7},
		{"a", ID_A, "", 0, 7},
		{"", ID_A_, ID_A, 4, 7},
		{"b", "18341842-545f-51a4-b6c5-eaf26c45ad26", ID_A_, 3, 3},
	};
	struct flame_tree *t = tree_of(rows, 2, 0);

	assert_nodes(t, x, 4);
	/* an empty stack adds nothing */
	assert_int_equal(flame_tree_add(t, "", 0, 99), 0);
	assert_int_equal(flame_tree_finish(t), 0);
	assert_nodes(t, x, 4);
	flame_tree_free(t);
}

/* DeepFlow O loses a leaf whose last character is multi-byte UTF-8; ember keeps it. */
static void test_utf8_leaf(void **state)
{
	static const struct row rows[] = {{"[p] x;f\xc3\xbcr", 5}};
	static const struct expect x[] = {
		{NULL, "", "-1", 0, 5},
		{"[p] x", NULL, "", 0, 5},
		{"f\xc3\xbcr", "c239e693-46df-56c7-9c5c-acd579293aff", NULL, 5, 5},
	};
	struct flame_tree *t = tree_of(rows, 1, 0);
	struct flame_node_info p, leaf;
	char *text;

	assert_int_equal(flame_tree_node_at(t, 1, &p), 0);
	assert_int_equal(flame_tree_node_at(t, 2, &leaf), 0);
	assert_string_equal(leaf.label, x[2].label);
	assert_string_equal(leaf.node_id, x[2].id);
	assert_int_equal(leaf.self_value, 5);
	assert_int_equal(leaf.parent, 1);
	text = emit_all(t, "x", FLAME_FORMAT_FLAT, "on-cpu", 1);
	assert_non_null(strstr(text, "\"profile_location_str\":\"f\xc3\xbcr\""));
	assert_non_null(strstr(text, "\"total_value\":5}]"));
	free(text);
	flame_tree_free(t);
}

static void test_empty_tree(void **state)
{
	struct flame_tree *t = flame_tree_new(0);
	char *text;

	assert_non_null(t);
	/* not finished yet: no emitter */
	assert_null(flame_emit_new(t, "x", FLAME_FORMAT_FLAT, "on-cpu"));
	assert_int_equal(flame_tree_size(t), 0);
	assert_int_equal(flame_tree_finish(t), 0);
	assert_int_equal(flame_tree_size(t), 1);
	text = emit_all(t, "x", FLAME_FORMAT_FLAT, "on-cpu", 1);
	assert_string_equal(text, "null");
	free(text);
	text = emit_all(t, "x", FLAME_FORMAT_COMPACT, "on-cpu", 1);
	assert_string_equal(text, "{\"functions\":null,\"function_types\":null,"
				  "\"function_values\":{\"columns\":null,\"values\":null},"
				  "\"node_values\":{\"columns\":null,\"values\":null}}");
	free(text);
	flame_tree_free(t);
}

static void test_escaping(void **state)
{
	static const struct row rows[] = {
		{"[p] java;Foo.<init>;a&b \"q\" \\ \t;bad\xff\xfe", 1},
	};
	struct flame_tree *t = tree_of(rows, 1, 0);
	char *text = emit_all(t, "<svc>&\"", FLAME_FORMAT_FLAT, "on-cpu", 1);
	json_t *arr = parse_json(text);

	assert_non_null(strstr(text, "\"profile_location_str\":\"\\u003csvc\\u003e\\u0026\\\"\""));
	assert_non_null(strstr(text, "\"Foo.\\u003cinit\\u003e\""));
	assert_non_null(strstr(text, "\"a\\u0026b \\\"q\\\" \\\\ \\t\""));
	assert_non_null(strstr(text, "\"bad\xef\xbf\xbd\xef\xbf\xbd\""));
	assert_string_equal(json_string_value(json_object_get(json_array_get(arr, 2),
							      "profile_location_str")),
			    "Foo.<init>");
	json_decref(arr);
	free(text);

	text = emit_all(t, "<svc>", FLAME_FORMAT_COMPACT, "on-cpu", 1);
	arr = parse_json(text);
	assert_non_null(strstr(text, "\"functions\":[\"\\u003csvc\\u003e\",\"[p] java\""));
	json_decref(arr);
	free(text);
	flame_tree_free(t);
}

static void test_max_nodes(void **state)
{
	struct flame_tree *t = flame_tree_new(3);
	struct flame_tree_stats st;
	struct flame_node_info info;

	assert_non_null(t);
	assert_int_equal(flame_tree_add(t, "a;b", 3, 1), 0);
	/* needs two more nodes, one fits: nothing of it stays */
	assert_int_equal(flame_tree_add(t, "a;c;d", 5, 10), -E2BIG);
	flame_tree_stats(t, &st);
	assert_int_equal(st.nodes, 2);
	assert_int_equal(st.labels, 2);
	assert_int_equal(st.label_bytes, 2);
	assert_int_equal(st.stacks, 1);
	assert_int_equal(flame_tree_add(t, "x;y;z", 5, 10), -E2BIG);
	assert_int_equal(flame_tree_add(t, "a;c", 3, 2), 0);
	assert_int_equal(flame_tree_add(t, "x", 1, 1), -E2BIG);
	/* existing nodes still take values */
	assert_int_equal(flame_tree_add(t, "a;b", 3, 4), 0);
	assert_int_equal(flame_tree_add(t, "a", 1, 8), 0);
	assert_int_equal(flame_tree_finish(t), 0);
	flame_tree_stats(t, &st);
	assert_int_equal(st.nodes, 3);
	assert_int_equal(st.labels, 3);
	assert_int_equal(st.total, 15);
	assert_int_equal(flame_tree_size(t), 4);
	assert_int_equal(flame_tree_node_at(t, 1, &info), 0);
	assert_string_equal(info.label, "a");
	assert_int_equal(info.self_value, 8);
	assert_int_equal(info.total_value, 15);
	assert_int_equal(flame_tree_node_at(t, 2, &info), 0);
	assert_string_equal(info.label, "b");
	assert_int_equal(info.total_value, 5);
	assert_int_equal(flame_tree_node_at(t, 3, &info), 0);
	assert_string_equal(info.label, "c");
	assert_int_equal(info.total_value, 2);
	flame_tree_free(t);
}

/* Many stacks: the hash tables grow, ids still match the one-shot hash of each prefix. */
static void test_many_stacks_ids(void **state)
{
	struct flame_tree *t = flame_tree_new(0);
	struct strbuf sb = STRBUF_INIT;
	struct flame_tree_stats st;
	size_t n;

	assert_non_null(t);
	for (int i = 0; i < 2000; i++) {
		sb_reset(&sb);
		sb_printf(&sb, "[p] app;f%d;g%d;h%d", i % 7, i % 13, i);
		assert_int_equal(flame_tree_add(t, sb.buf, sb.len, i + 1), 0);
	}
	assert_int_equal(flame_tree_finish(t), 0);
	flame_tree_stats(t, &st);
	assert_int_equal(st.total, 2000 * 2001 / 2);
	n = flame_tree_size(t);
	assert_int_equal(n, st.nodes + 1);
	for (size_t pos = 1; pos < n; pos++) {
		struct flame_node_info info, up;
		char path[256], id[UUID5_STR_LEN + 1];
		size_t len = 0;

		assert_int_equal(flame_tree_node_at(t, pos, &info), 0);
		/* rebuild the prefix from the parents */
		up = info;
		for (size_t d = info.depth; d > 0; d--) {
			memmove(path + up.label_len + (len ? 1 : 0), path, len);
			memcpy(path, up.label, up.label_len);
			if (len)
				path[up.label_len] = ';';
			len += up.label_len + (len ? 1 : 0);
			if (d > 1)
				assert_int_equal(flame_tree_node_at(t, up.parent, &up), 0);
		}
		assert_int_equal(uuid5_oid(path, len, id), 0);
		assert_string_equal(info.node_id, id);
		assert_true(info.parent < pos);
	}
	sb_free(&sb);
	flame_tree_free(t);
}

static void test_saturation(void **state)
{
	struct flame_tree *t = flame_tree_new(0);
	struct flame_tree_stats st;

	assert_int_equal(flame_tree_add(t, "a;b", 3, INT64_MAX), 0);
	assert_int_equal(flame_tree_add(t, "a;c", 3, INT64_MAX), 0);
	assert_int_equal(flame_tree_add(t, "a;c", 3, 5), 0);
	assert_int_equal(flame_tree_finish(t), 0);
	flame_tree_stats(t, &st);
	assert_true(st.total == INT64_MAX);
	flame_tree_free(t);
}

/* Adding after finish, then finishing again, gives the tree of all stacks. */
static void test_refinish(void **state)
{
	struct flame_tree *t = tree_of(rows_24, 2, 0);
	char *text;

	assert_int_equal(flame_tree_add(t, rows_24[2].stack, strlen(rows_24[2].stack), 10101), 0);
	assert_int_equal(flame_tree_size(t), 0);
	assert_int_equal(flame_tree_add(t, rows_24[3].stack, strlen(rows_24[3].stack), 10101), 0);
	assert_int_equal(flame_tree_finish(t), 0);
	text = emit_all(t, "deepflow-agent", FLAME_FORMAT_FLAT, "on-cpu", 100);
	assert_string_equal(text, flat_24);
	free(text);
	flame_tree_free(t);
}

static size_t clip(const char *s, int depth)
{
	return flame_clip_kernel(s, strlen(s), depth);
}

static void assert_clip(const char *s, int depth, const char *want)
{
	size_t n = clip(s, depth);

	if (n != strlen(want) || strncmp(s, want, n) != 0)
		fail_msg("clip(\"%s\", %d) = \"%.*s\", want \"%s\"", s, depth, (int)n, s, want);
}

static void test_clip_kernel(void **state)
{
	const char *s = "[p] a;main;f;[k] x;[k] y;[k] z"; /* K = 3 */

	assert_clip(s, -1, s);
	assert_clip(s, -7, s);
	assert_clip(s, 0, "[p] a;main;f");
	assert_clip(s, 1, "[p] a;main;f;[k] x");
	assert_clip(s, 2, "[p] a;main;f;[k] x;[k] y");
	assert_clip(s, 3, s); /* K = D */
	assert_clip(s, 5, s); /* K < D: DeepFlow would drop one frame here */
	assert_clip("a;[k] x", 1, "a;[k] x");
	assert_clip("a;[k] x", 0, "a");
	/* no kernel frames */
	assert_clip("a;b;c", 0, "a;b;c");
	/* the first segment is never cut; it counts as a kernel frame */
	assert_clip("[k] x;[k] y;[k] z", 0, "[k] x");
	assert_clip("[k] x;[k] y;[k] z", 1, "[k] x");
	assert_clip("[k] x;[k] y;[k] z", 2, "[k] x;[k] y");
	assert_clip("[k] x", 0, "[k] x");
	/* "[k]" elsewhere than at a segment start, or without its space, is not a kernel frame */
	assert_clip("a;foo[k] bar;x [k] y;[k]z;[K] w", 0, "a;foo[k] bar;x [k] y;[k]z;[K] w");
	assert_clip("a;b[k] ;[k] c", 0, "a;b[k] ");
	/* kernel frames not all at the end: cut at the (D+1)-th */
	assert_clip("a;[k] x;b;[k] y;c", 1, "a;[k] x;b");
	assert_clip("a;[k] x;b;[k] y;c", 0, "a");
	/* a segment that is exactly "[k] " and a truncated marker at the end */
	assert_clip("a;[k] ", 0, "a");
	assert_clip("a;[k]", 0, "a;[k]");
	assert_clip("a;", 0, "a;");
	assert_int_equal(flame_clip_kernel("", 0, 0), 0);
}

/* Clipping before adding merges stacks that differ below the cut (§2.5). */
static void test_clip_then_merge(void **state)
{
	static const char *stacks[] = {"[p] a;f;[k] x;[k] y", "[p] a;f;[k] x;[k] z", "[p] a;f"};
	struct flame_tree *t = flame_tree_new(0);
	struct flame_node_info info;

	for (int i = 0; i < 3; i++) {
		size_t n = flame_clip_kernel(stacks[i], strlen(stacks[i]), 1);

		assert_int_equal(flame_tree_add(t, stacks[i], n, 10), 0);
	}
	assert_int_equal(flame_tree_finish(t), 0);
	assert_int_equal(flame_tree_size(t), 4);
	assert_int_equal(flame_tree_node_at(t, 3, &info), 0);
	assert_string_equal(info.label, "[k] x");
	assert_int_equal(info.self_value, 20);
	assert_int_equal(flame_tree_node_at(t, 2, &info), 0);
	assert_int_equal(info.self_value, 10);
	assert_int_equal(info.total_value, 30);
	flame_tree_free(t);
}

/* §2.4 in the compact form, ember's indices (root 0, then pre-order, functions first-seen). */
static const char compact_24[] =
	"{\"functions\":[\"deepflow-agent\",\"[t] tokio-runtime-w\",\"start_thread\",\"main_loop\","
	"\"[k] entry_SYSCALL_64\",\"[k] do_syscall_64\",\"parse\",\"[p] deepflow-agent\",\"main\","
	"\"run\"],"
	"\"function_types\":[\"P\",\"T\",\"A\",\"A\",\"K\",\"K\",\"A\",\"P\",\"A\",\"A\"],"
	"\"function_values\":{\"columns\":[\"self_value\",\"total_value\"],\"values\":["
	"[0,50505],[0,40404],[0,40404],[0,40404],[0,20202],[20202,20202],[20202,20202],[0,10101],"
	"[0,10101],[10101,10101]]},"
	"\"node_values\":{\"columns\":[\"function_id\",\"parent_node_id\",\"self_value\","
	"\"total_value\"],\"values\":["
	"[0,-1,0,50505],[1,0,0,40404],[2,1,0,40404],[3,2,0,40404],[4,3,0,20202],[5,4,20202,20202],"
	"[6,3,20202,20202],[7,0,0,10101],[8,7,0,10101],[9,8,10101,10101]]}}";

/* DeepFlow's §2.6 output for the same rows (its own row-order indices). */
static const char compact_26_deepflow[] =
	"{\"functions\":[\"deepflow-agent\",\"[k] do_syscall_64\",\"[k] entry_SYSCALL_64\","
	"\"main_loop\",\"start_thread\",\"[t] tokio-runtime-w\",\"parse\",\"run\",\"main\","
	"\"[p] deepflow-agent\"],"
	"\"function_types\":[\"P\",\"K\",\"K\",\"A\",\"A\",\"T\",\"A\",\"A\",\"A\",\"P\"],"
	"\"node_values\":{\"values\":[[0,-1,0,50505],[1,2,20202,20202],[2,3,0,20202],"
	"[3,4,0,40404],[4,5,0,40404],[5,0,0,40404],[6,3,20202,20202],[7,8,10101,10101],"
	"[8,9,0,10101],[9,0,0,10101]]}}";

static int cmp_strp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The tree of a compact result as sorted "path|self|total" lines, indices gone. */
static char *compact_paths(json_t *j)
{
	json_t *fns = json_object_get(j, "functions");
	json_t *nv = json_object_get(json_object_get(j, "node_values"), "values");
	size_t n = json_array_size(nv);
	char **lines = calloc(n, sizeof(*lines));
	struct strbuf all = STRBUF_INIT;

	for (size_t i = 0; i < n; i++) {
		struct strbuf sb = STRBUF_INIT;
		json_t *row = json_array_get(nv, i);

		for (json_int_t k = (json_int_t)i; k >= 0;) {
			json_t *r = json_array_get(nv, (size_t)k);

			json_int_t f = json_integer_value(json_array_get(r, 0));

			sb_puts(&sb, json_string_value(json_array_get(fns, (size_t)f)));
			sb_putc(&sb, '<');
			k = json_integer_value(json_array_get(r, 1));
		}
		sb_printf(&sb, "|%lld|%lld", (long long)json_integer_value(json_array_get(row, 2)),
			  (long long)json_integer_value(json_array_get(row, 3)));
		lines[i] = sb_detach(&sb, NULL);
	}
	qsort(lines, n, sizeof(*lines), cmp_strp);
	for (size_t i = 0; i < n; i++) {
		sb_puts(&all, lines[i]);
		sb_putc(&all, '\n');
		free(lines[i]);
	}
	free(lines);
	return sb_detach(&all, NULL);
}

/* "label=type" for every function, sorted. */
static char *compact_types(json_t *j)
{
	json_t *fns = json_object_get(j, "functions");
	json_t *types = json_object_get(j, "function_types");
	size_t n = json_array_size(fns);
	char **lines = calloc(n, sizeof(*lines));
	struct strbuf all = STRBUF_INIT;

	assert_int_equal(json_array_size(types), n);
	for (size_t i = 0; i < n; i++) {
		struct strbuf sb = STRBUF_INIT;

		sb_printf(&sb, "%s=%s", json_string_value(json_array_get(fns, i)),
			  json_string_value(json_array_get(types, i)));
		lines[i] = sb_detach(&sb, NULL);
	}
	qsort(lines, n, sizeof(*lines), cmp_strp);
	for (size_t i = 0; i < n; i++) {
		sb_puts(&all, lines[i]);
		sb_putc(&all, '\n');
		free(lines[i]);
	}
	free(lines);
	return sb_detach(&all, NULL);
}

static void test_compact_worked_example(void **state)
{
	struct flame_tree *t = tree_of(rows_24, 4, 0);
	char *text = emit_all(t, "deepflow-agent", FLAME_FORMAT_COMPACT, "on-cpu", 1);
	char *text_big = emit_all(t, "deepflow-agent", FLAME_FORMAT_COMPACT, "on-cpu", 1 << 20);
	json_t *ours, *theirs;
	char *a, *b;

	assert_string_equal(text, compact_24);
	assert_string_equal(text_big, compact_24);
	ours = parse_json(text);
	theirs = parse_json(compact_26_deepflow);
	/* the same tree and the same function types as DeepFlow's, indices aside */
	a = compact_paths(ours);
	b = compact_paths(theirs);
	assert_string_equal(a, b);
	free(a);
	free(b);
	a = compact_types(ours);
	b = compact_types(theirs);
	assert_string_equal(a, b);
	free(a);
	free(b);
	json_decref(ours);
	json_decref(theirs);
	free(text);
	free(text_big);
	flame_tree_free(t);
}

/* function_values sum over nodes sharing a label (recursion counts twice); types per §2.6. */
static void test_compact_types_and_sums(void **state)
{
	static const struct row rows[] = {
		{"[p] m;[l] libc;f;f;[k] k1", 3},
		{"[p] m;[c] cuda;[/usr/bin/x];[unknown] 0x1;f", 4},
	};
	struct flame_tree *t = tree_of(rows, 2, 0);
	char *text = emit_all(t, "Total", FLAME_FORMAT_COMPACT, "on-cpu", 7);
	json_t *j = parse_json(text);
	json_t *fns = json_object_get(j, "functions");
	json_t *types = json_object_get(j, "function_types");
	json_t *fv = json_object_get(json_object_get(j, "function_values"), "values");
	int found_f = 0;

	assert_string_equal(json_string_value(json_array_get(types, 0)), "H");
	for (size_t i = 1; i < json_array_size(fns); i++) {
		const char *l = json_string_value(json_array_get(fns, i));
		const char *ty = json_string_value(json_array_get(types, i));
		const char *want = strcmp(l, "[p] m") == 0		 ? "P"
				   : strcmp(l, "[l] libc") == 0		 ? "L"
				   : strcmp(l, "[k] k1") == 0		 ? "K"
				   : strcmp(l, "[c] cuda") == 0		 ? "C"
				   : strcmp(l, "[/usr/bin/x]") == 0	 ? "?"
				   : strcmp(l, "[unknown] 0x1") == 0 ? "?"
									 : "A";

		assert_string_equal(ty, want);
		if (strcmp(l, "f") == 0) {
			json_t *v = json_array_get(fv, i);

			found_f++;
			/* f (3, under libc), f (3, under f), f (4 self, under unknown) */
			assert_int_equal(json_integer_value(json_array_get(v, 0)), 4);
			assert_int_equal(json_integer_value(json_array_get(v, 1)), 10);
		}
	}
	assert_int_equal(found_f, 1);
	json_decref(j);
	free(text);

	/* memory events: "O" wherever self == total, the root included */
	text = emit_all(t, "m", FLAME_FORMAT_COMPACT, "mem-alloc", 7);
	j = parse_json(text);
	fns = json_object_get(j, "functions");
	types = json_object_get(j, "function_types");
	assert_string_equal(json_string_value(json_array_get(types, 0)), "P");
	for (size_t i = 1; i < json_array_size(fns); i++) {
		const char *l = json_string_value(json_array_get(fns, i));
		const char *ty = json_string_value(json_array_get(types, i));

		if (strcmp(l, "[k] k1") == 0)
			assert_string_equal(ty, "O");
		else if (strcmp(l, "[p] m") == 0)
			assert_string_equal(ty, "P");
	}
	json_decref(j);
	free(text);
	flame_tree_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_seed_total_ids),
		cmocka_unit_test(test_worked_example),
		cmocka_unit_test(test_merge_and_order_independence),
		cmocka_unit_test(test_sibling_ties),
		cmocka_unit_test(test_empty_segments),
		cmocka_unit_test(test_utf8_leaf),
		cmocka_unit_test(test_empty_tree),
		cmocka_unit_test(test_escaping),
		cmocka_unit_test(test_max_nodes),
		cmocka_unit_test(test_many_stacks_ids),
		cmocka_unit_test(test_saturation),
		cmocka_unit_test(test_refinish),
		cmocka_unit_test(test_clip_kernel),
		cmocka_unit_test(test_clip_then_merge),
		cmocka_unit_test(test_compact_worked_example),
		cmocka_unit_test(test_compact_types_and_sums),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
