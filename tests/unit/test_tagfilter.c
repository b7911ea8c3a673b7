/*
 * test_tagfilter — the tag_filter grammar, its errors and limits, the SQL it compiles to in both
 * dialects, the results of that SQL on a real in-memory SQLite database, and an injection corpus
 * (tests/fixtures/injection.txt) that must never change the structure of the SQL.
 */
#include <errno.h>
#include <limits.h>
#include <regex.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "server/tagfilter.h"

#define TAG_SUBQ                                                                                   \
	"SELECT 1 FROM json_each(tag_names) n JOIN json_each(tag_values) v ON v.key = n.key "      \
	"WHERE n.value = ? AND "

/* ---- helpers -------------------------------------------------------------------------- */

struct compiled {
	struct tf_expr *expr;
	struct strbuf sq;
	struct strbuf ch;
	struct tf_params params;
};

/* Parses and compiles text for both dialects; fails the test if it does not parse. */
static void compile_ok(const char *text, struct compiled *c)
{
	struct tf_error err;
	int rc;

	memset(c, 0, sizeof(*c));
	rc = tagfilter_parse(text, &c->expr, &err);
	if (rc)
		fail_msg("parse of <%s> failed: %s", text, err.message);
	assert_non_null(c->expr);
	assert_int_equal(tagfilter_compile(c->expr, TF_SQLITE, &c->sq, &c->params), 0);
	assert_int_equal(tagfilter_compile(c->expr, TF_CLICKHOUSE, &c->ch, NULL), 0);
}

static void compiled_free(struct compiled *c)
{
	sb_free(&c->sq);
	sb_free(&c->ch);
	tagfilter_params_free(&c->params);
	tagfilter_free(c->expr);
}

/*
 * Checks both SQL texts; the params are described as a string: each param as T:text, I:int or
 * R:real, joined by '|'.
 */
static void expect_sql(const char *text, const char *sq, const char *params, const char *ch)
{
	struct strbuf desc = STRBUF_INIT;
	struct compiled c;
	size_t i;

	compile_ok(text, &c);
	for (i = 0; i < c.params.n; i++) {
		const struct tf_param *p = &c.params.items[i];

		if (i)
			sb_putc(&desc, '|');
		if (p->type == TF_PARAM_TEXT) {
			sb_puts(&desc, "T:");
			sb_append(&desc, p->text, p->len);
		} else if (p->type == TF_PARAM_INT) {
			sb_printf(&desc, "I:%lld", (long long)p->i);
		} else {
			sb_printf(&desc, "R:%.17g", p->d);
		}
	}
	assert_string_equal(c.sq.buf, sq);
	assert_string_equal(desc.buf ? desc.buf : "", params);
	assert_string_equal(c.ch.buf, ch);
	sb_free(&desc);
	compiled_free(&c);
}

static void expect_error(const char *text, size_t pos, const char *message)
{
	struct tf_expr *expr = (struct tf_expr *)1;
	struct tf_error err;

	assert_int_equal(tagfilter_parse(text, &expr, &err), -EINVAL);
	assert_null(expr);
	if (strcmp(err.message, message) != 0)
		fail_msg("<%s>: got \"%s\", want \"%s\"", text, err.message, message);
	assert_int_equal(err.pos, pos);
}

static int parse_status(const char *text, struct tf_error *err)
{
	struct tf_expr *expr = NULL;
	int rc = tagfilter_parse(text, &expr, err);

	tagfilter_free(expr);
	return rc;
}

/* ---- grammar and SQL ------------------------------------------------------------------ */

static void test_empty(void **state)
{
	struct tf_expr *expr = (struct tf_expr *)1;
	struct tf_error err;

	assert_int_equal(tagfilter_parse("", &expr, &err), 0);
	assert_null(expr);
	expr = (struct tf_expr *)1;
	assert_int_equal(tagfilter_parse(" \t\r\n\f\v ", &expr, &err), 0);
	assert_null(expr);
	expr = (struct tf_expr *)1;
	assert_int_equal(tagfilter_parse(NULL, &expr, &err), 0);
	assert_null(expr);
	tagfilter_free(NULL);
}

static void test_comparisons(void **state)
{
	expect_sql("pod_cluster='prod' AND pod_ns='app'", "((pod_cluster = ?) AND (pod_ns = ?))",
		   "T:prod|T:app", "((pod_cluster = 'prod') AND (pod_ns = 'app'))");
	expect_sql("pod != 'a'", "(pod != ?)", "T:a", "(pod != 'a')");
	expect_sql("pod <> 'a'", "(pod != ?)", "T:a", "(pod != 'a')");
	expect_sql("host<'m'", "(host < ?)", "T:m", "(host < 'm')");
	expect_sql("host<='m'", "(host <= ?)", "T:m", "(host <= 'm')");
	expect_sql("host>'m'", "(host > ?)", "T:m", "(host > 'm')");
	expect_sql("host>='m'", "(host >= ?)", "T:m", "(host >= 'm')");
	expect_sql("process_id = 42", "(process_id = ?)", "I:42", "(process_id = 42)");
	expect_sql("time>=-5", "(time >= ?)", "I:-5", "(time >= -5)");
	expect_sql("profile_value > 1.5", "(profile_value > ?)", "R:1.5", "(profile_value > 1.5)");
	expect_sql("profile_value > -0.25", "(profile_value > ?)", "R:-0.25",
		   "(profile_value > -0.25)");
	expect_sql("time = 9223372036854775807", "(time = ?)", "I:9223372036854775807",
		   "(time = 9223372036854775807)");
	expect_sql("time = -9223372036854775808", "(time = ?)", "I:-9223372036854775808",
		   "(time = -9223372036854775808)");
	expect_sql("profile_value = 0.1", "(profile_value = ?)", "R:0.10000000000000001",
		   "(profile_value = 0.10000000000000001)");
}

static void test_in_like_regexp(void **state)
{
	expect_sql("process_id IN (1, -2, 3.5)", "(process_id IN (?, ?, ?))", "I:1|I:-2|R:3.5",
		   "(process_id IN (1, -2, 3.5))");
	expect_sql("pod NOT IN ('a','b')", "(pod NOT IN (?, ?))", "T:a|T:b",
		   "(pod NOT IN ('a', 'b'))");
	expect_sql("pod in ('only')", "(pod IN (?))", "T:only", "(pod IN ('only'))");
	/* % and _ are wildcards; \% \_ literal; GLOB's * ? [ are bracketed for SQLite. */
	expect_sql("app_service LIKE 'my%'", "(app_service GLOB ?)", "T:my*",
		   "(like(app_service, 'my%'))");
	expect_sql("app_service LIKE 'a\\%b_c*d?e[f]'", "(app_service GLOB ?)",
		   "T:a%b?c[*]d[?]e[[]f]", "(like(app_service, 'a\\\\%b_c*d?e[f]'))");
	expect_sql("pod LIKE 'x\\_y\\\\\\\\z'", "(pod GLOB ?)", "T:x_y\\z",
		   "(like(pod, 'x\\\\_y\\\\\\\\z'))");
	expect_sql("pod NOT LIKE '%-1'", "(pod NOT GLOB ?)", "T:*-1", "(notLike(pod, '%-1'))");
	expect_sql("pod REGEXP '^web-[0-9]+$'", "(pod REGEXP ?)", "T:^web-[0-9]+$",
		   "(match(pod, '^web-[0-9]+$'))");
	expect_sql("pod regexp 'a\\.b'", "(pod REGEXP ?)", "T:a\\.b", "(match(pod, 'a\\\\.b'))");
}

