/*
 * test_upload — the uploader against a real HTTP server (libmicrohttpd on 127.0.0.1, a free
 * port) that implements the ingest endpoint's acknowledgement rules: decompress, parse, store a
 * batch id once, answer "duplicate" for a resend. Scenarios: normal delivery, 503 + Retry-After,
 * server down then back on the same port, memory spill to the spool and restart, spool bound,
 * 400. Backoffs are small; waits are bounded polling on conditions, never on wall-clock limits.
 */
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>
#include <microhttpd.h>

#include "agent/upload.h"
#include "common/wire.h"

#define TEST_MAX_IDS 256
#define TEST_ROWS 3
#define TEST_WAIT_S 20.0

struct test_srv {
	struct MHD_Daemon *d;
	uint16_t port;
	pthread_mutex_t mu;
	int fail_first;   /* answer 503 to this many requests first */
	long retry_after; /* Retry-After of those 503s, -1 for none */
	int reject;       /* answer 400 to everything */
	int gate;         /* while set, requests wait (the test holds a batch "in flight") */
	pthread_cond_t gate_cv;
	int waiting;      /* requests waiting at the gate */
	int requests, duplicates, malformed;
	double req_time[8]; /* CLOCK_MONOTONIC of the first requests */
	int org;          /* X-Org-Id of the last request, 1 without */
	size_t n_ids;
	char *ids[TEST_MAX_IDS];
	int64_t first_time[TEST_MAX_IDS]; /* time of each stored batch's first row */
	char host[64], agent[64];
	size_t rows;
};

struct test_conn {
	struct strbuf body;
};

static void test_srv_store(struct test_srv *s, json_t *root, const char *id, int *dup)
{
	json_t *rows = json_object_get(root, "rows");

	for (size_t i = 0; i < s->n_ids; i++)
		if (strcmp(s->ids[i], id) == 0) {
			*dup = 1;
			s->duplicates++;
			return;
		}
	assert_true(s->n_ids < TEST_MAX_IDS);
	s->first_time[s->n_ids] = json_integer_value(json_object_get(json_array_get(rows, 0),
								     "time"));
	s->ids[s->n_ids++] = strdup(id);
	s->rows += json_array_size(rows);
	snprintf(s->host, sizeof(s->host), "%s", json_string_value(json_object_get(root, "host")));
	snprintf(s->agent, sizeof(s->agent), "%s",
		 json_string_value(json_object_get(root, "agent")));
}

/* The endpoint proper: returns the HTTP status and fills the response text. */
static unsigned test_srv_ingest(struct test_srv *s, struct MHD_Connection *c,
				const struct strbuf *body, struct strbuf *out)
{
	const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
	const char *ce = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Encoding");
	const char *org = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Org-Id");
	struct strbuf plain = STRBUF_INIT;
	json_t *root = NULL;
	const char *id;
	unsigned status = 200;
	int dup = 0;

	if (s->requests < 8) {
		struct timespec ts;

		clock_gettime(CLOCK_MONOTONIC, &ts);
		s->req_time[s->requests] = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
	}
	s->requests++;
	s->org = org ? atoi(org) : 1;
	if (s->fail_first > 0) {
		s->fail_first--;
		sb_puts(out, "{\"OPT_STATUS\":\"SERVER_ERROR\",\"DESCRIPTION\":\"store down\"}");
		return 503;
	}
	if (s->reject) {
		sb_puts(out, "{\"OPT_STATUS\":\"INVALID_POST_DATA\","
			     "\"DESCRIPTION\":\"row 0: field 'time': test rejects all\"}");
		return 400;
	}
	if (!ct || strcasecmp(ct, "application/json") != 0 || !ce || strcmp(ce, "zstd") != 0 ||
	    wire_decompress(body->buf, body->len, 64u << 20, &plain) != 0 ||
	    !(root = json_loadb(plain.buf, plain.len, 0, NULL)) ||
	    !(id = json_string_value(json_object_get(root, "batch_id")))) {
		s->malformed++;
		status = 400;
		sb_puts(out, "{\"OPT_STATUS\":\"INVALID_POST_DATA\",\"DESCRIPTION\":\"malformed\"}");
		goto out;
	}
	test_srv_store(s, root, id, &dup);
	sb_printf(out,
		  "{\"OPT_STATUS\":\"SUCCESS\",\"DESCRIPTION\":\"\",\"result\":"
		  "{\"batch_id\":\"%s\",\"rows\":%zu,\"duplicate\":%s}}",
		  id, json_array_size(json_object_get(root, "rows")), dup ? "true" : "false");
out:
	json_decref(root);
	sb_free(&plain);
	return status;
}

