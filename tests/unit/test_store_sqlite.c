/*
 * test_store_sqlite — the SQLite store on real files in a temporary directory.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>
#include <zstd.h>

#include "server/tagfilter.h"
#include "store/sqlite.h"
#include "store/store.h"

#define MAX_GOT 64

struct fixture {
	char dir[64];
	char path[128];
	struct store *s;
};

/* What a query delivered, in delivery order. */
struct got {
	size_t n;
	char *stack[MAX_GOT];
	int64_t value[MAX_GOT];
};

static int got_cb(void *arg, const char *stack, size_t len, int64_t value)
{
	struct got *g = arg;

	assert_true(g->n < MAX_GOT);
	g->stack[g->n] = strndup(stack, len);
	g->value[g->n] = value;
	g->n++;
	return 0;
}

static void got_free(struct got *g)
{
	for (size_t i = 0; i < g->n; i++)
		free(g->stack[i]);
	g->n = 0;
}

static int64_t got_value(const struct got *g, const char *stack)
{
	for (size_t i = 0; i < g->n; i++)
		if (strcmp(g->stack[i], stack) == 0)
			return g->value[i];
	return -1;
}

static struct profile_row row_make(int64_t time, const char *service, const char *stack,
				   int64_t value)
{
	return (struct profile_row){
		.time = time,
		.app_service = service,
		.app_instance = service,
		.profile_location_str = stack,
		.profile_value = value,
		.profile_value_unit = "microseconds",
		.profile_event_type = "on-cpu",
		.profile_language_type = "eBPF",
		.profile_create_timestamp = time * 1000000,
		.process_id = 42,
		.host = "node1",
		.agent = "agent1",
	};
}

static struct store_query query_make(int64_t start, int64_t end)
{
	return (struct store_query){
		.time_start = start,
		.time_end = end,
		.language_type = "eBPF",
		.event_type = "on-cpu",
		.max_stacks = 1000,
	};
}

static int query(struct store *s, int org, const struct store_query *q, struct got *g)
{
	got_free(g);
	return store_query_stacks(s, org, q, got_cb, g, NULL);
}

