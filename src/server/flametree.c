/*
 * flametree — see flametree.h.
 *
 * Nodes live in one flat array; node 0 is the root and a parent always has a smaller index than
 * its children, so totals are one backward pass. Children are found through a chained hash table
 * keyed by (parent index, label index); labels are interned in a second chained table over one
 * text arena, stored as ";label\0" so that the ';' + label of a prefix is one hash update and the
 * label alone is a C string. The chains are index links inside the arrays: no allocation per node.
 *
 * An add that fails half-way unlinks the nodes and labels it created (they are the last entries
 * of their arrays) so the tree is left as before.
 *
 * finish: totals (backward pass), children lists (counting sort by parent into one array), each
 * list sorted, pre-order walk with an explicit stack, then ids along that order: the SHA-1
 * context of a node at depth d is a copy of its parent's (depth d-1, the latest context at that
 * depth in pre-order) extended with ";label", finalized once the walk leaves its subtree.
 */
#define LOG_MODULE "flametree"
#include "server/flametree.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

#define FT_NONE UINT32_MAX
#define FT_MIN_BUCKETS 256u

struct ft_node {
	uint32_t parent;
	uint32_t label; /* FT_NONE for the root */
	uint32_t hnext; /* next node in the same bucket */
	uint32_t depth;
	int64_t self;
	int64_t total;
	uint8_t id[UUID5_BYTES];
};

struct ft_label {
	uint32_t off; /* of the ';' in the arena; the text starts at off + 1 */
	uint32_t len;
	uint32_t hnext;
	uint32_t hash;
};

struct flame_tree {
	size_t max_nodes;
	struct ft_node *nodes;
	uint32_t n_nodes, cap_nodes;
	uint32_t *node_buckets;
	uint32_t n_node_buckets; /* power of two */

	struct ft_label *labels;
	uint32_t n_labels, cap_labels;
	uint32_t *label_buckets;
	uint32_t n_label_buckets;
	char *arena;
	size_t arena_len, arena_cap;

	size_t stacks;
	size_t max_depth;
	int finished;
	uint32_t *order; /* node indexes in emit order, n_nodes of them after finish */
	uint32_t *pos;   /* pos[node] = its position in order */
};

static int64_t ft_sat_add(int64_t a, int64_t b)
{
	int64_t r;

	if (__builtin_add_overflow(a, b, &r))
		return b > 0 ? INT64_MAX : INT64_MIN;
	return r;
}

/* 8 bytes at a time, then murmur3's 64-bit finalizer so every input bit reaches the low bits. */
static uint32_t ft_hash_bytes(const char *s, size_t n)
{
	uint64_t h = 0x9e3779b97f4a7c15ull ^ n;
	uint64_t w;

	while (n >= 8) {
		memcpy(&w, s, 8);
		h = (h ^ w) * 0xff51afd7ed558ccdull;
		h = (h << 31) | (h >> 33);
		s += 8;
		n -= 8;
	}
	w = 0;
	memcpy(&w, s, n);
	h ^= w;
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdull;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ull;
	h ^= h >> 33;
	return (uint32_t)h;
}

static uint32_t ft_hash_node(uint32_t parent, uint32_t label)
{
	uint64_t h = ((uint64_t)parent << 32 | label) * 0x9e3779b97f4a7c15ull;

	return (uint32_t)(h >> 32 ^ h);
}

/* Grows an array of elem-sized entries to hold at least need of them. */
static int ft_reserve(void **arr, uint32_t *cap, uint32_t need, size_t elem)
{
	uint32_t c = *cap ? *cap : 64;
	void *p;

	if (need <= *cap)
		return 0;
	while (c < need)
		c = c > UINT32_MAX / 2 ? UINT32_MAX : c * 2;
	p = realloc(*arr, (size_t)c * elem);
	if (!p)
		return -ENOMEM;
	*arr = p;
	*cap = c;
	return 0;
}