static enum MHD_Result test_srv_handler(void *arg, struct MHD_Connection *c, const char *url,
					const char *method, const char *version,
					const char *upload_data, size_t *upload_data_size,
					void **con_cls)
{
	struct test_srv *s = arg;
	struct test_conn *tc = *con_cls;
	struct strbuf out = STRBUF_INIT;
	struct MHD_Response *r;
	enum MHD_Result ret;
	unsigned status;
	char ra[24];

	if (!tc) {
		tc = calloc(1, sizeof(*tc));
		*con_cls = tc;
		return MHD_YES;
	}
	if (*upload_data_size) {
		sb_append(&tc->body, upload_data, *upload_data_size);
		*upload_data_size = 0;
		return MHD_YES;
	}
	pthread_mutex_lock(&s->mu);
	s->waiting++;
	while (s->gate)
		pthread_cond_wait(&s->gate_cv, &s->mu);
	s->waiting--;
	if (strcmp(method, "POST") != 0 || strcmp(url, "/v1/profile/ingest") != 0) {
		s->malformed++;
		status = 404;
	} else {
		status = test_srv_ingest(s, c, &tc->body, &out);
	}
	pthread_mutex_unlock(&s->mu);
	r = MHD_create_response_from_buffer(out.len, out.buf ? out.buf : "", MHD_RESPMEM_MUST_COPY);
	if (status == 503 && s->retry_after >= 0) {
		snprintf(ra, sizeof(ra), "%ld", s->retry_after);
		MHD_add_response_header(r, "Retry-After", ra);
	}
	ret = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	sb_free(&out);
	return ret;
}

static void test_srv_completed(void *arg, struct MHD_Connection *c, void **con_cls,
			       enum MHD_RequestTerminationCode toe)
{
	struct test_conn *tc = *con_cls;

	if (tc) {
		sb_free(&tc->body);
		free(tc);
	}
	*con_cls = NULL;
}

/* Starts the daemon on port (0: any free port) and records the port. */
static void test_srv_start(struct test_srv *s, uint16_t port)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
	const union MHD_DaemonInfo *info;

	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	s->d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD, port, NULL, NULL,
				test_srv_handler, s, MHD_OPTION_SOCK_ADDR, &sa,
				MHD_OPTION_LISTENING_ADDRESS_REUSE, 1, MHD_OPTION_NOTIFY_COMPLETED,
				test_srv_completed, NULL, MHD_OPTION_END);
	assert_non_null(s->d);
	info = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
	assert_non_null(info);
	s->port = info->port;
	assert_true(s->port != 0);
}

static void test_srv_stop(struct test_srv *s)
{
	MHD_stop_daemon(s->d);
	s->d = NULL;
}

static struct test_srv *test_srv_new(void)
{
	struct test_srv *s = calloc(1, sizeof(*s));

	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->gate_cv, NULL);
	s->retry_after = -1;
	return s;
}

static void test_srv_free(struct test_srv *s)
{
	if (s->d)
		test_srv_stop(s);
	for (size_t i = 0; i < s->n_ids; i++)
		free(s->ids[i]);
	pthread_cond_destroy(&s->gate_cv);
	pthread_mutex_destroy(&s->mu);
	free(s);
}

static size_t test_srv_n_ids(struct test_srv *s)
{
	size_t n;

	pthread_mutex_lock(&s->mu);
	n = s->n_ids;
	pthread_mutex_unlock(&s->mu);
	return n;
}

/* Stored batches carry first-row times base, base+1, ... in this order, each once. */
static void test_srv_assert_in_order(struct test_srv *s, size_t n, int64_t base)
{
	pthread_mutex_lock(&s->mu);
	assert_int_equal(s->n_ids, n);
	for (size_t i = 0; i < n; i++)
		assert_int_equal(s->first_time[i], base + (int64_t)i);
	assert_int_equal(s->rows, n * TEST_ROWS);
	assert_int_equal(s->malformed, 0);
	pthread_mutex_unlock(&s->mu);
}