static void insert_ok(struct store *s, int org, const char *batch, const struct profile_row *rows,
		      size_t n)
{
	int dup = -1;

	assert_int_equal(store_insert(s, org, batch, rows, n, &dup), 0);
	assert_int_equal(dup, 0);
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	char err[256];

	snprintf(f->dir, sizeof(f->dir), "/tmp/ember-sqlite-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->path, sizeof(f->path), "%s/ember.db", f->dir);
	assert_int_equal(store_sqlite_open(f->path, &f->s, err, sizeof(err)), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	char cmd[128];

	store_close(f->s);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
	assert_int_equal(system(cmd), 0);
	free(f);
	return 0;
}

/* A raw connection to the file, to look behind the store's back. */
static sqlite3 *raw_open(const char *path)
{
	sqlite3 *db = NULL;

	assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
	sqlite3_busy_timeout(db, 5000);
	return db;
}

static int64_t raw_int(sqlite3 *db, const char *sql)
{
	sqlite3_stmt *st;
	int64_t v;

	assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	v = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return v;
}

static void raw_exec(sqlite3 *db, const char *sql)
{
	char *msg = NULL;
	int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);

	if (rc != SQLITE_OK)
		fail_msg("%s: %s", sql, msg);
}

static void test_insert_and_sum(void **state)
{
	struct fixture *f = *state;
	struct profile_row rows[] = {
		row_make(100, "nginx", "[p] nginx;main;a", 10),
		row_make(100, "nginx", "[p] nginx;main;b", 20),
		row_make(101, "nginx", "[p] nginx;main;a", 5),
	};
	struct store_query q = query_make(100, 101);
	struct store_query_info info = {.sql = STRBUF_INIT};
	struct got g = {0};

	insert_ok(f->s, 1, "b1", rows, 3);
	assert_int_equal(store_query_stacks(f->s, 1, &q, got_cb, &g, &info), 0);
	assert_int_equal(g.n, 2);
	/* biggest first */
	assert_string_equal(g.stack[0], "[p] nginx;main;b");
	assert_int_equal(got_value(&g, "[p] nginx;main;a"), 15);
	assert_int_equal(got_value(&g, "[p] nginx;main;b"), 20);
	assert_int_equal(info.n_stacks, 2);
	assert_int_equal(info.truncated, 0);
	assert_string_equal(info.engine, "sqlite");
	assert_string_equal(info.host, f->path);
	assert_non_null(strstr(info.sql.buf, "s.time >= 100 AND s.time <= 101"));
	assert_non_null(strstr(info.sql.buf, "profile_event_type = 'on-cpu'"));
	assert_null(strchr(info.sql.buf, '?'));
	sb_free(&info.sql);
	got_free(&g);
}

static void test_time_range_inclusive(void **state)
{
	struct fixture *f = *state;
	struct profile_row rows[] = {
		row_make(99, "x", "s", 1000),
		row_make(100, "x", "s", 100),
		row_make(101, "x", "s", 10),
		row_make(102, "x", "s", 1),
	};
	struct store_query q = query_make(100, 101);
	struct got g = {0};

	insert_ok(f->s, 1, "b1", rows, 4);
	assert_int_equal(query(f->s, 1, &q, &g), 0);
	assert_int_equal(g.n, 1);
	assert_int_equal(g.value[0], 110);
	q = query_make(102, 102);
	assert_int_equal(query(f->s, 1, &q, &g), 0);
	assert_int_equal(g.value[0], 1);
	q = query_make(103, 200);
	assert_int_equal(query(f->s, 1, &q, &g), 0);
	assert_int_equal(g.n, 0);
	got_free(&g);
}

static void test_service_event_language(void **state)
{
	struct fixture *f = *state;
	struct profile_row rows[] = {
		row_make(100, "a", "s", 1),  row_make(100, "b", "s", 2), row_make(100, "a", "t", 4),
		row_make(100, "a", "s", 8),  row_make(100, "a", "s", 16),
	};
	struct store_query q = query_make(0, 1000);
	struct got g = {0};

	rows[3].profile_event_type = "off-cpu";
	rows[4].profile_language_type = "Golang";
	insert_ok(f->s, 1, "b1", rows, 5);

	assert_int_equal(query(f->s, 1, &q, &g), 0);
	assert_int_equal(got_value(&g, "s"), 3);
	assert_int_equal(got_value(&g, "t"), 4);

	q.app_service = "a";
	assert_int_equal(query(f->s, 1, &q, &g), 0);
	assert_int_equal(got_value(&g, "s"), 1);
	assert_int_equal(got_value(&g, "t"), 4);

	q.event_type = "off-cpu";
	assert_int_equal(query(f->s, 1, &q, &g), 0);
	assert_int_equal(g.n, 1);
	assert_int_equal(got_value(&g, "s"), 8);

	q.event_type = "on-cpu";
	q.language_type = "Golang";
	assert_int_equal(query(f->s, 1, &q, &g), 0);
	assert_int_equal(g.n, 1);
	assert_int_equal(got_value(&g, "s"), 16);

	q.app_service = "nope";
	assert_int_equal(query(f->s, 1, &q, &g), 0);
	assert_int_equal(g.n, 0);
	got_free(&g);
}

static void test_list_services(void **state)
{
	struct fixture *f = *state;
	struct profile_row rows[] = {
		row_make(100, "zeta", "s", 1), row_make(100, "alpha", "s", 1),
		row_make(100, "mid", "s", 1), row_make(100, "alpha", "t", 1),
		row_make(500, "late", "s", 1),
	};
	struct store_query q = query_make(0, 200);
	struct store_query_info info = {.sql = STRBUF_INIT};
	char **names;
	size_t n;

	insert_ok(f->s, 1, "b1", rows, 5);
	q.app_service = "ignored";
	assert_int_equal(store_list_services(f->s, 1, &q, 10, &names, &n, &info), 0);
	assert_int_equal(n, 3);
	assert_string_equal(names[0], "alpha");
	assert_string_equal(names[1], "mid");
	assert_string_equal(names[2], "zeta");
	assert_int_equal(info.truncated, 0);
	store_free_names(names, n);

	assert_int_equal(store_list_services(f->s, 1, &q, 2, &names, &n, &info), 0);
	assert_int_equal(n, 2);
	assert_string_equal(names[1], "mid");
	assert_int_equal(info.truncated, 1);
	store_free_names(names, n);
	sb_free(&info.sql);
}

static void test_duplicate_batch(void **state)
{
	struct fixture *f = *state;
	struct profile_row rows[] = {row_make(100, "x", "s", 7)};
	struct store_query q = query_make(0, 1000);
	struct got g = {0};
	int dup = -1;

	insert_ok(f->s, 1, "batch-1", rows, 1);
	assert_int_equal(store_insert(f->s, 1, "batch-1", rows, 1, &dup), 0);
	assert_int_equal(dup, 1);
	insert_ok(f->s, 1, "batch-2", rows, 1);
	assert_int_equal(query(f->s, 1, &q, &g), 0);
	assert_int_equal(got_value(&g, "s"), 14);
	got_free(&g);
}

static void test_bad_row_stores_nothing(void **state)
{
	struct fixture *f = *state;
	struct profile_row rows[] = {
		row_make(100, "x", "s", 1),
		row_make(100, "x", "t", 1),
		row_make(100, "", "u", 1),
	};
	struct store_query q = query_make(0, 1000);
	struct got g = {0};
	int dup = -1;

	assert_int_equal(store_insert(f->s, 1, "b1", rows, 3, &dup), -EINVAL);
	assert_string_equal(store_errmsg(f->s), "row 2: field 'app_service': must not be empty");
	rows[2].app_service = "x";
	rows[1].profile_value = -1;
	assert_int_equal(store_insert(f->s, 1, "b1", rows, 3, &dup), -EINVAL);
	assert_non_null(strstr(store_errmsg(f->s), "row 1: field 'profile_value'"));
	rows[1].profile_value = 1;
	rows[0].profile_location_str = "";
	assert_int_equal(store_insert(f->s, 1, "b1", rows, 3, &dup), -EINVAL);
	assert_non_null(strstr(store_errmsg(f->s), "row 0: field 'profile_location_str'"));
	rows[0].profile_location_str = "s";
	rows[2].profile_event_type = NULL;
	assert_int_equal(store_insert(f->s, 1, "b1", rows, 3, &dup), -EINVAL);
	assert_non_null(strstr(store_errmsg(f->s), "row 2: field 'profile_event_type'"));
	assert_int_equal(store_insert(f->s, 1, "", rows, 1, &dup), -EINVAL);

	assert_int_equal(query(f->s, 1, &q, &g), 0);
	assert_int_equal(g.n, 0);
	/* the rejected batch id was not remembered: the corrected batch is stored */
	rows[2].profile_event_type = "on-cpu";
	insert_ok(f->s, 1, "b1", rows, 3);
	assert_int_equal(query(f->s, 1, &q, &g), 0);
	assert_int_equal(g.n, 3);
	got_free(&g);
}

/* A failure inside the transaction (here a trigger) leaves nothing, and no stale stack ids. */
static void test_failed_transaction_rolls_back(void **state)
{
	struct fixture *f = *state;
	struct profile_row rows[] = {row_make(100, "x", "brand-new-stack", 3)};
	struct store_query q = query_make(0, 1000);
	struct got g = {0};
	sqlite3 *db = raw_open(f->path);
	int dup = -1;

	raw_exec(db, "CREATE TRIGGER fail BEFORE INSERT ON batches WHEN NEW.batch_id = 'bad'"
		     " BEGIN SELECT RAISE(ABORT, 'refused by test'); END");
	assert_int_equal(store_insert(f->s, 1, "bad", rows, 1, &dup), -EIO);
	assert_non_null(strstr(store_errmsg(f->s), "refused by test"));
	assert_int_equal(raw_int(db, "SELECT count(*) FROM samples"), 0);
	assert_int_equal(raw_int(db, "SELECT count(*) FROM stacks"), 0);
	raw_exec(db, "DROP TRIGGER fail");
	insert_ok(f->s, 1, "good", rows, 1);
	assert_int_equal(query(f->s, 1, &q, &g), 0);
	assert_int_equal(got_value(&g, "brand-new-stack"), 3);
	sqlite3_close(db);
	got_free(&g);
}

/* One string address reused by the next batch with other text must not keep the old id. */
static void test_same_address_other_batch(void **state)
{
	struct fixture *f = *state;
	char buf[32] = "first;stack";
	struct profile_row rows[] = {row_make(100, "x", buf, 1), row_make(101, "x", buf, 2)};
	struct store_query q = query_make(0, 1000);
	struct got g = {0};

	insert_ok(f->s, 1, "b1", rows, 2);
	snprintf(buf, sizeof(buf), "second;stack");
	rows[0].profile_value = 4;
	insert_ok(f->s, 1, "b2", rows, 1);
	assert_int_equal(query(f->s, 1, &q, &g), 0);
	assert_int_equal(g.n, 2);
	assert_int_equal(got_value(&g, "first;stack"), 3);
	assert_int_equal(got_value(&g, "second;stack"), 4);
	got_free(&g);
}

/* Contexts are remembered by their text addresses within a batch: the same addresses with
 * another pid are another process, and addresses reused by the next batch with other text must
 * not keep the old context. */
static void test_same_context_addresses(void **state)
{
	struct fixture *f = *state;
	char svc[32] = "alpha";
	struct profile_row rows[] = {row_make(100, svc, "s;a", 1), row_make(100, svc, "s;a", 2),
				     row_make(101, svc, "s;a", 4)};
	struct store_query q = query_make(0, 1000);
	struct got g = {0};
	sqlite3 *db;

	rows[1].process_id = 43;
	insert_ok(f->s, 1, "b1", rows, 3);
	snprintf(svc, sizeof(svc), "beta");
	rows[0].profile_value = 8;
	insert_ok(f->s, 1, "b2", rows, 1);
	db = raw_open(f->path);
	assert_int_equal(raw_int(db, "SELECT count(*) FROM contexts"), 3);
	assert_int_equal(raw_int(db, "SELECT sum(profile_value) FROM in_process"
				     " WHERE app_service = 'alpha' AND process_id = 42"), 5);
	assert_int_equal(raw_int(db, "SELECT sum(profile_value) FROM in_process"
				     " WHERE app_service = 'alpha' AND process_id = 43"), 2);
	sqlite3_close(db);
	q.app_service = "beta";
	assert_int_equal(query(f->s, 1, &q, &g), 0);
	assert_int_equal(g.n, 1);
	assert_int_equal(got_value(&g, "s;a"), 8);
	got_free(&g);

	/* Tags: the same arrays' addresses are one context; another value is another one. */
	const char *names[] = {"k"}, *v1[] = {"1"}, *v2[] = {"2"};

	for (int i = 0; i < 3; i++) {
		rows[i].n_tags = 1;
		rows[i].tag_names = names;
		rows[i].tag_values = i == 1 ? v2 : v1;
		rows[i].process_id = 42;
	}
	insert_ok(f->s, 1, "b3", rows, 3);
	db = raw_open(f->path);
	assert_int_equal(raw_int(db, "SELECT count(*) FROM contexts"), 5);
	assert_int_equal(raw_int(db, "SELECT sum(profile_value) FROM in_process"
				     " WHERE tag_values = '[\"1\"]'"), 12);
	assert_int_equal(raw_int(db, "SELECT sum(profile_value) FROM in_process"
				     " WHERE tag_values = '[\"2\"]'"), 2);
	sqlite3_close(db);
}

/* Rows go in by groups of 32 and one by one for the rest: every row lands, with its own
 * values, whatever the batch size. */
static void test_grouped_insert_sizes(void **state)
{
	struct fixture *f = *state;
	static const size_t sizes[] = {1, 31, 32, 33, 100};
	struct profile_row rows[100];
	char batch[16];
	int64_t want_sum = 0, want_n = 0;
	sqlite3 *db;

	for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
		for (size_t i = 0; i < sizes[k]; i++) {
			rows[i] = row_make(100 + (int64_t)i, "svc", i % 2 ? "s;odd" : "s;even",
					   (int64_t)(k * 1000 + i));
			rows[i].process_id = (int64_t)i % 3;
			want_sum += rows[i].profile_value;
		}
		want_n += (int64_t)sizes[k];
		snprintf(batch, sizeof(batch), "b%zu", k);
		insert_ok(f->s, 1, batch, rows, sizes[k]);
	}
	db = raw_open(f->path);
	assert_int_equal(raw_int(db, "SELECT count(*) FROM in_process"), want_n);
	assert_int_equal(raw_int(db, "SELECT sum(profile_value) FROM in_process"), want_sum);
	assert_int_equal(raw_int(db, "SELECT count(*) FROM in_process WHERE profile_value = 4099"
				     " AND time = 199 AND process_id = 0 AND profile_location_str = 's;odd'"),
			 1);
	sqlite3_close(db);
}

