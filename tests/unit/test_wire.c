/*
 * test_wire — the client half of the ingest protocol: every encoded batch is parsed back with
 * jansson and checked field by field against docs/protocol.md; zstd round trips, caps and
 * corrupt frames.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>
#include <zstd.h>

#include "common/wire.h"
#include "server/ingest.h"

static const struct wire_batch_hdr test_hdr = {"node1-00c0ffee-000001", "node1",
					       "ember-agent@node1", "10.1.2.3"};

static json_t *test_encode_parse(const struct wire_batch_hdr *hdr, const struct profile_row *rows,
				 size_t n)
{
	struct strbuf sb = STRBUF_INIT;
	json_error_t jerr;
	json_t *root;

	assert_int_equal(wire_encode(hdr, rows, n, &sb), 0);
	root = json_loadb(sb.buf, sb.len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root)
		fail_msg("encoded batch is not JSON: %s: %s", jerr.text, sb.buf);
	sb_free(&sb);
	return root;
}

static json_t *test_row(json_t *root, size_t i)
{
	json_t *r = json_array_get(json_object_get(root, "rows"), i);

	assert_non_null(r);
	return r;
}

static const char *test_row_stack(json_t *root, size_t i)
{
	json_t *idx = json_object_get(test_row(root, i), "stack");

	assert_true(json_is_integer(idx));
	assert_null(json_object_get(test_row(root, i), "profile_location_str"));
	return json_string_value(json_array_get(json_object_get(root, "stacks"),
						(size_t)json_integer_value(idx)));
}

static void test_encode_header_and_dedupe(void **state)
{
	struct profile_row rows[4] = {
		{.time = 1764064800, .app_service = "nginx", .profile_location_str = "[p] nginx;a;b",
		 .profile_value = 10101},
		{.time = 1764064800, .app_service = "Total", .profile_location_str = "[p] nginx;a;c",
		 .profile_value = 3},
		{.time = 1764064801, .app_service = "nginx", .profile_location_str = "[p] nginx;a;b",
		 .profile_value = 0},
		{.time = 1764064801, .app_service = "Total", .profile_location_str = "[p] nginx;a;c",
		 .profile_value = 4},
	};
	json_t *root = test_encode_parse(&test_hdr, rows, 4);

	assert_int_equal(json_integer_value(json_object_get(root, "version")), 1);
	assert_string_equal(json_string_value(json_object_get(root, "batch_id")),
			    test_hdr.batch_id);
	assert_string_equal(json_string_value(json_object_get(root, "host")), "node1");
	assert_string_equal(json_string_value(json_object_get(root, "agent")), "ember-agent@node1");
	assert_string_equal(json_string_value(json_object_get(root, "host_ip")), "10.1.2.3");
	assert_int_equal(json_array_size(json_object_get(root, "stacks")), 2);
	assert_int_equal(json_array_size(json_object_get(root, "rows")), 4);
	for (size_t i = 0; i < 4; i++) {
		json_t *r = test_row(root, i);

		assert_string_equal(test_row_stack(root, i), rows[i].profile_location_str);
		assert_int_equal(json_integer_value(json_object_get(r, "time")), rows[i].time);
		assert_int_equal(json_integer_value(json_object_get(r, "profile_value")),
				 rows[i].profile_value);
		assert_string_equal(json_string_value(json_object_get(r, "app_service")),
				    rows[i].app_service);
		/* Everything else is at its default, so nothing else is sent. */
		assert_int_equal(json_object_size(r), 4);
	}
	json_decref(root);
}

