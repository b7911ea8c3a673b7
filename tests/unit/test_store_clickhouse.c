/*
 * test_store_clickhouse — the ClickHouse store against a real server.
 *
 * Tests that need no server (DDL per version, URL errors, an unreachable server) always run.
 * The others need CH_URL (clickhouse://127.0.0.1:PORT, user default without password) and
 * CH_HTTP_PORT, as exported by tests/lib/clickhouse.sh; without them they skip. The crash test
 * also needs CH_DIR and EMBER_TOP to kill and restart the server through that script.
 * tests/e2e/test_clickhouse_store.sh starts a server and runs this binary.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <zstd.h>

#include "common/httpc.h"
#include "server/tagfilter.h"
#include "store/clickhouse.h"
#include "store/store.h"

#define T0 1700000000 /* 2023-11-14 22:13:20 UTC */

static const char *ch_url(void)
{
	const char *u = getenv("CH_URL");

	return u && *u && getenv("CH_HTTP_PORT") ? u : NULL;
}

#define NEED_SERVER()                                                                    \
	do {                                                                             \
		if (!ch_url()) {                                                         \
			print_message("CH_URL not set: no ClickHouse server, skipped\n"); \
			skip();                                                          \
		}                                                                        \
	} while (0)

/* Runs SQL on the test server as `default`; returns the HTTP status, body in out (if given). */
static long sql_run(const char *sql, size_t len, struct strbuf *out)
{
	char url[128], err[256];
	struct httpc_req req = {0};
	struct httpc_resp resp = {0};
	int rc;

	snprintf(url, sizeof(url), "http://127.0.0.1:%s/", getenv("CH_HTTP_PORT"));
	req.url = url;
	req.body = sql;
	req.body_len = len;
	rc = httpc_do(&req, &resp, err, sizeof(err));
	if (rc < 0) {
		print_message("sql_run: %s\n", err);
		sb_free(&resp.body);
		return 0;
	}
	if (out)
		*out = resp.body;
	else
		sb_free(&resp.body);
	return resp.status;
}

static char *sql_text(const char *fmt, ...)
{
	static __thread char buf[1024];
	struct strbuf out = STRBUF_INIT;
	char sql[4096];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(sql, sizeof(sql), fmt, ap);
	va_end(ap);
	assert_int_equal(sql_run(sql, strlen(sql), &out), 200);
	snprintf(buf, sizeof(buf), "%.*s", out.buf ? (int)strcspn(out.buf, "\n") : 0,
		 out.buf ? out.buf : "");
	sb_free(&out);
	return buf;
}

/* A store on a fresh database of the test server. The rows of the tests are from 2023, so
 * retention is off unless a test asks for it. */
static struct store *open_db(const char *db, const char *extra)
{
	char url[256], err[512];
	struct store *s = NULL;

	/* 18.16 may refuse a DROP while a merge writes in the directory ("Directory not empty"):
	 * retry a bounded number of times */
	for (int i = 0; i < 2; i++) {
		char sql[256];
		int tries = 0;

		snprintf(sql, sizeof(sql), i ? "DROP DATABASE IF EXISTS `0002_%s`"
					     : "DROP DATABASE IF EXISTS `%s`",
			 db);
		while (sql_run(sql, strlen(sql), NULL) != 200 && ++tries < 100)
			usleep(100 * 1000);
		assert_true(tries < 100);
	}
	snprintf(url, sizeof(url), "%s/%s%s", ch_url(), db, extra ? extra : "?retention=0");
	assert_int_equal(store_open(url, &s, err, sizeof(err)), 0);
	return s;
}

/* ---- rows ---------------------------------------------------------------------------------- */

static struct profile_row mkrow(int64_t t, const char *svc, const char *stack, int64_t v)
{
	struct profile_row r = {0};

	r.time = t;
	r.app_service = svc;
	r.app_instance = svc;
	r.profile_location_str = stack;
	r.profile_value = v;
	r.profile_value_unit = "microseconds";
	r.profile_event_type = "on-cpu";
	r.profile_language_type = "eBPF";
	r.profile_create_timestamp = t * 1000000 + 123456;
	r.profile_in_timestamp = t * 1000000 + 654321;
	r.process_id = 42;
	r.process_start_time = (t - 100) * 1000;
	r.host = "h1";
	r.agent = "a1";
	r.compression_algo = "";
	return r;
}

struct got {
	char *stacks[64];
	size_t lens[64];
	int64_t values[64];
	size_t n;
};

static int collect(void *arg, const char *stack, size_t len, int64_t value)
{
	struct got *g = arg;

	assert_true(g->n < 64);
	g->stacks[g->n] = malloc(len + 1);
	memcpy(g->stacks[g->n], stack, len);
	g->stacks[g->n][len] = '\0';
	g->lens[g->n] = len;
	g->values[g->n] = value;
	g->n++;
	return 0;
}