/* Patterns the REGEXP screen must let through (a screen that rejects too much is a bug too). */
static void test_regexp_accepted(void **state)
{
	static const char *const ok[] = {
	    "pod REGEXP '^web-[0-9]+$'",
	    "pod REGEXP '[0-9]{4}-[0-9]{2}'",
	    "pod REGEXP '(a|b|c){1000}'",
	    "pod REGEXP '((((a*)*)*)*)*'",
	    "pod REGEXP 'a\\.b\\$\\{\\}\\-\\/'",
	    "pod REGEXP '\\(a+\\)+'",
	    "pod REGEXP '[(]a+[)]+'",
	    "pod REGEXP 'x{2,3}y{0,4}z{5,}'",
	    "pod REGEXP '[[:alpha:]_]+(-[0-9]+)?$'",
	    "pod REGEXP '[]a]+|[^]b]*'",
	    "pod REGEXP '(ab|cd)*e?f+'",
	};
	size_t i;

	for (i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		struct tf_error err;

		if (parse_status(ok[i], &err) != 0)
			fail_msg("<%s> rejected: %s", ok[i], err.message);
	}
}

static void test_strings(void **state)
{
	expect_sql("pod = 'it''s'", "(pod = ?)", "T:it's", "(pod = 'it\\'s')");
	expect_sql("pod = 'it\\'s'", "(pod = ?)", "T:it's", "(pod = 'it\\'s')");
	expect_sql("pod = 'a\\\\b'", "(pod = ?)", "T:a\\b", "(pod = 'a\\\\b')");
	expect_sql("pod = 'a\\nb'", "(pod = ?)", "T:a\\nb", "(pod = 'a\\\\nb')");
	expect_sql("pod = \"dq\"\"x\\\"y'z\"", "(pod = ?)", "T:dq\"x\"y'z",
		   "(pod = 'dq\"x\"y\\'z')");
	expect_sql("pod = ''", "(pod = ?)", "T:", "(pod = '')");
	expect_sql("pod = 'tab\there\x01\x7f\xc3\xa9'", "(pod = ?)", "T:tab\there\x01\x7f\xc3\xa9",
		   "(pod = 'tab\\x09here\\x01\\x7f\xc3\xa9')");
}

static void test_tags(void **state)
{
	expect_sql("k8s.label.app = 'web'", "(EXISTS (" TAG_SUBQ "v.value = ?))",
		   "T:k8s.label.app|T:web",
		   "(has(tag_names, 'k8s.label.app') AND "
		   "tag_values[indexOf(tag_names, 'k8s.label.app')] = 'web')");
	expect_sql("k8s.label.app != 'web'", "(NOT EXISTS (" TAG_SUBQ "v.value = ?))",
		   "T:k8s.label.app|T:web",
		   "(NOT (has(tag_names, 'k8s.label.app') AND "
		   "tag_values[indexOf(tag_names, 'k8s.label.app')] = 'web'))");
	expect_sql("tag.team IN ('a', 'b')", "(EXISTS (" TAG_SUBQ "v.value IN (?, ?)))",
		   "T:team|T:a|T:b",
		   "(has(tag_names, 'team') AND tag_values[indexOf(tag_names, 'team')] IN "
		   "('a', 'b'))");
	expect_sql("tag.team NOT IN ('a')", "(NOT EXISTS (" TAG_SUBQ "v.value IN (?)))",
		   "T:team|T:a",
		   "(NOT (has(tag_names, 'team') AND tag_values[indexOf(tag_names, 'team')] IN "
		   "('a')))");
	expect_sql("k8s.annotation.x LIKE 'a%'", "(EXISTS (" TAG_SUBQ "v.value GLOB ?))",
		   "T:k8s.annotation.x|T:a*",
		   "(has(tag_names, 'k8s.annotation.x') AND "
		   "like(tag_values[indexOf(tag_names, 'k8s.annotation.x')], 'a%'))");
	expect_sql("k8s.env.HOME NOT LIKE '/r%'", "(NOT EXISTS (" TAG_SUBQ "v.value GLOB ?))",
		   "T:k8s.env.HOME|T:/r*",
		   "(NOT (has(tag_names, 'k8s.env.HOME') AND "
		   "like(tag_values[indexOf(tag_names, 'k8s.env.HOME')], '/r%')))");
	expect_sql("cloud.tag.zone REGEXP '^eu'", "(EXISTS (" TAG_SUBQ "v.value REGEXP ?))",
		   "T:cloud.tag.zone|T:^eu",
		   "(has(tag_names, 'cloud.tag.zone') AND "
		   "match(tag_values[indexOf(tag_names, 'cloud.tag.zone')], '^eu'))");
	expect_sql("os.app.v >= 'b'", "(EXISTS (" TAG_SUBQ "v.value >= ?))", "T:os.app.v|T:b",
		   "(has(tag_names, 'os.app.v') AND tag_values[indexOf(tag_names, 'os.app.v')] >= "
		   "'b')");
	/* A backquoted name not in the allow-list is a custom tag, verbatim. */
	expect_sql("`app.kubernetes.io/name` = 'x'", "(EXISTS (" TAG_SUBQ "v.value = ?))",
		   "T:app.kubernetes.io/name|T:x",
		   "(has(tag_names, 'app.kubernetes.io/name') AND "
		   "tag_values[indexOf(tag_names, 'app.kubernetes.io/name')] = 'x')");
	expect_sql("`it's``q` = 'x'", "(EXISTS (" TAG_SUBQ "v.value = ?))", "T:it's`q|T:x",
		   "(has(tag_names, 'it\\'s`q') AND "
		   "tag_values[indexOf(tag_names, 'it\\'s`q')] = 'x')");
	/* ...and a backquoted column is the column; `tag.` is stripped when quoted too. */
	expect_sql("`pod` = 'x'", "(pod = ?)", "T:x", "(pod = 'x')");
	expect_sql("`tag.team` = 'x'", "(EXISTS (" TAG_SUBQ "v.value = ?))", "T:team|T:x",
		   "(has(tag_names, 'team') AND tag_values[indexOf(tag_names, 'team')] = 'x')");
	expect_sql("`k8s.label.a b` = 'x'", "(EXISTS (" TAG_SUBQ "v.value = ?))",
		   "T:k8s.label.a b|T:x",
		   "(has(tag_names, 'k8s.label.a b') AND "
		   "tag_values[indexOf(tag_names, 'k8s.label.a b')] = 'x')");
}

static void test_aliases_and_keywords(void **state)
{
	expect_sql("vtap = 'a' and host_hostname='b' And pod_node_hostname='c'",
		   "((agent = ?) AND (host = ?) AND (pod_node = ?))", "T:a|T:b|T:c",
		   "((agent = 'a') AND (host = 'b') AND (pod_node = 'c'))");
	expect_sql("pod In ('a') oR pod nOt LiKe 'b' OR pod ReGeXp 'c' or not pod = 'd'",
		   "((pod IN (?)) OR (pod NOT GLOB ?) OR (pod REGEXP ?) OR (NOT (pod = ?)))",
		   "T:a|T:b|T:c|T:d",
		   "((pod IN ('a')) OR (notLike(pod, 'b')) OR (match(pod, 'c')) OR "
		   "(NOT (pod = 'd')))");
	expect_sql("pod='x'AND(host='y')", "((pod = ?) AND (host = ?))", "T:x|T:y",
		   "((pod = 'x') AND (host = 'y'))");
}