struct flame_tree *flame_tree_new(size_t max_nodes)
{
	struct flame_tree *t = calloc(1, sizeof(*t));

	if (!t)
		return NULL;
	if (max_nodes == 0)
		max_nodes = FLAME_TREE_DEFAULT_MAX_NODES;
	if (max_nodes > FLAME_TREE_MAX_NODES_LIMIT)
		max_nodes = FLAME_TREE_MAX_NODES_LIMIT;
	t->max_nodes = max_nodes;
	t->node_buckets = malloc(FT_MIN_BUCKETS * sizeof(uint32_t));
	t->label_buckets = malloc(FT_MIN_BUCKETS * sizeof(uint32_t));
	if (!t->node_buckets || !t->label_buckets ||
	    ft_reserve((void **)&t->nodes, &t->cap_nodes, 1, sizeof(struct ft_node))) {
		flame_tree_free(t);
		return NULL;
	}
	memset(t->node_buckets, 0xff, FT_MIN_BUCKETS * sizeof(uint32_t));
	memset(t->label_buckets, 0xff, FT_MIN_BUCKETS * sizeof(uint32_t));
	t->n_node_buckets = t->n_label_buckets = FT_MIN_BUCKETS;
	memset(&t->nodes[0], 0, sizeof(t->nodes[0]));
	t->nodes[0].parent = FT_NONE;
	t->nodes[0].label = FT_NONE;
	t->n_nodes = 1;
	return t;
}

static void ft_free_order(struct flame_tree *t)
{
	free(t->order);
	free(t->pos);
	t->order = t->pos = NULL;
	t->finished = 0;
}

void flame_tree_free(struct flame_tree *t)
{
	if (!t)
		return;
	ft_free_order(t);
	free(t->nodes);
	free(t->node_buckets);
	free(t->labels);
	free(t->label_buckets);
	free(t->arena);
	free(t);
}

static const char *ft_label_text(const struct flame_tree *t, uint32_t label)
{
	return t->arena + t->labels[label].off + 1;
}

static uint32_t ft_label_find(const struct flame_tree *t, const char *s, size_t len, uint32_t h)
{
	uint32_t i = t->label_buckets[h & (t->n_label_buckets - 1)];

	while (i != FT_NONE) {
		const struct ft_label *l = &t->labels[i];

		if (l->hash == h && l->len == len && memcmp(ft_label_text(t, i), s, len) == 0)
			return i;
		i = l->hnext;
	}
	return FT_NONE;
}

static uint32_t ft_node_find(const struct flame_tree *t, uint32_t parent, uint32_t label)
{
	uint32_t i = t->node_buckets[ft_hash_node(parent, label) & (t->n_node_buckets - 1)];

	while (i != FT_NONE) {
		if (t->nodes[i].parent == parent && t->nodes[i].label == label)
			return i;
		i = t->nodes[i].hnext;
	}
	return FT_NONE;
}

/* Doubles a bucket array when the table holds more entries than buckets. */
static int ft_rehash_nodes(struct flame_tree *t)
{
	uint32_t nb = t->n_node_buckets * 2;
	uint32_t *b = malloc((size_t)nb * sizeof(*b));

	if (!b)
		return -ENOMEM;
	memset(b, 0xff, (size_t)nb * sizeof(*b));
	for (uint32_t i = 1; i < t->n_nodes; i++) {
		uint32_t k = ft_hash_node(t->nodes[i].parent, t->nodes[i].label) & (nb - 1);

		t->nodes[i].hnext = b[k];
		b[k] = i;
	}
	free(t->node_buckets);
	t->node_buckets = b;
	t->n_node_buckets = nb;
	return 0;
}