/* TEST_ROWS rows whose first row has time t; stacks points into the caller's storage. */
static void test_rows(struct profile_row *rows, char (*stacks)[64], int64_t t)
{
	for (int i = 0; i < TEST_ROWS; i++) {
		snprintf(stacks[i], sizeof(stacks[i]), "[p] app;main;work_%d;leaf_%lld", i,
			 (long long)t);
		rows[i] = (struct profile_row){.time = t + i, .app_service = "app",
					       .profile_location_str = stacks[i],
					       .profile_value = 10 * (i + 1), .process_id = 42};
	}
}

/* Submits one batch of TEST_ROWS rows whose first row has the given time. */
static void test_submit(struct uploader *u, int64_t t)
{
	struct profile_row rows[TEST_ROWS];
	char stacks[TEST_ROWS][64];

	test_rows(rows, stacks, t);
	assert_int_equal(upload_submit(u, rows, TEST_ROWS), 0);
}

static void test_sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};

	nanosleep(&ts, NULL);
}

/* Polls st.<field> >= want for up to TEST_WAIT_S. */
#define TEST_WAIT_STAT(u, field, want)                                                             \
	do {                                                                                       \
		struct upload_stats st_;                                                           \
		for (int i_ = 0;; i_++) {                                                          \
			upload_get_stats((u), &st_);                                               \
			if (st_.field >= (want))                                                   \
				break;                                                             \
			assert_true(i_ < (int)(TEST_WAIT_S * 100));                                \
			test_sleep_ms(10);                                                         \
		}                                                                                  \
	} while (0)

static void test_opts(struct upload_opts *o, char *url, size_t len, uint16_t port)
{
	snprintf(url, len, "http://127.0.0.1:%u/", port);
	*o = (struct upload_opts){.server_url = url, .host = "node1", .agent = "ember-agent@node1",
				  .host_ip = "10.1.2.3", .max_backoff_s = 0.2,
				  .close_grace_s = 0.3};
}

static size_t test_count_spool(const char *dir, char names[][256], size_t max)
{
	struct dirent *de;
	DIR *d = opendir(dir);
	size_t n = 0;

	assert_non_null(d);
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		if (names && n < max)
			snprintf(names[n], 256, "%s", de->d_name);
		n++;
	}
	closedir(d);
	return n;
}

static void test_rm_spool(const char *dir)
{
	char names[64][256], path[512];
	size_t n = test_count_spool(dir, names, 64);

	for (size_t i = 0; i < n && i < 64; i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		unlink(path);
	}
	rmdir(dir);
}

static void test_upload_delivers(void **state)
{
	struct test_srv *s = test_srv_new();
	struct uploader *u;
	struct upload_opts o;
	struct upload_stats st;
	char url[64];

	test_srv_start(s, 0);
	test_opts(&o, url, sizeof(url), s->port);
	o.org = 7;
	assert_int_equal(upload_open(&o, &u), 0);
	for (int i = 0; i < 10; i++)
		test_submit(u, 1000 + i);
	assert_int_equal(upload_flush(u, TEST_WAIT_S), 0);
	upload_get_stats(u, &st);
	assert_int_equal(st.batches_sent, 10);
	assert_int_equal(st.rows_sent, 10 * TEST_ROWS);
	assert_int_equal(st.queued_batches + st.spooled_batches + st.batches_dropped, 0);
	assert_int_equal(st.queued_bytes, 0);
	assert_true(st.server_ok);
	upload_close(u);

	test_srv_assert_in_order(s, 10, 1000);
	assert_int_equal(s->requests, 10);
	assert_int_equal(s->duplicates, 0);
	assert_int_equal(s->org, 7);
	assert_string_equal(s->host, "node1");
	assert_string_equal(s->agent, "ember-agent@node1");
	/* Ids: the agent name in the id alphabet, a boot nonce, a sequence; all valid and distinct. */
	for (size_t i = 0; i < s->n_ids; i++) {
		assert_true(wire_batch_id_valid(s->ids[i]));
		assert_int_equal(strncmp(s->ids[i], "ember-agent_node1-", 18), 0);
	}
	test_srv_free(s);
}