static void test_precedence(void **state)
{
	expect_sql("pod='a' OR pod='b' AND pod='c'", "((pod = ?) OR ((pod = ?) AND (pod = ?)))",
		   "T:a|T:b|T:c", "((pod = 'a') OR ((pod = 'b') AND (pod = 'c')))");
	expect_sql("pod='a' AND pod='b' OR pod='c'", "(((pod = ?) AND (pod = ?)) OR (pod = ?))",
		   "T:a|T:b|T:c", "(((pod = 'a') AND (pod = 'b')) OR (pod = 'c'))");
	expect_sql("(pod='a' OR pod='b') AND pod='c'", "(((pod = ?) OR (pod = ?)) AND (pod = ?))",
		   "T:a|T:b|T:c", "(((pod = 'a') OR (pod = 'b')) AND (pod = 'c'))");
	expect_sql("NOT pod='a' AND pod='b'", "((NOT (pod = ?)) AND (pod = ?))", "T:a|T:b",
		   "((NOT (pod = 'a')) AND (pod = 'b'))");
	expect_sql("NOT (pod='a' AND pod='b')", "(NOT ((pod = ?) AND (pod = ?)))", "T:a|T:b",
		   "(NOT ((pod = 'a') AND (pod = 'b')))");
	expect_sql("NOT NOT pod='a' OR NOT pod='b'", "((NOT (NOT (pod = ?))) OR (NOT (pod = ?)))",
		   "T:a|T:b", "((NOT (NOT (pod = 'a'))) OR (NOT (pod = 'b')))");
	expect_sql("((((pod='a'))))", "(pod = ?)", "T:a", "(pod = 'a')");
	/* Chains are flat, not nested. */
	expect_sql("pod='a' AND pod='b' AND pod='c' AND pod='d'",
		   "((pod = ?) AND (pod = ?) AND (pod = ?) AND (pod = ?))", "T:a|T:b|T:c|T:d",
		   "((pod = 'a') AND (pod = 'b') AND (pod = 'c') AND (pod = 'd'))");
}

/* ---- errors --------------------------------------------------------------------------- */

static void test_errors(void **state)
{
	static const struct {
		const char *text;
		size_t pos;
		const char *msg;
	} cases[] = {
	    {"podx = 'a'", 0, "unknown field 'podx' at position 0"},
	    {"pod = 'a' AND  region = 'x'", 15, "unknown field 'region' at position 15"},
	    {"Pod = 'a'", 0, "unknown field 'Pod' at position 0"},
	    {"k8s.label = 'a'", 0, "unknown field 'k8s.label' at position 0"},
	    {"k8s.label. = 'a'", 0, "custom tag name missing after 'k8s.label.' at position 0"},
	    {"tag. = 'a'", 0, "custom tag name missing after 'tag.' at position 0"},
	    {"`tag.` = 'a'", 0, "custom tag name missing after 'tag.' at position 0"},
	    {"`` = 'a'", 0, "empty quoted name at position 0"},
	    {"`pod = 'a'", 0, "unterminated quoted name at position 0"},
	    {"pod = 'a", 6, "unterminated string at position 6"},
	    {"pod = 'a\\'", 6, "unterminated string at position 6"},
	    {"pod = \"a", 6, "unterminated string at position 6"},
	    {"pod = 'a' x", 10, "unexpected 'x' after the end of the expression at position 10"},
	    {"pod = 'a')", 9, "unexpected ')' after the end of the expression at position 9"},
	    {"pod = 'a' 'b'", 10,
	     "unexpected a string after the end of the expression at position 10"},
	    {"pod = 'a';", 9, "unexpected character ';' at position 9"},
	    {"pod = 'a' -- c", 10, "unexpected character '-' at position 10"},
	    {"pod = 'a' /* c */", 10, "unexpected character '/' at position 10"},
	    {"pod = 'a' \x01", 10, "unexpected byte 0x01 at position 10"},
	    {"pod = 'a' \xc3\xa9", 10, "unexpected byte 0xc3 at position 10"},
	    {"pod = ", 6, "expected a value, found the end of the filter at position 6"},
	    {"pod = pod", 6, "expected a value, found 'pod' at position 6"},
	    {"pod = (", 6, "expected a value, found '(' at position 6"},
	    {"pod", 3,
	     "expected an operator after field 'pod', found the end of the filter at position 3"},
	    {"pod 'a'", 4, "expected an operator after field 'pod', found a string at position 4"},
	    {"pod == 'a'", 5, "expected a value, found a comparison operator at position 5"},
	    {"pod ! 'a'", 4, "unexpected character '!' at position 4"},
	    {"pod NOT = 'a'", 8,
	     "expected IN or LIKE after NOT, found a comparison operator at position 8"},
	    {"pod NOT REGEXP 'a'", 8,
	     "expected IN or LIKE after NOT, found 'REGEXP' at position 8"},
	    {"()", 0, "empty parentheses at position 0"},
	    {"pod = 'a' AND ()", 14, "empty parentheses at position 14"},
	    {"(pod = 'a'", 10,
	     "expected ')' to close '(' at 0, found the end of the filter at position 10"},
	    {"AND pod = 'a'", 0, "expected a field name or '(', found 'AND' at position 0"},
	    {"pod = 'a' AND", 13,
	     "expected a field name or '(', found the end of the filter at position 13"},
	    {"pod = 'a' OR OR pod = 'b'", 13,
	     "expected a field name or '(', found 'OR' at position 13"},
	    {"NOT", 3, "expected a field name or '(', found the end of the filter at position 3"},
	    {"'a' = pod", 0, "expected a field name or '(', found a string at position 0"},
	    {"5 = pod", 0, "expected a field name or '(', found a number at position 0"},
	    {"pod IN ()", 7, "empty IN list at position 7"},
	    {"pod IN 'a'", 7, "expected '(' after IN, found a string at position 7"},
	    {"pod IN ('a' 'b')", 12,
	     "expected ',' or ')' in IN list, found a string at position 12"},
	    {"pod IN ('a',)", 12, "expected a value, found ')' at position 12"},
	    {"pod IN ('a'", 11,
	     "expected ',' or ')' in IN list, found the end of the filter at position 11"},
	    {"process_id = '1'", 13,
	     "field 'process_id' is an integer; compare it with a number at position 13"},
	    {"time IN (1, '2')", 12,
	     "field 'time' is an integer; compare it with a number at position 12"},
	    {"pod = 1", 6, "field 'pod' is text; quote the value at position 6"},
	    {"k8s.label.v = 2", 14, "field 'k8s.label.v' is text; quote the value at position 14"},
	    {"process_id LIKE 'x%'", 11,
	     "LIKE needs a text field; 'process_id' is an integer at position 11"},
	    {"time NOT LIKE 'x%'", 5,
	     "LIKE needs a text field; 'time' is an integer at position 5"},
	    {"profile_value REGEXP 'x'", 14,
	     "REGEXP needs a text field; 'profile_value' is an integer at position 14"},
	    {"pod LIKE 5", 9, "LIKE needs a quoted string pattern at position 9"},
	    {"pod REGEXP 5", 11, "REGEXP needs a quoted string pattern at position 11"},
	    {"pod LIKE 'ab\\\\'", 9, "LIKE pattern ends with an escape character at position 9"},
	    {"pod REGEXP 'a('", 11,
	     "invalid regular expression (Unmatched ( or \\() at position 11"},
	    {"pod REGEXP '[a'", 11,
	     "invalid regular expression (Unmatched [, [^, [:, [., or [=) at position 11"},
	    {"pod REGEXP '(a)\\1'", 11,
	     "back-references are not supported in REGEXP at position 11"},
	    {"pod REGEXP '((((a+)+)+)+)'", 11,
	     "nested quantifiers are not supported in REGEXP at position 11"},
	    {"pod REGEXP '((a|b*)+){64}'", 11,
	     "nested quantifiers are not supported in REGEXP at position 11"},
	    {"pod REGEXP '((a){100}){100}'", 11,
	     "nested quantifiers are not supported in REGEXP at position 11"},
	    {"pod REGEXP 'a**'", 11, "a quantifier follows a quantifier in REGEXP at position 11"},
	    {"pod REGEXP 'a{9}{9}'", 11,
	     "a quantifier follows a quantifier in REGEXP at position 11"},
	    {"pod REGEXP '(a|b|c|d|e|f|g|h|i){999}'", 11,
	     "regular expression too complex at position 11"},
	    {"pod REGEXP 'a{1001}'", 11, "repetition count above 1000 in REGEXP at position 11"},
	    {"pod REGEXP 'a{,3}'", 11, "write {0,n} instead of {,n} in REGEXP at position 11"},
	    {"pod REGEXP 'a)'", 11, "unmatched ')' in REGEXP at position 11"},
	    {"pod REGEXP '\\d+'", 11,
	     "a backslash before a letter or digit is not supported in REGEXP at position 11"},
	    {"time = 9223372036854775808", 7, "number out of range at position 7"},
	    {"time = -9223372036854775809", 7, "number out of range at position 7"},
	    {"time = 12abc", 7, "malformed number at position 7"},
	    {"time = 1.", 7, "malformed number at position 7"},
	    {"time = 1.5.5", 7, "malformed number at position 7"},
	    {"time = 1e5", 7, "malformed number at position 7"},
	    {"time = -", 7, "unexpected character '-' at position 7"},
	    {"time = .5", 7, "unexpected character '.' at position 7"},
	};
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		expect_error(cases[i].text, cases[i].pos, cases[i].msg);
}

