/*
 * test_uuid5 — UUIDv5 (OID namespace) against vectors computed with Python's
 * uuid.uuid5(uuid.NAMESPACE_OID, s), one-shot and incremental over stack prefixes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "common/uuid5.h"

struct vector {
	const char *name;
	const char *id;
};

static const struct vector vectors[] = {
    /* spec §2.3: the seed's Total example */
    {"[p] process-exporte", "9d3c5fd3-4cd2-5d04-be22-e0f27144f638"},
    {"[p] deepflow-agent", "1762633e-a955-5c80-a5be-22529903b0bf"},
    {"[p] deepflow-agent;[t] stats-collector", "99e8ce53-e3bf-5b33-a63d-aa47e00e2ff4"},
    {"[t] tokio-runtime-w", "c04e2efa-f59e-5810-8f0c-b5d4d3074b37"},
    {"[t] tokio-runtime-w;start_thread", "3825c90e-0982-5dc8-8150-9a970fb5b72e"},
    {"deepflow-agent", "db789fda-d75f-5ed4-9c18-0d32ccac1268"},
    {"Total", "2087878d-ba84-5370-909e-f76d0db8d9dd"},
    {"", "0a68eb57-c88a-5f34-9e9d-27f85e68af4f"},
    /* spec §2.4 */
    {"[t] tokio-runtime-w;start_thread;main_loop", "47f9cf06-29d7-5c08-9fdb-895647d4447a"},
    {"[t] tokio-runtime-w;start_thread;main_loop;[k] entry_SYSCALL_64",
     "3dc5f091-df4b-5f21-a21b-91fd09354ac7"},
    {"[t] tokio-runtime-w;start_thread;main_loop;[k] entry_SYSCALL_64;[k] do_syscall_64",
     "81cc4d30-3f03-5576-9c6e-20f080b7c970"},
    {"[t] tokio-runtime-w;start_thread;main_loop;parse", "b5228a31-5138-54b7-8702-e1aef9b8a43d"},
    {"[p] deepflow-agent;main", "432d0931-6d0d-5e34-978c-7f61123011f1"},
    {"[p] deepflow-agent;main;run", "6ac3e7f3-fc6c-57b0-8e89-c5de094231ea"},
    /* more, from Python */
    {"a;b;c", "c4de3245-8ab3-5bf7-99fe-8243c2077898"},
    {"a;", "6093b5a0-76b9-531c-9137-6741290421b4"},
    {"[t] w;f\xc3\xbcr;\xe6\x97\xa5\xe6\x9c\xac", "2b3528b4-07a4-591a-ae0d-d8432fba047a"},
};

static void test_uuid5_vectors(void **state)
{
	char out[UUID5_STR_LEN + 1];

	for (size_t i = 0; i < sizeof(vectors) / sizeof(vectors[0]); i++) {
		assert_int_equal(uuid5_oid(vectors[i].name, strlen(vectors[i].name), out), 0);
		assert_string_equal(out, vectors[i].id);
	}
}

/* 200 bytes cross several SHA-1 blocks. */
static void test_uuid5_long_name(void **state)
{
	char name[200], out[UUID5_STR_LEN + 1];

	memset(name, 'x', sizeof(name));
	assert_int_equal(uuid5_oid(name, sizeof(name), out), 0);
	assert_string_equal(out, "a4820d40-cb19-5c7e-8ef3-e16d7d1d063a");
}

/* Prefix contexts copied and extended give the same ids as hashing each prefix from scratch. */
static void test_uuid5_incremental(void **state)
{
	struct uuid5_ctx base = {NULL}, step = {NULL};
	uint8_t id[UUID5_BYTES];
	char out[UUID5_STR_LEN + 1];

	assert_int_equal(uuid5_init(&base), 0);
	assert_int_equal(uuid5_update(&base, "[t] tokio-runtime-w", 19), 0);
	assert_int_equal(uuid5_copy(&step, &base), 0);
	assert_int_equal(uuid5_final(&step, id), 0);
	uuid5_format(id, out);
	assert_string_equal(out, "c04e2efa-f59e-5810-8f0c-b5d4d3074b37");

	assert_int_equal(uuid5_update(&base, ";start_thread", 13), 0);
	assert_int_equal(uuid5_copy(&step, &base), 0);
	assert_int_equal(uuid5_final(&step, id), 0);
	uuid5_format(id, out);
	assert_string_equal(out, "3825c90e-0982-5dc8-8150-9a970fb5b72e");

	/* two branches off the same prefix */
	assert_int_equal(uuid5_update(&base, ";main_loop", 10), 0);
	assert_int_equal(uuid5_copy(&step, &base), 0);
	assert_int_equal(uuid5_update(&step, ";parse", 6), 0);
	assert_int_equal(uuid5_final(&step, id), 0);
	uuid5_format(id, out);
	assert_string_equal(out, "b5228a31-5138-54b7-8702-e1aef9b8a43d");
	assert_int_equal(uuid5_copy(&step, &base), 0);
	assert_int_equal(uuid5_update(&step, ";[k] entry_SYSCALL_64", 21), 0);
	assert_int_equal(uuid5_final(&step, id), 0);
	uuid5_format(id, out);
	assert_string_equal(out, "3dc5f091-df4b-5f21-a21b-91fd09354ac7");

	/* a spent context can be re-initialised */
	assert_int_equal(uuid5_init(&step), 0);
	assert_int_equal(uuid5_update(&step, "Total", 5), 0);
	assert_int_equal(uuid5_final(&step, id), 0);
	uuid5_format(id, out);
	assert_string_equal(out, "2087878d-ba84-5370-909e-f76d0db8d9dd");

	uuid5_free(&base);
	uuid5_free(&step);
	assert_null(base.md);
}

static void test_uuid5_format_bits(void **state)
{
	const uint8_t id[UUID5_BYTES] = {0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x56, 0x77,
					 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff};
	char out[UUID5_STR_LEN + 1];

	uuid5_format(id, out);
	assert_string_equal(out, "00112233-4455-5677-8899-aabbccddeeff");
	assert_int_equal(strlen(out), UUID5_STR_LEN);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_uuid5_vectors),
	    cmocka_unit_test(test_uuid5_long_name),
	    cmocka_unit_test(test_uuid5_incremental),
	    cmocka_unit_test(test_uuid5_format_bits),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