static void test_upload_retry_after_503(void **state)
{
	struct test_srv *s = test_srv_new();
	struct uploader *u;
	struct upload_opts o;
	struct upload_stats st;
	char url[64];

	s->fail_first = 3;
	s->retry_after = 0;
	test_srv_start(s, 0);
	test_opts(&o, url, sizeof(url), s->port);
	assert_int_equal(upload_open(&o, &u), 0);
	for (int i = 0; i < 5; i++)
		test_submit(u, 2000 + i);
	assert_int_equal(upload_flush(u, TEST_WAIT_S), 0);
	upload_get_stats(u, &st);
	assert_int_equal(st.retries, 3);
	assert_int_equal(st.batches_sent, 5);
	assert_int_equal(st.batches_duplicate, 0);
	upload_close(u);
	test_srv_assert_in_order(s, 5, 2000);
	assert_int_equal(s->requests, 5 + 3);
	assert_int_equal(s->duplicates, 0);
	test_srv_free(s);
}

/* Retry-After of 1 s is longer than max_backoff_s (0.2 s): the resend must come no sooner. */
static void test_upload_honours_retry_after(void **state)
{
	struct test_srv *s = test_srv_new();
	struct uploader *u;
	struct upload_opts o;
	struct upload_stats st;
	char url[64];

	s->fail_first = 1;
	s->retry_after = 1;
	test_srv_start(s, 0);
	test_opts(&o, url, sizeof(url), s->port);
	assert_int_equal(upload_open(&o, &u), 0);
	test_submit(u, 2500);
	assert_int_equal(upload_flush(u, TEST_WAIT_S), 0);
	upload_get_stats(u, &st);
	assert_int_equal(st.retries, 1);
	upload_close(u);
	test_srv_assert_in_order(s, 1, 2500);
	assert_int_equal(s->requests, 2);
	/* A lower bound only: the uploader cannot have resent before the server allowed it. */
	assert_true(s->req_time[1] - s->req_time[0] >= 1.0);
	test_srv_free(s);
}

static void test_upload_server_down_then_back(void **state)
{
	struct test_srv *s = test_srv_new();
	struct uploader *u;
	struct upload_opts o;
	struct upload_stats st;
	uint16_t port;
	char url[64];

	test_srv_start(s, 0);
	port = s->port;
	test_srv_stop(s);
	test_opts(&o, url, sizeof(url), port);
	assert_int_equal(upload_open(&o, &u), 0);
	for (int i = 0; i < 5; i++)
		test_submit(u, 3000 + i);
	TEST_WAIT_STAT(u, retries, 2);
	upload_get_stats(u, &st);
	assert_false(st.server_ok);
	assert_int_equal(st.batches_sent, 0);
	assert_int_equal(st.queued_batches, 5);
	test_srv_start(s, port);
	assert_int_equal(s->port, port);
	for (int i = 5; i < 8; i++)
		test_submit(u, 3000 + i);
	assert_int_equal(upload_flush(u, TEST_WAIT_S), 0);
	upload_get_stats(u, &st);
	assert_true(st.server_ok);
	assert_int_equal(st.batches_sent, 8);
	upload_close(u);
	test_srv_assert_in_order(s, 8, 3000);
	assert_int_equal(s->duplicates, 0);
	test_srv_free(s);
}

