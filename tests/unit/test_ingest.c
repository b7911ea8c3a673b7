/*
 * test_ingest — the server half of the ingest protocol, ingest_decode(), on the edges the fuzz
 * target (fuzz/fuzz_ingest.c) found: a batch is either refused with a message naming the row
 * and the field, or accepted with every default filled in and no arithmetic overflow. And the
 * streaming decoder itself: escapes, syntax errors with line and column, the order in which
 * errors are reported, the shared stack dictionary, and its bounds.
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

#include "server/ingest.h"

/* A batch of two rows; the second row's time is the text given. */
static int test_decode_time(const char *time, struct ingest_batch *b, struct strbuf *err)
{
	char json[512];

	snprintf(json, sizeof(json),
		 "{\"version\":1,\"batch_id\":\"node1-4711-000042\",\"stacks\":[\"ts\"],"
		 "\"rows\":[{\"time\":1764064801,\"app_service\":\"nginx\",\"stack\":0,"
		 "\"profile_value\":10101},{\"time\":%s,\"app_service\":\"Total\","
		 "\"profile_location_str\":\"[p] nginx;[t] worker\",\"profile_value\":20202}]}",
		 time);
	return ingest_decode(json, strlen(json), 10, 42, b, err);
}

/* Found by fuzz_ingest: time * 10^6 (the default create timestamp) overflowed int64 (UBSan). */
static void test_time_too_large_is_refused(void **state)
{
	struct strbuf err = STRBUF_INIT;
	struct ingest_batch b;

	assert_int_equal(test_decode_time("176401764064800", &b, &err), -EINVAL);
	assert_non_null(strstr(err.buf, "row 1: field 'time': too large"));
	assert_null(b.rows);
	assert_int_equal(b.n, 0);
	sb_reset(&err);
	assert_int_equal(test_decode_time("9223372036855", &b, &err), -EINVAL);
	assert_non_null(strstr(err.buf, "row 1: field 'time'"));
	sb_reset(&err);
	assert_int_equal(test_decode_time("9223372036854775807", &b, &err), -EINVAL);
	assert_non_null(strstr(err.buf, "row 1: field 'time'"));
	sb_free(&err);
}

static void test_time_largest_accepted(void **state)
{
	struct strbuf err = STRBUF_INIT;
	struct ingest_batch b;

	if (test_decode_time("9223372036854", &b, &err) != 0)
		fail_msg("ingest_decode: %s", err.buf);
	assert_int_equal(b.n, 2);
	assert_int_equal(b.rows[1].time, 9223372036854ll);
	assert_int_equal(b.rows[1].profile_create_timestamp, 9223372036854000000ll);
	assert_int_equal(b.rows[0].profile_create_timestamp, 1764064801000000ll);
	assert_int_equal(b.rows[1].profile_in_timestamp, 42);
	assert_string_equal(b.rows[0].profile_location_str, "ts");
	ingest_batch_free(&b);
	sb_free(&err);
}

static void test_time_not_positive_is_refused(void **state)
{
	struct strbuf err = STRBUF_INIT;
	struct ingest_batch b;

	assert_int_equal(test_decode_time("0", &b, &err), -EINVAL);
	assert_non_null(strstr(err.buf, "row 1: field 'time': must be unix seconds > 0"));
	sb_reset(&err);
	assert_int_equal(test_decode_time("-9223372036854775808", &b, &err), -EINVAL);
	assert_non_null(strstr(err.buf, "row 1: field 'time': must be unix seconds > 0"));
	sb_free(&err);
}


/* Decodes text into b; fails the test with the message if it is refused. */
static void test_decode_ok(const char *text, size_t max_rows, struct ingest_batch *b)
{
	struct strbuf err = STRBUF_INIT;

	if (ingest_decode(text, strlen(text), max_rows, 42, b, &err) != 0)
		fail_msg("ingest_decode: %s", err.buf);
	sb_free(&err);
}

/* Expects a refusal whose message contains want. */
static void test_decode_refused(const char *text, size_t max_rows, const char *want)
{
	struct strbuf err = STRBUF_INIT;
	struct ingest_batch b;

	assert_int_equal(ingest_decode(text, strlen(text), max_rows, 42, &b, &err), -EINVAL);
	if (!strstr(err.buf, want))
		fail_msg("expected '%s' in '%s'", want, err.buf);
	assert_null(b.rows);
	assert_null(b.json);
	assert_int_equal(b.n, 0);
	sb_free(&err);
}

#define HDR "{\"version\":1,\"batch_id\":\"b1\","
#define ROW(extra) "{\"time\":5,\"app_service\":\"svc\",\"profile_value\":1" extra "}"