static void test_gauge_latest_per_process(void **state)
{
	struct fixture *f = *state;
	struct profile_row rows[] = {
		row_make(10, "x", "s", 100), row_make(20, "x", "s", 50), /* agent1 pid 42: 50 */
		row_make(15, "x", "s", 7),                               /* agent1 pid 43: 7 */
		row_make(5, "x", "s", 3),                                /* agent2 pid 42: 3 */
		row_make(12, "x", "t", 9), row_make(11, "x", "t", 1),    /* t: latest is 9 */
	};
	struct store_query q = query_make(0, 100);
	struct got g = {0};

	for (size_t i = 0; i < 6; i++)
		rows[i].profile_event_type = "mem-inuse";
	rows[2].process_id = 43;
	rows[3].agent = "agent2";
	insert_ok(f->s, 1, "b1", rows, 6);
	q.event_type = "mem-inuse";
	q.gauge = 1;
	assert_int_equal(query(f->s, 1, &q, &g), 0);
	assert_int_equal(got_value(&g, "s"), 60);
	assert_int_equal(got_value(&g, "t"), 9);
	q.gauge = 0;
	assert_int_equal(query(f->s, 1, &q, &g), 0);
	assert_int_equal(got_value(&g, "s"), 160);
	got_free(&g);
}

static void test_truncation_keeps_biggest(void **state)
{
	struct fixture *f = *state;
	struct profile_row rows[5];
	const char *stacks[] = {"s1", "s2", "s3", "s4", "s5"};
	struct store_query q = query_make(0, 1000);
	struct store_query_info info = {.sql = STRBUF_INIT};
	struct got g = {0};

	for (int i = 0; i < 5; i++)
		rows[i] = row_make(100, "x", stacks[i], i + 1);
	insert_ok(f->s, 1, "b1", rows, 5);
	q.max_stacks = 3;
	assert_int_equal(store_query_stacks(f->s, 1, &q, got_cb, &g, &info), 0);
	assert_int_equal(g.n, 3);
	assert_string_equal(g.stack[0], "s5");
	assert_string_equal(g.stack[1], "s4");
	assert_string_equal(g.stack[2], "s3");
	assert_int_equal(info.truncated, 1);
	assert_int_equal(info.n_stacks, 3);
	got_free(&g);
	q.max_stacks = 5;
	assert_int_equal(store_query_stacks(f->s, 1, &q, got_cb, &g, &info), 0);
	assert_int_equal(g.n, 5);
	assert_int_equal(info.truncated, 0);
	sb_free(&info.sql);
	got_free(&g);
}

static int stop_cb(void *arg, const char *stack, size_t len, int64_t value)
{
	int *calls = arg;

	return ++*calls == 2 ? 77 : 0;
}

static void test_callback_stops(void **state)
{
	struct fixture *f = *state;
	struct profile_row rows[] = {row_make(100, "x", "a", 1), row_make(100, "x", "b", 2),
				     row_make(100, "x", "c", 3)};
	struct store_query q = query_make(0, 1000);
	int calls = 0;

	insert_ok(f->s, 1, "b1", rows, 3);
	assert_int_equal(store_query_stacks(f->s, 1, &q, stop_cb, &calls, NULL), 77);
	assert_int_equal(calls, 2);
}