static void test_error_long_name_truncated(void **state)
{
	char text[300];
	struct tf_expr *expr;
	struct tf_error err;

	memset(text, 'x', 200);
	strcpy(text + 200, " = 'a'");
	assert_int_equal(tagfilter_parse(text, &expr, &err), -EINVAL);
	assert_int_equal(err.pos, 0);
	assert_string_equal(err.message,
			    "unknown field 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...' "
			    "at position 0");
	/* err may be NULL. */
	assert_int_equal(tagfilter_parse(text, &expr, NULL), -EINVAL);
	assert_null(expr);
}

/* ---- limits --------------------------------------------------------------------------- */

static char *repeat_join(const char *head, const char *item, const char *sep, size_t n,
			 const char *tail)
{
	struct strbuf sb = STRBUF_INIT;
	size_t i;

	sb_puts(&sb, head);
	for (i = 0; i < n; i++) {
		if (i)
			sb_puts(&sb, sep);
		sb_puts(&sb, item);
	}
	sb_puts(&sb, tail);
	return sb_detach(&sb, NULL);
}

static void test_limits(void **state)
{
	struct tf_error err;
	char *t;

	/* Text length: 65536 bytes are fine, 65537 are not. */
	t = malloc(65538);
	memset(t, ' ', 65537);
	memcpy(t, "pod='a'", 7);
	t[65536] = '\0';
	assert_int_equal(parse_status(t, &err), 0);
	t[65536] = ' ';
	t[65537] = '\0';
	assert_int_equal(parse_status(t, &err), -EINVAL);
	assert_int_equal(err.pos, 65536);
	assert_string_equal(err.message, "filter longer than 65536 bytes at position 65536");
	free(t);

	/* Nesting: 64 levels of parentheses, or NOTs, or a mix. */
	t = repeat_join("", "(", "", 64, "pod='a'");
	{
		char *full = repeat_join(t, ")", "", 64, "");

		assert_int_equal(parse_status(full, &err), 0);
		free(full);
	}
	free(t);
	t = repeat_join("", "(", "", 65, "pod='a'");
	assert_int_equal(parse_status(t, &err), -EINVAL);
	assert_int_equal(err.pos, 64);
	assert_string_equal(err.message, "filter nested deeper than 64 levels at position 64");
	free(t);
	t = repeat_join("", "NOT ", "", 64, "pod='a'");
	assert_int_equal(parse_status(t, &err), 0);
	free(t);
	t = repeat_join("", "NOT ", "", 65, "pod='a'");
	assert_int_equal(parse_status(t, &err), -EINVAL);
	assert_int_equal(err.pos, 256);
	free(t);
	t = repeat_join("", "NOT (", "", 33, "pod='a'");
	assert_int_equal(parse_status(t, &err), -EINVAL);
	assert_string_equal(err.message, "filter nested deeper than 64 levels at position 160");
	free(t);

	/* IN list: 10000 values, not 10001. */
	t = repeat_join("process_id IN (", "7", ",", 10000, ")");
	assert_int_equal(parse_status(t, &err), 0);
	free(t);
	t = repeat_join("process_id IN (", "7", ",", 10001, ")");
	assert_int_equal(parse_status(t, &err), -EINVAL);
	assert_int_equal(err.pos, 15 + 2 * 10000);
	assert_string_equal(err.message, "IN list longer than 10000 values at position 20015");
	free(t);

	/* Values in the whole filter: 16384 (10000 + 6384 here). */
	{
		char *head =
		    repeat_join("process_id IN (", "7", ",", 10000, ") OR process_id IN (");
		char *full = repeat_join(head, "7", ",", 6384, ")");

		assert_int_equal(parse_status(full, &err), 0);
		free(full);
		full = repeat_join(head, "7", ",", 6385, ")");
		assert_int_equal(parse_status(full, &err), -EINVAL);
		assert_string_equal(err.message,
				    "filter has more than 16384 values at position 32802");
		free(full);
		free(head);
	}

	/* Conditions: 4096 nodes (2048 comparisons + 1 OR fit; 4096 comparisons do not). */
	t = repeat_join("", "pod='a'", " OR ", 4095, "");
	assert_int_equal(parse_status(t, &err), 0);
	free(t);
	t = repeat_join("", "pod='a'", " OR ", 4096, "");
	assert_int_equal(parse_status(t, &err), -EINVAL);
	assert_string_equal(err.message, "filter has more than 4096 conditions at position 45045");
	free(t);
}

/* A long flat chain must not recurse per operand (it would overflow the stack otherwise). */
static void test_flat_chain_compiles(void **state)
{
	char *t = repeat_join("", "pod='a'", " AND ", 4095, "");
	struct compiled c;

	compile_ok(t, &c);
	assert_int_equal(c.params.n, 4095);
	assert_true(strncmp(c.sq.buf, "((pod = ?) AND (pod = ?)", 24) == 0);
	compiled_free(&c);
	free(t);
}