static void test_encode_defaults_omitted(void **state)
{
	const char *tn[] = {"k8s.label.app", "team"};
	const char *tv[] = {"web", "a\"b"};
	struct profile_row rows[3] = {
		/* Every field explicitly at its protocol default: only the required ones remain. */
		{.time = 100, .app_service = "app", .app_instance = "app", .profile_location_str = "s",
		 .profile_value = 1, .profile_value_unit = "microseconds",
		 .profile_event_type = "on-cpu", .profile_language_type = "eBPF",
		 .profile_create_timestamp = 100000000, .host = "node1", .agent = "ember-agent@node1",
		 .host_ip = "10.1.2.3", .container_id = "", .pod = ""},
		/* A memory event: bytes is its default unit, microseconds is not. */
		{.time = 100, .app_service = "app", .profile_location_str = "s", .profile_value = 2,
		 .profile_event_type = "mem-alloc", .profile_value_unit = "bytes"},
		/* Everything differs from the defaults. */
		{.time = 101, .app_service = "app", .app_instance = "inst", .profile_location_str = "t",
		 .profile_value = 3, .profile_value_unit = "bytes", .profile_event_type = "off-cpu",
		 .profile_language_type = "Golang", .profile_create_timestamp = 101000005,
		 .process_id = 4711, .process_start_time = 1764060000123, .host = "other",
		 .agent = "a2", .host_ip = "::1", .container_id = "c1", .pod_cluster = "pc",
		 .pod_ns = "ns", .pod_node = "pn", .pod = "p", .pod_group = "pg", .trace_id = "tr",
		 .span_name = "sp", .profile_id = "pid", .n_tags = 2, .tag_names = tn,
		 .tag_values = tv},
	};
	json_t *root = test_encode_parse(&test_hdr, rows, 3);
	json_t *r0 = test_row(root, 0), *r1 = test_row(root, 1), *r2 = test_row(root, 2);
	json_t *tags;

	assert_int_equal(json_object_size(r0), 4);
	assert_int_equal(json_object_size(r1), 5);
	assert_string_equal(json_string_value(json_object_get(r1, "profile_event_type")),
			    "mem-alloc");
	assert_null(json_object_get(r1, "profile_value_unit"));

	assert_string_equal(json_string_value(json_object_get(r2, "app_instance")), "inst");
	assert_string_equal(json_string_value(json_object_get(r2, "profile_value_unit")), "bytes");
	assert_string_equal(json_string_value(json_object_get(r2, "profile_event_type")), "off-cpu");
	assert_string_equal(json_string_value(json_object_get(r2, "profile_language_type")),
			    "Golang");
	assert_int_equal(json_integer_value(json_object_get(r2, "profile_create_timestamp")),
			 101000005);
	assert_int_equal(json_integer_value(json_object_get(r2, "process_id")), 4711);
	assert_int_equal(json_integer_value(json_object_get(r2, "process_start_time")),
			 1764060000123);
	assert_string_equal(json_string_value(json_object_get(r2, "host")), "other");
	assert_string_equal(json_string_value(json_object_get(r2, "agent")), "a2");
	assert_string_equal(json_string_value(json_object_get(r2, "host_ip")), "::1");
	assert_string_equal(json_string_value(json_object_get(r2, "container_id")), "c1");
	assert_string_equal(json_string_value(json_object_get(r2, "pod_cluster")), "pc");
	assert_string_equal(json_string_value(json_object_get(r2, "pod_ns")), "ns");
	assert_string_equal(json_string_value(json_object_get(r2, "pod_node")), "pn");
	assert_string_equal(json_string_value(json_object_get(r2, "pod")), "p");
	assert_string_equal(json_string_value(json_object_get(r2, "pod_group")), "pg");
	assert_string_equal(json_string_value(json_object_get(r2, "trace_id")), "tr");
	assert_string_equal(json_string_value(json_object_get(r2, "span_name")), "sp");
	assert_string_equal(json_string_value(json_object_get(r2, "profile_id")), "pid");
	tags = json_object_get(r2, "tags");
	assert_true(json_is_object(tags));
	assert_int_equal(json_object_size(tags), 2);
	assert_string_equal(json_string_value(json_object_get(tags, "k8s.label.app")), "web");
	assert_string_equal(json_string_value(json_object_get(tags, "team")), "a\"b");
	/* 4 required + 20 optional fields, all set. */
	assert_int_equal(json_object_size(r2), 24);
	json_decref(root);
}