static void got_free(struct got *g)
{
	for (size_t i = 0; i < g->n; i++)
		free(g->stacks[i]);
	g->n = 0;
}

static int64_t got_value(const struct got *g, const char *stack)
{
	for (size_t i = 0; i < g->n; i++)
		if (strcmp(g->stacks[i], stack) == 0)
			return g->values[i];
	return -1;
}

static struct store_query mkq(int64_t a, int64_t b, const char *svc)
{
	struct store_query q = {0};

	q.time_start = a;
	q.time_end = b;
	q.app_service = svc;
	q.language_type = "eBPF";
	q.event_type = "on-cpu";
	q.max_stacks = 1000;
	q.max_seconds = 60;
	return q;
}

static int query(struct store *s, int org, const struct store_query *q, struct got *g,
		 struct store_query_info *info)
{
	got_free(g);
	return store_query_stacks(s, org, q, collect, g, info);
}

static void insert_ok(struct store *s, int org, const char *id, struct profile_row *rows,
		      size_t n)
{
	int dup = -1;

	assert_int_equal(store_insert(s, org, id, rows, n, &dup), 0);
	assert_int_equal(dup, 0);
}

/* ---- no server needed -------------------------------------------------------------------- */

static void test_ddl_versions(void **state)
{
	struct strbuf old = STRBUF_INIT, modern = STRBUF_INIT;

	assert_int_equal(store_clickhouse_ddl("18.16.1", "profile", 72 * 3600, &old), 0);
	assert_non_null(strstr(old.buf, "profile_create_timestamp Int64"));
	assert_non_null(strstr(old.buf, "app_service String"));
	assert_non_null(strstr(old.buf, "PARTITION BY toStartOfHour(time)"));
	assert_null(strstr(old.buf, "TTL"));
	assert_null(strstr(old.buf, "CODEC"));
	assert_null(strstr(old.buf, "LowCardinality"));
	assert_null(strstr(old.buf, "DateTime64"));

	assert_int_equal(store_clickhouse_ddl("23.8.2.7", "profile", 72 * 3600, &modern), 0);
	assert_non_null(strstr(modern.buf, "TTL time + INTERVAL 72 HOUR"));
	assert_non_null(strstr(modern.buf, "app_service LowCardinality(String)"));
	assert_non_null(strstr(modern.buf, "profile_create_timestamp DateTime64(6, 'UTC')"));
	assert_non_null(strstr(modern.buf, "process_start_time DateTime64(3, 'UTC')"));
	assert_non_null(strstr(modern.buf, "CODEC(ZSTD(3))"));
	assert_int_equal(store_clickhouse_ddl("garbage", "profile", 0, &modern), -EINVAL);
	sb_free(&old);
	sb_free(&modern);
}

static void test_quote_text(void **state)
{
	struct strbuf sb = STRBUF_INIT;

	store_clickhouse_quote(&sb, "a'b\\c\n\x01\xff\xc3\xa9", 10);
	assert_string_equal(sb.buf, "'a\\'b\\\\c\\x0A\\x01\\xFF\xc3\xa9'");
	sb_free(&sb);
}

static void test_bad_urls(void **state)
{
	static const char *const bad[] = {
		"clickhouse://", "clickhouse://host", "clickhouse://host:", "clickhouse://host:x1",
		"clickhouse://h:1/bad-db", "clickhouse://h:1/db?retention=forever",
		"clickhouse://h:1/db?nope=1", "clickhouse://u%zz:p@h:1", "clickhouse://h:1/db?gzip=",
		"clickhouse://h:1/db?gzip=10", "clickhouse://h:1/db?gzip=x",
	};
	char err[512];
	struct store *s;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(store_open(bad[i], &s, err, sizeof(err)), -EINVAL);
		assert_null(s);
		assert_non_null(strstr(err, "clickhouse URL"));
	}
}

static void test_unreachable(void **state)
{
	struct profile_row r = mkrow(T0, "svc", "[p] a;b", 1);
	struct store_query q = mkq(T0, T0, NULL);
	struct got g = {0};
	char err[512];
	struct store *s;
	int dup;

	/* port 1 on loopback: connection refused */
	assert_int_equal(store_open("clickhouse://127.0.0.1:1/profile", &s, err, sizeof(err)), 0);
	assert_int_equal(store_health(s, err, sizeof(err)), -EAGAIN);
	assert_string_equal(err, "clickhouse 127.0.0.1:1: unreachable: connection refused");
	assert_int_equal(store_insert(s, 1, "b1", &r, 1, &dup), -EAGAIN);
	assert_int_equal(query(s, 1, &q, &g, NULL), -EAGAIN);
	store_close(s);
}

/* ---- real server ------------------------------------------------------------------------- */

