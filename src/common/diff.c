/*
 * diff — see diff.h. Both profiles' lines go into one array, sorted by stack; runs of one stack
 * become one entry with the values of each side summed.
 */
#include "common/diff.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/folded.h"

struct diff_line {
	const char *stack;
	size_t len;
	int64_t value;
	int side; /* 0 before, 1 after */
};

struct diff_lines {
	struct diff_line *v;
	size_t n, cap;
	int side;
};

static int64_t diff_add_sat(int64_t a, int64_t b)
{
	return a > INT64_MAX - b ? INT64_MAX : a + b;
}

static int diff_collect(void *arg, const char *stack, size_t len, int64_t value, size_t line)
{
	struct diff_lines *l = arg;

	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 1024;
		struct diff_line *v;

		if (l->n >= DIFF_MAX_STACKS)
			return -E2BIG;
		v = realloc(l->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		l->v = v;
		l->cap = cap;
	}
	l->v[l->n++] = (struct diff_line){stack, len, value, l->side};
	return 0;
}

static int diff_cmp_bytes(const char *a, size_t la, const char *b, size_t lb)
{
	int c = memcmp(a, b, la < lb ? la : lb);

	if (c)
		return c;
	return la < lb ? -1 : la > lb;
}

static int diff_line_cmp(const void *x, const void *y)
{
	const struct diff_line *a = x, *b = y;

	return diff_cmp_bytes(a->stack, a->len, b->stack, b->len);
}

void diff_free(struct diff_set *d)
{
	free(d->scaled);
	free(d->stacks);
	free(d->lens);
	free(d->before);
	free(d->after);
	memset(d, 0, sizeof(*d));
}

int diff_merge(const char *a, size_t alen, const char *b, size_t blen, struct diff_set *out,
	       size_t *bad_a, size_t *bad_b)
{
	struct diff_lines l = {0};
	size_t bad[2] = {0, 0}, m = 0;
	int rc;

	memset(out, 0, sizeof(*out));
	rc = folded_parse(a, alen, diff_collect, &l, NULL, 0, &bad[0]);
	l.side = 1;
	if (rc == 0)
		rc = folded_parse(b, blen, diff_collect, &l, NULL, 0, &bad[1]);
	if (bad_a)
		*bad_a = bad[0];
	if (bad_b)
		*bad_b = bad[1];
	if (rc < 0)
		goto out;
	if (l.n)
		qsort(l.v, l.n, sizeof(*l.v), diff_line_cmp);
	out->stacks = malloc((l.n ? l.n : 1) * sizeof(*out->stacks));
	out->lens = malloc((l.n ? l.n : 1) * sizeof(*out->lens));
	out->before = calloc(l.n ? l.n : 1, sizeof(*out->before));
	out->after = calloc(l.n ? l.n : 1, sizeof(*out->after));
	if (!out->stacks || !out->lens || !out->before || !out->after) {
		rc = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < l.n; i++) {
		const struct diff_line *x = &l.v[i];
		int64_t *side;

		if (m == 0 || diff_cmp_bytes(out->stacks[m - 1], out->lens[m - 1], x->stack,
					     x->len) != 0) {
			out->stacks[m] = x->stack;
			out->lens[m++] = x->len;
		}
		side = x->side ? &out->after[m - 1] : &out->before[m - 1];
		*side = diff_add_sat(*side, x->value);
		if (x->side)
			out->total_after = diff_add_sat(out->total_after, x->value);
		else
			out->total_before = diff_add_sat(out->total_before, x->value);
	}
	out->n = m;
out:
	free(l.v);
	if (rc < 0)
		diff_free(out);
	return rc;
}

int diff_scale(struct diff_set *d, int raw)
{
	double k = 1;

	free(d->scaled);
	d->scaled = malloc((d->n ? d->n : 1) * sizeof(*d->scaled));
	if (!d->scaled)
		return -ENOMEM;
	if (!raw && d->total_before && d->total_after)
		k = (double)d->total_after / (double)d->total_before;
	for (size_t i = 0; i < d->n; i++)
		d->scaled[i] = (double)d->before[i] * k;
	return 0;
}

