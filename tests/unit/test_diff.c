/*
 * diff: two folded texts merged stack by stack (repeats summed, stacks of one side only kept
 * with 0 on the other, bad lines counted), the baseline scaled to the new total, and leaf
 * frames ranked by their change.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/diff.h"

static const char before_txt[] = "app;main;parse 10\n"
				 "app;main;work;hot 50\n"
				 "app;main;parse 5\n"  /* repeats: summed */
				 "not a line\n"	       /* bad: no value */
				 "app;gone 35\n";
static const char after_txt[] = "app;main;work;hot 20\n"
				"app;main;parse 60\n"
				"app;new;hot 20\n"
				"app;main;work;hot x\n"; /* bad value */

static int64_t value_of(const struct diff_set *d, const char *stack, int after)
{
	for (size_t i = 0; i < d->n; i++)
		if (d->lens[i] == strlen(stack) && memcmp(d->stacks[i], stack, d->lens[i]) == 0)
			return after ? d->after[i] : d->before[i];
	fail_msg("no stack %s", stack);
	return -1;
}

static void test_merge(void **state)
{
	struct diff_set d;
	size_t bad_a = 0, bad_b = 0;

	assert_int_equal(diff_merge(before_txt, strlen(before_txt), after_txt, strlen(after_txt),
				    &d, &bad_a, &bad_b),
			 0);
	assert_int_equal(bad_a, 1);
	assert_int_equal(bad_b, 1);
	assert_int_equal(d.n, 4);
	assert_int_equal(d.total_before, 100);
	assert_int_equal(d.total_after, 100);
	/* byte order of the stacks */
	for (size_t i = 1; i < d.n; i++)
		assert_true(strncmp(d.stacks[i - 1], d.stacks[i], d.lens[i]) < 0);
	assert_int_equal(value_of(&d, "app;main;parse", 0), 15);
	assert_int_equal(value_of(&d, "app;main;parse", 1), 60);
	assert_int_equal(value_of(&d, "app;gone", 0), 35);
	assert_int_equal(value_of(&d, "app;gone", 1), 0);
	assert_int_equal(value_of(&d, "app;new;hot", 0), 0);
	assert_int_equal(value_of(&d, "app;new;hot", 1), 20);
	diff_free(&d);
	assert_int_equal(d.n, 0);

	assert_int_equal(diff_merge("", 0, "", 0, &d, NULL, NULL), 0);
	assert_int_equal(d.n, 0);
	assert_int_equal(d.total_before, 0);
	diff_free(&d);
}

static double scaled_of(const struct diff_set *d, const char *stack)
{
	for (size_t i = 0; i < d->n; i++)
		if (d->lens[i] == strlen(stack) && memcmp(d->stacks[i], stack, d->lens[i]) == 0)
			return d->scaled[i];
	fail_msg("no stack %s", stack);
	return -1;
}

/*
 * A run twice as long compares by shares: the baseline is drawn scaled to the new total, the
 * recorded values stay. Scaling down keeps fractions: a long baseline against a short run
 * does not round to nothing.
 */
static void test_scale(void **state)
{
	const char *a = "x 30\ny 10\n", *b = "x 40\ny 40\n", *big = "x 4000\ny 6000\n";
	struct diff_set d;

	assert_int_equal(diff_merge(a, strlen(a), b, strlen(b), &d, NULL, NULL), 0);
	assert_int_equal(diff_scale(&d, 0), 0);
	assert_true(scaled_of(&d, "x") == 60 && scaled_of(&d, "y") == 20);
	assert_int_equal(value_of(&d, "x", 0), 30);
	assert_int_equal(d.total_before, 40);
	assert_int_equal(diff_scale(&d, 1), 0); /* raw */
	assert_true(scaled_of(&d, "x") == 30);
	diff_free(&d);

	assert_int_equal(diff_merge(big, strlen(big), "x 1\n", 4, &d, NULL, NULL), 0);
	assert_int_equal(diff_scale(&d, 0), 0);
	assert_true(scaled_of(&d, "x") == 0.4 && scaled_of(&d, "y") == 0.6);
	diff_free(&d);

	/* an empty side: nothing to scale by */
	assert_int_equal(diff_merge("", 0, b, strlen(b), &d, NULL, NULL), 0);
	assert_int_equal(diff_scale(&d, 0), 0);
	assert_true(scaled_of(&d, "x") == 0);
	diff_free(&d);
}

/* Output of fn into a malloc'ed string. */
static char *written(int (*fn)(const struct diff_set *, FILE *), const struct diff_set *d)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	assert_non_null(f);
	assert_int_equal(fn(d, f), 0);
	fclose(f);
	return buf;
}

static int write_table_3(const struct diff_set *d, FILE *f)
{
	return diff_write_table(d, 3, "samples", f);
}

/* What fn writes for before a against after b, the baseline scaled. */
static char *diff_written(const char *a, const char *b, int (*fn)(const struct diff_set *, FILE *))
{
	struct diff_set d;
	char *t;

	assert_int_equal(diff_merge(a, strlen(a), b, strlen(b), &d, NULL, NULL), 0);
	assert_int_equal(diff_scale(&d, 0), 0);
	t = written(fn, &d);
	diff_free(&d);
	return t;
}

/*
 * The table ranks by the change of share, whatever the totals: hot grew tenfold in value but
 * its share went 50 % → 50 %, cold kept its value and fell to 5 %; the columns line up under
 * the header, values as recorded, and equal shares end the list.
 */
static void test_table(void **state)
{
	char *t = diff_written("x;hot 100\nx;cold 100\n", "x;hot 1000\nx;cold 100\nx;mid 900\n",
			       write_table_3);

	assert_string_equal(t, " before%   after%   change         before          after  leaf frame\n"
			       "  50.00%    5.00%   -45.00            100            100  cold\n"
			       "   0.00%   45.00%   +45.00              0            900  mid\n"
			       "(change: percentage points of the total; values in samples, as "
			       "recorded)\n");
	free(t);
}

/* "stack BEFORE AFTER", the baseline as scaled: whole numbers bare, fractions with two decimals. */
static void test_folded(void **state)
{
	char *t = diff_written("p;a 1\np;b 2\n", "p;a 2\np;c 2\n", diff_write_folded);

	assert_string_equal(t, "p;a 1.33 2\np;b 2.67 0\np;c 0 2\n");
	free(t);
}

static void test_leaves(void **state)
{
	struct diff_set d;
	struct diff_leaf *l;
	size_t n;

	assert_int_equal(diff_merge(before_txt, strlen(before_txt), after_txt, strlen(after_txt),
				    &d, NULL, NULL),
			 0);
	assert_int_equal(diff_leaves(&d, &l, &n), 0);
	/* by the change of share: parse 15 % → 60 %, gone 35 % → 0 %, hot 50 % → 40 % (two
	 * stacks summed) */
	assert_int_equal(n, 3);
	assert_int_equal((int)l[0].len, 5);
	assert_memory_equal(l[0].name, "parse", 5);
	assert_int_equal(l[0].before, 15);
	assert_int_equal(l[0].after, 60);
	assert_memory_equal(l[1].name, "gone", 4);
	assert_int_equal(l[1].after, 0);
	assert_memory_equal(l[2].name, "hot", 3);
	assert_int_equal(l[2].before, 50);
	assert_int_equal(l[2].after, 40);
	free(l);
	diff_free(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_merge),
	    cmocka_unit_test(test_scale),
	    cmocka_unit_test(test_table),
	    cmocka_unit_test(test_folded),
	    cmocka_unit_test(test_leaves),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