static void test_schema_idempotent(void **state)
{
	char err[512], url[256];
	struct store *s, *s2;
	int old;

	NEED_SERVER();
	s = open_db("ember_t_schema", NULL);
	assert_string_equal(sql_text("SELECT count() FROM system.tables WHERE database ="
				     " 'ember_t_schema' AND name = 'in_process'"),
			    "1");
	old = strncmp(sql_text("SELECT version()"), "18.", 3) == 0;
	assert_string_equal(sql_text("SELECT type FROM system.columns WHERE database ="
				     " 'ember_t_schema' AND table = 'in_process' AND name ="
				     " 'profile_create_timestamp'"),
			    old ? "Int64" : "DateTime64(6, 'UTC')");
	assert_string_equal(sql_text("SELECT partition_key FROM system.tables WHERE database ="
				     " 'ember_t_schema' AND name = 'in_process'"),
			    "toStartOfHour(time)");
	/* a second store on the same database finds the schema and keeps its data */
	struct profile_row r = mkrow(T0, "svc", "[p] a", 5);

	insert_ok(s, 1, "schema-1", &r, 1);
	snprintf(url, sizeof(url), "%s/ember_t_schema?retention=0", ch_url());
	assert_int_equal(store_open(url, &s2, err, sizeof(err)), 0);
	assert_int_equal(store_health(s2, err, sizeof(err)), 0);
	assert_string_equal(sql_text("SELECT count() FROM ember_t_schema.in_process"), "1");
	store_close(s2);
	store_close(s);
}

static void test_insert_query(void **state)
{
	struct profile_row rows[6];
	struct store_query_info info = {0};
	struct store_query q;
	struct got g = {0};
	struct store *s;
	const char *tags_n[] = {"k8s.label.app"}, *tags_v[] = {"web"};

	NEED_SERVER();
	s = open_db("ember_t_iq", NULL);
	rows[0] = mkrow(T0, "svc", "[p] main;a", 100);
	rows[1] = mkrow(T0 + 1, "svc", "[p] main;a", 50);
	rows[2] = mkrow(T0 + 2, "svc", "[p] main;b", 7);
	rows[3] = mkrow(T0 + 3600, "svc", "[p] main;a", 1000); /* next hour: second INSERT */
	rows[4] = mkrow(T0, "other", "[p] other;x", 9);
	rows[5] = mkrow(T0, "svc", "[p] main;c", 3);
	rows[5].profile_event_type = "off-cpu";
	rows[1].pod_ns = "prod";
	rows[1].n_tags = 1;
	rows[1].tag_names = tags_n;
	rows[1].tag_values = tags_v;
	insert_ok(s, 1, "iq-1", rows, 6);

	q = mkq(T0, T0 + 10, "svc");
	assert_int_equal(query(s, 1, &q, &g, &info), 0);
	assert_int_equal(g.n, 2);
	assert_string_equal(g.stacks[0], "[p] main;a"); /* biggest first */
	assert_int_equal(g.values[0], 150);
	assert_int_equal(got_value(&g, "[p] main;b"), 7);
	assert_int_equal(info.n_stacks, 2);
	assert_int_equal(info.truncated, 0);
	assert_string_equal(info.engine, "clickhouse");
	assert_non_null(strstr(info.sql.buf, "app_service = 'svc'"));

	/* time range is inclusive at both ends */
	q = mkq(T0 + 1, T0 + 3600, "svc");
	assert_int_equal(query(s, 1, &q, &g, NULL), 0);
	assert_int_equal(got_value(&g, "[p] main;a"), 1050);
	/* any service */
	q = mkq(T0, T0, NULL);
	assert_int_equal(query(s, 1, &q, &g, NULL), 0);
	assert_int_equal(g.n, 2);
	assert_int_equal(got_value(&g, "[p] other;x"), 9);
	/* event type */
	q = mkq(T0, T0 + 10, "svc");
	q.event_type = "off-cpu";
	assert_int_equal(query(s, 1, &q, &g, NULL), 0);
	assert_int_equal(g.n, 1);
	assert_int_equal(got_value(&g, "[p] main;c"), 3);

	/* tag filters, on a column and on a custom tag */
	struct tf_expr *f;
	struct tf_error fe;

	q = mkq(T0, T0 + 10, "svc");
	assert_int_equal(tagfilter_parse("pod_ns = 'prod'", &f, &fe), 0);
	q.filter = f;
	assert_int_equal(query(s, 1, &q, &g, NULL), 0);
	assert_int_equal(g.n, 1);
	assert_int_equal(got_value(&g, "[p] main;a"), 50);
	tagfilter_free(f);
	assert_int_equal(tagfilter_parse("`k8s.label.app` = 'web' OR pod_ns = 'x'", &f, &fe), 0);
	q.filter = f;
	assert_int_equal(query(s, 1, &q, &g, NULL), 0);
	assert_int_equal(g.n, 1);
	assert_int_equal(got_value(&g, "[p] main;a"), 50);
	tagfilter_free(f);

	/* a limit keeps the biggest stacks and says it cut */
	q = mkq(T0, T0 + 10, "svc");
	q.max_stacks = 1;
	assert_int_equal(query(s, 1, &q, &g, &info), 0);
	assert_int_equal(g.n, 1);
	assert_string_equal(g.stacks[0], "[p] main;a");
	assert_int_equal(info.truncated, 1);

	/* services */
	char **names;
	size_t nn;

	q = mkq(T0, T0 + 10, NULL);
	assert_int_equal(store_list_services(s, 1, &q, 10, &names, &nn, NULL), 0);
	assert_int_equal(nn, 2);
	assert_string_equal(names[0], "other");
	assert_string_equal(names[1], "svc");
	store_free_names(names, nn);

	/* a bad row is refused with its index and field, nothing stored */
	int dup;

	rows[2].time = -5;
	assert_int_equal(store_insert(s, 1, "iq-bad", rows, 3, &dup), -EINVAL);
	assert_non_null(strstr(store_errmsg(s), "row 2"));
	assert_string_equal(sql_text("SELECT count() FROM ember_t_iq.in_process WHERE batch_id ="
				     " 'iq-bad'"),
			    "0");
	got_free(&g);
	sb_free(&info.sql);
	store_close(s);
}