static void test_encode_escaping(void **state)
{
	static const char nasty[] = "q\"b\\s\x01\x1f\n\t<&> \xc3\xa9\xe2\x82\xac\xf0\x9f\x94\xa5";
	struct profile_row rows[2] = {
		{.time = 1, .app_service = "a\"pp", .profile_location_str = nasty,
		 .profile_value = 1},
		{.time = 1, .app_service = "x", .profile_location_str = "bad\xff\xfe;ok",
		 .profile_value = 1},
	};
	struct wire_batch_hdr hdr = {"b1", "h\"ost", "ag\\ent", NULL};
	struct strbuf sb = STRBUF_INIT;
	json_t *root;

	assert_int_equal(wire_encode(&hdr, rows, 2, &sb), 0);
	/* No raw control byte may reach the wire. */
	for (size_t i = 0; i < sb.len; i++)
		assert_true((unsigned char)sb.buf[i] >= 0x20);
	sb_free(&sb);

	root = test_encode_parse(&hdr, rows, 2);
	assert_string_equal(test_row_stack(root, 0), nasty);
	assert_string_equal(json_string_value(json_object_get(test_row(root, 0), "app_service")),
			    "a\"pp");
	/* Invalid UTF-8 cannot travel in JSON: each bad byte becomes U+FFFD (documented). */
	assert_string_equal(test_row_stack(root, 1), "bad\xef\xbf\xbd\xef\xbf\xbd;ok");
	assert_string_equal(json_string_value(json_object_get(root, "host")), "h\"ost");
	assert_string_equal(json_string_value(json_object_get(root, "agent")), "ag\\ent");
	assert_string_equal(json_string_value(json_object_get(root, "host_ip")), "");
	json_decref(root);
}

static void test_encode_rejects(void **state)
{
	const char *empty_tag[] = {"ok", ""};
	struct profile_row ok = {.time = 1, .app_service = "a", .profile_location_str = "s",
				 .profile_value = 1};
	struct profile_row bad[] = {
		{.time = 0, .app_service = "a", .profile_location_str = "s"},
		{.time = 1, .app_service = "", .profile_location_str = "s"},
		{.time = 1, .app_service = "a", .profile_location_str = NULL},
		{.time = 1, .app_service = "a", .profile_location_str = "s", .profile_value = -1},
		{.time = 1, .app_service = "a", .profile_location_str = "s",
		 .n_tags = ROW_MAX_TAGS + 1},
		{.time = 1, .app_service = "a", .profile_location_str = "s", .process_id = -1},
		{.time = 1, .app_service = "a", .profile_location_str = "s",
		 .process_id = (int64_t)UINT32_MAX + 1},
		{.time = 1, .app_service = "a", .profile_location_str = "s",
		 .process_start_time = -5},
		{.time = 1, .app_service = "a", .profile_location_str = "s", .n_tags = 2,
		 .tag_names = empty_tag, .tag_values = empty_tag},
	};
	const char *bad_ids[] = {NULL, "", "has space", "slash/", "quote\"", "ü",
				 "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
				 "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"};
	struct wire_batch_hdr hdr = test_hdr;
	struct strbuf sb = STRBUF_INIT;

	for (size_t i = 0; i < sizeof(bad_ids) / sizeof(bad_ids[0]); i++) {
		assert_false(wire_batch_id_valid(bad_ids[i]));
		hdr.batch_id = bad_ids[i];
		assert_int_equal(wire_encode(&hdr, &ok, 1, &sb), -EINVAL);
		assert_int_equal(sb.len, 0);
	}
	assert_true(wire_batch_id_valid("A-z_0.9:x"));
	assert_int_equal(strlen(bad_ids[6]), WIRE_BATCH_ID_MAX + 1);
	/* Exactly 128 bytes is the limit. */
	assert_true(wire_batch_id_valid(bad_ids[6] + 1));
	assert_int_equal(wire_encode(&test_hdr, &ok, 0, &sb), -EINVAL);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(wire_encode(&test_hdr, &bad[i], 1, &sb), -EINVAL);
		assert_int_equal(sb.len, 0);
	}
	sb_free(&sb);
}