static void test_field_known(void **state)
{
	assert_true(tagfilter_field_known("pod"));
	assert_true(tagfilter_field_known("profile_location_str"));
	assert_true(tagfilter_field_known("compression_algo"));
	assert_true(tagfilter_field_known("vtap"));
	assert_true(tagfilter_field_known("host_hostname"));
	assert_true(tagfilter_field_known("k8s.label.app"));
	assert_true(tagfilter_field_known("k8s.annotation.a"));
	assert_true(tagfilter_field_known("k8s.env.A"));
	assert_true(tagfilter_field_known("cloud.tag.z"));
	assert_true(tagfilter_field_known("os.app.x"));
	assert_true(tagfilter_field_known("tag.team"));
	assert_false(tagfilter_field_known("k8s.label."));
	assert_false(tagfilter_field_known("tag."));
	assert_false(tagfilter_field_known("k8s.label"));
	assert_false(tagfilter_field_known("podx"));
	assert_false(tagfilter_field_known("tag_names"));
	assert_false(tagfilter_field_known("region"));
	assert_false(tagfilter_field_known(""));
	assert_false(tagfilter_field_known(NULL));
}

static void test_compile_args(void **state)
{
	struct strbuf sb = STRBUF_INIT;
	struct tf_params params = {0};
	struct tf_expr *expr;
	struct tf_error err;

	assert_int_equal(tagfilter_compile(NULL, TF_SQLITE, &sb, &params), -EINVAL);
	assert_int_equal(tagfilter_parse("pod='a'", &expr, &err), 0);
	assert_int_equal(tagfilter_compile(expr, TF_SQLITE, &sb, NULL), -EINVAL);
	assert_int_equal(tagfilter_compile(expr, TF_SQLITE, NULL, &params), -EINVAL);
	assert_int_equal(tagfilter_compile(expr, (enum tf_dialect)7, &sb, &params), -EINVAL);
	/* Compiling appends to both the SQL and the params. */
	sb_puts(&sb, "x AND ");
	assert_int_equal(tagfilter_compile(expr, TF_SQLITE, &sb, &params), 0);
	assert_int_equal(tagfilter_compile(expr, TF_SQLITE, &sb, &params), 0);
	assert_string_equal(sb.buf, "x AND (pod = ?)(pod = ?)");
	assert_int_equal(params.n, 2);
	/* ClickHouse leaves params alone. */
	assert_int_equal(tagfilter_compile(expr, TF_CLICKHOUSE, &sb, &params), 0);
	assert_int_equal(params.n, 2);
	tagfilter_params_free(&params);
	assert_null(params.items);
	assert_int_equal(params.n, 0);
	tagfilter_params_free(NULL);
	sb_free(&sb);
	tagfilter_free(expr);
}

/* ---- ClickHouse literal checking ------------------------------------------------------ */

/*
 * Splits ClickHouse SQL into a skeleton (each literal replaced by '') and the literals'
 * unescaped bytes, accepting only the escapes the compiler writes (\\ \' \xHH) and no raw
 * control byte inside a literal. Returns the number of literals, or -1 if malformed.
 */
static int ch_split(const char *sql, struct strbuf *skel, struct strbuf *lits, size_t maxlits)
{
	static const char hexd[] = "0123456789abcdef";
	size_t n = 0;
	const char *p = sql;

	while (*p) {
		if (*p != '\'') {
			sb_putc(skel, *p++);
			continue;
		}
		if (n >= maxlits)
			return -1;
		sb_puts(skel, "''");
		p++;
		for (;;) {
			unsigned char c = (unsigned char)*p;

			if (c == '\0' || c < 0x20 || c == 0x7f)
				return -1;
			if (c == '\'') {
				p++;
				break;
			}
			if (c != '\\') {
				sb_putc(&lits[n], (char)c);
				p++;
				continue;
			}
			p++;
			if (*p == '\\' || *p == '\'') {
				sb_putc(&lits[n], *p++);
			} else if (*p == 'x' && p[1] && p[2] && strchr(hexd, p[1]) &&
				   strchr(hexd, p[2])) {
				int v = (int)((strchr(hexd, p[1]) - hexd) * 16 +
					      (strchr(hexd, p[2]) - hexd));

				sb_putc(&lits[n], (char)v);
				p += 3;
			} else {
				return -1;
			}
		}
		if (!lits[n].buf)
			sb_puts(&lits[n], "");
		n++;
	}
	return (int)n;
}

static void test_ch_literal_all_bytes(void **state)
{
	struct strbuf text = STRBUF_INIT, skel = STRBUF_INIT, lits[1] = {STRBUF_INIT};
	struct compiled c;
	char raw[256];
	int b, n = 0;

	/* Every byte but NUL, in a string literal written with the grammar's escapes. */
	sb_puts(&text, "pod = '");
	for (b = 1; b < 256; b++) {
		raw[n++] = (char)b;
		if (b == '\'' || b == '\\')
			sb_putc(&text, '\\');
		sb_putc(&text, (char)b);
	}
	sb_putc(&text, '\'');
	compile_ok(text.buf, &c);
	assert_int_equal(c.params.n, 1);
	assert_int_equal(c.params.items[0].len, 255);
	assert_memory_equal(c.params.items[0].text, raw, 255);
	assert_int_equal(ch_split(c.ch.buf, &skel, lits, 1), 1);
	assert_string_equal(skel.buf, "(pod = '')");
	assert_int_equal(lits[0].len, 255);
	assert_memory_equal(lits[0].buf, raw, 255);
	compiled_free(&c);
	sb_free(&text);
	sb_free(&skel);
	sb_free(&lits[0]);
}

/* ---- real SQLite ---------------------------------------------------------------------- */

static const char *const columns_ddl =
    "CREATE TABLE in_process (time INTEGER, app_service TEXT, app_instance TEXT,"
    " profile_location_str TEXT, profile_value INTEGER, profile_value_unit TEXT,"
    " profile_event_type TEXT, profile_language_type TEXT, profile_create_timestamp INTEGER,"
    " profile_in_timestamp INTEGER, process_id INTEGER, process_start_time INTEGER, host TEXT,"
    " agent TEXT, host_ip TEXT, container_id TEXT, pod_cluster TEXT, pod_ns TEXT,"
    " pod_node TEXT, pod TEXT, pod_group TEXT, trace_id TEXT, span_name TEXT,"
    " profile_id TEXT, compression_algo TEXT, tag_names TEXT, tag_values TEXT)";

static const struct {
	const char *app, *pod, *ns, *host;
	int pid, value;
	const char *tag_names, *tag_values;
} rows[] = {
    {"mysqld", "web-1", "prod", "h1", 100, 10, "[\"k8s.label.app\",\"team\"]", "[\"web\",\"db\"]"},
    {"MySQLd", "web-2", "prod", "h2", 200, 20, "[\"k8s.label.app\"]", "[\"api\"]"},
    {"nginx", "web_3", "dev", "h1", 300, 30, "[]", "[]"},
    {"Total", "", "", "h2", 0, 40, "[\"team\"]", "[\"web\"]"},
    {"it's", "a%b", "x*y", "h[1]", 500, 50, "[\"k8s.label.app\"]", "[\"it's\"]"},
};

#define N_ROWS (sizeof(rows) / sizeof(rows[0]))

static void sqlite_regexp(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
	const char *pattern = (const char *)sqlite3_value_text(argv[0]);
	const char *text = (const char *)sqlite3_value_text(argv[1]);
	regex_t re;

	if (!pattern || !text) {
		sqlite3_result_null(ctx);
		return;
	}
	if (regcomp(&re, pattern, REG_EXTENDED | REG_NOSUB) != 0) {
		sqlite3_result_error(ctx, "bad regular expression", -1);
		return;
	}
	sqlite3_result_int(ctx, regexec(&re, text, 0, NULL, 0) == 0);
	regfree(&re);
}