static void test_upload_spill_and_restart(void **state)
{
	struct test_srv *s = test_srv_new();
	char dir[] = "/tmp/ember-test-spool-XXXXXX";
	char names[16][256], src[600], dst[600];
	struct uploader *u;
	struct upload_opts o;
	struct upload_stats st;
	uint16_t port;
	char url[64];
	FILE *in, *out;
	int c;

	assert_non_null(mkdtemp(dir));
	test_srv_start(s, 0);
	port = s->port;
	test_srv_stop(s);
	test_opts(&o, url, sizeof(url), port);
	o.spool_dir = dir;
	o.mem_bytes = 1; /* every batch not being posted goes to disk at once */
	assert_int_equal(upload_open(&o, &u), 0);
	for (int i = 0; i < 6; i++)
		test_submit(u, 4000 + i);
	upload_get_stats(u, &st);
	assert_true(st.spooled_batches >= 5);
	assert_int_equal(st.spooled_batches + st.queued_batches, 6);
	assert_int_equal(st.batches_dropped, 0);
	upload_close(u);
	/* Closing with the server down leaves every batch in the spool, none in a temp file. */
	assert_int_equal(test_count_spool(dir, names, 16), 6);

	/* A copy of the oldest file under a later sequence number: the same batch id arrives twice,
	 * as after a crash between the server's answer and the unlink. */
	snprintf(src, sizeof(src), "%s/%s", dir, names[0]);
	for (size_t i = 1; i < 6; i++)
		if (strcmp(names[i], names[0]) < 0)
			snprintf(src, sizeof(src), "%s/%s", dir, names[i]);
	snprintf(dst, sizeof(dst), "%s/%020d-%d-%s", dir, 999999, TEST_ROWS,
		 strchr(strchr(strrchr(src, '/') + 1, '-') + 1, '-') + 1);
	in = fopen(src, "rb");
	out = fopen(dst, "wb");
	assert_non_null(in);
	assert_non_null(out);
	while ((c = fgetc(in)) != EOF)
		fputc(c, out);
	fclose(in);
	fclose(out);
	/* Debris of a write cut short: deleted at open, never sent. */
	snprintf(dst, sizeof(dst), "%s/.tmp-00000000000000000001-3-x.zst", dir);
	out = fopen(dst, "wb");
	assert_non_null(out);
	fputs("garbage", out);
	fclose(out);

	test_srv_start(s, port);
	assert_int_equal(upload_open(&o, &u), 0);
	upload_get_stats(u, &st);
	assert_int_equal(st.spooled_batches, 7);
	test_submit(u, 4006);
	assert_int_equal(upload_flush(u, TEST_WAIT_S), 0);
	upload_get_stats(u, &st);
	assert_int_equal(st.batches_sent, 8);
	assert_int_equal(st.batches_duplicate, 1);
	assert_int_equal(st.spooled_batches, 0);
	assert_int_equal(st.spooled_bytes, 0);
	upload_close(u);
	test_srv_assert_in_order(s, 7, 4000);
	assert_int_equal(s->duplicates, 1);
	assert_int_equal(test_count_spool(dir, NULL, 0), 0);
	test_rm_spool(dir);
	test_srv_free(s);
}

/* Compressed size of one test batch, as the uploader would build it (same id length). */
static size_t test_batch_size(int64_t t)
{
	struct profile_row rows[TEST_ROWS];
	char stacks[TEST_ROWS][64];
	struct wire_batch_hdr hdr = {"ember-agent_node1-00000000-000001", "node1",
				     "ember-agent@node1", "10.1.2.3"};
	struct strbuf json = STRBUF_INIT, z = STRBUF_INIT;
	size_t n;

	test_rows(rows, stacks, t);
	assert_int_equal(wire_encode(&hdr, rows, TEST_ROWS, &json), 0);
	assert_int_equal(wire_compress(json.buf, json.len, &z), 0);
	n = z.len;
	sb_free(&json);
	sb_free(&z);
	return n;
}

/* The batch being posted stays in memory while later ones go to disk; order still holds. */
static void test_upload_spill_behind_inflight_head(void **state)
{
	struct test_srv *s = test_srv_new();
	char dir[] = "/tmp/ember-test-spool-XXXXXX";
	struct uploader *u;
	struct upload_opts o;
	struct upload_stats st;
	char url[64];

	assert_non_null(mkdtemp(dir));
	s->gate = 1;
	test_srv_start(s, 0);
	test_opts(&o, url, sizeof(url), s->port);
	o.spool_dir = dir;
	o.mem_bytes = test_batch_size(10000) * 3 / 2; /* one batch fits in memory, two do not */
	assert_int_equal(upload_open(&o, &u), 0);
	test_submit(u, 10000);
	/* Wait until the first request is held at the gate: batch 10000 is in flight. */
	for (int i = 0;; i++) {
		int w;

		pthread_mutex_lock(&s->mu);
		w = s->waiting;
		pthread_mutex_unlock(&s->mu);
		if (w)
			break;
		assert_true(i < (int)(TEST_WAIT_S * 100));
		test_sleep_ms(10);
	}
	for (int i = 1; i < 4; i++)
		test_submit(u, 10000 + i);
	upload_get_stats(u, &st);
	assert_int_equal(st.queued_batches, 1);
	assert_int_equal(st.spooled_batches, 3);
	assert_int_equal(test_count_spool(dir, NULL, 0), 3);
	pthread_mutex_lock(&s->mu);
	s->fail_first = 1; /* the held request fails: the head is retried before the spooled ones */
	s->retry_after = 0;
	s->gate = 0;
	pthread_cond_broadcast(&s->gate_cv);
	pthread_mutex_unlock(&s->mu);
	assert_int_equal(upload_flush(u, TEST_WAIT_S), 0);
	upload_get_stats(u, &st);
	assert_int_equal(st.batches_sent, 4);
	assert_int_equal(st.retries, 1);
	upload_close(u);
	test_srv_assert_in_order(s, 4, 10000);
	assert_int_equal(test_count_spool(dir, NULL, 0), 0);
	test_rm_spool(dir);
	test_srv_free(s);
}

