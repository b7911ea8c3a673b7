/*
 * flametree — the flame tree of ProfileTracing: a prefix trie of folded stacks, its node ids
 * and its JSON forms (spec/deepflow-behaviour.md §2).
 *
 * Use: flame_tree_new(max_nodes), flame_tree_add() once per (stack, value), flame_tree_finish(),
 * then one or more emitters (flame_emit_new / flame_emit_next / flame_emit_free) that write the
 * JSON value of "result" in chunks, so a large tree never becomes one big string or a DOM.
 *
 * Stacks: split on ';', every segment is a node label, empty segments included ("a;;b" has
 * three levels, the middle label is ""; "a;" ends in an empty leaf). A label never contains ';'.
 * The whole stack's value goes to the leaf's self_value. An empty stack (len 0) adds nothing,
 * as in DeepFlow, where such a row contributes nothing.
 *
 * Node ids are UUIDv5 (OID namespace) over the exact prefix bytes (segments 1..k joined by ';'),
 * the root label (app_service) not included. They are computed in flame_tree_finish() along the
 * trie with copied SHA-1 contexts, one finalize per node. The root has id "" and parent "-1";
 * first-level nodes have parent "".
 *
 * Order (ember's, deterministic; DeepFlow's is random): root first, then depth-first pre-order,
 * children by total_value descending, ties by label bytes ascending (siblings have distinct
 * labels, so the order is total).
 *
 * Values are int64 sums; they saturate at INT64_MAX / INT64_MIN instead of overflowing.
 *
 * Bounds: at most max_nodes nodes besides the root and FLAME_TREE_MAX_LABEL_BYTES of distinct
 * label text; an add that would pass either fails with -E2BIG and changes nothing (the stack is
 * added whole or not at all).
 *
 * Threads: a tree is used by one thread at a time. Emitters only read the tree; several may
 * run at once, and the tree must outlive them and not be changed while they exist. Adding after
 * finish is allowed; call flame_tree_finish() again before emitting.
 */
#ifndef EMBER_SERVER_FLAMETREE_H
#define EMBER_SERVER_FLAMETREE_H

#include <stddef.h>
#include <stdint.h>

#include "common/strbuf.h"
#include "common/uuid5.h"

#define FLAME_TREE_DEFAULT_MAX_NODES (1u << 20)
/* Upper bound of max_nodes: node indexes are 32-bit. */
#define FLAME_TREE_MAX_NODES_LIMIT (UINT32_MAX / 2)
#define FLAME_TREE_MAX_LABEL_BYTES (256u << 20)

struct flame_tree;

/* max_nodes = 0 means FLAME_TREE_DEFAULT_MAX_NODES. NULL when out of memory. */
struct flame_tree *flame_tree_new(size_t max_nodes);
void flame_tree_free(struct flame_tree *t);

/* 0, -E2BIG (a bound is reached; nothing of this stack was added), -ENOMEM. */
int flame_tree_add(struct flame_tree *t, const char *stack, size_t len, int64_t value);

/* Totals, node ids and order. 0, -ENOMEM or -EIO (libcrypto failure). */
int flame_tree_finish(struct flame_tree *t);

struct flame_tree_stats {
	size_t nodes;       /* not counting the root */
	size_t labels;      /* distinct labels */
	size_t label_bytes; /* their text */
	size_t stacks;      /* flame_tree_add calls that added something */
	size_t max_depth;   /* segments of the deepest stack */
	int64_t total;      /* sum of all values (valid after finish) */
};

void flame_tree_stats(const struct flame_tree *t, struct flame_tree_stats *st);

/* One node in emit order, for exports and tests. Valid after finish, until the next add. */
struct flame_node_info {
	const char *label; /* NUL-terminated; NULL for the root (its label is app_service) */
	size_t label_len;
	size_t depth;  /* root 0 */
	size_t parent; /* position of the parent in emit order; SIZE_MAX for the root */
	int64_t self_value;
	int64_t total_value;
	char node_id[UUID5_STR_LEN + 1]; /* "" for the root */
};

/* Number of positions, root included (1 for an empty tree); 0 before finish. */
size_t flame_tree_size(const struct flame_tree *t);
/* 0, or -ERANGE when pos >= flame_tree_size(). */
int flame_tree_node_at(const struct flame_tree *t, size_t pos, struct flame_node_info *out);

/*
 * max_kernel_stack_depth (§2.5, without DeepFlow's defect). Returns the length of the clipped
 * stack, always a prefix of stack. depth < 0 (DeepFlow's -1): unchanged. Otherwise kernel
 * frames — segments starting with "[k] " — are counted from the outermost; the stack is cut
 * just before the ';' ahead of the kernel frame that would be number depth+1, so exactly the
 * first depth kernel frames stay when there are more, and the stack is untouched when there are
 * at most depth. Kernel frames are normally all at the end; if they are not, the cut still
 * happens at that (depth+1)-th kernel segment and drops everything after it. The first segment
 * (the [p]/[t] label) is never cut; it counts as a kernel frame if it is one, so with depth 0 a
 * stack starting with "[k] " keeps that first frame only.
 */
size_t flame_clip_kernel(const char *stack, size_t len, int depth);

enum flame_format {
	FLAME_FORMAT_FLAT,    /* the seed's array of node objects (DeepFlow "O") */
	FLAME_FORMAT_COMPACT, /* functions + node_values (DeepFlow "H", §2.6) */
};

/*
 * An emitter writes the JSON value of "result", without whitespace, strings escaped as Go's
 * encoding/json does (sb_json_escape).
 *
 * FLAT: [{"profile_location_str":…,"node_id":…,"parent_node_id":…,"self_value":N,
 * "total_value":N},…] in the order above; an empty tree is null.
 *
 * COMPACT: {"functions":[…],"function_types":[…],"function_values":{"columns":["self_value",
 * "total_value"],"values":[[s,t]…]},"node_values":{"columns":["function_id","parent_node_id",
 * "self_value","total_value"],"values":[[f,p,s,t]…]}}; an empty tree gives the same object with
 * null members, as DeepFlow. Unlike DeepFlow, whose indices follow the store's row order and a
 * leaf-to-root insertion, ember's follow its deterministic order: node_values[i] is the node at
 * position i (root 0, then pre-order) and functions are numbered in first-seen order of that
 * traversal. So §2.6's example gives the same tree with different indices. functions[0] is the
 * root label and belongs to the root alone, even if a frame has the same text. function_types
 * follow §2.6 and need event_type ("O" for mem-/hbm- functions with self == total).
 */
struct flame_emit;

/* The tree must be finished. root_label and event_type are copied (NULL means "").
 * NULL when out of memory or the tree is not finished. */
struct flame_emit *flame_emit_new(const struct flame_tree *t, const char *root_label,
				  enum flame_format fmt, const char *event_type);
/* Appends at least want bytes (or all that is left). 1 when the value is complete, else 0. */
int flame_emit_next(struct flame_emit *e, struct strbuf *out, size_t want);
void flame_emit_free(struct flame_emit *e);

#endif