static int ft_rehash_labels(struct flame_tree *t)
{
	uint32_t nb = t->n_label_buckets * 2;
	uint32_t *b = malloc((size_t)nb * sizeof(*b));

	if (!b)
		return -ENOMEM;
	memset(b, 0xff, (size_t)nb * sizeof(*b));
	for (uint32_t i = 0; i < t->n_labels; i++) {
		uint32_t k = t->labels[i].hash & (nb - 1);

		t->labels[i].hnext = b[k];
		b[k] = i;
	}
	free(t->label_buckets);
	t->label_buckets = b;
	t->n_label_buckets = nb;
	return 0;
}

static int ft_label_add(struct flame_tree *t, const char *s, size_t len, uint32_t h,
			uint32_t *out)
{
	size_t need = t->arena_len + len + 2;
	struct ft_label *l;
	uint32_t k;

	if (need > FLAME_TREE_MAX_LABEL_BYTES)
		return -E2BIG;
	if (need > t->arena_cap) {
		size_t cap = t->arena_cap ? t->arena_cap : 4096;
		char *p;

		while (cap < need)
			cap *= 2;
		p = realloc(t->arena, cap);
		if (!p)
			return -ENOMEM;
		t->arena = p;
		t->arena_cap = cap;
	}
	if (ft_reserve((void **)&t->labels, &t->cap_labels, t->n_labels + 1, sizeof(*l)))
		return -ENOMEM;
	if (t->n_labels >= t->n_label_buckets && ft_rehash_labels(t))
		return -ENOMEM;
	l = &t->labels[t->n_labels];
	l->off = (uint32_t)t->arena_len;
	l->len = (uint32_t)len;
	l->hash = h;
	t->arena[t->arena_len] = ';';
	memcpy(t->arena + t->arena_len + 1, s, len);
	t->arena[t->arena_len + 1 + len] = '\0';
	t->arena_len = need;
	k = h & (t->n_label_buckets - 1);
	l->hnext = t->label_buckets[k];
	t->label_buckets[k] = t->n_labels;
	*out = t->n_labels++;
	return 0;
}

static int ft_node_add(struct flame_tree *t, uint32_t parent, uint32_t label, uint32_t *out)
{
	struct ft_node *n;
	uint32_t k;

	if (ft_reserve((void **)&t->nodes, &t->cap_nodes, t->n_nodes + 1, sizeof(*n)))
		return -ENOMEM;
	if (t->n_nodes >= t->n_node_buckets && ft_rehash_nodes(t))
		return -ENOMEM;
	n = &t->nodes[t->n_nodes];
	n->parent = parent;
	n->label = label;
	n->depth = t->nodes[parent].depth + 1;
	n->self = n->total = 0;
	k = ft_hash_node(parent, label) & (t->n_node_buckets - 1);
	n->hnext = t->node_buckets[k];
	t->node_buckets[k] = t->n_nodes;
	*out = t->n_nodes++;
	return 0;
}

/* Removes entry i from the chain that starts at *head. */
static void ft_unlink(uint32_t *head, uint32_t i, uint32_t *(*next)(struct flame_tree *, uint32_t),
		      struct flame_tree *t)
{
	while (*head != FT_NONE && *head != i)
		head = next(t, *head);
	if (*head == i)
		*head = *next(t, i);
}

static uint32_t *ft_node_next(struct flame_tree *t, uint32_t i)
{
	return &t->nodes[i].hnext;
}

static uint32_t *ft_label_next(struct flame_tree *t, uint32_t i)
{
	return &t->labels[i].hnext;
}

/* Undoes every node and label created since the counts were (n_nodes, n_labels). */
static void ft_rollback(struct flame_tree *t, uint32_t n_nodes, uint32_t n_labels)
{
	while (t->n_nodes > n_nodes) {
		uint32_t i = --t->n_nodes;
		uint32_t k = ft_hash_node(t->nodes[i].parent, t->nodes[i].label);

		ft_unlink(&t->node_buckets[k & (t->n_node_buckets - 1)], i, ft_node_next, t);
	}
	while (t->n_labels > n_labels) {
		uint32_t i = --t->n_labels;

		ft_unlink(&t->label_buckets[t->labels[i].hash & (t->n_label_buckets - 1)], i,
			  ft_label_next, t);
		t->arena_len = t->labels[i].off;
	}
}