/* Many rows, many repeated stacks: the dictionary holds each once, in first-seen order. */
static void test_encode_many(void **state)
{
	enum { N = 5000, U = 97 };
	struct profile_row *rows = calloc(N, sizeof(*rows));
	char (*names)[32] = calloc(U, sizeof(*names));
	json_t *root, *stacks;

	for (size_t i = 0; i < U; i++)
		snprintf(names[i], sizeof(names[i]), "[p] app;f%zu", i);
	for (size_t i = 0; i < N; i++)
		rows[i] = (struct profile_row){.time = 5, .app_service = "app",
					       .profile_location_str = names[(i * 7) % U],
					       .profile_value = (int64_t)i};
	root = test_encode_parse(&test_hdr, rows, N);
	stacks = json_object_get(root, "stacks");
	assert_int_equal(json_array_size(stacks), U);
	for (size_t i = 0; i < N; i++) {
		assert_string_equal(test_row_stack(root, i), rows[i].profile_location_str);
		assert_int_equal(json_integer_value(json_object_get(test_row(root, i),
								    "profile_value")),
				 (json_int_t)i);
	}
	json_decref(root);
	free(rows);
	free(names);
}

static void test_str_eq(const char *got, const char *want)
{
	assert_string_equal(got ? got : "", want ? want : "");
}

/* The contract test: the server's decoder reads back exactly what was encoded, defaults applied. */
static void test_encode_ingest_round_trip(void **state)
{
	const char *tn[] = {"k8s.label.app", "team"};
	const char *tv[] = {"web", "caf\xc3\xa9"};
	struct profile_row rows[3] = {
		{.time = 1764064800, .app_service = "nginx", .profile_location_str = "[p] nginx;a",
		 .profile_value = 10101, .process_id = 4711, .process_start_time = 1764060000123},
		{.time = 1764064800, .app_service = "Total", .profile_location_str = "[p] nginx;a",
		 .profile_value = 7, .profile_event_type = "mem-alloc", .host = "elsewhere"},
		{.time = 1764064801, .app_service = "java", .app_instance = "java-1",
		 .profile_location_str = "[p] java;\"q\";\x01", .profile_value = 0,
		 .profile_value_unit = "bytes", .profile_event_type = "off-cpu",
		 .profile_language_type = "Java", .profile_create_timestamp = 1764064801000123,
		 .container_id = "c", .pod_cluster = "pc", .pod_ns = "ns", .pod_node = "pn",
		 .pod = "p", .pod_group = "pg", .trace_id = "t", .span_name = "s",
		 .profile_id = "i", .n_tags = 2, .tag_names = tn, .tag_values = tv},
	};
	struct profile_row want[3];
	struct strbuf sb = STRBUF_INIT, err = STRBUF_INIT;
	struct ingest_batch b = {0};

	assert_int_equal(wire_encode(&test_hdr, rows, 3, &sb), 0);
	if (ingest_decode(sb.buf, sb.len, 10, 42, &b, &err) != 0)
		fail_msg("ingest_decode: %s", err.buf);
	assert_string_equal(b.batch_id, test_hdr.batch_id);
	assert_int_equal(b.n, 3);
	memcpy(want, rows, sizeof(want));
	want[0].profile_event_type = "on-cpu";
	want[0].profile_value_unit = "microseconds";
	want[0].app_instance = "nginx";
	want[1].profile_value_unit = "bytes";
	want[1].app_instance = "Total";
	for (int i = 0; i < 2; i++) {
		want[i].profile_language_type = "eBPF";
		want[i].profile_create_timestamp = want[i].time * 1000000;
	}
	for (int i = 0; i < 3; i++) {
		const struct profile_row *g = &b.rows[i];
		struct profile_row *w = &want[i];

		if (!w->host)
			w->host = test_hdr.host;
		w->agent = test_hdr.agent;
		w->host_ip = test_hdr.host_ip;
		assert_int_equal(g->time, w->time);
		assert_int_equal(g->profile_value, w->profile_value);
		assert_int_equal(g->profile_create_timestamp, w->profile_create_timestamp);
		assert_int_equal(g->profile_in_timestamp, 42);
		assert_int_equal(g->process_id, w->process_id);
		assert_int_equal(g->process_start_time, w->process_start_time);
		test_str_eq(g->app_service, w->app_service);
		test_str_eq(g->app_instance, w->app_instance);
		test_str_eq(g->profile_location_str, w->profile_location_str);
		test_str_eq(g->profile_value_unit, w->profile_value_unit);
		test_str_eq(g->profile_event_type, w->profile_event_type);
		test_str_eq(g->profile_language_type, w->profile_language_type);
		test_str_eq(g->host, w->host);
		test_str_eq(g->agent, w->agent);
		test_str_eq(g->host_ip, w->host_ip);
		test_str_eq(g->container_id, w->container_id);
		test_str_eq(g->pod_cluster, w->pod_cluster);
		test_str_eq(g->pod_ns, w->pod_ns);
		test_str_eq(g->pod_node, w->pod_node);
		test_str_eq(g->pod, w->pod);
		test_str_eq(g->pod_group, w->pod_group);
		test_str_eq(g->trace_id, w->trace_id);
		test_str_eq(g->span_name, w->span_name);
		test_str_eq(g->profile_id, w->profile_id);
		assert_int_equal(g->n_tags, w->n_tags);
		for (size_t t = 0; t < w->n_tags; t++) {
			test_str_eq(g->tag_names[t], w->tag_names[t]);
			test_str_eq(g->tag_values[t], w->tag_values[t]);
		}
	}
	ingest_batch_free(&b);
	sb_free(&sb);
	sb_free(&err);
}