static int db_setup(void **state)
{
	sqlite3_stmt *st;
	sqlite3 *db;
	size_t i;

	assert_int_equal(sqlite3_open(":memory:", &db), SQLITE_OK);
	assert_int_equal(sqlite3_create_function(db, "regexp", 2,
						 SQLITE_UTF8 | SQLITE_DETERMINISTIC, NULL,
						 sqlite_regexp, NULL, NULL),
			 SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, columns_ddl, NULL, NULL, NULL), SQLITE_OK);
	assert_int_equal(
	    sqlite3_prepare_v2(db,
			       "INSERT INTO in_process (time, app_service, app_instance,"
			       " profile_location_str, profile_value, profile_value_unit,"
			       " profile_event_type, profile_language_type, process_id,"
			       " host, pod, pod_ns, tag_names, tag_values) VALUES (1000,"
			       " ?1, ?1, 'main;f', ?2, 'microseconds', 'on-cpu', 'eBPF',"
			       " ?3, ?4, ?5, ?6, ?7, ?8)",
			       -1, &st, NULL),
	    SQLITE_OK);
	for (i = 0; i < N_ROWS; i++) {
		sqlite3_bind_text(st, 1, rows[i].app, -1, SQLITE_STATIC);
		sqlite3_bind_int(st, 2, rows[i].value);
		sqlite3_bind_int(st, 3, rows[i].pid);
		sqlite3_bind_text(st, 4, rows[i].host, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 5, rows[i].pod, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 6, rows[i].ns, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 7, rows[i].tag_names, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 8, rows[i].tag_values, -1, SQLITE_STATIC);
		assert_int_equal(sqlite3_step(st), SQLITE_DONE);
		sqlite3_reset(st);
	}
	sqlite3_finalize(st);
	*state = db;
	return 0;
}

static int db_teardown(void **state)
{
	sqlite3_close(*state);
	return 0;
}

/*
 * Runs SELECT rowid ... WHERE <compiled filter> with the params bound; returns the ids as
 * "1,2,5", or NULL if the statement could not be prepared or run (the caller decides).
 */
static char *db_select(sqlite3 *db, const struct compiled *c)
{
	struct strbuf q = STRBUF_INIT, ids = STRBUF_INIT;
	sqlite3_stmt *st;
	size_t i;
	int rc;

	sb_printf(&q, "SELECT rowid FROM in_process WHERE %s ORDER BY rowid", c->sq.buf);
	rc = sqlite3_prepare_v2(db, q.buf, -1, &st, NULL);
	sb_free(&q);
	if (rc != SQLITE_OK)
		return NULL;
	for (i = 0; i < c->params.n; i++) {
		const struct tf_param *p = &c->params.items[i];

		if (p->type == TF_PARAM_TEXT)
			sqlite3_bind_text(st, (int)i + 1, p->text, (int)p->len, SQLITE_STATIC);
		else if (p->type == TF_PARAM_INT)
			sqlite3_bind_int64(st, (int)i + 1, p->i);
		else
			sqlite3_bind_double(st, (int)i + 1, p->d);
	}
	sb_puts(&ids, "");
	while ((rc = sqlite3_step(st)) == SQLITE_ROW)
		sb_printf(&ids, "%s%lld", ids.len ? "," : "",
			  (long long)sqlite3_column_int64(st, 0));
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE) {
		sb_free(&ids);
		return NULL;
	}
	return sb_detach(&ids, NULL);
}

static void expect_rows(sqlite3 *db, const char *text, const char *want)
{
	struct compiled c;
	char *got;

	compile_ok(text, &c);
	got = db_select(db, &c);
	if (!got)
		fail_msg("<%s>: SQLite rejected %s: %s", text, c.sq.buf, sqlite3_errmsg(db));
	if (strcmp(got, want) != 0)
		fail_msg("<%s>: rows %s, want %s (SQL %s)", text, got, want, c.sq.buf);
	free(got);
	compiled_free(&c);
}

static void test_sqlite_results(void **state)
{
	sqlite3 *db = *state;

	expect_rows(db, "pod_ns = 'prod'", "1,2");
	expect_rows(db, "pod_ns != 'prod'", "3,4,5");
	expect_rows(db, "process_id IN (100, 300)", "1,3");
	expect_rows(db, "process_id NOT IN (100, 300)", "2,4,5");
	expect_rows(db, "profile_value >= 20 AND profile_value < 40.5", "2,3,4");
	expect_rows(db, "time = 1000 AND process_id > -1", "1,2,3,4,5");
	/* LIKE is case-sensitive; _ is one character; \_ \% literal; GLOB syntax is literal. */
	expect_rows(db, "app_service LIKE 'my%'", "1");
	expect_rows(db, "app_service LIKE 'MySQL_'", "2");
	expect_rows(db, "app_service LIKE 'mysql%'", "1");
	expect_rows(db, "app_service LIKE 'MYSQL%'", "");
	expect_rows(db, "pod LIKE 'web_%'", "1,2,3");
	expect_rows(db, "pod LIKE 'web\\_%'", "3");
	expect_rows(db, "pod LIKE 'a\\%b'", "5");
	expect_rows(db, "pod LIKE 'a%b'", "5");
	expect_rows(db, "pod_ns LIKE 'x*y'", "5");
	expect_rows(db, "pod_ns LIKE 'x_y'", "5");
	expect_rows(db, "pod_ns LIKE '*'", "");
	expect_rows(db, "host LIKE 'h[1]'", "5");
	expect_rows(db, "host LIKE 'h?'", "");
	expect_rows(db, "pod NOT LIKE 'web%'", "4,5");
	expect_rows(db, "pod LIKE ''", "4");
	expect_rows(db, "app_service REGEXP '^my'", "1");
	expect_rows(db, "app_service REGEXP '^(my|ng)'", "1,3");
	expect_rows(db, "app_service = 'it''s'", "5");
	/* Tags: the name and the value must be in the same position of the two arrays. */
	expect_rows(db, "k8s.label.app = 'web'", "1");
	expect_rows(db, "tag.team = 'web'", "4");
	expect_rows(db, "tag.team = 'db'", "1");
	expect_rows(db, "`team` = 'db'", "1");
	expect_rows(db, "k8s.label.app != 'web'", "2,3,4,5");
	expect_rows(db, "k8s.label.app <> 'web'", "2,3,4,5");
	expect_rows(db, "NOT k8s.label.app = 'web'", "2,3,4,5");
	expect_rows(db, "NOT k8s.label.app != 'web'", "1");
	expect_rows(db, "k8s.label.app IN ('web', 'api')", "1,2");
	expect_rows(db, "k8s.label.app NOT IN ('web', 'api')", "3,4,5");
	expect_rows(db, "k8s.label.app LIKE 'a%'", "2");
	expect_rows(db, "k8s.label.app NOT LIKE 'a%'", "1,3,4,5");
	expect_rows(db, "k8s.label.app REGEXP 'i'", "2,5");
	expect_rows(db, "k8s.label.app = 'it''s'", "5");
	expect_rows(db, "k8s.label.app > 'b'", "1,5");
	expect_rows(db, "k8s.label.missing = ''", "");
	expect_rows(db, "k8s.label.missing != ''", "1,2,3,4,5");
	/* Precedence. */
	expect_rows(db, "pod_ns = 'dev' OR pod_ns = 'prod' AND process_id = 200", "2,3");
	expect_rows(db, "(pod_ns = 'dev' OR pod_ns = 'prod') AND process_id = 200", "2");
	expect_rows(db, "NOT pod_ns = 'prod' AND host = 'h1'", "3");
	expect_rows(db, "NOT (pod_ns = 'prod' AND host = 'h1')", "2,3,4,5");
	expect_rows(db, "host = 'h1' OR tag.team = 'web'", "1,3,4");
}