int flame_tree_add(struct flame_tree *t, const char *stack, size_t len, int64_t value)
{
	uint32_t n_nodes = t->n_nodes, n_labels = t->n_labels;
	uint32_t parent = 0;
	const char *p = stack, *end = stack + len;
	int rc = 0;

	if (len == 0)
		return 0;
	for (;;) {
		const char *q = memchr(p, ';', (size_t)(end - p));
		size_t seg_len;
		uint32_t h, label, node;

		if (!q)
			q = end;
		seg_len = (size_t)(q - p);
		if (seg_len > FLAME_TREE_MAX_LABEL_BYTES) {
			rc = -E2BIG;
			break;
		}
		h = ft_hash_bytes(p, seg_len);
		label = ft_label_find(t, p, seg_len, h);
		node = label == FT_NONE ? FT_NONE : ft_node_find(t, parent, label);
		if (node == FT_NONE) {
			/* Check the node bound first so a full tree interns no label. */
			if (t->n_nodes - 1 >= t->max_nodes) {
				rc = -E2BIG;
				break;
			}
			if (label == FT_NONE) {
				rc = ft_label_add(t, p, seg_len, h, &label);
				if (rc)
					break;
			}
			rc = ft_node_add(t, parent, label, &node);
			if (rc)
				break;
		}
		parent = node;
		if (q == end)
			break;
		p = q + 1;
	}
	if (rc) {
		ft_rollback(t, n_nodes, n_labels);
		if (rc != -E2BIG)
			log_error("adding a stack of %zu bytes: %s", len, strerror(-rc));
		return rc;
	}
	t->nodes[parent].self = ft_sat_add(t->nodes[parent].self, value);
	if (t->nodes[parent].depth > t->max_depth)
		t->max_depth = t->nodes[parent].depth;
	t->stacks++;
	t->finished = 0;
	return 0;
}

/* Sibling order: total descending, then label bytes ascending. */
static int ft_cmp_children(const void *a, const void *b, void *arg)
{
	const struct flame_tree *t = arg;
	const struct ft_node *x = &t->nodes[*(const uint32_t *)a];
	const struct ft_node *y = &t->nodes[*(const uint32_t *)b];
	const struct ft_label *lx = &t->labels[x->label], *ly = &t->labels[y->label];
	size_t n = lx->len < ly->len ? lx->len : ly->len;
	int c;

	if (x->total != y->total)
		return x->total > y->total ? -1 : 1;
	c = memcmp(ft_label_text(t, x->label), ft_label_text(t, y->label), n);
	if (c)
		return c;
	return lx->len < ly->len ? -1 : lx->len > ly->len;
}

/* Fills t->order with the pre-order walk and t->pos with its inverse. */
static int ft_build_order(struct flame_tree *t)
{
	uint32_t n = t->n_nodes;
	uint32_t *start = calloc((size_t)n + 1, sizeof(*start));
	uint32_t *kids = malloc((size_t)n * sizeof(*kids));
	uint32_t *stack = malloc((size_t)n * sizeof(*stack));
	uint32_t sp = 0, out = 0;
	int rc = -ENOMEM;

	t->order = malloc((size_t)n * sizeof(*t->order));
	t->pos = malloc((size_t)n * sizeof(*t->pos));
	if (!start || !kids || !stack || !t->order || !t->pos)
		goto out;

	/* counting sort of nodes 1..n-1 by parent; start[p]..start[p+1] are p's children */
	for (uint32_t i = 1; i < n; i++)
		start[t->nodes[i].parent + 1]++;
	for (uint32_t i = 0; i < n; i++)
		start[i + 1] += start[i];
	for (uint32_t i = 1; i < n; i++)
		kids[start[t->nodes[i].parent]++] = i;
	/* each start[p] now points at the end of p's list; shift back */
	for (uint32_t i = n; i > 0; i--)
		start[i] = start[i - 1];
	start[0] = 0;
	for (uint32_t i = 0; i < n; i++)
		if (start[i + 1] - start[i] > 1)
			qsort_r(kids + start[i], start[i + 1] - start[i], sizeof(*kids),
				ft_cmp_children, t);

	stack[sp++] = 0;
	while (sp) {
		uint32_t v = stack[--sp];

		t->pos[v] = out;
		t->order[out++] = v;
		for (uint32_t j = start[v + 1]; j > start[v]; j--)
			stack[sp++] = kids[j - 1];
	}
	rc = 0;
out:
	free(start);
	free(kids);
	free(stack);
	return rc;
}