static void test_gauge(void **state)
{
	struct profile_row rows[5];
	struct store_query q;
	struct got g = {0};
	struct store *s;

	NEED_SERVER();
	s = open_db("ember_t_gauge", NULL);
	for (int i = 0; i < 5; i++) {
		rows[i] = mkrow(T0 + i, "svc", "[p] m;alloc", 0);
		rows[i].profile_event_type = "mem-inuse";
		rows[i].profile_value_unit = "bytes";
	}
	rows[0].profile_value = 100; /* pid 42, older */
	rows[1].profile_value = 300; /* pid 42, latest */
	rows[2].profile_value = 1000; /* pid 43, older */
	rows[2].process_id = 43;
	rows[3].profile_value = 20; /* pid 43, latest */
	rows[3].process_id = 43;
	rows[4].profile_value = 5; /* pid 42 on another agent, latest there */
	rows[4].agent = "a2";
	rows[4].time = T0;
	insert_ok(s, 1, "g-1", rows, 5);
	q = mkq(T0, T0 + 10, "svc");
	q.event_type = "mem-inuse";
	q.gauge = 1;
	assert_int_equal(query(s, 1, &q, &g, NULL), 0);
	assert_int_equal(g.n, 1);
	assert_int_equal(g.values[0], 300 + 20 + 5);
	q.gauge = 0;
	assert_int_equal(query(s, 1, &q, &g, NULL), 0);
	assert_int_equal(g.values[0], 1425);
	got_free(&g);
	store_close(s);
}

static void test_duplicates_and_recovery(void **state)
{
	struct profile_row rows[3];
	struct store *s;
	int dup;

	NEED_SERVER();
	s = open_db("ember_t_dup", NULL);
	rows[0] = mkrow(T0, "svc", "[p] a", 1);
	rows[1] = mkrow(T0 + 1, "svc", "[p] a", 2);
	rows[2] = mkrow(T0 + 7200, "svc", "[p] a", 4);
	insert_ok(s, 1, "dup-1", rows, 3);
	assert_int_equal(store_insert(s, 1, "dup-1", rows, 3, &dup), 0);
	assert_int_equal(dup, 1);
	assert_string_equal(sql_text("SELECT count(), sum(profile_value) FROM"
				     " ember_t_dup.in_process"),
			    "3\t7");

	/* an attempt that died after its first hour's INSERT, before the second */
	sql_text("INSERT INTO ember_t_dup.in_process (time, app_service, profile_location_str,"
		 " profile_value, profile_event_type, profile_language_type, batch_id) VALUES"
		 " (%d, 'svc', '[p] b', 10, 'on-cpu', 'eBPF', 'dup-2')",
		 T0);
	rows[0] = mkrow(T0, "svc", "[p] b", 10);
	rows[1] = mkrow(T0 + 7200, "svc", "[p] b", 20);
	/* hour T0 is there; hour T0+7200 is missing: only it is written */
	assert_int_equal(store_insert(s, 1, "dup-2", rows, 2, &dup), 0);
	assert_int_equal(dup, 0);
	assert_string_equal(sql_text("SELECT count(), sum(profile_value) FROM"
				     " ember_t_dup.in_process WHERE batch_id = 'dup-2'"),
			    "2\t30");
	assert_int_equal(store_insert(s, 1, "dup-2", rows, 2, &dup), 0);
	assert_int_equal(dup, 1);

	/* another batch's rows at the same sort key do not count as this batch's */
	rows[0] = mkrow(T0, "svc", "[p] b", 40);
	insert_ok(s, 1, "dup-3", rows, 1);
	assert_string_equal(sql_text("SELECT count(), sum(profile_value) FROM"
				     " ember_t_dup.in_process WHERE batch_id = 'dup-3'"),
			    "1\t40");

	/* a big batch over three hours, rows in no particular order: each hour once */
	{
		enum { BIG = 3000 };
		struct profile_row *big = calloc(BIG, sizeof(*big));
		static const char *const st[] = {"[p] x;a", "[p] x;b;c", "[p] x"};

		assert_non_null(big);
		for (int i = 0; i < BIG; i++)
			big[i] = mkrow(T0 + (i * 7919) % (3 * 3600), i % 2 ? "svc" : "other",
				       st[i % 3], i);
		insert_ok(s, 1, "dup-4", big, BIG);
		/* the middle hour's INSERT "was lost": the retry rewrites exactly that hour */
		sql_text("ALTER TABLE ember_t_dup.in_process DELETE WHERE batch_id = 'dup-4' AND"
			 " toStartOfHour(time) = toStartOfHour(toDateTime(%d))",
			 T0 + 3600);
		for (int i = 0; i < 600; i++) {
			if (strcmp(sql_text("SELECT count() FROM system.mutations WHERE database ="
					    " 'ember_t_dup' AND NOT is_done"),
				   "0") == 0)
				break;
			usleep(100 * 1000);
		}
		assert_int_equal(store_insert(s, 1, "dup-4", big, BIG, &dup), 0);
		assert_int_equal(dup, 0);
		assert_int_equal(store_insert(s, 1, "dup-4", big, BIG, &dup), 0);
		assert_int_equal(dup, 1);
		assert_string_equal(sql_text("SELECT count(), sum(profile_value),"
					     " uniqExact(time, app_service, profile_location_str)"
					     " FROM ember_t_dup.in_process WHERE batch_id = 'dup-4'"),
				    "3000\t4498500\t3000");
		free(big);
	}
	store_close(s);
}