static void test_upload_spool_bound(void **state)
{
	struct test_srv *s = test_srv_new();
	char dir[] = "/tmp/ember-test-spool-XXXXXX";
	struct uploader *u;
	struct upload_opts o;
	struct upload_stats st;
	size_t size = test_batch_size(5000);
	uint16_t port;
	char url[64];

	assert_non_null(mkdtemp(dir));
	test_srv_start(s, 0);
	port = s->port;
	test_srv_stop(s);
	test_opts(&o, url, sizeof(url), port);
	o.spool_dir = dir;
	o.mem_bytes = 1;
	o.spool_bytes = 3 * size + size / 2; /* room for three batches */
	assert_int_equal(upload_open(&o, &u), 0);
	for (int i = 0; i < 8; i++)
		test_submit(u, 5000 + i);
	upload_get_stats(u, &st);
	/* At most one batch (the one being posted) in memory, three on disk, the rest dropped. */
	assert_true(st.spooled_batches <= 3);
	assert_true(st.spooled_bytes <= o.spool_bytes);
	assert_true(st.batches_dropped >= 4);
	assert_int_equal(st.rows_dropped, st.batches_dropped * TEST_ROWS);
	assert_int_equal(st.batches_dropped + st.spooled_batches + st.queued_batches, 8);
	assert_int_equal(test_count_spool(dir, NULL, 0), st.spooled_batches);

	test_srv_start(s, port);
	assert_int_equal(upload_flush(u, TEST_WAIT_S), 0);
	upload_get_stats(u, &st);
	assert_int_equal(st.batches_sent + st.batches_dropped, 8);
	upload_close(u);
	/* What survived is in order and includes the newest batch: the oldest were dropped. */
	pthread_mutex_lock(&s->mu);
	assert_int_equal(s->n_ids, st.batches_sent);
	for (size_t i = 1; i < s->n_ids; i++)
		assert_true(s->first_time[i] > s->first_time[i - 1]);
	assert_int_equal(s->first_time[s->n_ids - 1], 5007);
	assert_int_equal(s->first_time[s->n_ids - 2], 5006);
	pthread_mutex_unlock(&s->mu);
	test_rm_spool(dir);
	test_srv_free(s);
}

static void test_upload_memory_bound_without_spool(void **state)
{
	struct test_srv *s = test_srv_new();
	struct uploader *u;
	struct upload_opts o;
	struct upload_stats st;
	size_t size = test_batch_size(6000);
	uint16_t port;
	char url[64];

	test_srv_start(s, 0);
	port = s->port;
	test_srv_stop(s);
	test_opts(&o, url, sizeof(url), port);
	o.mem_bytes = 2 * size + size / 2;
	assert_int_equal(upload_open(&o, &u), 0);
	for (int i = 0; i < 6; i++)
		test_submit(u, 6000 + i);
	upload_get_stats(u, &st);
	assert_true(st.queued_bytes <= o.mem_bytes + size); /* + the one being posted */
	assert_true(st.batches_dropped >= 3);
	assert_int_equal(st.rows_dropped, st.batches_dropped * TEST_ROWS);
	test_srv_start(s, port);
	assert_int_equal(upload_flush(u, TEST_WAIT_S), 0);
	upload_get_stats(u, &st);
	assert_int_equal(st.batches_sent + st.batches_dropped, 6);
	upload_close(u);
	pthread_mutex_lock(&s->mu);
	assert_int_equal(s->first_time[s->n_ids - 1], 6005);
	pthread_mutex_unlock(&s->mu);
	test_srv_free(s);
}

