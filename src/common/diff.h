/*
 * diff — two folded profiles, a baseline ("before") and a new one ("after"), merged stack by
 * stack: the input of a differential flame graph and of `ember diff`'s table of changes.
 *
 * diff_merge parses both texts (common/folded.h syntax; bad lines are counted, never fatal),
 * sums the values of a stack that repeats, and returns every stack present in either profile
 * with its two values as recorded, in byte order of the stacks. The stacks point into the two
 * buffers, which must outlive the set. diff_scale computes the baseline scaled to the new
 * profile's total (fractions kept), what a differential graph draws, so that shares are compared
 * rather than durations (two runs of different lengths). diff_leaves sums self values by leaf
 * frame (the function that was running, or blocked) and orders the frames by how much their
 * share of the total changed, largest first — shares from the recorded values, so no scaling
 * rounds a small baseline away.
 *
 * Bounds: DIFF_MAX_STACKS input lines in all, both files, repeats included (-E2BIG beyond).
 * Thread-safe; no global state.
 */
#ifndef EMBER_COMMON_DIFF_H
#define EMBER_COMMON_DIFF_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define DIFF_MAX_STACKS (16u << 20)

struct diff_set {
	const char **stacks;
	size_t *lens;
	int64_t *before, *after; /* as recorded */
	double *scaled;		 /* before as drawn (diff_scale); NULL until then */
	size_t n;
	int64_t total_before, total_after;
};

/* A leaf frame's self values in both profiles. name points into a stack of the set. */
struct diff_leaf {
	const char *name;
	size_t len;
	int64_t before, after;
};

/*
 * Merges folded texts a (the baseline) and b. *bad_a / *bad_b (may be NULL) receive the
 * number of bad lines of each. Returns 0, -ENOMEM or -E2BIG; on error the set is empty.
 */
int diff_merge(const char *a, size_t alen, const char *b, size_t blen, struct diff_set *out,
	       size_t *bad_a, size_t *bad_b);

/*
 * Fills d->scaled: every before value times total_after / total_before, or as recorded when raw
 * (or when a total is 0). 0 or -ENOMEM.
 */
int diff_scale(struct diff_set *d, int raw);

/*
 * The leaf frames of the set, each once with its summed self values (as recorded), ordered by
 * the change of their share, |after / total_after - before / total_before| (largest first, then
 * by name). *out is malloc'ed (free it); *n its length. 0 or -ENOMEM.
 */
int diff_leaves(const struct diff_set *d, struct diff_leaf **out, size_t *n);

/*
 * The table `ember diff` prints: the first top leaves of diff_leaves whose share changed, their
 * shares before and after, the change in percentage points and the values as recorded, in
 * unit. 0, -ENOMEM or -EIO.
 */
int diff_write_table(const struct diff_set *d, size_t top, const char *unit, FILE *out);

/*
 * "stack BEFORE AFTER" per stack (flamegraph.pl's differential input), BEFORE as scaled
 * (diff_scale first; two decimals when not whole). 0 or -EIO.
 */
int diff_write_folded(const struct diff_set *d, FILE *out);

void diff_free(struct diff_set *d);

#endif