/* Every byte value in stacks, services and tags comes back exactly. */
static void test_bytes_roundtrip(void **state)
{
	char stack[300], svc[300], tv[300], tn[300];
	const char *tnames[1], *tvalues[1];
	struct profile_row r;
	struct store_query q;
	struct got g = {0};
	struct strbuf out = STRBUF_INIT, hex = STRBUF_INIT;
	struct store *s;
	size_t n = 0;

	NEED_SERVER();
	/* a compressed body here; every other test sends stored blocks (the loopback default) */
	s = open_db("ember_t_bytes", "?retention=0&gzip=6");
	for (int b = 255; b >= 1; b--)
		stack[n++] = (char)b;
	stack[n] = '\0';
	memcpy(svc, stack, n + 1);
	memcpy(tv, stack, n + 1);
	memcpy(tn, stack + 100, n - 99);
	tnames[0] = tn;
	tvalues[0] = tv;
	r = mkrow(T0, svc, stack, 77);
	r.pod = stack;
	r.n_tags = 1;
	r.tag_names = tnames;
	r.tag_values = tvalues;
	insert_ok(s, 1, "bytes-1", &r, 1);
	q = mkq(T0, T0, svc);
	assert_int_equal(query(s, 1, &q, &g, NULL), 0);
	assert_int_equal(g.n, 1);
	assert_int_equal(g.lens[0], n);
	assert_memory_equal(g.stacks[0], stack, n);
	assert_int_equal(g.values[0], 77);

	for (size_t i = 0; i < n; i++)
		sb_printf(&hex, "%02X", (unsigned char)stack[i]);
	assert_string_equal(sql_text("SELECT hex(tag_values[1]) FROM ember_t_bytes.in_process"),
			    hex.buf);
	assert_string_equal(sql_text("SELECT hex(app_service) = hex(pod) FROM"
				     " ember_t_bytes.in_process"),
			    "1");

	char **names;
	size_t nn;

	q = mkq(T0, T0, NULL);
	assert_int_equal(store_list_services(s, 1, &q, 10, &names, &nn, NULL), 0);
	assert_int_equal(nn, 1);
	assert_string_equal(names[0], svc);
	store_free_names(names, nn);
	sb_free(&out);
	sb_free(&hex);
	got_free(&g);
	store_close(s);
}

/* SELECT <literal> returns exactly the original bytes, for every byte and random strings. */
static void test_quote_roundtrip(void **state)
{
	struct strbuf sql = STRBUF_INIT, out = STRBUF_INIT, want = STRBUF_INIT;
	unsigned seed = 12345;
	char s[64];

	NEED_SERVER();
	/* one statement with all 256 single-byte literals, then 200 random strings */
	for (int round = 0; round < 2; round++) {
		sb_reset(&sql);
		sb_reset(&want);
		sb_puts(&sql, "SELECT arrayStringConcat([");
		for (int i = 0; i < (round ? 200 : 256); i++) {
			size_t len = round ? (size_t)(rand_r(&seed) % 40) : 1;

			for (size_t k = 0; k < len; k++)
				s[k] = (char)(round ? rand_r(&seed) : i);
			if (round == 0)
				s[0] = (char)i;
			if (i)
				sb_putc(&sql, ',');
			sb_puts(&sql, "hex(");
			store_clickhouse_quote(&sql, s, len);
			sb_putc(&sql, ')');
			for (size_t k = 0; k < len; k++)
				sb_printf(&want, "%02X", (unsigned char)s[k]);
			sb_putc(&want, ',');
		}
		sb_puts(&sql, "], ',')");
		assert_int_equal(sql_run(sql.buf, sql.len, &out), 200);
		want.buf[--want.len] = '\n';
		assert_string_equal(out.buf, want.buf);
		sb_free(&out);
	}
	sb_free(&sql);
	sb_free(&want);
}