/* Node ids along the pre-order: ctx[d] holds the prefix hash of the current node at depth d. */
static int ft_build_ids(struct flame_tree *t)
{
	size_t depth_n = t->max_depth + 1;
	struct uuid5_ctx *ctx = calloc(depth_n, sizeof(*ctx));
	uint32_t *pending = malloc(depth_n * sizeof(*pending));
	size_t top = 0; /* pending[1..top] are nodes whose context is not finalized yet */
	int rc;

	if (!ctx || !pending) {
		rc = -ENOMEM;
		goto out;
	}
	rc = uuid5_init(&ctx[0]);
	for (uint32_t k = 1; k < t->n_nodes && !rc; k++) {
		uint32_t v = t->order[k];
		struct ft_node *n = &t->nodes[v];
		const struct ft_label *l = &t->labels[n->label];
		size_t d = n->depth;

		/* leaving the subtrees of the pending nodes at depth >= d */
		for (; top >= d && !rc; top--)
			rc = uuid5_final(&ctx[top], t->nodes[pending[top]].id);
		if (!rc)
			rc = uuid5_copy(&ctx[d], &ctx[d - 1]);
		/* the arena holds ";label": the first level hashes the label alone */
		if (!rc)
			rc = d == 1 ? uuid5_update(&ctx[d], t->arena + l->off + 1, l->len)
				    : uuid5_update(&ctx[d], t->arena + l->off, (size_t)l->len + 1);
		pending[d] = v;
		top = d;
	}
	for (; top >= 1 && !rc; top--)
		rc = uuid5_final(&ctx[top], t->nodes[pending[top]].id);
out:
	if (ctx)
		for (size_t i = 0; i < depth_n; i++)
			uuid5_free(&ctx[i]);
	free(ctx);
	free(pending);
	return rc;
}

int flame_tree_finish(struct flame_tree *t)
{
	int rc;

	ft_free_order(t);
	for (uint32_t i = 0; i < t->n_nodes; i++)
		t->nodes[i].total = t->nodes[i].self;
	for (uint32_t i = t->n_nodes - 1; i > 0; i--) {
		struct ft_node *p = &t->nodes[t->nodes[i].parent];

		p->total = ft_sat_add(p->total, t->nodes[i].total);
	}
	rc = ft_build_order(t);
	if (!rc)
		rc = ft_build_ids(t);
	if (rc) {
		log_error("finishing a tree of %u nodes: %s", t->n_nodes, strerror(-rc));
		ft_free_order(t);
		return rc;
	}
	t->finished = 1;
	return 0;
}

void flame_tree_stats(const struct flame_tree *t, struct flame_tree_stats *st)
{
	st->nodes = t->n_nodes - 1;
	st->labels = t->n_labels;
	st->label_bytes = t->arena_len - 2 * (size_t)t->n_labels;
	st->stacks = t->stacks;
	st->max_depth = t->max_depth;
	st->total = t->finished ? t->nodes[0].total : 0;
}

size_t flame_tree_size(const struct flame_tree *t)
{
	return t->finished ? t->n_nodes : 0;
}