static double diff_share(int64_t v, int64_t total)
{
	return total ? 100.0 * (double)v / (double)total : 0.0;
}

static int diff_leaf_name_cmp(const void *x, const void *y)
{
	const struct diff_leaf *a = x, *b = y;

	return diff_cmp_bytes(a->name, a->len, b->name, b->len);
}

/* The totals diff_leaves ranks by; qsort passes no context. */
struct diff_totals {
	int64_t before, after;
};

static double diff_change(const struct diff_leaf *l, const struct diff_totals *t)
{
	return fabs(diff_share(l->after, t->after) - diff_share(l->before, t->before));
}

static int diff_leaf_change_cmp(const void *x, const void *y, void *arg)
{
	const struct diff_leaf *a = x, *b = y;
	double ca = diff_change(a, arg), cb = diff_change(b, arg);

	if (ca != cb)
		return ca > cb ? -1 : 1;
	return diff_leaf_name_cmp(a, b);
}

int diff_leaves(const struct diff_set *d, struct diff_leaf **out, size_t *n)
{
	struct diff_leaf *v = malloc((d->n ? d->n : 1) * sizeof(*v));
	size_t m = 0;

	*out = NULL;
	*n = 0;
	if (!v)
		return -ENOMEM;
	for (size_t i = 0; i < d->n; i++) {
		const char *s = d->stacks[i], *leaf = s;

		for (size_t k = 0; k < d->lens[i]; k++)
			if (s[k] == ';')
				leaf = s + k + 1;
		v[i] = (struct diff_leaf){leaf, d->lens[i] - (size_t)(leaf - s), d->before[i],
					  d->after[i]};
	}
	if (d->n)
		qsort(v, d->n, sizeof(*v), diff_leaf_name_cmp);
	for (size_t i = 0; i < d->n; i++) {
		if (m && diff_leaf_name_cmp(&v[m - 1], &v[i]) == 0) {
			v[m - 1].before = diff_add_sat(v[m - 1].before, v[i].before);
			v[m - 1].after = diff_add_sat(v[m - 1].after, v[i].after);
		} else {
			v[m++] = v[i];
		}
	}
	qsort_r(v, m, sizeof(*v), diff_leaf_change_cmp,
		&(struct diff_totals){d->total_before, d->total_after});
	*out = v;
	*n = m;
	return 0;
}

int diff_write_table(const struct diff_set *d, size_t top, const char *unit, FILE *out)
{
	struct diff_leaf *leaves;
	size_t n;

	if (diff_leaves(d, &leaves, &n) < 0)
		return -ENOMEM;
	fprintf(out, "%8s %8s %8s %14s %14s  %s\n", "before%", "after%", "change", "before",
		"after", "leaf frame");
	for (size_t i = 0; i < n && i < top; i++) {
		const struct diff_leaf *l = &leaves[i];
		double b = diff_share(l->before, d->total_before),
		       a = diff_share(l->after, d->total_after);

		if (a - b < 0.005 && b - a < 0.005)
			break; /* no change shows in the table's precision: none after it either */
		fprintf(out, "%7.2f%% %7.2f%% %+8.2f %14" PRId64 " %14" PRId64 "  %.*s\n", b, a,
			a - b, l->before, l->after, (int)l->len, l->name);
	}
	fprintf(out, "(change: percentage points of the total; values in %s, as recorded)\n",
		unit);
	free(leaves);
	return fflush(out) != 0 || ferror(out) ? -EIO : 0;
}

int diff_write_folded(const struct diff_set *d, FILE *out)
{
	for (size_t i = 0; i < d->n; i++) {
		double b = d->scaled ? d->scaled[i] : (double)d->before[i];

		if (b == floor(b) && b < 1e15)
			fprintf(out, "%.*s %.0f %" PRId64 "\n", (int)d->lens[i], d->stacks[i], b,
				d->after[i]);
		else
			fprintf(out, "%.*s %.2f %" PRId64 "\n", (int)d->lens[i], d->stacks[i], b,
				d->after[i]);
	}
	return fflush(out) != 0 || ferror(out) ? -EIO : 0;
}
