/*
 * test_folded — the folded-stack parser and writer: good lines, frames with spaces, comments,
 * CRLF, every error kind with its line number, callback stop, and write/parse round trips.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/folded.h"

#define MAX_GOT 16

struct got {
	size_t n;
	char stack[MAX_GOT][128];
	int64_t value[MAX_GOT];
	size_t line[MAX_GOT];
	size_t stop_after; /* 0: never */
};

static int collect(void *arg, const char *stack, size_t len, int64_t value, size_t line)
{
	struct got *g = arg;

	assert_true(g->n < MAX_GOT);
	assert_true(len < sizeof(g->stack[0]));
	memcpy(g->stack[g->n], stack, len);
	g->stack[g->n][len] = '\0';
	g->value[g->n] = value;
	g->line[g->n] = line;
	g->n++;
	if (g->stop_after && g->n == g->stop_after)
		return -ECANCELED;
	return 0;
}

static void test_good_lines(void **state)
{
	static const char text[] = "# a comment\n"
				   "[p] app;main;work;[k] do_syscall_64 10101\n"
				   "\n"
				   "   \t\n"
				   "[p] app;std::vector<int>::push_back (inlined);main 2\n"
				   "[t] w;operator new(unsigned long)\t\t7  \n"
				   "a;b 0\n"
				   "a;b 9223372036854775807\n"
				   "x 007"; /* no final newline */
	struct got g = {0};
	struct folded_error errs[4];
	size_t n_errs = 99;

	assert_int_equal(folded_parse(text, sizeof(text) - 1, collect, &g, errs, 4, &n_errs), 0);
	assert_int_equal(n_errs, 0);
	assert_int_equal(g.n, 6);
	assert_string_equal(g.stack[0], "[p] app;main;work;[k] do_syscall_64");
	assert_int_equal(g.value[0], 10101);
	assert_int_equal(g.line[0], 2);
	assert_string_equal(g.stack[1], "[p] app;std::vector<int>::push_back (inlined);main");
	assert_int_equal(g.value[1], 2);
	assert_int_equal(g.line[1], 5);
	assert_string_equal(g.stack[2], "[t] w;operator new(unsigned long)");
	assert_int_equal(g.value[2], 7);
	assert_int_equal(g.line[2], 6);
	assert_int_equal(g.value[3], 0);
	assert_true(g.value[4] == INT64_MAX);
	assert_string_equal(g.stack[5], "x");
	assert_int_equal(g.value[5], 7);
	assert_int_equal(g.line[5], 9);
}

static void test_crlf(void **state)
{
	static const char text[] = "a;b 1\r\n\r\n# c\r\nc;d e 22\r\nbad\r\n";
	struct got g = {0};
	struct folded_error errs[2];
	size_t n_errs;

	assert_int_equal(folded_parse(text, sizeof(text) - 1, collect, &g, errs, 2, &n_errs), 0);
	assert_int_equal(g.n, 2);
	assert_string_equal(g.stack[0], "a;b");
	assert_int_equal(g.value[0], 1);
	assert_string_equal(g.stack[1], "c;d e");
	assert_int_equal(g.value[1], 22);
	assert_int_equal(g.line[1], 4);
	assert_int_equal(n_errs, 1);
	assert_int_equal(errs[0].line, 5);
	assert_int_equal(errs[0].kind, FOLDED_ERR_NO_VALUE);
}

static void test_errors(void **state)
{
	static const char text[] = "a;b\n"                          /* 1 missing value */
				   "a;b x\n"                        /* 2 not a number */
				   "a;b -5\n"                       /* 3 sign */
				   "a;b 1.5\n"                      /* 4 not an integer */
				   "a;b 9223372036854775808\n"      /* 5 overflow */
				   "a;b 99999999999999999999999\n"  /* 6 overflow */
				   "  42\n"                         /* 7 empty stack */
				   "a;\0b 3\n"                      /* 8 NUL */
				   "good 5\n"                       /* 9 */
				   "17\n";                          /* 10 one token */
	static const enum folded_err want[] = {
		FOLDED_ERR_NO_VALUE, FOLDED_ERR_BAD_VALUE, FOLDED_ERR_BAD_VALUE,
		FOLDED_ERR_BAD_VALUE, FOLDED_ERR_OVERFLOW, FOLDED_ERR_OVERFLOW,
		FOLDED_ERR_EMPTY_STACK, FOLDED_ERR_NUL, FOLDED_ERR_NO_VALUE,
	};
	static const size_t want_line[] = {1, 2, 3, 4, 5, 6, 7, 8, 10};
	struct folded_error errs[16];
	struct got g = {0};
	size_t n_errs;

	assert_int_equal(folded_parse(text, sizeof(text) - 1, collect, &g, errs, 16, &n_errs), 0);
	assert_int_equal(g.n, 1);
	assert_string_equal(g.stack[0], "good");
	assert_int_equal(g.line[0], 9);
	assert_int_equal(n_errs, 9);
	for (size_t i = 0; i < 9; i++) {
		assert_int_equal(errs[i].kind, want[i]);
		assert_int_equal(errs[i].line, want_line[i]);
		assert_true(strlen(folded_strerror(errs[i].kind)) > 0);
	}
	assert_string_equal(folded_strerror(FOLDED_ERR_NO_VALUE), "missing value");

	/* only the first max_errs are recorded, all are counted */
	memset(errs, 0, sizeof(errs));
	g.n = 0;
	assert_int_equal(folded_parse(text, sizeof(text) - 1, collect, &g, errs, 2, &n_errs), 0);
	assert_int_equal(n_errs, 9);
	assert_int_equal(errs[1].line, 2);
	assert_int_equal(errs[2].line, 0);
	g.n = 0;
	assert_int_equal(folded_parse(text, sizeof(text) - 1, collect, &g, NULL, 0, NULL), 0);
	assert_int_equal(g.n, 1);
}

