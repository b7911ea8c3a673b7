/*
 * test_ingest — the server half of the ingest protocol, ingest_decode(), on the edges the fuzz
 * target (fuzz/fuzz_ingest.c) found: a batch is either refused with a message naming the row
 * and the field, or accepted with every default filled in and no arithmetic overflow.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
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

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_time_too_large_is_refused),
		cmocka_unit_test(test_time_largest_accepted),
		cmocka_unit_test(test_time_not_positive_is_refused),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