int flame_tree_node_at(const struct flame_tree *t, size_t pos, struct flame_node_info *out)
{
	const struct ft_node *n;

	if (pos >= flame_tree_size(t))
		return -ERANGE;
	n = &t->nodes[t->order[pos]];
	memset(out, 0, sizeof(*out));
	out->depth = n->depth;
	out->self_value = n->self;
	out->total_value = n->total;
	if (pos == 0) {
		out->parent = SIZE_MAX;
		return 0;
	}
	out->label = ft_label_text(t, n->label);
	out->label_len = t->labels[n->label].len;
	out->parent = t->pos[n->parent];
	uuid5_format(n->id, out->node_id);
	return 0;
}

size_t flame_clip_kernel(const char *stack, size_t len, int depth)
{
	const char *p, *end = stack + len;
	int seen;

	if (depth < 0)
		return len;
	seen = len >= 4 && memcmp(stack, "[k] ", 4) == 0;
	for (p = memchr(stack, ';', len); p; p = memchr(p + 1, ';', (size_t)(end - p - 1))) {
		if (end - p - 1 < 4 || memcmp(p + 1, "[k] ", 4) != 0)
			continue;
		if (seen >= depth)
			return (size_t)(p - stack);
		seen++;
	}
	return len;
}

/* ---- emitters ---- */

enum ft_phase {
	PH_OPEN,
	PH_NODES,      /* flat objects / compact node_values */
	PH_FUNCTIONS,  /* compact */
	PH_TYPES,      /* compact */
	PH_FVALUES,    /* compact */
	PH_DONE,
};

struct flame_emit {
	const struct flame_tree *t;
	enum flame_format fmt;
	char *root_label;
	char *event_type;
	enum ft_phase phase;
	size_t i;
	/* compact only: function per node, labels per function, function sums */
	uint32_t *fn_of_node;
	uint32_t *fn_label; /* label index of function i; FT_NONE for function 0 (root) */
	int64_t *fn_self, *fn_total;
	uint32_t n_fn;
};

static int ft_emit_prepare_compact(struct flame_emit *e)
{
	const struct flame_tree *t = e->t;
	uint32_t *fn_of_label = malloc(((size_t)t->n_labels + 1) * sizeof(uint32_t));
	int rc = -ENOMEM;

	e->fn_of_node = malloc((size_t)t->n_nodes * sizeof(uint32_t));
	e->fn_label = malloc((size_t)(t->n_labels + 1) * sizeof(uint32_t));
	e->fn_self = calloc((size_t)t->n_labels + 1, sizeof(int64_t));
	e->fn_total = calloc((size_t)t->n_labels + 1, sizeof(int64_t));
	if (!fn_of_label || !e->fn_of_node || !e->fn_label || !e->fn_self || !e->fn_total)
		goto out;
	memset(fn_of_label, 0xff, ((size_t)t->n_labels + 1) * sizeof(uint32_t));
	e->fn_label[0] = FT_NONE;
	e->n_fn = 1;
	for (uint32_t k = 0; k < t->n_nodes; k++) {
		const struct ft_node *n = &t->nodes[t->order[k]];
		uint32_t f = 0;

		if (k > 0) {
			f = fn_of_label[n->label];
			if (f == FT_NONE) {
				f = fn_of_label[n->label] = e->n_fn++;
				e->fn_label[f] = n->label;
			}
		}
		e->fn_of_node[k] = f;
		e->fn_self[f] = ft_sat_add(e->fn_self[f], n->self);
		e->fn_total[f] = ft_sat_add(e->fn_total[f], n->total);
	}
	rc = 0;
out:
	free(fn_of_label);
	return rc;
}

void flame_emit_free(struct flame_emit *e)
{
	if (!e)
		return;
	free(e->root_label);
	free(e->event_type);
	free(e->fn_of_node);
	free(e->fn_label);
	free(e->fn_self);
	free(e->fn_total);
	free(e);
}