static void test_orgs_are_separate_files(void **state)
{
	struct fixture *f = *state;
	struct profile_row r1[] = {row_make(100, "x", "org1-stack", 1)};
	struct profile_row r2[] = {row_make(100, "x", "org2-stack", 2)};
	struct store_query q = query_make(0, 1000);
	char org2[256], org3[256], name[256];
	struct got g = {0};

	assert_int_equal(store_sqlite_org_path(f->path, 2, org2, sizeof(org2)), 0);
	snprintf(name, sizeof(name), "%s/ember.0002_profile.db", f->dir);
	assert_string_equal(org2, name);
	assert_int_equal(store_sqlite_org_path("/a.b/data", 12, name, sizeof(name)), 0);
	assert_string_equal(name, "/a.b/data.0012_profile");
	assert_int_equal(store_sqlite_org_path("./.hidden", 3, name, sizeof(name)), 0);
	assert_string_equal(name, "./.hidden.0003_profile");
	assert_int_equal(store_sqlite_org_path("x.db", 1, name, sizeof(name)), 0);
	assert_string_equal(name, "x.db");
	assert_int_equal(store_sqlite_org_path("x.db", 10000, name, sizeof(name)), -EINVAL);

	insert_ok(f->s, 1, "same-id", r1, 1);
	insert_ok(f->s, 2, "same-id", r2, 1); /* batch ids are per organisation */
	assert_int_equal(access(org2, F_OK), 0);
	assert_int_equal(query(f->s, 1, &q, &g), 0);
	assert_int_equal(g.n, 1);
	assert_string_equal(g.stack[0], "org1-stack");
	assert_int_equal(query(f->s, 2, &q, &g), 0);
	assert_int_equal(g.n, 1);
	assert_string_equal(g.stack[0], "org2-stack");

	/* reading an organisation that never stored anything creates no file */
	assert_int_equal(store_sqlite_org_path(f->path, 3, org3, sizeof(org3)), 0);
	assert_int_equal(query(f->s, 3, &q, &g), 0);
	assert_int_equal(g.n, 0);
	assert_int_equal(access(org3, F_OK), -1);
	assert_int_equal(query(f->s, 10000, &q, &g), -EINVAL);
	got_free(&g);
}

/* More organisations than stay open: the least recently used ones are closed and reopened. */
static void test_many_orgs(void **state)
{
	struct fixture *f = *state;
	struct store_query q = query_make(0, 1000);
	struct got g = {0};
	char stack[32];

	for (int org = 2; org <= 80; org++) {
		struct profile_row r[1];

		snprintf(stack, sizeof(stack), "stack-of-%d", org);
		r[0] = row_make(100, "x", stack, org);
		insert_ok(f->s, org, "b", r, 1);
	}
	for (int org = 2; org <= 80; org += 13) {
		snprintf(stack, sizeof(stack), "stack-of-%d", org);
		assert_int_equal(query(f->s, org, &q, &g), 0);
		assert_int_equal(g.n, 1);
		assert_string_equal(g.stack[0], stack);
		assert_int_equal(g.value[0], org);
	}
	got_free(&g);
}

static void test_persistence(void **state)
{
	struct fixture *f = *state;
	struct profile_row rows[] = {row_make(100, "x", "kept", 9)};
	struct store_query q = query_make(0, 1000);
	struct got g = {0};
	char err[256], wal[160];
	int dup = -1;

	insert_ok(f->s, 1, "b1", rows, 1);
	insert_ok(f->s, 5, "b1", rows, 1);
	store_close(f->s);
	/* every connection was closed cleanly: the last one folded the WAL into the file */
	snprintf(wal, sizeof(wal), "%s-wal", f->path);
	assert_int_equal(access(wal, F_OK), -1);
	assert_int_equal(store_sqlite_open(f->path, &f->s, err, sizeof(err)), 0);
	assert_int_equal(query(f->s, 1, &q, &g), 0);
	assert_int_equal(got_value(&g, "kept"), 9);
	assert_int_equal(query(f->s, 5, &q, &g), 0);
	assert_int_equal(got_value(&g, "kept"), 9);
	/* batch ids survive too */
	assert_int_equal(store_insert(f->s, 1, "b1", rows, 1, &dup), 0);
	assert_int_equal(dup, 1);
	got_free(&g);
}

/*
 * The store checkpoints in its own thread (SQLite's inline auto-checkpoint held the write lock
 * while copying the WAL): once the writer is idle, the rest of the WAL reaches the database
 * file with no further commit. With SQLite's default (1000 pages) this small batch would stay in
 * the WAL and the file would not grow.
 */
static void test_idle_checkpoint(void **state)
{
	struct fixture *f = *state;
	struct profile_row rows[200];
	char stacks[200][32];
	struct stat st;
	off_t before;
	int i;

	for (i = 0; i < 200; i++) {
		snprintf(stacks[i], sizeof(stacks[i]), "main;work;leaf_%d", i);
		rows[i] = row_make(100 + i, "svc", stacks[i], 1);
	}
	insert_ok(f->s, 1, "b1", rows, 200);
	assert_int_equal(stat(f->path, &st), 0);
	before = st.st_size;
	/* Polls for the background checkpoint; the bound only keeps a broken build from hanging. */
	for (i = 0; i < 1200; i++) {
		assert_int_equal(stat(f->path, &st), 0);
		if (st.st_size > before)
			break;
		usleep(50000);
	}
	assert_true(st.st_size > before);
}

static void test_schema_version(void **state)
{
	struct fixture *f = *state;
	sqlite3 *db = raw_open(f->path);
	struct store *s2 = NULL;
	char err[512];

	assert_int_equal(raw_int(db, "SELECT value FROM meta WHERE key = 'schema_version'"), 2);
	store_close(f->s);
	f->s = NULL;
	raw_exec(db, "UPDATE meta SET value = 99 WHERE key = 'schema_version'");
	sqlite3_close(db);
	assert_int_equal(store_sqlite_open(f->path, &s2, err, sizeof(err)), -EPROTO);
	assert_null(s2);
	assert_non_null(strstr(err, "schema version 99 is newer than this ember knows (2)"));
	assert_non_null(strstr(err, f->path));

	db = raw_open(f->path);
	raw_exec(db, "UPDATE meta SET value = 2 WHERE key = 'schema_version'");
	sqlite3_close(db);
	assert_int_equal(store_sqlite_open(f->path, &f->s, err, sizeof(err)), 0);
}

/*
 * A version 1 file (samples as a rowid table plus the samples_time index) is rebuilt as version
 * 2 at open: every row is still there, and new rows are numbered after the old ones.
 */