/* Every JSON escape, \u escapes and a surrogate pair become UTF-8; raw UTF-8 passes. */
static void test_string_escapes(void **state)
{
	struct ingest_batch b;

	test_decode_ok(HDR "\"host\":\"h\\u00e9\\u20ac\\ud83d\\ude00\xc3\xa9\","
			   "\"rows\":[" ROW(",\"profile_location_str\":\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\te\"")
			   "]}",
		       10, &b);
	assert_int_equal(b.n, 1);
	assert_string_equal(b.rows[0].host, "h\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xc3\xa9");
	assert_string_equal(b.rows[0].profile_location_str, "a\"b\\c/d\b\f\n\r\te");
	assert_string_equal(b.batch_id, "b1");
	ingest_batch_free(&b);
}

static void test_bad_strings_are_syntax_errors(void **state)
{
	test_decode_refused(HDR "\"host\":\"\\u0000\"}", 10, "\\u0000 is not allowed");
	test_decode_refused(HDR "\"host\":\"\\ud83d\"}", 10, "no low surrogate");
	test_decode_refused(HDR "\"host\":\"\\ude00\"}", 10, "invalid Unicode");
	test_decode_refused(HDR "\"host\":\"\\x\"}", 10, "invalid escape");
	test_decode_refused(HDR "\"host\":\"\\u12g4\"}", 10, "invalid \\u escape");
	test_decode_refused(HDR "\"host\":\"a\xff\"}", 10, "unable to decode byte 0xff");
	test_decode_refused(HDR "\"host\":\"\xc0\xaf\"}", 10, "unable to decode byte 0xc0");
	test_decode_refused(HDR "\"host\":\"a\tb\"}", 10, "control character 0x9");
	test_decode_refused(HDR "\"host\":\"abc", 10, "premature end of input");
}

/* Syntax errors name the line and column of the offending character. */
static void test_syntax_error_line_column(void **state)
{
	test_decode_refused("{\"version\":1,\n\"batch_id\":\"b1\",\n  \"rows\": [}\n", 10,
			    "invalid JSON at line 3, column 12: ");
	test_decode_refused("{\"version\":1} x", 10, "invalid JSON at line 1, column 15: end of file");
	test_decode_refused("", 10, "invalid JSON at line 1, column 1: ");
	test_decode_refused("\"str\"", 10, "'[' or '{' expected");
	test_decode_refused("[1,2]", 10, "the batch must be a JSON object, got an array");
	test_decode_refused(HDR "\"rows\":[" ROW(",\"process_id\":99999999999999999999") "]}", 10,
			    "too big integer");
	test_decode_refused(HDR "\"rows\":[" ROW(",\"process_id\":01") "]}", 10, "invalid token");
}

/* A syntax error anywhere wins over a refused row; a batch field wins over a row. */
static void test_error_order(void **state)
{
	test_decode_refused(HDR "\"rows\":[{\"time\":\"x\"}], \"x\":tru}", 10, "invalid JSON");
	test_decode_refused("{\"rows\":[{\"time\":\"x\"}],\"batch_id\":\"b1\"}", 10,
			    "batch field 'version'");
	test_decode_refused(HDR "\"rows\":[{\"bogus\":[1,{\"a\":2}]}],\"zz\":1}", 10,
			    "unknown batch field 'zz'");
	test_decode_refused(HDR "\"rows\":[" ROW(",\"profile_location_str\":\"s\"") ",{\"time\":1.5}]}", 10,
			    "row 1: field 'time': expected an integer, got a fractional number");
	test_decode_refused(HDR "\"rows\":[" ROW(",\"profile_location_str\":\"s\"") ",{\"bogus\":1}]}",
			    10,
			    "row 1: unknown field 'bogus'");
	test_decode_refused(HDR "\"rows\":[" ROW(",\"stack\":0") "]}", 10,
			    "row 0: field 'stack': index 0 is outside 'stacks' (0 entries)");
	test_decode_refused(HDR "\"rows\":[" ROW("") "]}", 10,
			    "row 0: field 'profile_location_str': missing (or 'stack')");
	test_decode_refused(HDR "\"rows\":[" ROW(",\"stack\":0,\"time\":6") "],\"stacks\":[\"a\"]}",
			    10, "row 0: duplicate field 'time'");
	test_decode_refused(HDR "\"stacks\":[\"a\",2],\"rows\":[" ROW(",\"stack\":0") "]}", 10,
			    "stacks[1]: expected a string");
	test_decode_refused(HDR "\"rows\":[" ROW(",\"stack\":0") "," ROW(",\"stack\":0") ","
			    ROW(",\"stack\":0") "],\"stacks\":[\"a\"]}",
			    2, "batch field 'rows': 3 rows; a batch holds 1 to 2 rows");
	test_decode_refused(HDR "\"rows\":[]}", 2, "batch field 'rows': 0 rows");
	test_decode_refused(HDR "\"rows\":[" ROW(",\"stack\":0,\"tags\":{\"a\":\"1\",\"a\":\"2\"}")
			    "],\"stacks\":[\"a\"]}",
			    10, "row 0: field 'tags': duplicate tag 'a'");
	test_decode_refused(HDR "\"rows\":[" ROW(",\"stack\":0,\"tags\":{\"a\":1}") "],\"stacks\":[\"a\"]}",
			    10, "row 0: field 'tags': tag 'a': expected a string, got an integer");
	test_decode_refused(HDR "\"rows\":[" ROW(",\"stack\":0,\"tags\":[]") "],\"stacks\":[\"a\"]}",
			    10, "row 0: field 'tags': expected an object of strings, got an array");
}