static void test_compress_round_trip(void **state)
{
	struct strbuf text = STRBUF_INIT, z = STRBUF_INIT, back = STRBUF_INIT;

	for (int i = 0; i < 200000; i++)
		sb_printf(&text, "[p] app;main;f%d\n", i % 300);
	assert_int_equal(wire_compress(text.buf, text.len, &z), 0);
	assert_true(z.len < text.len / 10);
	assert_int_equal(wire_decompress(z.buf, z.len, text.len, &back), 0);
	assert_int_equal(back.len, text.len);
	assert_memory_equal(back.buf, text.buf, text.len);

	/* Empty input round-trips too. */
	assert_int_equal(wire_compress("", 0, &z), 0);
	assert_int_equal(wire_decompress(z.buf, z.len, 10, &back), 0);
	assert_int_equal(back.len, 0);
	sb_free(&text);
	sb_free(&z);
	sb_free(&back);
}

static void test_decompress_cap(void **state)
{
	size_t n = 10u << 20;
	char *zeros = calloc(1, n);
	struct strbuf z = STRBUF_INIT, back = STRBUF_INIT;

	/* 10 MiB of zeros compress to a few hundred bytes: a bomb against a small cap. */
	assert_int_equal(wire_compress(zeros, n, &z), 0);
	assert_true(z.len < 4096);
	assert_int_equal(wire_decompress(z.buf, z.len, 1u << 20, &back), -EFBIG);
	assert_int_equal(back.len, 0);
	/* Exactly the size is allowed, one byte less is not. */
	assert_int_equal(wire_decompress(z.buf, z.len, n, &back), 0);
	assert_int_equal(back.len, n);
	assert_int_equal(wire_decompress(z.buf, z.len, n - 1, &back), -EFBIG);
	free(zeros);
	sb_free(&z);
	sb_free(&back);
}

