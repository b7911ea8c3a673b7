/*
 * sqlite — profile.in_process in an embedded SQLite file (see store.h, sqlite.h, and
 * docs/store-sqlite.md for the measured numbers).
 *
 * Schema (version 1). Folded stacks repeat endlessly, so each distinct text is stored once:
 *   stacks(id INTEGER PRIMARY KEY, text TEXT, compression_algo TEXT)   id = hash of the text
 *   samples(time, app_service, ..., stack_id, ...)     one row per row of the logical table
 *   in_process  VIEW: samples JOIN stacks, every logical column under its logical name + stack_id
 *   batches(batch_id PRIMARY KEY, rows, received_us)   ids of stored batches (idempotent ingest)
 *   meta(key PRIMARY KEY, value)                       'schema_version'
 * compression_algo belongs to the stored stack text, so it lives in stacks; the view shows it per
 * row as the logical table does. Rows are written plain (""); a stack stored as 'zstd' (imported
 * data) is decompressed before it reaches a caller. tag_names/tag_values are JSON arrays of
 * strings, which the tag filter reads with json_each().
 *
 * Stack ids: a 128-bit hash of the text is computed in one pass (two 64-bit lanes). The first
 * lane is the preferred id; if that id holds a different text, id+1, id+2 ... are probed, so a
 * collision costs a lookup, never a wrong stack. A direct-mapped cache of STACK_CACHE_ENTRIES
 * (first lane -> slot; second lane checked) remembers ids already stored, so a batch of known
 * stacks costs no stack lookups at all. The cache is emptied whenever stacks may have vanished
 * (a rolled back transaction, pruning), and trusts that no other process prunes the same file.
 *
 * Concurrency: every organisation database has one write connection behind a mutex (SQLite
 * allows one writer anyway; batches are short transactions) and up to READERS read connections.
 * In WAL mode readers never wait for the writer, so a ProfileTracing query runs next to ingest.
 * Connections are opened in SQLITE_OPEN_NOMUTEX mode: our own locks guarantee one thread per
 * connection. Organisation databases other than 1 are opened on first use; at most MAX_OPEN_DBS
 * are kept open, the least recently used idle one is closed when another is needed. A query on
 * an organisation whose file does not exist returns nothing instead of creating the file.
 *
 * Schema changes: migrations[] is applied in order inside one transaction per step; a file
 * whose schema_version is newer than the code's is refused with a message saying so.
 */
#define LOG_MODULE "store-sqlite"

#include "store/sqlite.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <dirent.h>

#include <sqlite3.h>
#include <zstd.h>

#include "common/log.h"
#include "server/tagfilter.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Bounds and tuning; the numbers behind them are in docs/store-sqlite.md. */
#define MAX_OPEN_DBS 64                 /* organisation databases kept open */
#define READERS 4                       /* read connections per database */
#define STACK_CACHE_ENTRIES (1u << 20)  /* per database, 16 bytes each, pages touched on use */
#define BUSY_TIMEOUT_MS 5000            /* wait for another process's write lock */
#define MAX_STACK_BYTES (1u << 20)      /* largest decompressed stack text */
#define PRUNE_CHUNK 20000               /* rows deleted per write transaction when pruning */
#define PAGE_SIZE 8192                  /* for new files */
#define WRITER_CACHE_KIB 65536          /* page cache of the write connection */
#define READER_CACHE_KIB 32768          /* page cache of each read connection */
#define MMAP_BYTES (256ll << 20)        /* memory-mapped reads */
#define PROGRESS_OPS 1000               /* VM steps between deadline checks */

static const char *const migrations[] = {
	/* 1: the initial schema */
	"CREATE TABLE stacks(id INTEGER PRIMARY KEY, text TEXT NOT NULL,"
	" compression_algo TEXT NOT NULL DEFAULT '');"
	"CREATE TABLE samples("
	" time INTEGER NOT NULL, app_service TEXT NOT NULL, app_instance TEXT NOT NULL,"
	" stack_id INTEGER NOT NULL, profile_value INTEGER NOT NULL,"
	" profile_value_unit TEXT NOT NULL, profile_event_type TEXT NOT NULL,"
	" profile_language_type TEXT NOT NULL, profile_create_timestamp INTEGER NOT NULL,"
	" profile_in_timestamp INTEGER NOT NULL, process_id INTEGER NOT NULL,"
	" process_start_time INTEGER NOT NULL, host TEXT NOT NULL, agent TEXT NOT NULL,"
	" host_ip TEXT NOT NULL, container_id TEXT NOT NULL, pod_cluster TEXT NOT NULL,"
	" pod_ns TEXT NOT NULL, pod_node TEXT NOT NULL, pod TEXT NOT NULL, pod_group TEXT NOT NULL,"
	" tag_names TEXT NOT NULL, tag_values TEXT NOT NULL, trace_id TEXT NOT NULL,"
	" span_name TEXT NOT NULL, profile_id TEXT NOT NULL);"
	"CREATE INDEX samples_service ON samples(app_service, profile_event_type,"
	" profile_language_type, time);"
	"CREATE INDEX samples_time ON samples(time);"
	"CREATE TABLE batches(batch_id TEXT PRIMARY KEY, rows INTEGER NOT NULL,"
	" received_us INTEGER NOT NULL) WITHOUT ROWID;"
	"CREATE VIEW in_process AS SELECT s.time AS time, s.app_service AS app_service,"
	" s.app_instance AS app_instance, st.text AS profile_location_str,"
	" s.profile_value AS profile_value, s.profile_value_unit AS profile_value_unit,"
	" s.profile_event_type AS profile_event_type,"
	" s.profile_language_type AS profile_language_type,"
	" s.profile_create_timestamp AS profile_create_timestamp,"
	" s.profile_in_timestamp AS profile_in_timestamp, s.process_id AS process_id,"
	" s.process_start_time AS process_start_time, s.host AS host, s.agent AS agent,"
	" s.host_ip AS host_ip, s.container_id AS container_id, s.pod_cluster AS pod_cluster,"
	" s.pod_ns AS pod_ns, s.pod_node AS pod_node, s.pod AS pod, s.pod_group AS pod_group,"
	" s.tag_names AS tag_names, s.tag_values AS tag_values, s.trace_id AS trace_id,"
	" s.span_name AS span_name, s.profile_id AS profile_id,"
	" st.compression_algo AS compression_algo, s.stack_id AS stack_id"
	" FROM samples s JOIN stacks st ON st.id = s.stack_id;",
};

#define SCHEMA_VERSION ((int)ARRAY_SIZE(migrations))

#define SAMPLE_COLUMNS 26
static const char sql_sample_put[] =
	"INSERT INTO samples(time, app_service, app_instance, stack_id, profile_value,"
	" profile_value_unit, profile_event_type, profile_language_type,"
	" profile_create_timestamp, profile_in_timestamp, process_id, process_start_time, host,"
	" agent, host_ip, container_id, pod_cluster, pod_ns, pod_node, pod, pod_group, tag_names,"
	" tag_values, trace_id, span_name, profile_id)"
	" VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)";