/* Rows naming one dictionary entry share one string (the store memoizes by address), even when
 * the stacks come after the rows; tags land on their own row. */
static void test_stack_dictionary_shared(void **state)
{
	struct ingest_batch b;

	test_decode_ok(HDR "\"rows\":[" ROW(",\"stack\":1,\"tags\":{\"k\":\"v\",\"k2\":\"w\"}") ","
			   ROW(",\"stack\":0") "," ROW(",\"stack\":1,\"tags\":{\"z\":\"\"}") "],"
			   "\"stacks\":[\"[p] a;main\",\"[p] b;main\"],\"host\":\"n1\"}",
		       10, &b);
	assert_int_equal(b.n, 3);
	assert_string_equal(b.rows[0].profile_location_str, "[p] b;main");
	assert_string_equal(b.rows[1].profile_location_str, "[p] a;main");
	assert_ptr_equal(b.rows[0].profile_location_str, b.rows[2].profile_location_str);
	assert_int_equal(b.rows[0].n_tags, 2);
	assert_string_equal(b.rows[0].tag_names[1], "k2");
	assert_string_equal(b.rows[0].tag_values[1], "w");
	assert_int_equal(b.rows[1].n_tags, 0);
	assert_int_equal(b.rows[2].n_tags, 1);
	assert_string_equal(b.rows[2].tag_names[0], "z");
	assert_string_equal(b.rows[2].tag_values[0], "");
	assert_string_equal(b.rows[2].host, "n1");
	assert_string_equal(b.rows[2].agent, "");
	assert_string_equal(b.rows[2].app_instance, "svc");
	ingest_batch_free(&b);
}

/* Nesting beyond INGEST_MAX_DEPTH is refused without recursing further. */
static void test_depth_bounded(void **state)
{
	char text[4096];
	size_t n = 0;

	n += (size_t)snprintf(text, sizeof(text), "{\"x\":");
	for (int k = 0; k < 1000; k++)
		text[n++] = '[';
	text[n] = 0;
	test_decode_refused(text, 10, "maximum nesting depth");
}

/* Every proper prefix of a valid batch is refused and read only inside its bytes (found by
 * fuzz_ingest: a truncated compound value read one byte past the body; ASan run catches it). */
static void test_truncated_input_stays_inside(void **state)
{
	static const char full[] = HDR "\"x\":[1,{\"a\":[true,null]}],\"stacks\":[\"s\\u00e9\"],"
				       "\"rows\":[" ROW(",\"stack\":0,\"tags\":{\"k\":\"v\"}") "]}";
	struct strbuf err = STRBUF_INIT;
	struct ingest_batch b;

	for (size_t len = 0; len < sizeof(full) - 1; len++) {
		char *copy = malloc(len ? len : 1);

		assert_non_null(copy);
		memcpy(copy, full, len);
		assert_int_equal(ingest_decode(copy, len, 10, 42, &b, &err), -EINVAL);
		assert_non_null(strstr(err.buf, "invalid JSON at line 1"));
		sb_reset(&err);
		free(copy);
	}
	sb_free(&err);
}

/* Many rows whose size changes mid-batch (the row count is estimated from the first ones):
 * every row is kept, in order, up to exactly max_rows. */