/* Each hostile payload as app_service, tag value and filter literal changes nothing. */
static void test_injection_corpus(void **state)
{
	char path[512], line[4096];
	const char *top = getenv("EMBER_TOP");
	struct profile_row base[2];
	struct store_query q;
	struct got g = {0};
	struct store *s;
	FILE *f;
	int k = 0;

	NEED_SERVER();
	snprintf(path, sizeof(path), "%s/tests/fixtures/injection.txt", top ? top : ".");
	f = fopen(path, "r");
	if (!f) {
		print_message("%s missing: skipped\n", path);
		skip();
	}
	s = open_db("ember_t_inj", NULL);
	base[0] = mkrow(T0, "svc", "[p] keep", 5);
	base[1] = mkrow(T0, "other", "[p] other", 6);
	insert_ok(s, 1, "inj-base", base, 2);
	while (fgets(line, sizeof(line), f)) {
		const char *tn[] = {"k8s.label.app"}, *tv[] = {line};
		struct profile_row r;
		char id[32], filt[8192];
		struct tf_expr *e = NULL;
		struct tf_error fe;
		struct strbuf lit = STRBUF_INIT;
		int64_t all;

		line[strcspn(line, "\n")] = '\0';
		snprintf(id, sizeof(id), "inj-%d", k++);
		r = mkrow(T0, line, "[p] payload", 1);
		r.n_tags = 1;
		r.tag_names = tn;
		r.tag_values = tv;
		r.pod = line;
		insert_ok(s, 1, id, &r, 1);
		/* as the service: only the payload's own row */
		q = mkq(T0, T0, line);
		assert_int_equal(query(s, 1, &q, &g, NULL), 0);
		assert_int_equal(g.n, 1);
		assert_string_equal(g.stacks[0], "[p] payload");
		all = g.values[0]; /* > 1 when the corpus repeats a payload */
		/* as a filter literal, escaped the way a user would write it */
		for (const char *p = line; *p; p++) {
			if (*p == '\'' || *p == '\\')
				sb_putc(&lit, '\\');
			sb_putc(&lit, *p);
		}
		snprintf(filt, sizeof(filt), "`k8s.label.app` = '%s' AND pod = '%s'", lit.buf,
			 lit.buf);
		sb_free(&lit);
		if (tagfilter_parse(filt, &e, &fe) == 0) {
			q = mkq(T0, T0, line);
			q.filter = e;
			assert_int_equal(query(s, 1, &q, &g, NULL), 0);
			assert_int_equal(g.n, 1);
			assert_int_equal(g.values[0], all);
			tagfilter_free(e);
		}
		/* the unrelated service is untouched */
		q = mkq(T0, T0, "svc");
		assert_int_equal(query(s, 1, &q, &g, NULL), 0);
		assert_int_equal(g.n, 1);
		assert_int_equal(g.values[0], 5);
	}
	fclose(f);
	assert_true(k > 0);
	/* nothing was dropped, deleted or rewritten */
	snprintf(line, sizeof(line), "%d", k + 2);
	assert_string_equal(sql_text("SELECT count() FROM ember_t_inj.in_process"), line);
	assert_string_equal(sql_text("SELECT count() FROM system.tables WHERE database ="
				     " 'ember_t_inj'"),
			    "1");
	got_free(&g);
	store_close(s);
}

static void test_orgs_isolated(void **state)
{
	struct profile_row r1 = mkrow(T0, "svc", "[p] org1", 1), r2 = mkrow(T0, "svc", "[p] org2", 2);
	struct store_query q = mkq(T0, T0, "svc");
	struct got g = {0};
	struct store *s;

	NEED_SERVER();
	s = open_db("ember_t_org", NULL);
	/* an organisation without data yet answers empty, not an error */
	assert_int_equal(query(s, 2, &q, &g, NULL), 0);
	assert_int_equal(g.n, 0);
	insert_ok(s, 1, "same-id", &r1, 1);
	insert_ok(s, 2, "same-id", &r2, 1); /* batch ids are per organisation */
	assert_int_equal(query(s, 1, &q, &g, NULL), 0);
	assert_int_equal(g.n, 1);
	assert_string_equal(g.stacks[0], "[p] org1");
	assert_int_equal(query(s, 2, &q, &g, NULL), 0);
	assert_int_equal(g.n, 1);
	assert_string_equal(g.stacks[0], "[p] org2");
	assert_string_equal(sql_text("SELECT count() FROM `0002_ember_t_org`.in_process"), "1");
	got_free(&g);
	store_close(s);
}