/* ---- injection corpus ----------------------------------------------------------------- */

static char *fixture_path(const char *rel)
{
	const char *top = getenv("EMBER_TOP");
	char exe[PATH_MAX], *path;
	ssize_t n;
	int i;

	if (top && asprintf(&path, "%s/%s", top, rel) > 0) {
		if (access(path, R_OK) == 0)
			return path;
		free(path);
	}
	/* The binary is TOP/BUILD/tests/test_tagfilter. */
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n > 0) {
		exe[n] = '\0';
		for (i = 0; i < 3; i++) {
			char *slash = strrchr(exe, '/');

			if (slash)
				*slash = '\0';
		}
		if (asprintf(&path, "%s/%s", exe, rel) > 0) {
			if (access(path, R_OK) == 0)
				return path;
			free(path);
		}
	}
	return strdup(rel);
}

/* Payloads, one per line, plus a few with control bytes that a text file keeps badly. */
static char **load_payloads(size_t *count)
{
	static const char *const extra[] = {"x'\n OR 1=1", "x\r\n' OR '1'='1", "\x1b[2J' OR 'a",
					    "\x7f'\x01", "' OR 1=1\t--\x0b"};
	char *path = fixture_path("tests/fixtures/injection.txt");
	FILE *f = fopen(path, "r");
	char **list = NULL, *line = NULL;
	size_t n = 0, cap = 0, i;
	ssize_t len;

	if (!f)
		fail_msg("cannot open %s", path);
	while ((len = getline(&line, &cap, f)) >= 0) {
		if (len > 0 && line[len - 1] == '\n')
			line[--len] = '\0';
		if (len == 0)
			continue;
		list = realloc(list, (n + 1) * sizeof(*list));
		list[n++] = strdup(line);
	}
	free(line);
	fclose(f);
	free(path);
	for (i = 0; i < sizeof(extra) / sizeof(extra[0]); i++) {
		list = realloc(list, (n + 1) * sizeof(*list));
		list[n++] = strdup(extra[i]);
	}
	*count = n;
	return list;
}

/* payload written as a string literal of the grammar: quote and backslash escaped. */
static void quote_literal(struct strbuf *sb, const char *s)
{
	sb_putc(sb, '\'');
	for (; *s; s++) {
		if (*s == '\'' || *s == '\\')
			sb_putc(sb, '\\');
		sb_putc(sb, *s);
	}
	sb_putc(sb, '\'');
}

static int word_in(const char *w, size_t len, const char *const *words)
{
	for (; *words; words++)
		if (strlen(*words) == len && memcmp(*words, w, len) == 0)
			return 1;
	return 0;
}

/*
 * Checks that SQL (ClickHouse: its skeleton, literals removed) consists only of the compiler's
 * own vocabulary: allow-listed columns, the keywords and functions it writes, numbers, '?',
 * '' (an emptied literal) and its punctuation. A payload that escaped its literal would show up
 * as a foreign word or byte here.
 */
static int sql_vocabulary_ok(const char *sql, enum tf_dialect d)
{
	static const char *const words[] = {"time",
					    "app_service",
					    "app_instance",
					    "profile_location_str",
					    "profile_value",
					    "profile_value_unit",
					    "profile_event_type",
					    "profile_language_type",
					    "profile_create_timestamp",
					    "profile_in_timestamp",
					    "process_id",
					    "process_start_time",
					    "host",
					    "agent",
					    "host_ip",
					    "container_id",
					    "pod_cluster",
					    "pod_ns",
					    "pod_node",
					    "pod",
					    "pod_group",
					    "trace_id",
					    "span_name",
					    "profile_id",
					    "compression_algo",
					    "tag_names",
					    "tag_values",
					    "AND",
					    "OR",
					    "NOT",
					    "IN",
					    NULL};
	static const char *const sqlite_words[] = {
	    "EXISTS", "SELECT", "FROM",	 "json_each", "n",    "JOIN",	"v",
	    "ON",     "key",	"value", "WHERE",     "GLOB", "REGEXP", NULL};
	static const char *const ch_words[] = {"has", "indexOf", "like", "notLike", "match", NULL};
	const char *p = sql;

	while (*p) {
		const char *s = p;

		if (*p == ' ' || *p == '(' || *p == ')' || *p == ',' || *p == '=') {
			p++;
		} else if (*p == '!' && p[1] == '=') {
			p += 2;
		} else if (*p == '<' || *p == '>') {
			p += p[1] == '=' ? 2 : 1;
		} else if (d == TF_SQLITE && (*p == '?' || *p == '.')) {
			p++;
		} else if (d == TF_CLICKHOUSE && (*p == '[' || *p == ']')) {
			p++;
		} else if (d == TF_CLICKHOUSE && p[0] == '\'' && p[1] == '\'') {
			p += 2;
		} else if ((*p == '-' && p[1] >= '0' && p[1] <= '9') || (*p >= '0' && *p <= '9')) {
			p++;
			while ((*p >= '0' && *p <= '9') || *p == '.' || *p == 'e' || *p == '+' ||
			       (*p == '-' && p[-1] == 'e'))
				p++;
		} else if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '_') {
			while ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '_' ||
			       (*p >= '0' && *p <= '9'))
				p++;
			if (!word_in(s, (size_t)(p - s), words) &&
			    !word_in(s, (size_t)(p - s), d == TF_SQLITE ? sqlite_words : ch_words))
				return 0;
		} else {
			return 0;
		}
	}
	return 1;
}

/* Filter text that must parse; its SQL must be exactly sq / the ClickHouse skeleton with every
 * literal equal to lit. Returns 0 if it did not parse (allowed only when may_fail). */
static int check_contained(sqlite3 *db, const char *text, const char *payload, int may_fail,
			   const char *sq, const char *skel_want, const char *sq_param)
{
	struct strbuf skel = STRBUF_INIT,
		      lits[4] = {STRBUF_INIT, STRBUF_INIT, STRBUF_INIT, STRBUF_INIT};
	struct tf_expr *expr;
	struct tf_error err;
	struct compiled c;
	char *got;
	int i, nl;

	if (tagfilter_parse(text, &expr, &err) != 0) {
		if (!may_fail)
			fail_msg("<%s> did not parse: %s", text, err.message);
		return 0;
	}
	tagfilter_free(expr);
	compile_ok(text, &c);
	assert_string_equal(c.sq.buf, sq);
	/* The payload is one parameter, byte for byte (sq_param: the one expected to hold it). */
	for (i = 0; i < (int)c.params.n; i++) {
		const struct tf_param *p = &c.params.items[i];

		if (p->type == TF_PARAM_TEXT && strlen(sq_param) == p->len &&
		    memcmp(p->text, sq_param, p->len) == 0)
			break;
	}
	if (i == (int)c.params.n)
		fail_msg("<%s>: no parameter holds the payload", text);
	nl = ch_split(c.ch.buf, &skel, lits, 4);
	if (nl < 1)
		fail_msg("<%s>: malformed ClickHouse SQL %s", text, c.ch.buf);
	assert_string_equal(skel.buf, skel_want);
	for (i = 0; i < nl; i++)
		if (strcmp(lits[i].buf, payload) == 0)
			break;
	if (i == nl)
		fail_msg("<%s>: no ClickHouse literal holds the payload: %s", text, c.ch.buf);
	got = db_select(db, &c);
	if (!got)
		fail_msg("<%s>: SQLite rejected %s: %s", text, c.sq.buf, sqlite3_errmsg(db));
	free(got);
	for (i = 0; i < 4; i++)
		sb_free(&lits[i]);
	sb_free(&skel);
	compiled_free(&c);
	return 1;
}

