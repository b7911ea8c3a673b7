/*
 * fuzz_flametree — input = one byte of settings, then folded text. Every good line is clipped
 * (kernel depth from the settings byte, -1..6) and added to a small tree; both JSON forms are
 * pulled in chunks and must parse with jansson and agree with the tree: node count, root total,
 * parents before children, total = self + children's totals (when no sum saturated), well-formed
 * ids.
 */
#include <errno.h>
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/folded.h"
#include "server/flametree.h"

/* Small, so the -E2BIG path is reached. */
#define FUZZ_TREE_MAX_NODES 512

struct fuzz_feed {
	struct flame_tree *t;
	int depth;
	int64_t sum;
	int saturated;
};

static int fuzz_feed_line(void *arg, const char *stack, size_t len, int64_t value, size_t line)
{
	struct fuzz_feed *f = arg;
	size_t n = flame_clip_kernel(stack, len, f->depth);
	int rc;

	if (n > len || (f->depth < 0 && n != len) || (n == 0 && stack[0] != ';'))
		abort();
	rc = flame_tree_add(f->t, stack, n, value);
	if (rc == -E2BIG)
		return 0;
	if (rc != 0)
		abort();
	/* an empty stack adds nothing (as in DeepFlow) */
	if (n > 0 && __builtin_add_overflow(f->sum, value, &f->sum))
		f->saturated = 1;
	return 0;
}

static char *fuzz_emit(const struct flame_tree *t, enum flame_format fmt, size_t want, size_t *len)
{
	struct flame_emit *e =
	    flame_emit_new(t, "app<&>\"", fmt, want & 1 ? "mem-inuse" : "on-cpu");
	struct strbuf sb = STRBUF_INIT;
	int rc;

	if (!e)
		abort();
	do {
		size_t before = sb.len;

		rc = flame_emit_next(e, &sb, want);
		if (rc < 0 || (rc == 0 && sb.len - before < want))
			abort();
	} while (rc == 0);
	flame_emit_free(e);
	return sb_detach(&sb, len);
}

static json_t *fuzz_parse(const char *text, size_t len)
{
	json_error_t err;
	json_t *j = json_loadb(text, len, JSON_DECODE_ANY, &err);

	if (!j || strlen(text) != len)
		abort();
	return j;
}

static void fuzz_check_tree(const struct flame_tree *t, const struct fuzz_feed *f)
{
	size_t n = flame_tree_size(t);
	int64_t *kids = calloc(n, sizeof(*kids));
	struct flame_node_info info;

	if (!kids)
		abort();
	for (size_t pos = 0; pos < n; pos++) {
		if (flame_tree_node_at(t, pos, &info))
			abort();
		if (pos == 0) {
			if (info.parent != SIZE_MAX || info.node_id[0] || info.label ||
			    (!f->saturated && info.total_value != f->sum))
				abort();
			continue;
		}
		if (info.parent >= pos || strlen(info.node_id) != UUID5_STR_LEN ||
		    info.node_id[14] != '5' || !info.label ||
		    strlen(info.label) != info.label_len || memchr(info.label, ';', info.label_len))
			abort();
		kids[info.parent] += info.total_value;
	}
	for (size_t pos = 0; pos < n && !f->saturated; pos++) {
		if (flame_tree_node_at(t, pos, &info) ||
		    info.total_value != info.self_value + kids[pos])
			abort();
	}
	free(kids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fuzz_feed f = {0};
	size_t n, len, want;
	json_t *j;
	char *text;

	if (size < 1)
		return 0;
	f.depth = (int)(data[0] & 7) - 1;
	want = (size_t)(data[0] >> 3) * 37 + 1;
	f.t = flame_tree_new(FUZZ_TREE_MAX_NODES);
	if (!f.t)
		abort();
	if (folded_parse((const char *)data + 1, size - 1, fuzz_feed_line, &f, NULL, 0, NULL) ||
	    flame_tree_finish(f.t))
		abort();
	n = flame_tree_size(f.t);
	fuzz_check_tree(f.t, &f);

	text = fuzz_emit(f.t, FLAME_FORMAT_FLAT, want, &len);
	j = fuzz_parse(text, len);
	if (n == 1 ? !json_is_null(j) : json_array_size(j) != n)
		abort();
	json_decref(j);
	free(text);

	text = fuzz_emit(f.t, FLAME_FORMAT_COMPACT, want, &len);
	j = fuzz_parse(text, len);
	if (n > 1) {
		json_t *nv = json_object_get(json_object_get(j, "node_values"), "values");
		json_t *fns = json_object_get(j, "functions");

		if (json_array_size(nv) != n ||
		    json_array_size(json_object_get(j, "function_types")) != json_array_size(fns))
			abort();
		for (size_t i = 1; i < n; i++) {
			json_t *row = json_array_get(nv, i);
			json_int_t fn = json_integer_value(json_array_get(row, 0));
			json_int_t parent = json_integer_value(json_array_get(row, 1));

			if (fn <= 0 || (size_t)fn >= json_array_size(fns) || parent < 0 ||
			    (size_t)parent >= i)
				abort();
		}
	} else if (!json_is_null(json_object_get(j, "functions"))) {
		abort();
	}
	json_decref(j);
	free(text);
	flame_tree_free(f.t);
	return 0;
}