static void test_zstd_rows(void **state)
{
	const char *plain = "[p] z;compressed;frame";
	char comp[256];
	size_t clen = ZSTD_compress(comp, sizeof(comp), plain, strlen(plain), 3);
	struct store_query q = mkq(T0, T0, "svc");
	struct got g = {0};
	struct store *s;

	NEED_SERVER();
	assert_false(ZSTD_isError(clen));
	s = open_db("ember_t_zstd", NULL);
	/* DeepFlow stores zstd frames; they are binary, so write them as DeepFlow would */
	struct strbuf sql = STRBUF_INIT;

	sb_printf(&sql, "INSERT INTO ember_t_zstd.in_process (time, app_service,"
			" profile_location_str, profile_value, profile_event_type,"
			" profile_language_type, compression_algo) VALUES (%d, 'svc', ",
		  T0);
	store_clickhouse_quote(&sql, comp, clen);
	sb_puts(&sql, ", 8, 'on-cpu', 'eBPF', 'zstd')");
	assert_int_equal(sql_run(sql.buf, sql.len, NULL), 200);
	assert_int_equal(query(s, 1, &q, &g, NULL), 0);
	assert_int_equal(g.n, 1);
	assert_string_equal(g.stacks[0], plain);
	assert_int_equal(g.values[0], 8);
	sb_free(&sql);
	got_free(&g);
	store_close(s);
}

/* 18.16 has no TTL: the store's thread drops hour partitions older than the retention. */
static void test_retention(void **state)
{
	int64_t now = time(NULL);
	struct profile_row rows[2] = {mkrow(now - 4 * 3600, "svc", "[p] old", 1),
				      mkrow(now, "svc", "[p] new", 2)};
	char url[256], err[512];
	struct store *s, *s2;

	NEED_SERVER();
	s = open_db("ember_t_ret", NULL);
	insert_ok(s, 1, "ret-1", rows, 2);
	assert_string_equal(sql_text("SELECT count() FROM ember_t_ret.in_process"), "2");
	snprintf(url, sizeof(url), "%s/ember_t_ret?retention=2h", ch_url());
	assert_int_equal(store_open(url, &s2, err, sizeof(err)), 0);
	if (strncmp(sql_text("SELECT version()"), "18.", 3) == 0) {
		/* the thread's first pass runs at start; wait for it (bounded) */
		for (int i = 0; i < 600; i++) {
			if (strcmp(sql_text("SELECT count() FROM ember_t_ret.in_process"), "1") == 0)
				break;
			usleep(100 * 1000);
		}
		assert_string_equal(sql_text("SELECT profile_location_str FROM"
					     " ember_t_ret.in_process"),
				    "[p] new");
	}
	store_close(s2);
	store_close(s);
}

static int abort_now(void *arg)
{
	return *(volatile int *)arg;
}

static void test_cancel(void **state)
{
	struct store_query q = mkq(T0, T0, "svc");
	struct got g = {0};
	struct store *s;
	volatile int flag = 1;
	char err[512];

	NEED_SERVER();
	s = open_db("ember_t_cancel", NULL);
	q.should_abort = abort_now;
	q.abort_arg = (void *)&flag;
	assert_int_equal(query(s, 1, &q, &g, NULL), -ECANCELED);
	assert_int_equal(store_health(s, err, sizeof(err)), 0);
	store_close(s);
}

static void test_auth(void **state)
{
	char url[256], err[512];
	const char *port = getenv("CH_HTTP_PORT");
	struct store *s;

	NEED_SERVER();
	struct profile_row r = mkrow(T0, "svc", "[p] a", 1);
	struct store_query q = mkq(T0, T0, NULL);
	struct got g = {0};
	int dup;

	/* wrong password: the store opens, and every call says why it cannot work */
	snprintf(url, sizeof(url), "clickhouse://ember:wrong@127.0.0.1:%s/ember_t_auth", port);
	assert_int_equal(store_open(url, &s, err, sizeof(err)), 0);
	assert_int_equal(store_health(s, err, sizeof(err)), -EACCES);
	assert_non_null(strstr(err, "authentication failed for user 'ember'"));
	assert_int_equal(store_insert(s, 1, "auth-1", &r, 1, &dup), -EACCES);
	assert_non_null(strstr(store_errmsg(s), "authentication failed for user 'ember'"));
	assert_int_equal(query(s, 1, &q, &g, NULL), -EACCES);
	assert_non_null(strstr(store_errmsg(s), "authentication failed for user 'ember'"));
	store_close(s);
	/* percent-encoded password */
	snprintf(url, sizeof(url), "clickhouse://ember:%%73ecret@127.0.0.1:%s/ember_t_auth", port);
	assert_int_equal(store_open(url, &s, err, sizeof(err)), 0);
	assert_int_equal(store_health(s, err, sizeof(err)), 0);
	store_close(s);
}

