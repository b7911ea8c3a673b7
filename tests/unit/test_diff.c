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

/* A run twice as long compares by shares: the baseline is scaled to the new total. */
static void test_normalize(void **state)
{
	const char *a = "x 30\ny 10\n", *b = "x 40\ny 40\n";
	struct diff_set d;

	assert_int_equal(diff_merge(a, strlen(a), b, strlen(b), &d, NULL, NULL), 0);
	diff_normalize(&d);
	assert_int_equal(value_of(&d, "x", 0), 60);
	assert_int_equal(value_of(&d, "y", 0), 20);
	assert_int_equal(d.total_before, 80);
	diff_free(&d);

	/* an empty side: nothing to scale by */
	assert_int_equal(diff_merge("", 0, b, strlen(b), &d, NULL, NULL), 0);
	diff_normalize(&d);
	assert_int_equal(value_of(&d, "x", 0), 0);
	assert_int_equal(d.total_before, 0);
	diff_free(&d);
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
	/* hot: 50 → 40 (two stacks summed), parse 15 → 60, gone 35 → 0 */
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
	    cmocka_unit_test(test_normalize),
	    cmocka_unit_test(test_leaves),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