static void test_many_rows_sizes_vary(void **state)
{
	struct strbuf text = STRBUF_INIT;
	struct ingest_batch b;

	sb_puts(&text, HDR "\"stacks\":[\"a\"],\"rows\":[");
	for (int i = 0; i < 5000; i++)
		sb_printf(&text, "%s{\"time\":%d,\"app_service\":\"s\",\"stack\":0,\"profile_value\":%d%s}",
			  i ? "," : "", i + 1, i,
			  i < 1500 ? ",\"trace_id\":\"0123456789abcdef0123456789abcdef\"" : "");
	sb_puts(&text, "]}");
	test_decode_ok(text.buf, 5000, &b);
	assert_int_equal(b.n, 5000);
	for (int i = 0; i < 5000; i++) {
		assert_int_equal(b.rows[i].time, i + 1);
		assert_int_equal(b.rows[i].profile_value, i);
		assert_ptr_equal(b.rows[i].profile_location_str, b.rows[0].profile_location_str);
	}
	ingest_batch_free(&b);
	test_decode_refused(text.buf, 4999, "5000 rows; a batch holds 1 to 4999 rows");
	sb_free(&text);
}

/* Equal short row strings share one pointer per batch (the store recognises a repeated context
 * by its pointers); escaped keys and values still decode; more distinct strings than the shared
 * table holds are all kept, each with its own text. */
static void test_short_strings_shared(void **state)
{
	struct strbuf text = STRBUF_INIT;
	struct ingest_batch b;

	test_decode_ok(HDR "\"stacks\":[\"a\"],\"rows\":["
			   ROW(",\"stack\":0,\"pod\":\"p1\"") ","
			   "{\"ti\\u006de\":7,\"app_service\":\"sv\\u0063\",\"profile_value\":2,"
			   "\"stack\":0,\"pod\":\"p1\"}," ROW(",\"stack\":0,\"pod\":\"p2\"") "]}",
		       10, &b);
	assert_int_equal(b.n, 3);
	assert_int_equal(b.rows[1].time, 7);
	assert_string_equal(b.rows[1].app_service, "svc");
	assert_ptr_equal(b.rows[0].app_service, b.rows[2].app_service);
	assert_ptr_equal(b.rows[0].pod, b.rows[1].pod);
	assert_string_equal(b.rows[2].pod, "p2");
	ingest_batch_free(&b);
	test_decode_ok(HDR "\"stacks\":[\"a\"],\"rows\":["
			   ROW(",\"stack\":0,\"tags\":{\"k\":\"v\",\"j\":\"w\"}") ","
			   ROW(",\"stack\":0,\"tags\":{\"k\":\"v\",\"j\":\"x\"}") "]}",
		       10, &b);
	assert_ptr_equal(b.rows[0].tag_names[0], b.rows[1].tag_names[0]);
	assert_ptr_equal(b.rows[0].tag_values[0], b.rows[1].tag_values[0]);
	assert_ptr_equal(b.rows[0].tag_names[1], b.rows[1].tag_names[1]);
	assert_string_equal(b.rows[0].tag_names[1], "j");
	assert_string_equal(b.rows[0].tag_values[1], "w");
	assert_string_equal(b.rows[1].tag_values[1], "x");
	ingest_batch_free(&b);
	test_decode_refused(HDR "\"rows\":[{\"b\\u006fgus\":1}]}", 10,
			    "row 0: unknown field 'bogus'");

	sb_puts(&text, HDR "\"stacks\":[\"a\"],\"rows\":[");
	for (int i = 0; i < 10000; i++)
		sb_printf(&text, "%s{\"time\":1,\"app_service\":\"s%d\",\"stack\":0,"
			  "\"profile_value\":0,\"pod\":\"p%d\"}", i ? "," : "", i, i % 7);
	sb_puts(&text, "]}");
	test_decode_ok(text.buf, 10000, &b);
	assert_int_equal(b.n, 10000);
	for (int i = 0; i < 10000; i++) {
		char want[16];

		snprintf(want, sizeof(want), "s%d", i);
		assert_string_equal(b.rows[i].app_service, want);
		assert_ptr_equal(b.rows[i].pod, b.rows[i % 7].pod);
	}
	ingest_batch_free(&b);
	sb_free(&text);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_time_too_large_is_refused),
		cmocka_unit_test(test_time_largest_accepted),
		cmocka_unit_test(test_time_not_positive_is_refused),
		cmocka_unit_test(test_string_escapes),
		cmocka_unit_test(test_bad_strings_are_syntax_errors),
		cmocka_unit_test(test_syntax_error_line_column),
		cmocka_unit_test(test_error_order),
		cmocka_unit_test(test_stack_dictionary_shared),
		cmocka_unit_test(test_depth_bounded),
		cmocka_unit_test(test_truncated_input_stays_inside),
		cmocka_unit_test(test_many_rows_sizes_vary),
		cmocka_unit_test(test_short_strings_shared),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