/* ---- crash: ClickHouse killed mid-ingest and restarted ----------------------------------- */

#define CRASH_BATCHES 60
#define CRASH_ROWS 2000

struct crash_ctx {
	struct store *s;
	int acked[CRASH_BATCHES];
	int eagain_seen;
	int failed_rc; /* a non-retryable failure of the writer thread (asserted in main) */
	volatile int next; /* batches 0..next-1 have been acknowledged */
};

static void crash_rows(struct profile_row *rows, int b)
{
	static char stacks[CRASH_ROWS][32];

	for (int i = 0; i < CRASH_ROWS; i++) {
		snprintf(stacks[i], sizeof(stacks[i]), "[p] crash;f%d", i % 50);
		rows[i] = mkrow(T0 + b, "crash", stacks[i], 1);
	}
}

static void *crash_writer(void *arg)
{
	struct crash_ctx *c = arg;
	struct profile_row *rows = calloc(CRASH_ROWS, sizeof(*rows));

	for (int b = 0; b < CRASH_BATCHES; b++) {
		char id[32];
		int dup, rc;

		snprintf(id, sizeof(id), "crash-%d", b);
		crash_rows(rows, b);
		/* like an agent: retry the same batch until it is acknowledged */
		while ((rc = store_insert(c->s, 1, id, rows, CRASH_ROWS, &dup)) == -EAGAIN) {
			c->eagain_seen++;
			usleep(100 * 1000);
		}
		if (rc != 0) {
			c->failed_rc = rc;
			break;
		}
		c->acked[b] = 1;
		c->next = b + 1;
	}
	free(rows);
	return NULL;
}

static int run_script(const char *fn)
{
	char cmd[1024];

	snprintf(cmd, sizeof(cmd), "bash -c 'source \"%s/tests/lib/clickhouse.sh\" && %s'",
		 getenv("EMBER_TOP"), fn);
	return system(cmd);
}

static void test_crash_restart(void **state)
{
	struct crash_ctx c = {0};
	struct profile_row r = mkrow(T0, "x", "[p] x", 1);
	pthread_t th;
	char err[512];
	int dup;

	NEED_SERVER();
	if (!getenv("CH_DIR") || !getenv("EMBER_TOP")) {
		print_message("CH_DIR/EMBER_TOP not set: cannot restart the server, skipped\n");
		skip();
	}
	c.s = open_db("ember_t_crash", NULL);
	assert_int_equal(pthread_create(&th, NULL, crash_writer, &c), 0);
	while (c.next < 10 && !c.failed_rc)
		usleep(10 * 1000);
	assert_int_equal(run_script("ch_kill"), 0);
	/* down: health says unreachable, a write is refused with -EAGAIN */
	assert_int_equal(store_health(c.s, err, sizeof(err)), -EAGAIN);
	assert_non_null(strstr(err, "unreachable"));
	assert_int_equal(store_insert(c.s, 1, "crash-down", &r, 1, &dup), -EAGAIN);
	usleep(500 * 1000);
	assert_int_equal(run_script("ch_restart"), 0);
	assert_int_equal(store_health(c.s, err, sizeof(err)), 0);
	pthread_join(th, NULL);
	assert_int_equal(c.failed_rc, 0);
	for (int b = 0; b < CRASH_BATCHES; b++)
		assert_true(c.acked[b]);
	/* every acknowledged batch exactly once */
	snprintf(err, sizeof(err), "%d\t%d", CRASH_BATCHES * CRASH_ROWS, CRASH_BATCHES);
	assert_string_equal(sql_text("SELECT count(), uniqExact(batch_id) FROM"
				     " ember_t_crash.in_process"),
			    err);
	assert_string_equal(sql_text("SELECT count() FROM (SELECT batch_id, count() AS n FROM"
				     " ember_t_crash.in_process GROUP BY batch_id HAVING n != %d)",
				     CRASH_ROWS),
			    "0");
	print_message("crash test: %d inserts refused with -EAGAIN while down\n", c.eagain_seen);
	store_close(c.s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ddl_versions),
		cmocka_unit_test(test_quote_text),
		cmocka_unit_test(test_bad_urls),
		cmocka_unit_test(test_unreachable),
		cmocka_unit_test(test_schema_idempotent),
		cmocka_unit_test(test_insert_query),
		cmocka_unit_test(test_gauge),
		cmocka_unit_test(test_duplicates_and_recovery),
		cmocka_unit_test(test_bytes_roundtrip),
		cmocka_unit_test(test_quote_roundtrip),
		cmocka_unit_test(test_injection_corpus),
		cmocka_unit_test(test_orgs_isolated),
		cmocka_unit_test(test_zstd_rows),
		cmocka_unit_test(test_cancel),
		cmocka_unit_test(test_retention),
		cmocka_unit_test(test_auth),
		cmocka_unit_test(test_crash_restart),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