static void test_decompress_corrupt(void **state)
{
	struct strbuf text = STRBUF_INIT, z = STRBUF_INIT, back = STRBUF_INIT, tmp = STRBUF_INIT;

	for (int i = 0; i < 5000; i++)
		sb_printf(&text, "{\"row\":%d}", i);
	assert_int_equal(wire_compress(text.buf, text.len, &z), 0);

	assert_int_equal(wire_decompress("", 0, 1000, &back), -EINVAL);
	assert_int_equal(wire_decompress(text.buf, text.len, 1u << 20, &back), -EINVAL);
	/* Truncated frame. */
	assert_int_equal(wire_decompress(z.buf, z.len - 5, 1u << 20, &back), -EINVAL);
	assert_int_equal(wire_decompress(z.buf, 6, 1u << 20, &back), -EINVAL);
	/* Trailing garbage after the frame. */
	sb_append(&tmp, z.buf, z.len);
	sb_append(&tmp, "xyz", 3);
	assert_int_equal(wire_decompress(tmp.buf, tmp.len, 1u << 20, &back), -EINVAL);
	/* A flipped byte in the middle: the checksum or the entropy decoder catches it. */
	sb_reset(&tmp);
	sb_append(&tmp, z.buf, z.len);
	tmp.buf[tmp.len / 2] ^= 0x5a;
	assert_int_equal(wire_decompress(tmp.buf, tmp.len, 1u << 20, &back), -EINVAL);
	assert_int_equal(back.len, 0);
	sb_free(&text);
	sb_free(&z);
	sb_free(&back);
	sb_free(&tmp);
}

/* A frame without a declared size (another client's encoder) takes the streaming path, with the
 * same cap, the same truncation and trailing-bytes checks, and the same result. */
static void test_decompress_unsized(void **state)
{
	struct strbuf text = STRBUF_INIT, z = STRBUF_INIT, back = STRBUF_INIT;
	ZSTD_CCtx *cc = ZSTD_createCCtx();
	size_t n;

	for (int i = 0; i < 100000; i++)
		sb_printf(&text, "{\"row\":%d}", i);
	ZSTD_CCtx_setParameter(cc, ZSTD_c_contentSizeFlag, 0);
	sb_grow(&z, ZSTD_compressBound(text.len));
	n = ZSTD_compress2(cc, z.buf, ZSTD_compressBound(text.len), text.buf, text.len);
	assert_false(ZSTD_isError(n));
	z.len = n;
	assert_int_equal(ZSTD_getFrameContentSize(z.buf, z.len), ZSTD_CONTENTSIZE_UNKNOWN);
	assert_int_equal(wire_decompress(z.buf, z.len, text.len, &back), 0);
	assert_int_equal(back.len, text.len);
	assert_memory_equal(back.buf, text.buf, text.len);
	assert_int_equal(wire_decompress(z.buf, z.len, text.len - 1, &back), -EFBIG);
	assert_int_equal(wire_decompress(z.buf, z.len - 5, text.len, &back), -EINVAL);
	sb_append(&z, "xyz", 3);
	assert_int_equal(wire_decompress(z.buf, z.len, text.len, &back), -EINVAL);
	assert_int_equal(back.len, 0);
	ZSTD_freeCCtx(cc);
	sb_free(&text);
	sb_free(&z);
	sb_free(&back);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_encode_header_and_dedupe),
		cmocka_unit_test(test_encode_defaults_omitted),
		cmocka_unit_test(test_encode_escaping),
		cmocka_unit_test(test_encode_rejects),
		cmocka_unit_test(test_encode_many),
		cmocka_unit_test(test_encode_ingest_round_trip),
		cmocka_unit_test(test_compress_round_trip),
		cmocka_unit_test(test_decompress_cap),
		cmocka_unit_test(test_decompress_corrupt),
		cmocka_unit_test(test_decompress_unsized),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