/* Arbitrary text: either a parse error, or SQL made only of the compiler's vocabulary, which
 * SQLite accepts. */
static int check_shape(sqlite3 *db, const char *text)
{
	struct strbuf skel = STRBUF_INIT, lits[64];
	struct tf_expr *expr;
	struct tf_error err;
	struct compiled c;
	char *got;
	int i;

	if (tagfilter_parse(text, &expr, &err) != 0) {
		assert_true(err.message[0] != '\0');
		return 0;
	}
	tagfilter_free(expr);
	compile_ok(text, &c);
	if (!sql_vocabulary_ok(c.sq.buf, TF_SQLITE))
		fail_msg("<%s>: foreign SQLite SQL %s", text, c.sq.buf);
	for (i = 0; i < 64; i++)
		lits[i] = (struct strbuf)STRBUF_INIT;
	if (ch_split(c.ch.buf, &skel, lits, 64) < 0)
		fail_msg("<%s>: malformed ClickHouse SQL %s", text, c.ch.buf);
	if (!sql_vocabulary_ok(skel.buf, TF_CLICKHOUSE))
		fail_msg("<%s>: foreign ClickHouse SQL %s", text, skel.buf);
	got = db_select(db, &c);
	if (!got)
		fail_msg("<%s>: SQLite rejected %s: %s", text, c.sq.buf, sqlite3_errmsg(db));
	free(got);
	for (i = 0; i < 64; i++)
		sb_free(&lits[i]);
	sb_free(&skel);
	compiled_free(&c);
	return 1;
}

static void test_injection_corpus(void **state)
{
	sqlite3 *db = *state;
	size_t n, i, parsed_raw = 0, parsed_whole = 0, parsed_like = 0, parsed_re = 0;
	char **payloads = load_payloads(&n);
	sqlite3_stmt *st;

	assert_true(n >= 100);
	for (i = 0; i < n; i++) {
		const char *pl = payloads[i];
		struct strbuf t = STRBUF_INIT;
		struct compiled c;
		char *got;

		/* 1. As a properly quoted value: one parameter, one literal, no row matches. */
		sb_puts(&t, "pod = ");
		quote_literal(&t, pl);
		check_contained(db, t.buf, pl, 0, "(pod = ?)", "(pod = '')", pl);
		compile_ok(t.buf, &c);
		got = db_select(db, &c);
		assert_string_equal(got, "");
		free(got);
		compiled_free(&c);

		/* 2. As a tag value and as a backquoted tag name. */
		sb_reset(&t);
		sb_puts(&t, "k8s.label.app != ");
		quote_literal(&t, pl);
		check_contained(db, t.buf, pl, 0, "(NOT EXISTS (" TAG_SUBQ "v.value = ?))",
				"(NOT (has(tag_names, '') AND tag_values[indexOf(tag_names, '')] = "
				"''))",
				pl);
		if (!tagfilter_field_known(pl) && strncmp(pl, "tag.", 4) != 0) {
			const char *q;

			sb_reset(&t);
			sb_putc(&t, '`');
			for (q = pl; *q; q++) {
				if (*q == '`')
					sb_putc(&t, '`');
				sb_putc(&t, *q);
			}
			sb_puts(&t, "` IN ('x')");
			check_contained(
			    db, t.buf, pl, 0, "(EXISTS (" TAG_SUBQ "v.value IN (?)))",
			    "(has(tag_names, '') AND tag_values[indexOf(tag_names, '')] "
			    "IN (''))",
			    pl);
		}

		/* 3. As a LIKE pattern and a REGEXP (either may be rejected as a pattern). */
		sb_reset(&t);
		sb_puts(&t, "pod NOT LIKE ");
		quote_literal(&t, pl);
		{
			struct compiled lc;

			if (parse_status(t.buf, NULL) == 0) {
				parsed_like++;
				compile_ok(t.buf, &lc);
				assert_string_equal(lc.sq.buf, "(pod NOT GLOB ?)");
				assert_true(sql_vocabulary_ok(lc.sq.buf, TF_SQLITE));
				compiled_free(&lc);
				check_shape(db, t.buf);
			}
		}
		sb_reset(&t);
		sb_puts(&t, "pod REGEXP ");
		quote_literal(&t, pl);
		parsed_re += (size_t)check_contained(db, t.buf, pl, 1, "(pod REGEXP ?)",
						     "(match(pod, ''))", pl);

		/* 4. Spliced raw into a filter, the way DeepFlow pastes text into SQL. */
		sb_reset(&t);
		sb_puts(&t, "pod = '");
		sb_puts(&t, pl);
		sb_puts(&t, "'");
		parsed_raw += (size_t)check_shape(db, t.buf);
		sb_reset(&t);
		sb_puts(&t, "app_service = 'x' AND (pod = '");
		sb_puts(&t, pl);
		sb_puts(&t, "')");
		parsed_raw += (size_t)check_shape(db, t.buf);

		/* 5. As the whole filter. */
		parsed_whole += (size_t)check_shape(db, pl);
		sb_free(&t);
	}
	/* Nothing was dropped, altered or added. */
	assert_int_equal(sqlite3_prepare_v2(db,
					    "SELECT count(*), sum(profile_value) FROM in_process",
					    -1, &st, NULL),
			 SQLITE_OK);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	assert_int_equal(sqlite3_column_int(st, 0), N_ROWS);
	assert_int_equal(sqlite3_column_int(st, 1), 150);
	sqlite3_finalize(st);
	/* The corpus exercises both outcomes: most raw splices are rejected, some parse. */
	print_message("injection: %zu payloads; raw splices parsed %zu/%zu, whole-filter parsed "
		      "%zu, LIKE %zu, REGEXP %zu\n",
		      n, parsed_raw, 2 * n, parsed_whole, parsed_like, parsed_re);
	assert_true(parsed_raw > 0 && parsed_raw < 2 * n);
	for (i = 0; i < n; i++)
		free(payloads[i]);
	free(payloads);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_empty),
	    cmocka_unit_test(test_comparisons),
	    cmocka_unit_test(test_in_like_regexp),
	    cmocka_unit_test(test_regexp_accepted),
	    cmocka_unit_test(test_strings),
	    cmocka_unit_test(test_tags),
	    cmocka_unit_test(test_aliases_and_keywords),
	    cmocka_unit_test(test_precedence),
	    cmocka_unit_test(test_errors),
	    cmocka_unit_test(test_error_long_name_truncated),
	    cmocka_unit_test(test_limits),
	    cmocka_unit_test(test_flat_chain_compiles),
	    cmocka_unit_test(test_field_known),
	    cmocka_unit_test(test_compile_args),
	    cmocka_unit_test(test_ch_literal_all_bytes),
	    cmocka_unit_test_setup_teardown(test_sqlite_results, db_setup, db_teardown),
	    cmocka_unit_test_setup_teardown(test_injection_corpus, db_setup, db_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