/* A submit larger than one batch may hold is split, in order, not refused by the server. */
static void test_upload_splits_large_submit(void **state)
{
	enum { N = 2501, BATCH = 1000 };
	struct profile_row *rows = calloc(N, sizeof(*rows));
	struct test_srv *s = test_srv_new();
	struct uploader *u;
	struct upload_opts o;
	struct upload_stats st;
	char url[64];

	for (size_t i = 0; i < N; i++)
		rows[i] = (struct profile_row){.time = 9000 + (int64_t)i, .app_service = "app",
					       .profile_location_str = "[p] app;main",
					       .profile_value = 1};
	test_srv_start(s, 0);
	test_opts(&o, url, sizeof(url), s->port);
	o.batch_rows = BATCH;
	assert_int_equal(upload_open(&o, &u), 0);
	assert_int_equal(upload_submit(u, rows, N), 0);
	assert_int_equal(upload_flush(u, TEST_WAIT_S), 0);
	upload_get_stats(u, &st);
	assert_int_equal(st.batches_sent, 3);
	assert_int_equal(st.rows_sent, N);
	upload_close(u);
	pthread_mutex_lock(&s->mu);
	assert_int_equal(s->n_ids, 3);
	assert_int_equal(s->rows, N);
	assert_int_equal(s->first_time[0], 9000);
	assert_int_equal(s->first_time[1], 9000 + BATCH);
	assert_int_equal(s->first_time[2], 9000 + 2 * BATCH);
	pthread_mutex_unlock(&s->mu);
	test_srv_free(s);
	free(rows);
}

static void test_upload_rejected(void **state)
{
	struct test_srv *s = test_srv_new();
	struct uploader *u;
	struct upload_opts o;
	struct upload_stats st;
	char url[64];

	s->reject = 1;
	test_srv_start(s, 0);
	test_opts(&o, url, sizeof(url), s->port);
	assert_int_equal(upload_open(&o, &u), 0);
	for (int i = 0; i < 3; i++)
		test_submit(u, 7000 + i);
	assert_int_equal(upload_flush(u, TEST_WAIT_S), 0);
	upload_get_stats(u, &st);
	assert_int_equal(st.batches_rejected, 3);
	assert_int_equal(st.batches_sent, 0);
	assert_int_equal(st.retries, 0);
	assert_true(st.server_ok);
	upload_close(u);
	assert_int_equal(s->requests, 3);
	assert_int_equal(test_srv_n_ids(s), 0);
	test_srv_free(s);
}

/* Closing with the server gone and no spool: bounded, and the batches are counted as lost. */
static void test_upload_close_without_spool(void **state)
{
	struct test_srv *s = test_srv_new();
	struct uploader *u;
	struct upload_opts o;
	struct upload_stats st;
	char url[64];

	test_srv_start(s, 0);
	test_srv_stop(s);
	test_opts(&o, url, sizeof(url), s->port);
	assert_int_equal(upload_open(&o, &u), 0);
	test_submit(u, 8000);
	assert_int_equal(upload_flush(u, 0.05), -ETIMEDOUT);
	upload_get_stats(u, &st);
	assert_int_equal(st.queued_batches, 1);
	assert_int_equal(st.batches_sent, 0);
	upload_close(u);
	test_srv_free(s);
}

static void test_upload_bad_input(void **state)
{
	struct upload_opts o = {0};
	struct uploader *u;
	struct profile_row bad = {.time = 1, .app_service = "", .profile_location_str = "x"};
	char url[64];

	assert_int_equal(upload_open(&o, &u), -EINVAL);
	test_opts(&o, url, sizeof(url), 9);
	o.spool_dir = "/proc/no-such-dir/spool";
	assert_true(upload_open(&o, &u) < 0);
	o.spool_dir = NULL;
	assert_int_equal(upload_open(&o, &u), 0);
	assert_int_equal(upload_submit(u, &bad, 1), -EINVAL);
	assert_int_equal(upload_submit(u, NULL, 0), 0);
	assert_int_equal(upload_flush(u, 1), 0);
	upload_close(u);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_upload_delivers),
		cmocka_unit_test(test_upload_retry_after_503),
		cmocka_unit_test(test_upload_honours_retry_after),
		cmocka_unit_test(test_upload_server_down_then_back),
		cmocka_unit_test(test_upload_spill_and_restart),
		cmocka_unit_test(test_upload_spill_behind_inflight_head),
		cmocka_unit_test(test_upload_spool_bound),
		cmocka_unit_test(test_upload_memory_bound_without_spool),
		cmocka_unit_test(test_upload_splits_large_submit),
		cmocka_unit_test(test_upload_rejected),
		cmocka_unit_test(test_upload_close_without_spool),
		cmocka_unit_test(test_upload_bad_input),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