enum sq_wstmt {
	W_BEGIN,
	W_COMMIT,
	W_ROLLBACK,
	W_BATCH_GET,
	W_BATCH_PUT,
	W_STACK_GET,
	W_STACK_PUT,
	W_SAMPLE_PUT,
	W_COUNT
};

static const char *const wstmt_sql[W_COUNT] = {
	[W_BEGIN] = "BEGIN IMMEDIATE",
	[W_COMMIT] = "COMMIT",
	[W_ROLLBACK] = "ROLLBACK",
	[W_BATCH_GET] = "SELECT 1 FROM batches WHERE batch_id = ?",
	[W_BATCH_PUT] = "INSERT INTO batches(batch_id, rows, received_us) VALUES(?, ?, ?)",
	[W_STACK_GET] = "SELECT text, compression_algo FROM stacks WHERE id = ?",
	[W_STACK_PUT] = "INSERT INTO stacks(id, text) VALUES(?, ?)",
	[W_SAMPLE_PUT] = sql_sample_put,
};

struct sq_cache_slot {
	uint64_t check; /* second hash lane; 0 = empty (a real 0 is stored as 1) */
	int64_t id;
};

/* One connection and the deadline its progress handler enforces. */
struct sq_conn {
	sqlite3 *db;
	int in_use;
	int64_t deadline_ns; /* CLOCK_MONOTONIC; 0 = none */
};

struct sq_db {
	int org;
	char path[PATH_MAX];
	int refs;          /* callers using it; guarded by the store lock */
	uint64_t last_use; /* store tick of the last acquire */

	pthread_mutex_t wlock; /* the write connection, its statements and the stack cache */
	struct sq_conn w;
	sqlite3_stmt *wstmt[W_COUNT];
	struct sq_cache_slot *cache;
	struct strbuf tag_names, tag_values;

	pthread_mutex_t rlock; /* readers[].in_use */
	pthread_cond_t rfree;
	struct sq_conn readers[READERS];
};

struct sq_store {
	struct store base;
	char path[PATH_MAX];
	pthread_mutex_t lock; /* dbs[], ticks and base.errmsg */
	struct sq_db *dbs[MAX_OPEN_DBS];
	uint64_t tick;
};

static const struct store_ops sq_ops;

static void sq_set_err(struct sq_store *st, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void sq_set_err(struct sq_store *st, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&st->lock);
	va_start(ap, fmt);
	vsnprintf(st->base.errmsg, sizeof(st->base.errmsg), fmt, ap);
	va_end(ap);
	pthread_mutex_unlock(&st->lock);
}

static int64_t sq_now_ns(clockid_t clk)
{
	struct timespec ts;

	clock_gettime(clk, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* SQLite result code -> negative errno, as store.h promises (busy means "retry later"). */
static int sq_errno(int rc)
{
	switch (rc & 0xff) {
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
		return -EAGAIN;
	case SQLITE_INTERRUPT:
		return -ETIMEDOUT;
	case SQLITE_NOMEM:
		return -ENOMEM;
	case SQLITE_FULL:
		return -ENOSPC;
	case SQLITE_READONLY:
	case SQLITE_PERM:
	case SQLITE_AUTH:
		return -EACCES;
	case SQLITE_CANTOPEN:
		return -ENOENT;
	case SQLITE_ERROR:
	case SQLITE_RANGE:
	case SQLITE_MISMATCH:
	case SQLITE_CONSTRAINT:
		return -EINVAL;
	default:
		return -EIO;
	}
}

/* ---- names ---------------------------------------------------------------------------- */

int store_sqlite_org_path(const char *path, int org, char *out, size_t outlen)
{
	const char *base, *dot;
	int n;

	if (org < STORE_ORG_MIN || org > STORE_ORG_MAX)
		return -EINVAL;
	if (org == 1) {
		n = snprintf(out, outlen, "%s", path);
		return n < 0 || (size_t)n >= outlen ? -ENAMETOOLONG : 0;
	}
	base = strrchr(path, '/');
	base = base ? base + 1 : path;
	dot = strrchr(base, '.');
	if (!dot || dot == base) /* no extension, or a hidden file's leading dot */
		dot = base + strlen(base);
	n = snprintf(out, outlen, "%.*s.%04d_profile%s", (int)(dot - path), path, org, dot);
	return n < 0 || (size_t)n >= outlen ? -ENAMETOOLONG : 0;
}

/* ---- hashing and the stack cache -------------------------------------------------------- */

static inline uint64_t sq_rotl(uint64_t x, int r)
{
	return (x << r) | (x >> (64 - r));
}

static inline uint64_t sq_fmix(uint64_t k)
{
	k ^= k >> 33;
	k *= 0xff51afd7ed558ccdull;
	k ^= k >> 33;
	k *= 0xc4ceb9fe1a85ec53ull;
	k ^= k >> 33;
	return k;
}

/* Two independent 64-bit lanes over the text, 8 bytes per step. */
static void sq_hash128(const char *p, size_t n, uint64_t *h1, uint64_t *h2)
{
	uint64_t a = 0x9e3779b97f4a7c15ull ^ n, b = 0x85ebca77c2b2ae63ull, w;
	size_t i;

	for (i = 0; i + 8 <= n; i += 8) {
		memcpy(&w, p + i, 8);
		a = sq_rotl(a ^ (w * 0x87c37b91114253d5ull), 31) * 0x4cf5ad432745937full;
		b = sq_rotl(b + w, 27) * 0x9fb21c651e98df25ull;
	}
	w = 0;
	memcpy(&w, p + i, n - i);
	a = sq_rotl(a ^ (w * 0x87c37b91114253d5ull), 31) * 0x4cf5ad432745937full;
	b = sq_rotl(b + w, 27) * 0x9fb21c651e98df25ull;
	*h1 = sq_fmix(a ^ sq_rotl(b, 17));
	*h2 = sq_fmix(b + a) | 1; /* never 0: 0 marks an empty cache slot */
}

static void sq_cache_clear(struct sq_db *d)
{
	memset(d->cache, 0, sizeof(*d->cache) * STACK_CACHE_ENTRIES);
}

/* ---- connections -------------------------------------------------------------------------- */

static int sq_progress(void *arg)
{
	struct sq_conn *c = arg;

	return c->deadline_ns && sq_now_ns(CLOCK_MONOTONIC) > c->deadline_ns;
}

/* regexp(pattern, text): POSIX extended, the compiled pattern kept for the statement's life. */
static void sq_regexp_free(void *p)
{
	regfree(p);
	free(p);
}

static void sq_regexp(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
	const char *pat = (const char *)sqlite3_value_text(argv[0]);
	const char *text = (const char *)sqlite3_value_text(argv[1]);
	regex_t *re;
	int rc;

	if (!pat || !text) {
		sqlite3_result_null(ctx);
		return;
	}
	re = sqlite3_get_auxdata(ctx, 0);
	if (re) {
		sqlite3_result_int(ctx, regexec(re, text, 0, NULL, 0) == 0);
		return;
	}
	re = malloc(sizeof(*re));
	if (!re) {
		sqlite3_result_error_nomem(ctx);
		return;
	}
	rc = regcomp(re, pat, REG_EXTENDED | REG_NOSUB);
	if (rc) {
		char msg[200], buf[300];

		regerror(rc, re, msg, sizeof(msg));
		free(re);
		snprintf(buf, sizeof(buf), "bad regular expression '%.40s': %s", pat, msg);
		sqlite3_result_error(ctx, buf, -1);
		return;
	}
	sqlite3_result_int(ctx, regexec(re, text, 0, NULL, 0) == 0);
	/* Kept for the next rows when the pattern is a constant; SQLite frees it otherwise. */
	sqlite3_set_auxdata(ctx, 0, re, sq_regexp_free);
}

static int sq_exec(sqlite3 *db, const char *sql, char *err, size_t errlen, const char *path)
{
	char *msg = NULL;
	int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);

	if (rc != SQLITE_OK) {
		snprintf(err, errlen, "sqlite %.200s: %s", path, msg ? msg : sqlite3_errstr(rc));
		sqlite3_free(msg);
		return sq_errno(rc);
	}
	return 0;
}

static int sq_conn_open(struct sq_conn *c, const char *path, int create, int cache_kib, char *err,
			size_t errlen)
{
	int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | (create ? SQLITE_OPEN_CREATE : 0);
	char pragmas[256];
	int rc;

	rc = sqlite3_open_v2(path, &c->db, flags, NULL);
	if (rc != SQLITE_OK) {
		snprintf(err, errlen, "sqlite %.200s: cannot open: %s", path,
			 c->db ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc));
		sqlite3_close(c->db);
		c->db = NULL;
		return sq_errno(rc);
	}
	sqlite3_extended_result_codes(c->db, 0);
	sqlite3_busy_timeout(c->db, BUSY_TIMEOUT_MS);
	sqlite3_progress_handler(c->db, PROGRESS_OPS, sq_progress, c);
	sqlite3_create_function_v2(c->db, "regexp", 2, SQLITE_UTF8 | SQLITE_DETERMINISTIC, NULL,
				   sq_regexp, NULL, NULL, NULL);
	snprintf(pragmas, sizeof(pragmas),
		 "PRAGMA page_size=%d; PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
		 " PRAGMA cache_size=-%d; PRAGMA temp_store=MEMORY; PRAGMA mmap_size=%lld;",
		 PAGE_SIZE, cache_kib, MMAP_BYTES);
	rc = sq_exec(c->db, pragmas, err, errlen, path);
	if (rc) {
		sqlite3_close(c->db);
		c->db = NULL;
	}
	return rc;
}