static void test_migrate_v1(void **state)
{
	struct fixture *f = *state;
	struct profile_row rows[] = {row_make(100, "x", "[p] x;a", 1), row_make(100, "x", "[p] x;a", 2),
				     row_make(101, "x", "[p] x;b", 4)};
	struct store_query q = query_make(0, 1000);
	char err[512], *view;
	struct got g = {0};
	sqlite3_stmt *st;
	sqlite3 *db;

	insert_ok(f->s, 1, "b1", rows, 3);
	store_close(f->s);
	f->s = NULL;
	db = raw_open(f->path);
	assert_int_equal(sqlite3_prepare_v2(db, "SELECT sql FROM sqlite_master"
						" WHERE name = 'in_process'", -1, &st, NULL),
			 SQLITE_OK);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	view = strdup((const char *)sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	raw_exec(db, "BEGIN; DROP VIEW in_process;"
		     "CREATE TABLE s1(time INTEGER NOT NULL, context_id INTEGER NOT NULL,"
		     " stack_id INTEGER NOT NULL, profile_value INTEGER NOT NULL,"
		     " profile_create_timestamp INTEGER NOT NULL,"
		     " profile_in_timestamp INTEGER NOT NULL);"
		     "INSERT INTO s1(rowid, time, context_id, stack_id, profile_value,"
		     " profile_create_timestamp, profile_in_timestamp) SELECT seq + 40, time,"
		     " context_id, stack_id, profile_value, profile_create_timestamp,"
		     " profile_in_timestamp FROM samples;"
		     "DROP TABLE samples; ALTER TABLE s1 RENAME TO samples;"
		     "CREATE INDEX samples_time ON samples(time, context_id, stack_id, profile_value);"
		     "DELETE FROM meta WHERE key = 'next_seq';"
		     "UPDATE meta SET value = 1 WHERE key = 'schema_version'");
	raw_exec(db, view);
	raw_exec(db, "COMMIT");
	free(view);
	sqlite3_close(db);

	assert_int_equal(store_sqlite_open(f->path, &f->s, err, sizeof(err)), 0);
	db = raw_open(f->path);
	assert_int_equal(raw_int(db, "SELECT value FROM meta WHERE key = 'schema_version'"), 2);
	assert_int_equal(raw_int(db, "SELECT count(*) FROM sqlite_master"
				     " WHERE name = 'samples_time'"), 0);
	assert_int_equal(raw_int(db, "SELECT value FROM meta WHERE key = 'next_seq'"), 44);
	assert_int_equal(raw_int(db, "SELECT sum(profile_value) FROM in_process"), 7);
	assert_int_equal(query(f->s, 1, &q, &g), 0);
	assert_int_equal(g.n, 2);
	assert_string_equal(g.stack[0], "[p] x;b");
	assert_int_equal(g.value[0], 4);
	assert_int_equal(g.value[1], 3);
	got_free(&g);

	insert_ok(f->s, 1, "b2", rows, 3);
	assert_int_equal(raw_int(db, "SELECT min(seq) FROM samples WHERE seq >= 44"), 44);
	assert_int_equal(raw_int(db, "SELECT value FROM meta WHERE key = 'next_seq'"), 47);
	assert_int_equal(raw_int(db, "SELECT sum(profile_value) FROM in_process"), 14);
	sqlite3_close(db);
}

static void test_open_errors(void **state)
{
	struct store *s = NULL;
	char err[512];

	assert_int_equal(store_sqlite_open("/nonexistent-dir/x/ember.db", &s, err, sizeof(err)),
			 -ENOENT);
	assert_null(s);
	assert_non_null(strstr(err, "/nonexistent-dir/x/ember.db"));
	assert_int_equal(store_sqlite_open("", &s, err, sizeof(err)), -EINVAL);
}

static void test_zstd_stack_decoded(void **state)
{
	struct fixture *f = *state;
	const char *plain = "[p] java;main;compressed;frame";
	char frame[256];
	size_t n = ZSTD_compress(frame, sizeof(frame), plain, strlen(plain), 3);
	struct store_query q = query_make(0, 1000);
	struct got g = {0};
	sqlite3 *db = raw_open(f->path);
	sqlite3_stmt *st;

	assert_false(ZSTD_isError(n));
	assert_int_equal(sqlite3_prepare_v2(db, "INSERT INTO stacks(id, text, compression_algo)"
						" VALUES(7, CAST(? AS TEXT), 'zstd')",
					    -1, &st, NULL),
			 SQLITE_OK);
	sqlite3_bind_blob(st, 1, frame, (int)n, SQLITE_STATIC);
	assert_int_equal(sqlite3_step(st), SQLITE_DONE);
	sqlite3_finalize(st);
	raw_exec(db, "INSERT INTO stacks(id, text, compression_algo) VALUES(8, 'xx', 'lz4')");
	raw_exec(db, "INSERT INTO contexts VALUES(3, x'00', 'j', 'j', 'microseconds', 'on-cpu',"
		     " 'eBPF', 1, 0, '', '', '', '', '', '', '', '', '', '[]', '[]', '', '', '')");
	raw_exec(db, "INSERT INTO samples SELECT 100, id, 3, id, 5, 0, 0 FROM stacks"
		     " WHERE id IN (7, 8)");
	sqlite3_close(db);

	assert_int_equal(query(f->s, 1, &q, &g), 0);
	assert_int_equal(g.n, 1); /* the unknown algorithm is skipped, not passed on as text */
	assert_string_equal(g.stack[0], plain);
	assert_int_equal(g.value[0], 5);
	got_free(&g);
}

static void test_view_has_logical_columns(void **state)
{
	static const char *const cols[] = {
		"time", "app_service", "app_instance", "profile_location_str", "profile_value",
		"profile_value_unit", "profile_event_type", "profile_language_type",
		"profile_create_timestamp", "profile_in_timestamp", "process_id",
		"process_start_time", "host", "agent", "host_ip", "container_id", "pod_cluster",
		"pod_ns", "pod_node", "pod", "pod_group", "tag_names", "tag_values", "trace_id",
		"span_name", "profile_id", "compression_algo", "stack_id", "context_id",
	};
	struct fixture *f = *state;
	const char *names[] = {"k8s.label.app", "team"};
	const char *values[] = {"web \"front\"", "core"};
	struct profile_row rows[] = {row_make(100, "x", "[p] x;main", 3)};
	sqlite3 *db;
	sqlite3_stmt *st;

	rows[0].n_tags = 2;
	rows[0].tag_names = names;
	rows[0].tag_values = values;
	rows[0].process_start_time = 1234;
	insert_ok(f->s, 1, "b1", rows, 1);
	db = raw_open(f->path);
	assert_int_equal(sqlite3_prepare_v2(db, "SELECT * FROM in_process", -1, &st, NULL),
			 SQLITE_OK);
	assert_int_equal(sqlite3_column_count(st), sizeof(cols) / sizeof(cols[0]));
	for (size_t i = 0; i < sizeof(cols) / sizeof(cols[0]); i++)
		assert_string_equal(sqlite3_column_name(st, (int)i), cols[i]);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	assert_string_equal(sqlite3_column_text(st, 3), "[p] x;main");
	assert_string_equal(sqlite3_column_text(st, 5), "microseconds");
	assert_int_equal(sqlite3_column_int64(st, 11), 1234);
	assert_string_equal(sqlite3_column_text(st, 21), "[\"k8s.label.app\",\"team\"]");
	assert_string_equal(sqlite3_column_text(st, 22), "[\"web \\\"front\\\"\",\"core\"]");
	assert_string_equal(sqlite3_column_text(st, 26), "");
	/* profile_in_timestamp was 0 in the row: the store set it to the time of the insert */
	assert_true(sqlite3_column_int64(st, 9) > 1700000000000000ll);
	sqlite3_finalize(st);
	/* the tags are JSON the SQL functions can read */
	assert_int_equal(raw_int(db, "SELECT count(*) FROM in_process, json_each(tag_values) j"
				     " WHERE j.value = 'web \"front\"'"),
			 1);
	sqlite3_close(db);
}

static void test_prune(void **state)
{
	struct fixture *f = *state;
	struct profile_row rows[] = {
		row_make(100, "x", "old-only", 1), row_make(100, "x", "shared", 2),
		row_make(200, "x", "shared", 4), row_make(200, "x", "new-only", 8),
	};
	struct profile_row again[] = {row_make(300, "x", "old-only", 16)};
	struct store_query q = query_make(0, 1000);
	struct got g = {0};
	uint64_t deleted = 0;
	sqlite3 *db;

	rows[0].process_id = 1; /* a process with old rows only: its context goes too */
	insert_ok(f->s, 1, "b1", rows, 4);
	insert_ok(f->s, 2, "b1", rows, 4);
	assert_int_equal(store_sqlite_prune(f->s, 150, &deleted), 0);
	assert_int_equal(deleted, 4); /* 2 rows in each organisation */
	db = raw_open(f->path);
	assert_int_equal(raw_int(db, "SELECT count(*) FROM stacks"), 2);
	assert_int_equal(raw_int(db, "SELECT count(*) FROM samples"), 2);
	assert_int_equal(raw_int(db, "SELECT count(*) FROM contexts"), 1);
	sqlite3_close(db);
	assert_int_equal(query(f->s, 2, &q, &g), 0);
	assert_int_equal(g.n, 2);
	assert_int_equal(got_value(&g, "shared"), 4);
	assert_int_equal(got_value(&g, "old-only"), -1);
	/* a pruned stack stored again gets its text back (the id cache was emptied) */
	insert_ok(f->s, 1, "b2", again, 1);
	assert_int_equal(query(f->s, 1, &q, &g), 0);
	assert_int_equal(got_value(&g, "old-only"), 16);
	got_free(&g);
}

static off_t file_size(const char *path)
{
	struct stat st;

	assert_int_equal(stat(path, &st), 0);
	return st.st_size;
}

/* Polls until the file's size satisfies want(size, ref); the bound only stops a broken build. */
static off_t wait_size(const char *path, bool (*want)(off_t, off_t), off_t ref)
{
	off_t size = file_size(path);

	for (int i = 0; i < 1200 && !want(size, ref); i++) {
		usleep(50000);
		size = file_size(path);
	}
	return size;
}

static bool grew_past(off_t size, off_t ref)
{
	return size > ref;
}

static bool shrank_below(off_t size, off_t ref)
{
	return size < ref;
}

/*
 * Retention gives the space back: a file grown by 20,000 rows of distinct, incompressible stacks
 * shrinks to a small part of that once they are pruned (new files are made with
 * auto_vacuum=INCREMENTAL, the freed pages are given back after the prune, the file is cut when
 * the checkpointer copies the WAL), and rows stored afterwards still read back.
 */
static void test_prune_gives_space_back(void **state)
{
	enum { N = 20000, BATCH = 1000, STACK = 320 };
	struct fixture *f = *state;
	struct profile_row *rows = calloc(BATCH, sizeof(*rows));
	char(*stacks)[STACK] = calloc(BATCH, STACK);
	struct profile_row later[] = {row_make(5000, "x", "main;after", 3)};
	struct store_query q = query_make(0, 10000);
	struct got g = {0};
	uint64_t deleted = 0, x = 88172645463325252ull;
	off_t full, pruned;
	sqlite3 *db;

	assert_non_null(rows);
	assert_non_null(stacks);
	for (int b = 0; b < N / BATCH; b++) {
		char batch[32];

		for (int i = 0; i < BATCH; i++) {
			int n = snprintf(stacks[i], STACK, "main;fn_%d", b * BATCH + i);

			while (n < STACK - 18) { /* xorshift hex: nothing for zstd to find */
				x ^= x << 13, x ^= x >> 7, x ^= x << 17;
				n += snprintf(stacks[i] + n, (size_t)(STACK - n), ";%016llx",
					      (unsigned long long)x);
			}
			rows[i] = row_make(100 + b, "x", stacks[i], 1);
		}
		snprintf(batch, sizeof(batch), "b%d", b);
		insert_ok(f->s, 1, batch, rows, BATCH);
	}
	db = raw_open(f->path);
	assert_int_equal(raw_int(db, "PRAGMA auto_vacuum"), 2); /* incremental */
	sqlite3_close(db);
	full = wait_size(f->path, grew_past, 4 << 20);
	assert_true(full > 4 << 20);

	assert_int_equal(store_sqlite_prune(f->s, 1000, &deleted), 0);
	assert_int_equal(deleted, N);
	pruned = wait_size(f->path, shrank_below, full / 4);
	assert_true(pruned < full / 4);

	insert_ok(f->s, 1, "after", later, 1);
	assert_int_equal(query(f->s, 1, &q, &g), 0);
	assert_int_equal(g.n, 1);
	assert_int_equal(got_value(&g, "main;after"), 3);
	got_free(&g);
	free(stacks);
	free(rows);
}

/*
 * Readers never wait for a writer: with another process holding the write lock, a query that
 * opens the store's first read connection answers at once. (A connection that sent a pragma
 * which writes, as auto_vacuum does on a file that has it, waited the 5 s busy timeout and
 * failed with "database is locked".)
 */
static void test_reader_opens_under_write_lock(void **state)
{
	struct fixture *f = *state;
	struct profile_row rows[] = {row_make(100, "x", "main;a", 5)};
	struct store_query q = query_make(0, 1000);
	struct got g = {0};
	sqlite3 *db;

	insert_ok(f->s, 1, "b1", rows, 1);
	db = raw_open(f->path);
	raw_exec(db, "BEGIN IMMEDIATE");
	assert_int_equal(query(f->s, 1, &q, &g), 0);
	assert_int_equal(got_value(&g, "main;a"), 5);
	raw_exec(db, "COMMIT");
	sqlite3_close(db);
	got_free(&g);
}

/*
 * An older file, made without auto_vacuum: pruning works and keeps the free pages for reuse
 * (nothing is given back, nothing fails).
 */
static void test_prune_without_auto_vacuum(void **state)
{
	struct fixture *f = *state;
	struct profile_row rows[] = {row_make(100, "x", "main;a", 5), row_make(200, "x", "main;b", 7)};
	struct store_query q = query_make(0, 1000);
	char path[PATH_MAX + 16], err[256];
	struct store *s;
	struct got g = {0};
	uint64_t deleted = 0;
	sqlite3 *db;

	snprintf(path, sizeof(path), "%s/old.db", f->dir);
	db = raw_open(path);
	raw_exec(db, "PRAGMA auto_vacuum=NONE; PRAGMA journal_mode=WAL; CREATE TABLE keep(x)");
	sqlite3_close(db);
	assert_int_equal(store_sqlite_open(path, &s, err, sizeof(err)), 0);
	insert_ok(s, 1, "b1", rows, 2);
	assert_int_equal(store_sqlite_prune(s, 150, &deleted), 0);
	assert_int_equal(deleted, 1);
	assert_int_equal(query(s, 1, &q, &g), 0);
	assert_int_equal(g.n, 1);
	assert_int_equal(got_value(&g, "main;b"), 7);
	store_close(s);
	db = raw_open(path);
	assert_int_equal(raw_int(db, "PRAGMA auto_vacuum"), 0);
	sqlite3_close(db);
	got_free(&g);
}

/* A stack whose preferred id is taken by another text moves to the next free id. */
static void test_stack_id_collision(void **state)
{
	struct fixture *f = *state;
	struct profile_row rows[] = {row_make(100, "x", "victim", 1)};
	struct store_query q = query_make(0, 1000);
	struct got g = {0};
	char err[256], path2[160];
	struct store *s2;
	int64_t id;
	sqlite3 *db;

	insert_ok(f->s, 1, "b1", rows, 1);
	db = raw_open(f->path);
	id = raw_int(db, "SELECT id FROM stacks");
	sqlite3_close(db);

	/* a second file where that id already holds a different text */
	snprintf(path2, sizeof(path2), "%s/other.db", f->dir);
	assert_int_equal(store_sqlite_open(path2, &s2, err, sizeof(err)), 0);
	db = raw_open(path2);
	char sql[128];
	snprintf(sql, sizeof(sql), "INSERT INTO stacks(id, text) VALUES(%lld, 'squatter')",
		 (long long)id);
	raw_exec(db, sql);
	insert_ok(s2, 1, "b1", rows, 1);
	snprintf(sql, sizeof(sql), "SELECT id FROM stacks WHERE text = 'victim'");
	assert_int_equal(raw_int(db, sql), id + 1);
	sqlite3_close(db);
	insert_ok(s2, 1, "b2", rows, 1); /* from the cache now */
	assert_int_equal(query(s2, 1, &q, &g), 0);
	assert_int_equal(g.n, 1);
	assert_string_equal(g.stack[0], "victim");
	assert_int_equal(g.value[0], 2);
	store_close(s2);
	got_free(&g);
}

static void test_time_limit(void **state)
{
	struct fixture *f = *state;
	enum { N = 5000 };
	struct profile_row *rows = calloc(N, sizeof(*rows));
	char (*stacks)[24] = calloc(N, sizeof(*stacks));
	struct store_query q = query_make(0, 1000);
	struct got g = {0};

	for (int i = 0; i < N; i++) {
		snprintf(stacks[i], sizeof(stacks[i]), "stack-%d", i);
		rows[i] = row_make(100, "x", stacks[i], 1);
	}
	insert_ok(f->s, 1, "b1", rows, N);
	q.max_seconds = 1e-9; /* already over when the first check runs */
	assert_int_equal(query(f->s, 1, &q, &g), -ETIMEDOUT);
	assert_non_null(strstr(store_errmsg(f->s), "time limit"));
	assert_int_equal(g.n, 0);
	/* the connection is usable afterwards, without the limit */
	q.max_seconds = 0;
	q.max_stacks = 10;
	assert_int_equal(query(f->s, 1, &q, &g), 0);
	assert_int_equal(g.n, 10);
	got_free(&g);
	free(rows);
	free(stacks);
}

static void test_health(void **state)
{
	struct fixture *f = *state;
	char err[256] = "";

	assert_int_equal(store_health(f->s, err, sizeof(err)), 0);
}

/* Runs a query with tag_filter text; returns the query's result code. */
static int query_filter(struct store *s, const char *filter, struct got *g,
			struct store_query_info *info)
{
	struct store_query q = query_make(0, 1000);
	struct tf_expr *e = NULL;
	struct tf_error err;
	int rc;

	if (tagfilter_parse(filter, &e, &err) != 0)
		fail_msg("parse '%s': %s", filter, err.message);
	q.filter = e;
	got_free(g);
	rc = store_query_stacks(s, 1, &q, got_cb, g, info);
	tagfilter_free(e);
	return rc;
}

static void test_tag_filters(void **state)
{
	struct fixture *f = *state;
	const char *n1[] = {"k8s.label.app", "team"}, *v1[] = {"web", "core"};
	const char *n2[] = {"k8s.label.app"}, *v2[] = {"db"};
	struct profile_row rows[] = {
		row_make(100, "nginx", "[p] nginx;main;ngx_worker", 1),
		row_make(100, "mysqld", "[p] mysqld;main;handle_query", 2),
		row_make(100, "bash", "[p] bash;main;readline", 4),
	};
	struct store_query_info info = {.sql = STRBUF_INIT};
	struct got g = {0};
	char **names;
	size_t n;

	rows[0].n_tags = 2, rows[0].tag_names = n1, rows[0].tag_values = v1;
	rows[1].n_tags = 1, rows[1].tag_names = n2, rows[1].tag_values = v2;
	rows[1].host = "node2";
	rows[2].process_id = 7;
	insert_ok(f->s, 1, "b1", rows, 3);

	assert_int_equal(query_filter(f->s, "`k8s.label.app` = 'web'", &g, NULL), 0);
	assert_int_equal(g.n, 1);
	assert_int_equal(got_value(&g, "[p] nginx;main;ngx_worker"), 1);
	assert_int_equal(query_filter(f->s, "k8s.label.app != 'web'", &g, NULL), 0);
	assert_int_equal(g.n, 2);
	assert_int_equal(query_filter(f->s, "tag.team IN ('core', 'x')", &g, NULL), 0);
	assert_int_equal(g.n, 1);
	assert_int_equal(query_filter(f->s, "host = 'node2' OR process_id = 7", &g, NULL), 0);
	assert_int_equal(g.n, 2);
	assert_int_equal(got_value(&g, "[p] bash;main;readline"), 4);
	assert_int_equal(query_filter(f->s, "NOT (app_service = 'bash') AND host = 'node1'", &g,
				      NULL),
			 0);
	assert_int_equal(g.n, 1);
	assert_int_equal(got_value(&g, "[p] nginx;main;ngx_worker"), 1);

	/* filters on the stack text read the view; REGEXP is POSIX extended */
	assert_int_equal(query_filter(f->s, "profile_location_str REGEXP 'main;(ngx|handle)_'", &g,
				      &info),
			 0);
	assert_int_equal(g.n, 2);
	assert_int_equal(got_value(&g, "[p] mysqld;main;handle_query"), 2);
	assert_non_null(strstr(info.sql.buf, "FROM in_process"));
	assert_non_null(strstr(info.sql.buf, "'main;(ngx|handle)_'"));
	assert_int_equal(query_filter(f->s, "app_service REGEXP '^(bash|nginx)$'", &g, &info), 0);
	assert_int_equal(g.n, 2);
	assert_non_null(strstr(info.sql.buf, "FROM samples"));
	assert_int_equal(query_filter(f->s, "profile_location_str LIKE '%readline'", &g, NULL), 0);
	assert_int_equal(g.n, 1);
	assert_int_equal(got_value(&g, "[p] bash;main;readline"), 4);

	/* list_services honours the filter too */
	{
		struct store_query q = query_make(0, 1000);
		struct tf_expr *e = NULL;
		struct tf_error err;

		assert_int_equal(tagfilter_parse("k8s.label.app IN ('web', 'db')", &e, &err), 0);
		q.filter = e;
		assert_int_equal(store_list_services(f->s, 1, &q, 10, &names, &n, &info), 0);
		assert_int_equal(n, 2);
		assert_string_equal(names[0], "mysqld");
		assert_string_equal(names[1], "nginx");
		store_free_names(names, n);
		tagfilter_free(e);
	}
	sb_free(&info.sql);
	got_free(&g);
}

static void plan_expect(sqlite3 *db, const char *sql, const char *want)
{
	struct strbuf plan = STRBUF_INIT, q = STRBUF_INIT;
	sqlite3_stmt *st;

	sb_printf(&q, "EXPLAIN QUERY PLAN %s", sql);
	if (sqlite3_prepare_v2(db, q.buf, -1, &st, NULL) != SQLITE_OK)
		fail_msg("%s: %s", q.buf, sqlite3_errmsg(db));
	while (sqlite3_step(st) == SQLITE_ROW) {
		sb_puts(&plan, (const char *)sqlite3_column_text(st, 3));
		sb_putc(&plan, '\n');
	}
	sqlite3_finalize(st);
	if (!strstr(plan.buf, want) || strstr(plan.buf, "SCAN s\n"))
		fail_msg("%s\nplan:\n%s\nwanted: %s", sql, plan.buf, want);
	sb_free(&plan);
	sb_free(&q);
}

/* The statements the store runs read samples by index, never by scanning the whole table. */
static void test_query_plans_use_indexes(void **state)
{
	struct fixture *f = *state;
	struct profile_row rows[] = {row_make(100, "x", "s", 1)};
	struct store_query_info info = {.sql = STRBUF_INIT};
	struct store_query q = query_make(0, 1000);
	struct got g = {0};
	sqlite3 *db;
	char **names;
	size_t n;

	insert_ok(f->s, 1, "b1", rows, 1);
	db = raw_open(f->path);
	q.app_service = "x";
	assert_int_equal(store_query_stacks(f->s, 1, &q, got_cb, &g, &info), 0);
	plan_expect(db, info.sql.buf, "SEARCH s USING PRIMARY KEY (time>? AND time<?)");
	q.gauge = 1;
	assert_int_equal(store_query_stacks(f->s, 1, &q, got_cb, &g, &info), 0);
	plan_expect(db, info.sql.buf, "SEARCH s USING PRIMARY KEY (time>? AND time<?)");
	assert_int_equal(store_list_services(f->s, 1, &q, 10, &names, &n, &info), 0);
	store_free_names(names, n);
	plan_expect(db, info.sql.buf, "SEARCH s USING PRIMARY KEY (time>? AND time<?)");
	q.gauge = 0;
	assert_int_equal(query_filter(f->s, "profile_location_str LIKE '%s%'", &g, &info), 0);
	plan_expect(db, info.sql.buf, "USING PRIMARY KEY (time>? AND time<?)");
	sqlite3_close(db);
	sb_free(&info.sql);
	got_free(&g);
}

struct writer_arg {
	struct store *s;
	int batches;
	int failures;
};

#define CONC_ROWS 50
static void *writer_main(void *p)
{
	struct writer_arg *w = p;
	struct profile_row rows[CONC_ROWS];
	char stacks[CONC_ROWS][32], id[32];

	for (int b = 0; b < w->batches; b++) {
		int dup = 0;

		for (int i = 0; i < CONC_ROWS; i++) {
			snprintf(stacks[i], sizeof(stacks[i]), "[p] w;f%d", (b * 7 + i) % 40);
			rows[i] = row_make(100 + b % 10, b % 2 ? "odd" : "even", stacks[i], 1);
		}
		snprintf(id, sizeof(id), "conc-%d", b);
		if (store_insert(w->s, 1, id, rows, CONC_ROWS, &dup) != 0 || dup)
			w->failures++;
	}
	return NULL;
}

static int sum_cb(void *arg, const char *stack, size_t len, int64_t value)
{
	*(int64_t *)arg += value;
	return 0;
}

static void test_concurrent_insert_and_query(void **state)
{
	struct fixture *f = *state;
	struct writer_arg w = {.s = f->s, .batches = 300};
	struct store_query q = query_make(0, 1000);
	int64_t last = 0, total = 0;
	pthread_t t;
	int queries = 0;

	assert_int_equal(pthread_create(&t, NULL, writer_main, &w), 0);
	for (;;) {
		int64_t sum = 0;

		assert_int_equal(store_query_stacks(f->s, 1, &q, sum_cb, &sum, NULL), 0);
		/* each query sees whole batches, and never less than before */
		assert_int_equal(sum % CONC_ROWS, 0);
		assert_true(sum >= last);
		last = sum;
		queries++;
		if (sum == (int64_t)w.batches * CONC_ROWS)
			break;
	}
	pthread_join(t, NULL);
	assert_int_equal(w.failures, 0);
	assert_true(queries >= 1);
	assert_int_equal(store_query_stacks(f->s, 1, &q, sum_cb, &total, NULL), 0);
	assert_int_equal(total, w.batches * CONC_ROWS);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_insert_and_sum, setup, teardown),
		cmocka_unit_test_setup_teardown(test_time_range_inclusive, setup, teardown),
		cmocka_unit_test_setup_teardown(test_service_event_language, setup, teardown),
		cmocka_unit_test_setup_teardown(test_list_services, setup, teardown),
		cmocka_unit_test_setup_teardown(test_duplicate_batch, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_row_stores_nothing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_failed_transaction_rolls_back, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_same_address_other_batch, setup, teardown),
		cmocka_unit_test_setup_teardown(test_same_context_addresses, setup, teardown),
		cmocka_unit_test_setup_teardown(test_grouped_insert_sizes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_gauge_latest_per_process, setup, teardown),
		cmocka_unit_test_setup_teardown(test_truncation_keeps_biggest, setup, teardown),
		cmocka_unit_test_setup_teardown(test_callback_stops, setup, teardown),
		cmocka_unit_test_setup_teardown(test_orgs_are_separate_files, setup, teardown),
		cmocka_unit_test_setup_teardown(test_many_orgs, setup, teardown),
		cmocka_unit_test_setup_teardown(test_persistence, setup, teardown),
		cmocka_unit_test_setup_teardown(test_idle_checkpoint, setup, teardown),
		cmocka_unit_test_setup_teardown(test_schema_version, setup, teardown),
		cmocka_unit_test_setup_teardown(test_migrate_v1, setup, teardown),
		cmocka_unit_test(test_open_errors),
		cmocka_unit_test_setup_teardown(test_zstd_stack_decoded, setup, teardown),
		cmocka_unit_test_setup_teardown(test_view_has_logical_columns, setup, teardown),
		cmocka_unit_test_setup_teardown(test_prune, setup, teardown),
		cmocka_unit_test_setup_teardown(test_prune_gives_space_back, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reader_opens_under_write_lock, setup, teardown),
		cmocka_unit_test_setup_teardown(test_prune_without_auto_vacuum, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stack_id_collision, setup, teardown),
		cmocka_unit_test_setup_teardown(test_time_limit, setup, teardown),
		cmocka_unit_test_setup_teardown(test_health, setup, teardown),
		cmocka_unit_test_setup_teardown(test_tag_filters, setup, teardown),
		cmocka_unit_test_setup_teardown(test_query_plans_use_indexes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_concurrent_insert_and_query, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