struct flame_emit *flame_emit_new(const struct flame_tree *t, const char *root_label,
				  enum flame_format fmt, const char *event_type)
{
	struct flame_emit *e;

	if (!t->finished) {
		log_error("emitting a tree that is not finished");
		return NULL;
	}
	e = calloc(1, sizeof(*e));
	if (!e)
		return NULL;
	e->t = t;
	e->fmt = fmt;
	e->root_label = strdup(root_label ? root_label : "");
	e->event_type = strdup(event_type ? event_type : "");
	if (!e->root_label || !e->event_type ||
	    (fmt == FLAME_FORMAT_COMPACT && t->n_nodes > 1 && ft_emit_prepare_compact(e))) {
		flame_emit_free(e);
		return NULL;
	}
	return e;
}

static void ft_put_id(struct strbuf *out, const uint8_t id[UUID5_BYTES])
{
	char text[UUID5_STR_LEN + 1];

	uuid5_format(id, text);
	sb_append(out, text, UUID5_STR_LEN);
}

static void ft_put_label(struct strbuf *out, const struct flame_emit *e, uint32_t label)
{
	sb_putc(out, '"');
	if (label == FT_NONE)
		sb_json_escape(out, e->root_label, strlen(e->root_label));
	else
		sb_json_escape(out, ft_label_text(e->t, label), e->t->labels[label].len);
	sb_putc(out, '"');
}

static void ft_emit_flat_node(struct flame_emit *e, struct strbuf *out, size_t k)
{
	const struct ft_node *n = &e->t->nodes[e->t->order[k]];

	sb_puts(out, k ? ",{\"profile_location_str\":" : "{\"profile_location_str\":");
	ft_put_label(out, e, n->label);
	if (k == 0) {
		sb_puts(out, ",\"node_id\":\"\",\"parent_node_id\":\"-1\"");
	} else {
		sb_puts(out, ",\"node_id\":\"");
		ft_put_id(out, n->id);
		sb_puts(out, "\",\"parent_node_id\":\"");
		if (n->parent)
			ft_put_id(out, e->t->nodes[n->parent].id);
		sb_putc(out, '"');
	}
	sb_puts(out, ",\"self_value\":");
	sb_put_i64(out, n->self);
	sb_puts(out, ",\"total_value\":");
	sb_put_i64(out, n->total);
	sb_putc(out, '}');
}

static int ft_starts(const char *s, size_t len, const char *prefix)
{
	size_t n = strlen(prefix);

	return len >= n && memcmp(s, prefix, n) == 0;
}

/* §2.6 function_types. */
static const char *ft_function_type(const struct flame_emit *e, uint32_t f)
{
	static const struct {
		const char *prefix, *type;
	} kinds[] = {
		{"[c] ", "C"}, {"[k] ", "K"}, {"[l] ", "L"}, {"[p] ", "P"}, {"[t] ", "T"},
		{"[wk] ", "K"}, /* a waker's kernel frame (off-CPU with wakers) */
	};
	size_t elen = strlen(e->event_type);
	const char *s;
	size_t len;

	if ((ft_starts(e->event_type, elen, "mem-") || ft_starts(e->event_type, elen, "hbm-")) &&
	    e->fn_self[f] == e->fn_total[f])
		return "O";
	if (f == 0)
		return strcmp(e->root_label, "Total") == 0 ? "H" : "P";
	s = ft_label_text(e->t, e->fn_label[f]);
	len = e->t->labels[e->fn_label[f]].len;
	for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
		if (ft_starts(s, len, kinds[i].prefix))
			return kinds[i].type;
	return len > 0 && s[0] == '[' ? "?" : "A";
}

static void ft_emit_pair(struct strbuf *out, size_t i, int64_t a, int64_t b)
{
	sb_puts(out, i ? ",[" : "[");
	sb_put_i64(out, a);
	sb_putc(out, ',');
	sb_put_i64(out, b);
	sb_putc(out, ']');
}