static void sq_conn_close(struct sq_conn *c)
{
	if (c->db)
		sqlite3_close(c->db);
	c->db = NULL;
}

static int sq_schema_version(sqlite3 *db, int *version)
{
	sqlite3_stmt *st;
	int rc;

	*version = 0;
	rc = sqlite3_prepare_v2(db, "SELECT value FROM meta WHERE key = 'schema_version'", -1, &st,
				NULL);
	if (rc != SQLITE_OK)
		return rc;
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		*version = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	return rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Creates or upgrades the schema of an open write connection, one transaction per step. */
static int sq_migrate(sqlite3 *db, const char *path, char *err, size_t errlen)
{
	char sql[128];
	int version, rc;

	rc = sq_exec(db, "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value)", err,
		     errlen, path);
	if (rc)
		return rc;
	for (;;) {
		rc = sq_exec(db, "BEGIN IMMEDIATE", err, errlen, path);
		if (rc)
			return rc;
		rc = sq_schema_version(db, &version);
		if (rc != SQLITE_OK) {
			snprintf(err, errlen, "sqlite %.200s: reading schema_version: %s", path,
				 sqlite3_errmsg(db));
			rc = sq_errno(rc);
			goto rollback;
		}
		if (version > SCHEMA_VERSION) {
			snprintf(err, errlen,
				 "sqlite %.200s: schema version %d is newer than this ember knows (%d);"
				 " use a newer ember or another file",
				 path, version, SCHEMA_VERSION);
			rc = -EPROTO;
			goto rollback;
		}
		if (version == SCHEMA_VERSION)
			return sq_exec(db, "COMMIT", err, errlen, path);
		rc = sq_exec(db, migrations[version], err, errlen, path);
		if (rc)
			goto rollback;
		snprintf(sql, sizeof(sql),
			 "INSERT OR REPLACE INTO meta(key, value) VALUES('schema_version', %d)",
			 version + 1);
		rc = sq_exec(db, sql, err, errlen, path);
		if (rc)
			goto rollback;
		rc = sq_exec(db, "COMMIT", err, errlen, path);
		if (rc)
			goto rollback;
		log_info("%s: schema migrated to version %d", path, version + 1);
	}
rollback:
	sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
	return rc;
}

static void sq_db_free(struct sq_db *d)
{
	if (!d)
		return;
	for (int i = 0; i < W_COUNT; i++)
		sqlite3_finalize(d->wstmt[i]);
	sq_conn_close(&d->w);
	for (int i = 0; i < READERS; i++)
		sq_conn_close(&d->readers[i]);
	free(d->cache);
	sb_free(&d->tag_names);
	sb_free(&d->tag_values);
	pthread_mutex_destroy(&d->wlock);
	pthread_mutex_destroy(&d->rlock);
	pthread_cond_destroy(&d->rfree);
	free(d);
}

/* Opens an organisation's database: write connection, schema, statements. */
static int sq_db_open(const char *path, int org, struct sq_db **out, char *err, size_t errlen)
{
	struct sq_db *d;
	int rc;

	*out = NULL;
	d = calloc(1, sizeof(*d));
	if (!d) {
		snprintf(err, errlen, "sqlite %.200s: out of memory", path);
		return -ENOMEM;
	}
	d->org = org;
	snprintf(d->path, sizeof(d->path), "%s", path);
	pthread_mutex_init(&d->wlock, NULL);
	pthread_mutex_init(&d->rlock, NULL);
	pthread_cond_init(&d->rfree, NULL);
	d->cache = calloc(STACK_CACHE_ENTRIES, sizeof(*d->cache));
	if (!d->cache) {
		snprintf(err, errlen, "sqlite %.200s: out of memory for the stack cache", path);
		rc = -ENOMEM;
		goto fail;
	}
	rc = sq_conn_open(&d->w, path, 1, WRITER_CACHE_KIB, err, errlen);
	if (rc)
		goto fail;
	rc = sq_migrate(d->w.db, path, err, errlen);
	if (rc)
		goto fail;
	for (int i = 0; i < W_COUNT; i++) {
		rc = sqlite3_prepare_v3(d->w.db, wstmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT,
					&d->wstmt[i], NULL);
		if (rc != SQLITE_OK) {
			snprintf(err, errlen, "sqlite %.200s: preparing '%s': %s", path, wstmt_sql[i],
				 sqlite3_errmsg(d->w.db));
			rc = sq_errno(rc);
			goto fail;
		}
	}
	*out = d;
	return 0;
fail:
	sq_db_free(d);
	return rc;
}

/*
 * Returns the open database of org (opening it if needed) with a reference the caller drops
 * with sq_db_put. must_exist: a missing file is not created; -ENOENT without a message.
 */
static int sq_db_get(struct sq_store *st, int org, int must_exist, struct sq_db **out)
{
	char path[PATH_MAX], err[sizeof(st->base.errmsg)];
	struct sq_db *d = NULL;
	int free_slot = -1, lru = -1, rc;

	*out = NULL;
	pthread_mutex_lock(&st->lock);
	for (int i = 0; i < MAX_OPEN_DBS; i++) {
		if (!st->dbs[i]) {
			if (free_slot < 0)
				free_slot = i;
			continue;
		}
		if (st->dbs[i]->org == org) {
			d = st->dbs[i];
			break;
		}
		if (st->dbs[i]->refs == 0 && st->dbs[i]->org != 1 &&
		    (lru < 0 || st->dbs[i]->last_use < st->dbs[lru]->last_use))
			lru = i;
	}
	if (d)
		goto found;
	rc = store_sqlite_org_path(st->path, org, path, sizeof(path));
	if (rc) {
		snprintf(st->base.errmsg, sizeof(st->base.errmsg),
			 "sqlite: file name for organisation %d too long", org);
		goto unlock;
	}
	if (must_exist && access(path, F_OK) != 0) {
		rc = -ENOENT;
		goto unlock;
	}
	if (free_slot < 0) {
		if (lru < 0) {
			snprintf(st->base.errmsg, sizeof(st->base.errmsg),
				 "sqlite: all %d open organisation databases are busy", MAX_OPEN_DBS);
			rc = -EAGAIN;
			goto unlock;
		}
		sq_db_free(st->dbs[lru]);
		st->dbs[lru] = NULL;
		free_slot = lru;
	}
	/* Opening under the store lock serialises first uses; they are rare and short. */
	rc = sq_db_open(path, org, &d, err, sizeof(err));
	if (rc) {
		snprintf(st->base.errmsg, sizeof(st->base.errmsg), "%s", err);
		log_error("%s", err);
		goto unlock;
	}
	st->dbs[free_slot] = d;
found:
	d->refs++;
	d->last_use = ++st->tick;
	*out = d;
	rc = 0;
unlock:
	pthread_mutex_unlock(&st->lock);
	return rc;
}

static void sq_db_put(struct sq_store *st, struct sq_db *d)
{
	pthread_mutex_lock(&st->lock);
	d->refs--;
	pthread_mutex_unlock(&st->lock);
}

/* Takes a read connection of d, waiting while all READERS are busy. */
static int sq_reader_get(struct sq_store *st, struct sq_db *d, struct sq_conn **out)
{
	char err[sizeof(st->base.errmsg)];
	struct sq_conn *c = NULL;
	int rc;

	pthread_mutex_lock(&d->rlock);
	for (;;) {
		for (int i = 0; i < READERS && !c; i++)
			if (!d->readers[i].in_use && d->readers[i].db)
				c = &d->readers[i];
		for (int i = 0; i < READERS && !c; i++)
			if (!d->readers[i].in_use)
				c = &d->readers[i];
		if (c)
			break;
		pthread_cond_wait(&d->rfree, &d->rlock);
	}
	c->in_use = 1;
	pthread_mutex_unlock(&d->rlock);
	if (c->db) {
		*out = c;
		return 0;
	}
	rc = sq_conn_open(c, d->path, 0, READER_CACHE_KIB, err, sizeof(err));
	if (rc) {
		sq_set_err(st, "%s", err);
		pthread_mutex_lock(&d->rlock);
		c->in_use = 0;
		pthread_cond_signal(&d->rfree);
		pthread_mutex_unlock(&d->rlock);
		return rc;
	}
	*out = c;
	return 0;
}

static void sq_reader_put(struct sq_db *d, struct sq_conn *c)
{
	c->deadline_ns = 0;
	pthread_mutex_lock(&d->rlock);
	c->in_use = 0;
	pthread_cond_signal(&d->rfree);
	pthread_mutex_unlock(&d->rlock);
}

/* ---- insert --------------------------------------------------------------------------------- */

static const char *sq_str(const char *s)
{
	return s ? s : "";
}

static int sq_row_check(const struct profile_row *r, size_t i, char *err, size_t errlen)
{
	const char *field = NULL, *why = NULL;

	if (r->time <= 0)
		field = "time", why = "expected unix seconds > 0";
	else if (!r->app_service || !*r->app_service)
		field = "app_service", why = "must not be empty";
	else if (!r->profile_location_str || !*r->profile_location_str)
		field = "profile_location_str", why = "must not be empty";
	else if (strlen(r->profile_location_str) > MAX_STACK_BYTES)
		field = "profile_location_str", why = "longer than 1 MiB";
	else if (r->profile_value < 0)
		field = "profile_value", why = "expected an integer >= 0";
	else if (!r->profile_event_type || !*r->profile_event_type)
		field = "profile_event_type", why = "must not be empty";
	else if (!r->profile_language_type || !*r->profile_language_type)
		field = "profile_language_type", why = "must not be empty";
	else if (r->compression_algo && *r->compression_algo)
		field = "compression_algo", why = "only plain text stacks (\"\") can be stored";
	else if (r->n_tags > ROW_MAX_TAGS)
		field = "tags", why = "more than 64 tags";
	else if (r->n_tags && (!r->tag_names || !r->tag_values))
		field = "tags", why = "names or values missing";
	if (!field) {
		for (size_t t = 0; t < r->n_tags; t++) {
			if (!r->tag_names[t] || !*r->tag_names[t]) {
				field = "tags", why = "empty tag name";
				break;
			}
		}
	}
	if (!field)
		return 0;
	snprintf(err, errlen, "row %zu: field '%s': %s", i, field, why);
	return -EINVAL;
}

static int sq_step_done(sqlite3_stmt *st)
{
	int rc = sqlite3_step(st);

	sqlite3_reset(st);
	return rc == SQLITE_DONE || rc == SQLITE_ROW ? SQLITE_OK : rc;
}

/* Finds or stores the stack text; *id receives its id. Called inside the batch transaction. */
static int sq_stack_id(struct sq_db *d, const char *text, int64_t *id)
{
	sqlite3_stmt *get = d->wstmt[W_STACK_GET], *put = d->wstmt[W_STACK_PUT];
	size_t len = strlen(text);
	uint64_t h1, h2, probe;
	struct sq_cache_slot *slot;
	int rc;

	sq_hash128(text, len, &h1, &h2);
	slot = &d->cache[h1 & (STACK_CACHE_ENTRIES - 1)];
	if (slot->check == h2) {
		*id = slot->id;
		return SQLITE_OK;
	}
	for (probe = h1;; probe++) {
		sqlite3_bind_int64(get, 1, (int64_t)probe);
		rc = sqlite3_step(get);
		if (rc == SQLITE_ROW) {
			const char *have = (const char *)sqlite3_column_blob(get, 0);
			size_t have_len = (size_t)sqlite3_column_bytes(get, 0);
			const char *algo = (const char *)sqlite3_column_text(get, 1);
			int same = have_len == len && (!algo || !*algo) &&
				   (len == 0 || memcmp(have, text, len) == 0);

			sqlite3_reset(get);
			if (same)
				break;
			continue; /* another text owns this id: try the next one */
		}
		sqlite3_reset(get);
		if (rc != SQLITE_DONE)
			return rc;
		sqlite3_bind_int64(put, 1, (int64_t)probe);
		sqlite3_bind_text(put, 2, text, (int)len, SQLITE_STATIC);
		rc = sq_step_done(put);
		sqlite3_clear_bindings(put);
		if (rc != SQLITE_OK)
			return rc;
		break;
	}
	slot->check = h2;
	slot->id = (int64_t)probe;
	*id = (int64_t)probe;
	return SQLITE_OK;
}

static void sq_tags_json(struct strbuf *sb, const char *const *items, size_t n)
{
	sb_reset(sb);
	sb_putc(sb, '[');
	for (size_t i = 0; i < n; i++) {
		if (i)
			sb_putc(sb, ',');
		sb_json_str(sb, sq_str(items[i]));
	}
	sb_putc(sb, ']');
}

static int sq_sample_put(struct sq_db *d, const struct profile_row *r, int64_t stack_id,
			 int64_t in_us)
{
	sqlite3_stmt *st = d->wstmt[W_SAMPLE_PUT];
	const char *texts[] = {
		r->profile_value_unit, r->profile_event_type, r->profile_language_type,
	};
	const char *texts2[] = {
		r->host, r->agent, r->host_ip, r->container_id, r->pod_cluster, r->pod_ns,
		r->pod_node, r->pod, r->pod_group,
	};
	int k = 1;

	sqlite3_bind_int64(st, k++, r->time);
	sqlite3_bind_text(st, k++, r->app_service, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, k++, sq_str(r->app_instance), -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, k++, stack_id);
	sqlite3_bind_int64(st, k++, r->profile_value);
	for (size_t i = 0; i < ARRAY_SIZE(texts); i++)
		sqlite3_bind_text(st, k++, sq_str(texts[i]), -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, k++, r->profile_create_timestamp);
	sqlite3_bind_int64(st, k++, r->profile_in_timestamp ? r->profile_in_timestamp : in_us);
	sqlite3_bind_int64(st, k++, r->process_id);
	sqlite3_bind_int64(st, k++, r->process_start_time);
	for (size_t i = 0; i < ARRAY_SIZE(texts2); i++)
		sqlite3_bind_text(st, k++, sq_str(texts2[i]), -1, SQLITE_STATIC);
	sq_tags_json(&d->tag_names, r->tag_names, r->n_tags);
	sq_tags_json(&d->tag_values, r->tag_values, r->n_tags);
	sqlite3_bind_text(st, k++, d->tag_names.buf, (int)d->tag_names.len, SQLITE_STATIC);
	sqlite3_bind_text(st, k++, d->tag_values.buf, (int)d->tag_values.len, SQLITE_STATIC);
	sqlite3_bind_text(st, k++, sq_str(r->trace_id), -1, SQLITE_STATIC);
	sqlite3_bind_text(st, k++, sq_str(r->span_name), -1, SQLITE_STATIC);
	sqlite3_bind_text(st, k++, sq_str(r->profile_id), -1, SQLITE_STATIC);
	return sq_step_done(st);
}

/* The batch transaction; the caller holds d->wlock. */
static int sq_insert_locked(struct sq_db *d, const char *batch_id, const struct profile_row *rows,
			    size_t n, int *duplicate, char *err, size_t errlen)
{
	const char *what;
	int64_t in_us = sq_now_ns(CLOCK_REALTIME) / 1000, stack_id = 0;
	sqlite3_stmt *bget = d->wstmt[W_BATCH_GET], *bput = d->wstmt[W_BATCH_PUT];
	int rc;

	what = "BEGIN";
	rc = sq_step_done(d->wstmt[W_BEGIN]);
	if (rc != SQLITE_OK)
		return rc;
	what = "batch lookup";
	sqlite3_bind_text(bget, 1, batch_id, -1, SQLITE_STATIC);
	rc = sqlite3_step(bget);
	sqlite3_reset(bget);
	if (rc == SQLITE_ROW) {
		*duplicate = 1;
		sq_step_done(d->wstmt[W_ROLLBACK]);
		return SQLITE_OK;
	}
	if (rc != SQLITE_DONE)
		goto rollback;
	for (size_t i = 0; i < n; i++) {
		what = "stack";
		rc = sq_stack_id(d, rows[i].profile_location_str, &stack_id);
		if (rc != SQLITE_OK)
			goto rollback;
		what = "row";
		rc = sq_sample_put(d, &rows[i], stack_id, in_us);
		if (rc != SQLITE_OK)
			goto rollback;
	}
	what = "batch record";
	sqlite3_bind_text(bput, 1, batch_id, -1, SQLITE_STATIC);
	sqlite3_bind_int64(bput, 2, (int64_t)n);
	sqlite3_bind_int64(bput, 3, in_us);
	rc = sq_step_done(bput);
	if (rc != SQLITE_OK)
		goto rollback;
	what = "COMMIT";
	rc = sq_step_done(d->wstmt[W_COMMIT]);
	if (rc != SQLITE_OK)
		goto rollback;
	return SQLITE_OK;
rollback:
	snprintf(err, errlen, "%s: %s", what, sqlite3_errmsg(d->w.db));
	sq_step_done(d->wstmt[W_ROLLBACK]);
	/* Stacks stored by this transaction are gone again; the cache must forget them. */
	sq_cache_clear(d);
	return rc;
}

static int sq_insert(struct store *s, int org, const char *batch_id, const struct profile_row *rows,
		     size_t n, int *duplicate)
{
	struct sq_store *st = (struct sq_store *)s;
	char err[sizeof(s->errmsg)];
	struct sq_db *d;
	int rc;

	*duplicate = 0;
	if (!batch_id || !*batch_id) {
		sq_set_err(st, "batch_id must not be empty");
		return -EINVAL;
	}
	for (size_t i = 0; i < n; i++) {
		rc = sq_row_check(&rows[i], i, err, sizeof(err));
		if (rc) {
			sq_set_err(st, "%s", err);
			return rc;
		}
	}
	rc = sq_db_get(st, org, 0, &d);
	if (rc)
		return rc;
	pthread_mutex_lock(&d->wlock);
	rc = sq_insert_locked(d, batch_id, rows, n, duplicate, err, sizeof(err));
	if (rc != SQLITE_OK) {
		sq_set_err(st, "sqlite %.200s: batch '%.128s' (%zu rows): %.200s", d->path,
			   batch_id, n, err);
		log_warn("sqlite %s: batch '%s' (%zu rows) not stored: %s", d->path, batch_id, n,
			 err);
		rc = sq_errno(rc);
		/* The rows passed validation, so an SQL error here is ours, not the client's. */
		if (rc == -EINVAL)
			rc = -EIO;
	}
	pthread_mutex_unlock(&d->wlock);
	sq_db_put(st, d);
	return rc;
}

/* ---- queries -------------------------------------------------------------------------------- */

/* The statement text and its parameters: base[] first, then the filter's, in text order. */
struct sq_sql {
	struct strbuf sql;
	struct tf_param base[6];
	size_t n_base;
	struct tf_params filter;
	int uses_stack_text; /* the filter reads profile_location_str / compression_algo */
};

static void sq_sql_text(struct sq_sql *q, const char *text)
{
	q->base[q->n_base++] = (struct tf_param){.type = TF_PARAM_TEXT, .text = text,
						 .len = strlen(text)};
}

static void sq_sql_int(struct sq_sql *q, int64_t v)
{
	q->base[q->n_base++] = (struct tf_param){.type = TF_PARAM_INT, .i = v};
}

static void sq_sql_free(struct sq_sql *q)
{
	sb_free(&q->sql);
	tagfilter_params_free(&q->filter);
}

/* Compiles the filter first (so we know which source it needs), then writes the WHERE clause. */
static int sq_where(struct sq_store *st, struct sq_sql *q, const struct store_query *sq,
		    int with_service, struct strbuf *where)
{
	struct strbuf f = STRBUF_INIT;
	int rc;

	if (sq->filter) {
		rc = tagfilter_compile(sq->filter, TF_SQLITE, &f, &q->filter);
		if (rc) {
			sq_set_err(st, "tag_filter cannot be compiled for SQLite (%s)",
				   strerror(-rc));
			sb_free(&f);
			return rc;
		}
		/* Literals are parameters, so a column name in the text is a real column reference. */
		q->uses_stack_text = f.buf && (strstr(f.buf, "profile_location_str") ||
					       strstr(f.buf, "compression_algo"));
	}
	sb_puts(where, " WHERE time >= ? AND time <= ? AND profile_language_type = ?"
		       " AND profile_event_type = ?");
	sq_sql_int(q, sq->time_start);
	sq_sql_int(q, sq->time_end);
	sq_sql_text(q, sq->language_type);
	sq_sql_text(q, sq->event_type);
	if (with_service && sq->app_service) {
		sb_puts(where, " AND app_service = ?");
		sq_sql_text(q, sq->app_service);
	}
	if (f.len) {
		sb_puts(where, " AND ");
		sb_append(where, f.buf, f.len);
	}
	sb_free(&f);
	return 0;
}

static const struct tf_param *sq_param_at(const struct sq_sql *q, size_t k)
{
	if (k < q->n_base)
		return &q->base[k];
	k -= q->n_base;
	return k < q->filter.n ? &q->filter.items[k] : NULL;
}

/* The SQL with every '?' replaced by its value, for the API's debug object. */
static void sq_render(const struct sq_sql *q, struct strbuf *out)
{
	const char *p = q->sql.buf;
	size_t k = 0;
	int quoted = 0;

	sb_reset(out);
	for (; p && *p; p++) {
		const struct tf_param *v;

		if (*p == '\'')
			quoted = !quoted;
		if (*p != '?' || quoted) {
			sb_putc(out, *p);
			continue;
		}
		v = sq_param_at(q, k++);
		if (!v) {
			sb_putc(out, '?');
		} else if (v->type == TF_PARAM_INT) {
			sb_put_i64(out, v->i);
		} else if (v->type == TF_PARAM_REAL) {
			sb_printf(out, "%.17g", v->d);
		} else {
			sb_putc(out, '\'');
			for (size_t i = 0; i < v->len; i++) {
				if (v->text[i] == '\'')
					sb_putc(out, '\'');
				sb_putc(out, v->text[i]);
			}
			sb_putc(out, '\'');
		}
	}
}

static int sq_prepare(struct sq_store *st, struct sq_db *d, struct sq_conn *c,
		      const struct sq_sql *q, sqlite3_stmt **out)
{
	size_t n = q->n_base + q->filter.n;
	int rc;

	rc = sqlite3_prepare_v2(c->db, q->sql.buf, (int)q->sql.len, out, NULL);
	if (rc != SQLITE_OK) {
		sq_set_err(st, "sqlite %.200s: %s (in: %s)", d->path, sqlite3_errmsg(c->db),
			   q->sql.buf);
		*out = NULL;
		return sq_errno(rc);
	}
	if ((size_t)sqlite3_bind_parameter_count(*out) != n) {
		sq_set_err(st, "sqlite %.200s: statement has %d parameters, %zu values given", d->path,
			   sqlite3_bind_parameter_count(*out), n);
		sqlite3_finalize(*out);
		*out = NULL;
		return -EINVAL;
	}
	for (size_t k = 0; k < n; k++) {
		const struct tf_param *v = sq_param_at(q, k);

		if (v->type == TF_PARAM_INT)
			sqlite3_bind_int64(*out, (int)k + 1, v->i);
		else if (v->type == TF_PARAM_REAL)
			sqlite3_bind_double(*out, (int)k + 1, v->d);
		else
			sqlite3_bind_text(*out, (int)k + 1, v->text, (int)v->len, SQLITE_STATIC);
	}
	return 0;
}

static void sq_info_begin(struct sq_db *d, struct store_query_info *info)
{
	if (!info)
		return;
	info->seconds = 0;
	info->truncated = 0;
	info->n_stacks = 0;
	snprintf(info->engine, sizeof(info->engine), "sqlite");
	snprintf(info->host, sizeof(info->host), "%.63s", d ? d->path : "");
}

static int sq_check_query(struct sq_store *st, const struct store_query *q)
{
	if (!q->language_type || !q->event_type) {
		sq_set_err(st, "query needs language_type and event_type");
		return -EINVAL;
	}
	return 0;
}

/* Step error -> errno and message; a deadline interrupt is -ETIMEDOUT. */
static int sq_step_error(struct sq_store *st, struct sq_db *d, struct sq_conn *c, int rc,
			 const struct store_query *q)
{
	if (rc == SQLITE_INTERRUPT) {
		sq_set_err(st, "sqlite %.200s: query stopped after its time limit of %.3f s", d->path,
			   q->max_seconds);
		return -ETIMEDOUT;
	}
	sq_set_err(st, "sqlite %.200s: %s", d->path, sqlite3_errmsg(c->db));
	return sq_errno(rc);
}

/* zstd-stored stack text -> plain text in buf; returns the length or -1. */
static ssize_t sq_unzstd(const void *src, size_t len, char *buf, size_t cap)
{
	unsigned long long size = ZSTD_getFrameContentSize(src, len);
	size_t n;

	if (size == ZSTD_CONTENTSIZE_ERROR || (size != ZSTD_CONTENTSIZE_UNKNOWN && size > cap))
		return -1;
	n = ZSTD_decompress(buf, cap, src, len);
	return ZSTD_isError(n) ? -1 : (ssize_t)n;
}

static int sq_query_stacks(struct store *s, int org, const struct store_query *q,
			   store_stack_cb cb, void *arg, struct store_query_info *info)
{
	struct sq_store *st = (struct sq_store *)s;
	struct strbuf where = STRBUF_INIT;
	struct sq_sql sql = {.sql = STRBUF_INIT};
	const char *src;
	struct sq_conn *c = NULL;
	struct sq_db *d = NULL;
	sqlite3_stmt *stmt = NULL;
	char *zbuf = NULL;
	uint64_t delivered = 0, bad = 0;
	int64_t t0;
	int rc;

	sq_info_begin(NULL, info);
	rc = sq_check_query(st, q);
	if (rc)
		return rc;
	rc = sq_where(st, &sql, q, 1, &where);
	if (rc)
		goto out;
	src = sql.uses_stack_text ? "in_process" : "samples";
	/*
	 * Aggregate per stack id first and join the texts of the survivors only; ORDER BY makes
	 * a cut by max_stacks keep the biggest stacks, and makes the order deterministic.
	 */
	sb_puts(&sql.sql, "SELECT st.text, st.compression_algo, a.v FROM (");
	if (q->gauge)
		sb_printf(&sql.sql,
			  "SELECT stack_id, sum(v) AS v FROM (SELECT stack_id, profile_value AS v,"
			  " max(time) FROM %s%s GROUP BY stack_id, agent, process_id)"
			  " GROUP BY stack_id",
			  src, where.buf);
	else
		sb_printf(&sql.sql, "SELECT stack_id, sum(profile_value) AS v FROM %s%s"
				    " GROUP BY stack_id", src, where.buf);
	sb_puts(&sql.sql, " ORDER BY v DESC, stack_id");
	if (q->max_stacks && q->max_stacks < INT64_MAX)
		sb_printf(&sql.sql, " LIMIT %" PRIu64, q->max_stacks + 1);
	sb_puts(&sql.sql, ") a JOIN stacks st ON st.id = a.stack_id ORDER BY a.v DESC, a.stack_id");

	rc = sq_db_get(st, org, 1, &d);
	if (rc == -ENOENT) { /* no file for this organisation: nothing stored */
		rc = 0;
		goto out;
	}
	if (rc)
		goto out;
	sq_info_begin(d, info);
	rc = sq_reader_get(st, d, &c);
	if (rc)
		goto out;
	rc = sq_prepare(st, d, c, &sql, &stmt);
	if (rc)
		goto out;
	t0 = sq_now_ns(CLOCK_MONOTONIC);
	if (q->max_seconds > 0)
		c->deadline_ns = t0 + (int64_t)(q->max_seconds * 1e9);
	for (;;) {
		const char *text, *algo;
		int64_t v;
		ssize_t len;

		rc = sqlite3_step(stmt);
		if (rc == SQLITE_DONE) {
			rc = 0;
			break;
		}
		if (rc != SQLITE_ROW) {
			rc = sq_step_error(st, d, c, rc, q);
			break;
		}
		if (q->max_stacks && delivered == q->max_stacks) {
			if (info)
				info->truncated = 1;
			rc = 0;
			break;
		}
		text = sqlite3_column_blob(stmt, 0);
		len = sqlite3_column_bytes(stmt, 0);
		algo = (const char *)sqlite3_column_text(stmt, 1);
		v = sqlite3_column_int64(stmt, 2);
		if (algo && *algo) {
			if (strcmp(algo, "zstd") == 0 && !zbuf)
				zbuf = malloc(MAX_STACK_BYTES);
			if (strcmp(algo, "zstd") != 0 || !zbuf ||
			    (len = sq_unzstd(text, (size_t)len, zbuf, MAX_STACK_BYTES)) < 0) {
				bad++;
				continue;
			}
			text = zbuf;
		}
		delivered++;
		rc = cb(arg, text ? text : "", (size_t)len, v);
		if (rc)
			break;
	}
	if (info)
		info->seconds = (double)(sq_now_ns(CLOCK_MONOTONIC) - t0) / 1e9;
	if (bad)
		log_warn("%s: %" PRIu64 " stacks skipped: unknown compression or corrupt zstd text",
			 d->path, bad);
out:
	if (info) {
		sq_render(&sql, &info->sql);
		info->n_stacks = delivered;
	}
	sqlite3_finalize(stmt);
	if (c)
		sq_reader_put(d, c);
	if (d)
		sq_db_put(st, d);
	free(zbuf);
	sb_free(&where);
	sq_sql_free(&sql);
	return rc;
}

static int sq_list_services(struct store *s, int org, const struct store_query *q, size_t max,
			    char ***names, size_t *n, struct store_query_info *info)
{
	struct sq_store *st = (struct sq_store *)s;
	struct strbuf where = STRBUF_INIT;
	struct sq_sql sql = {.sql = STRBUF_INIT};
	struct sq_conn *c = NULL;
	struct sq_db *d = NULL;
	sqlite3_stmt *stmt = NULL;
	char **out = NULL;
	size_t got = 0;
	int64_t t0;
	int rc;

	*names = NULL;
	*n = 0;
	sq_info_begin(NULL, info);
	rc = sq_check_query(st, q);
	if (rc)
		return rc;
	rc = sq_where(st, &sql, q, 0, &where);
	if (rc)
		goto out;
	sb_printf(&sql.sql, "SELECT DISTINCT app_service FROM %s%s ORDER BY app_service LIMIT %zu",
		  sql.uses_stack_text ? "in_process" : "samples", where.buf,
		  max < SIZE_MAX ? max + 1 : max);
	rc = sq_db_get(st, org, 1, &d);
	if (rc == -ENOENT) {
		rc = 0;
		goto out;
	}
	if (rc)
		goto out;
	sq_info_begin(d, info);
	rc = sq_reader_get(st, d, &c);
	if (rc)
		goto out;
	rc = sq_prepare(st, d, c, &sql, &stmt);
	if (rc)
		goto out;
	out = calloc(max ? max : 1, sizeof(*out));
	if (!out) {
		rc = -ENOMEM;
		goto out;
	}
	t0 = sq_now_ns(CLOCK_MONOTONIC);
	if (q->max_seconds > 0)
		c->deadline_ns = t0 + (int64_t)(q->max_seconds * 1e9);
	for (;;) {
		rc = sqlite3_step(stmt);
		if (rc == SQLITE_DONE) {
			rc = 0;
			break;
		}
		if (rc != SQLITE_ROW) {
			rc = sq_step_error(st, d, c, rc, q);
			break;
		}
		if (got == max) {
			if (info)
				info->truncated = 1;
			rc = 0;
			break;
		}
		out[got] = strdup((const char *)sqlite3_column_text(stmt, 0));
		if (!out[got]) {
			rc = -ENOMEM;
			break;
		}
		got++;
	}
	if (info)
		info->seconds = (double)(sq_now_ns(CLOCK_MONOTONIC) - t0) / 1e9;
out:
	if (info) {
		sq_render(&sql, &info->sql);
		info->n_stacks = 0;
	}
	if (rc) {
		store_free_names(out, got);
	} else {
		*names = out;
		*n = got;
	}
	sqlite3_finalize(stmt);
	if (c)
		sq_reader_put(d, c);
	if (d)
		sq_db_put(st, d);
	sb_free(&where);
	sq_sql_free(&sql);
	return rc;
}

static int sq_health(struct store *s, char *err, size_t errlen)
{
	struct sq_store *st = (struct sq_store *)s;
	struct sq_conn *c;
	struct sq_db *d;
	int rc;

	rc = sq_db_get(st, 1, 0, &d);
	if (rc) {
		snprintf(err, errlen, "%s", s->errmsg);
		return rc;
	}
	rc = sq_reader_get(st, d, &c);
	if (rc) {
		snprintf(err, errlen, "%s", s->errmsg);
	} else {
		rc = sqlite3_exec(c->db, "SELECT 1", NULL, NULL, NULL);
		if (rc != SQLITE_OK) {
			snprintf(err, errlen, "sqlite %.200s: %s", d->path, sqlite3_errmsg(c->db));
			rc = sq_errno(rc);
		}
		sq_reader_put(d, c);
	}
	sq_db_put(st, d);
	return rc;
}

/* ---- retention ------------------------------------------------------------------------------ */

static int sq_prune_step(struct sq_db *d, const char *sql, int64_t param, int *changes)
{
	sqlite3_stmt *stmt;
	int rc;

	*changes = 0;
	rc = sqlite3_prepare_v2(d->w.db, sql, -1, &stmt, NULL);
	if (rc != SQLITE_OK)
		return rc;
	if (sqlite3_bind_parameter_count(stmt))
		sqlite3_bind_int64(stmt, 1, param);
	rc = sq_step_done(stmt);
	sqlite3_finalize(stmt);
	if (rc == SQLITE_OK)
		*changes = sqlite3_changes(d->w.db);
	return rc;
}

/* Deletes in short write transactions, so that ingest waits one chunk at most. */
static int sq_prune_db(struct sq_store *st, struct sq_db *d, int64_t before, uint64_t *deleted)
{
	char rows_sql[160];
	int changes, rc;

	snprintf(rows_sql, sizeof(rows_sql),
		 "DELETE FROM samples WHERE rowid IN (SELECT rowid FROM samples WHERE time < ?"
		 " LIMIT %d)", PRUNE_CHUNK);
	do {
		pthread_mutex_lock(&d->wlock);
		rc = sq_prune_step(d, rows_sql, before, &changes);
		pthread_mutex_unlock(&d->wlock);
		*deleted += (uint64_t)changes;
	} while (rc == SQLITE_OK && changes == PRUNE_CHUNK);

	pthread_mutex_lock(&d->wlock);
	if (rc == SQLITE_OK)
		rc = sq_prune_step(d, "DELETE FROM batches WHERE received_us < ?",
				   before * 1000000, &changes);
	if (rc == SQLITE_OK) {
		rc = sq_prune_step(d, "DELETE FROM stacks WHERE id NOT IN"
				      " (SELECT stack_id FROM samples)", 0, &changes);
		sq_cache_clear(d); /* cached ids may name deleted stacks */
	}
	if (rc != SQLITE_OK)
		sq_set_err(st, "sqlite %.200s: pruning: %s", d->path, sqlite3_errmsg(d->w.db));
	pthread_mutex_unlock(&d->wlock);
	return rc == SQLITE_OK ? 0 : sq_errno(rc);
}

/* Organisation numbers that have a file: org 1 always, others found next to it. */
static int sq_org_exists(const struct sq_store *st, int org)
{
	char path[PATH_MAX];

	return store_sqlite_org_path(st->path, org, path, sizeof(path)) == 0 &&
	       access(path, F_OK) == 0;
}

int store_sqlite_prune(struct store *s, int64_t before, uint64_t *rows_deleted)
{
	struct sq_store *st = (struct sq_store *)s;
	uint64_t deleted = 0;
	int rc = 0;

	if (rows_deleted)
		*rows_deleted = 0;
	if (!s || s->ops != &sq_ops)
		return -EINVAL;
	for (int org = STORE_ORG_MIN; org <= STORE_ORG_MAX; org++) {
		struct sq_db *d;
		int r;

		if (org > 1 && !sq_org_exists(st, org))
			continue;
		r = sq_db_get(st, org, 1, &d);
		if (r == 0) {
			r = sq_prune_db(st, d, before, &deleted);
			sq_db_put(st, d);
		}
		if (r && r != -ENOENT && !rc)
			rc = r;
	}
	if (deleted)
		log_info("%s: pruned %" PRIu64 " rows older than %" PRId64, st->path, deleted,
			 before);
	if (rows_deleted)
		*rows_deleted = deleted;
	return rc;
}

/* ---- open / close --------------------------------------------------------------------------- */

static void sq_close(struct store *s)
{
	struct sq_store *st = (struct sq_store *)s;

	for (int i = 0; i < MAX_OPEN_DBS; i++)
		sq_db_free(st->dbs[i]);
	pthread_mutex_destroy(&st->lock);
	free(st);
}

static const struct store_ops sq_ops = {
	.name = "sqlite",
	.insert = sq_insert,
	.query_stacks = sq_query_stacks,
	.list_services = sq_list_services,
	.health = sq_health,
	.close = sq_close,
};

int store_sqlite_open(const char *path, struct store **out, char *err, size_t errlen)
{
	struct sq_store *st;
	struct sq_db *d;
	int rc;

	*out = NULL;
	if (!path || !*path || strlen(path) >= sizeof(st->path) - 16) {
		snprintf(err, errlen, "sqlite: bad database path '%s'", path ? path : "");
		return -EINVAL;
	}
	st = calloc(1, sizeof(*st));
	if (!st) {
		snprintf(err, errlen, "sqlite %.200s: out of memory", path);
		return -ENOMEM;
	}
	st->base.ops = &sq_ops;
	snprintf(st->path, sizeof(st->path), "%s", path);
	pthread_mutex_init(&st->lock, NULL);
	/* Organisation 1 opens now, so a bad path or a too new file fails at start-up. */
	rc = sq_db_get(st, 1, 0, &d);
	if (rc) {
		snprintf(err, errlen, "%s", st->base.errmsg);
		sq_close(&st->base);
		return rc;
	}
	sq_db_put(st, d);
	log_info("%s: opened (schema version %d)", path, SCHEMA_VERSION);
	*out = &st->base;
	return 0;
}