static void test_too_long(void **state)
{
	size_t big = FOLDED_MAX_LINE + 1;
	char *text = malloc(big + 64);
	struct folded_error errs[2];
	struct got g = {0};
	size_t n_errs, len;

	assert_non_null(text);
	memcpy(text, "a 1\n", 4);
	memset(text + 4, 'x', big - 2);
	memcpy(text + 4 + big - 2, " 1\nb 2\n", 7);
	len = 4 + big + 5;
	assert_int_equal(folded_parse(text, len, collect, &g, errs, 2, &n_errs), 0);
	assert_int_equal(n_errs, 1);
	assert_int_equal(errs[0].kind, FOLDED_ERR_TOO_LONG);
	assert_int_equal(errs[0].line, 2);
	assert_int_equal(g.n, 2);
	assert_int_equal(g.line[1], 3);
	free(text);
}

static int count_only(void *arg, const char *stack, size_t len, int64_t value, size_t line)
{
	size_t *n = arg;

	(*n)++;
	return 0;
}

static void test_max_line_accepted(void **state)
{
	char *text = malloc(FOLDED_MAX_LINE);
	size_t n = 0, n_errs;

	assert_non_null(text);
	memset(text, 'y', FOLDED_MAX_LINE - 2);
	memcpy(text + FOLDED_MAX_LINE - 2, " 3", 2);
	assert_int_equal(folded_parse(text, FOLDED_MAX_LINE, count_only, &n, NULL, 0, &n_errs), 0);
	assert_int_equal(n, 1);
	assert_int_equal(n_errs, 0);
	free(text);
}

static void test_callback_stops(void **state)
{
	static const char text[] = "a 1\nb 2\nc 3\n";
	struct got g = {.stop_after = 2};

	assert_int_equal(folded_parse(text, sizeof(text) - 1, collect, &g, NULL, 0, NULL),
			 -ECANCELED);
	assert_int_equal(g.n, 2);
}

static void test_write_round_trip(void **state)
{
	struct strbuf sb = STRBUF_INIT;
	struct got g = {0};
	size_t n_errs;

	assert_int_equal(folded_write(&sb, "[p] a;f (x);g", 13, 10101), 0);
	assert_int_equal(folded_write(&sb, "b", 1, 0), 0);
	assert_int_equal(folded_write(&sb, "c", 1, INT64_MAX), 0);
	assert_string_equal(sb.buf, "[p] a;f (x);g 10101\nb 0\nc 9223372036854775807\n");
	assert_int_equal(folded_parse(sb.buf, sb.len, collect, &g, NULL, 0, &n_errs), 0);
	assert_int_equal(n_errs, 0);
	assert_int_equal(g.n, 3);
	assert_string_equal(g.stack[0], "[p] a;f (x);g");
	assert_int_equal(g.value[0], 10101);
	assert_true(g.value[2] == INT64_MAX);

	/* lines that would not read back the same */
	sb_reset(&sb);
	assert_int_equal(folded_write(&sb, "", 0, 1), -EINVAL);
	assert_int_equal(folded_write(&sb, "a\nb", 3, 1), -EINVAL);
	assert_int_equal(folded_write(&sb, "a\rb", 3, 1), -EINVAL);
	assert_int_equal(folded_write(&sb, "a\0b", 3, 1), -EINVAL);
	assert_int_equal(folded_write(&sb, "a ", 2, 1), -EINVAL);
	assert_int_equal(folded_write(&sb, "a\t", 2, 1), -EINVAL);
	assert_int_equal(folded_write(&sb, "#a", 2, 1), -EINVAL);
	assert_int_equal(folded_write(&sb, "a", 1, -1), -EINVAL);
	assert_int_equal(sb.len, 0);
	sb_free(&sb);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_good_lines),
		cmocka_unit_test(test_crlf),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_too_long),
		cmocka_unit_test(test_max_line_accepted),
		cmocka_unit_test(test_callback_stops),
		cmocka_unit_test(test_write_round_trip),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