/* One step of the compact form: an opening, one item, or a closing. */
static void ft_emit_compact_step(struct flame_emit *e, struct strbuf *out)
{
	const struct flame_tree *t = e->t;

	switch (e->phase) {
	case PH_OPEN:
		sb_puts(out, "{\"functions\":[");
		e->phase = PH_FUNCTIONS;
		e->i = 0;
		break;
	case PH_FUNCTIONS:
		if (e->i < e->n_fn) {
			if (e->i)
				sb_putc(out, ',');
			ft_put_label(out, e, e->fn_label[e->i++]);
			break;
		}
		sb_puts(out, "],\"function_types\":[");
		e->phase = PH_TYPES;
		e->i = 0;
		break;
	case PH_TYPES:
		if (e->i < e->n_fn) {
			sb_puts(out, e->i ? ",\"" : "\"");
			sb_puts(out, ft_function_type(e, (uint32_t)e->i++));
			sb_putc(out, '"');
			break;
		}
		sb_puts(out, "],\"function_values\":{\"columns\":[\"self_value\",\"total_value\"],"
			     "\"values\":[");
		e->phase = PH_FVALUES;
		e->i = 0;
		break;
	case PH_FVALUES:
		if (e->i < e->n_fn) {
			ft_emit_pair(out, e->i, e->fn_self[e->i], e->fn_total[e->i]);
			e->i++;
			break;
		}
		sb_puts(out, "]},\"node_values\":{\"columns\":[\"function_id\",\"parent_node_id\","
			     "\"self_value\",\"total_value\"],\"values\":[");
		e->phase = PH_NODES;
		e->i = 0;
		break;
	case PH_NODES:
		if (e->i < t->n_nodes) {
			const struct ft_node *n = &t->nodes[t->order[e->i]];

			sb_puts(out, e->i ? ",[" : "[");
			sb_put_i64(out, e->fn_of_node[e->i]);
			sb_putc(out, ',');
			sb_put_i64(out, e->i ? (int64_t)t->pos[n->parent] : -1);
			sb_putc(out, ',');
			sb_put_i64(out, n->self);
			sb_putc(out, ',');
			sb_put_i64(out, n->total);
			sb_putc(out, ']');
			e->i++;
			break;
		}
		sb_puts(out, "]}}");
		e->phase = PH_DONE;
		break;
	default:
		e->phase = PH_DONE;
		break;
	}
}

static void ft_emit_flat_step(struct flame_emit *e, struct strbuf *out)
{
	switch (e->phase) {
	case PH_OPEN:
		sb_putc(out, '[');
		e->phase = PH_NODES;
		e->i = 0;
		break;
	case PH_NODES:
		if (e->i < e->t->n_nodes) {
			ft_emit_flat_node(e, out, e->i++);
			break;
		}
		sb_putc(out, ']');
		e->phase = PH_DONE;
		break;
	default:
		e->phase = PH_DONE;
		break;
	}
}

int flame_emit_next(struct flame_emit *e, struct strbuf *out, size_t want)
{
	size_t start = out->len;

	if (want == 0)
		want = 1;
	if (e->phase == PH_OPEN && e->t->n_nodes == 1) {
		sb_puts(out, e->fmt == FLAME_FORMAT_COMPACT
				     ? "{\"functions\":null,\"function_types\":null,"
				       "\"function_values\":{\"columns\":null,\"values\":null},"
				       "\"node_values\":{\"columns\":null,\"values\":null}}"
				     : "null");
		e->phase = PH_DONE;
	}
	while (e->phase != PH_DONE && out->len - start < want) {
		if (e->fmt == FLAME_FORMAT_COMPACT)
			ft_emit_compact_step(e, out);
		else
			ft_emit_flat_step(e, out);
	}
	return e->phase == PH_DONE;
}
