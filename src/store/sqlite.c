/*
 * sqlite — profile.in_process in an embedded SQLite file (see store.h, sqlite.h, and
 * docs/store-sqlite.md for the measured numbers).
 *
 * Schema (version 2). A row of the logical table is split three ways, because most of it repeats:
 *   stacks(id, text, compression_algo)     each distinct folded stack once; id = hash of the text
 *   contexts(id, ckey, app_service, ...)   each distinct combination of the columns that describe
 *                                          a process (service, unit, event, language, pid, host,
 *                                          agent, pod, tags ...) once; id = hash of ckey
 *   samples(time, seq, context_id, stack_id, profile_value, profile_create_timestamp,
 *           profile_in_timestamp)          one narrow row per row of the logical table, in a
 *                                          WITHOUT ROWID b-tree keyed by (time, seq); seq
 *                                          numbers rows in insertion order (meta 'next_seq')
 *   in_process  VIEW: samples JOIN contexts JOIN stacks, every logical column under its logical
 *               name, plus stack_id and context_id
 *   batches(batch_id PRIMARY KEY, rows, received_us)   ids of stored batches (idempotent ingest)
 *   meta(key PRIMARY KEY, value)                       'schema_version', 'next_seq'
 * No index: samples is itself ordered by time, so it grows at its end (a key led by context_id
 * costs twice the insert time, measured), and one b-tree per row costs half of version 1's rowid
 * table plus covering index. A query first picks the matching contexts (a few hundred rows,
 * where the tag filter's json_each() is cheap) and then reads the time range of samples, keeping
 * the rows of those contexts; only a filter on a per-row column (time, value, the stack text) is
 * evaluated on the full view. Retention deletes a time range of the same b-tree.
 * compression_algo belongs to the stored stack text, so it lives in stacks; rows are written
 * plain (""), and a stack stored as 'zstd' (imported data) is decompressed before it reaches a
 * caller. tag_names/tag_values are JSON arrays of strings.
 *
 * Ids: a 128-bit hash of the text (of the context key) is computed in one pass (two 64-bit
 * lanes). The first lane is the preferred id; if that id holds a different text, id+1, id+2 ...
 * are probed, so a collision costs a lookup, never a wrong stack. A direct-mapped cache
 * (first lane -> slot; second lane checked) remembers ids already stored, so a batch of known
 * stacks and processes costs no lookups at all; only a 128-bit collision could fool it. The
 * caches are emptied whenever ids may have vanished (a rolled back transaction, pruning), and
 * trust that no other process prunes the same file.
 *
 * Concurrency: every organisation database has one write connection behind a mutex (SQLite
 * allows one writer anyway; batches are short transactions) and up to READERS read connections.
 * In WAL mode readers never wait for the writer, so a ProfileTracing query runs next to ingest.
 * A third connection per database checkpoints the WAL in its own thread (sq_wal_hook).
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
#include <stdatomic.h>
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
#define CONTEXT_CACHE_ENTRIES (1u << 16) /* per database, 16 bytes each */
#define POINTER_MEMO_ENTRIES 4096        /* per database: stack string address -> id, per batch */
#define CONTEXT_MEMO_ENTRIES 256         /* per database: context string addresses -> id, per batch,
					  * 224 bytes each */
#define BUSY_TIMEOUT_MS 5000            /* wait for another process's write lock */
#define MAX_STACK_BYTES (1u << 20)      /* largest decompressed stack text */
#define PRUNE_CHUNK 20000               /* rows deleted per write transaction when pruning */
#define PRUNE_CHUNK_STR "20000"
#define PAGE_SIZE 8192                  /* for new files */
#define WRITER_CACHE_KIB 16384          /* page cache of the write connection: the right edge of
					 * samples, new stacks and contexts, and a batch's dirty
					 * pages (~10 MiB for 200,000 rows). More only grows the
					 * heap a page fault and a memset at a time while a file is
					 * young (2.5 -> 2.3 µs of server CPU per row, measured) */
#define READER_CACHE_KIB 2048           /* page cache of each read connection (reads are mmap'ed;
					 * a bigger cache makes GROUP BY's sorter slower) */
#define MMAP_BYTES (256ll << 20)        /* memory-mapped reads */
#define PROGRESS_OPS 1000               /* VM steps between deadline checks */
#define CKPT_PAGES 4096                 /* WAL pages after a commit that wake the checkpointer */
#define CKPT_HARD_PAGES 32768          /* WAL pages at which the writer checkpoints itself */
#define CKPT_CACHE_KIB 1024             /* page cache of the checkpointer's connection */
#define CKPT_IDLE_MS 1000               /* no commit for this long: the rest of the WAL too */
#define WAL_KEEP_BYTES (64ll << 20)     /* a WAL reset after a checkpoint is cut to this size */
#define VACUUM_CHUNK_PAGES 256          /* free pages given back per write transaction (2 MiB) */
#define VACUUM_MIN_FREE_DIV 8           /* give pages back when over 1/8 of the file is free */
#define PAUSE_MAX_US 100000             /* maintenance lets waiting batches go first this long */

/* The logical table; each migration that rebuilds samples drops and re-creates it. */
#define SQL_VIEW_IN_PROCESS \
	"CREATE VIEW in_process AS SELECT s.time AS time, c.app_service AS app_service," \
	" c.app_instance AS app_instance, st.text AS profile_location_str," \
	" s.profile_value AS profile_value, c.profile_value_unit AS profile_value_unit," \
	" c.profile_event_type AS profile_event_type," \
	" c.profile_language_type AS profile_language_type," \
	" s.profile_create_timestamp AS profile_create_timestamp," \
	" s.profile_in_timestamp AS profile_in_timestamp, c.process_id AS process_id," \
	" c.process_start_time AS process_start_time, c.host AS host, c.agent AS agent," \
	" c.host_ip AS host_ip, c.container_id AS container_id, c.pod_cluster AS pod_cluster," \
	" c.pod_ns AS pod_ns, c.pod_node AS pod_node, c.pod AS pod, c.pod_group AS pod_group," \
	" c.tag_names AS tag_names, c.tag_values AS tag_values, c.trace_id AS trace_id," \
	" c.span_name AS span_name, c.profile_id AS profile_id," \
	" st.compression_algo AS compression_algo, s.stack_id AS stack_id," \
	" s.context_id AS context_id" \
	" FROM samples s JOIN contexts c ON c.id = s.context_id JOIN stacks st ON st.id = s.stack_id;"

static const char *const migrations[] = {
	/* 1: the initial schema */
	"CREATE TABLE stacks(id INTEGER PRIMARY KEY, text TEXT NOT NULL,"
	" compression_algo TEXT NOT NULL DEFAULT '');"
	"CREATE TABLE contexts(id INTEGER PRIMARY KEY, ckey BLOB NOT NULL,"
	" app_service TEXT NOT NULL, app_instance TEXT NOT NULL, profile_value_unit TEXT NOT NULL,"
	" profile_event_type TEXT NOT NULL, profile_language_type TEXT NOT NULL,"
	" process_id INTEGER NOT NULL, process_start_time INTEGER NOT NULL, host TEXT NOT NULL,"
	" agent TEXT NOT NULL, host_ip TEXT NOT NULL, container_id TEXT NOT NULL,"
	" pod_cluster TEXT NOT NULL, pod_ns TEXT NOT NULL, pod_node TEXT NOT NULL,"
	" pod TEXT NOT NULL, pod_group TEXT NOT NULL, tag_names TEXT NOT NULL,"
	" tag_values TEXT NOT NULL, trace_id TEXT NOT NULL, span_name TEXT NOT NULL,"
	" profile_id TEXT NOT NULL);"
	"CREATE TABLE samples(time INTEGER NOT NULL, context_id INTEGER NOT NULL,"
	" stack_id INTEGER NOT NULL, profile_value INTEGER NOT NULL,"
	" profile_create_timestamp INTEGER NOT NULL, profile_in_timestamp INTEGER NOT NULL);"
	"CREATE INDEX samples_time ON samples(time, context_id, stack_id, profile_value);"
	"CREATE TABLE batches(batch_id TEXT PRIMARY KEY, rows INTEGER NOT NULL,"
	" received_us INTEGER NOT NULL) WITHOUT ROWID;"
	SQL_VIEW_IN_PROCESS,
	/*
	 * 2: samples as one b-tree keyed by (time, seq) instead of a rowid table plus its covering
	 * index: half the b-tree work per inserted row, a third less file. seq numbers rows in
	 * insertion order (meta 'next_seq'); old rows keep their rowid as seq.
	 */
	"CREATE TABLE samples_v2(time INTEGER NOT NULL, seq INTEGER NOT NULL,"
	" context_id INTEGER NOT NULL, stack_id INTEGER NOT NULL, profile_value INTEGER NOT NULL,"
	" profile_create_timestamp INTEGER NOT NULL, profile_in_timestamp INTEGER NOT NULL,"
	" PRIMARY KEY(time, seq)) WITHOUT ROWID;"
	"INSERT INTO samples_v2 SELECT time, rowid, context_id, stack_id, profile_value,"
	" profile_create_timestamp, profile_in_timestamp FROM samples ORDER BY time, rowid;"
	"INSERT OR REPLACE INTO meta(key, value)"
	" VALUES('next_seq', (SELECT coalesce(max(rowid), 0) + 1 FROM samples));"
	"DROP VIEW in_process;"
	"DROP TABLE samples;"
	"ALTER TABLE samples_v2 RENAME TO samples;"
	SQL_VIEW_IN_PROCESS,
};

#define SCHEMA_VERSION ((int)ARRAY_SIZE(migrations))

static const char sql_context_put[] =
	"INSERT INTO contexts(id, ckey, app_service, app_instance, profile_value_unit,"
	" profile_event_type, profile_language_type, process_id, process_start_time, host, agent,"
	" host_ip, container_id, pod_cluster, pod_ns, pod_node, pod, pod_group, tag_names,"
	" tag_values, trace_id, span_name, profile_id)"
	" VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)";

enum sq_wstmt {
	W_BEGIN,
	W_COMMIT,
	W_ROLLBACK,
	W_BATCH_GET,
	W_BATCH_PUT,
	W_SEQ_GET,
	W_SEQ_PUT,
	W_STACK_GET,
	W_STACK_PUT,
	W_CONTEXT_GET,
	W_CONTEXT_PUT,
	W_SAMPLE_PUT,
	W_SAMPLE_PUT_GROUP,
	W_COUNT
};

/*
 * Rows are inserted SAMPLE_GROUP at a time by one statement (the rest of a batch one by one):
 * one sqlite3_step per group instead of per row, a quarter less CPU per row (measured in
 * docs/benchmarks.md). SAMPLE_VALUES_GROUP must hold SAMPLE_GROUP tuples.
 */
#define SAMPLE_GROUP 32
#define SAMPLE_COLUMNS 7
#define SAMPLE_VALUES "(?,?,?,?,?,?,?)"
#define SAMPLE_VALUES_4 SAMPLE_VALUES "," SAMPLE_VALUES "," SAMPLE_VALUES "," SAMPLE_VALUES
#define SAMPLE_VALUES_16 SAMPLE_VALUES_4 "," SAMPLE_VALUES_4 "," SAMPLE_VALUES_4 "," SAMPLE_VALUES_4
#define SAMPLE_VALUES_GROUP SAMPLE_VALUES_16 "," SAMPLE_VALUES_16
#define SAMPLE_INSERT "INSERT OR FAIL INTO samples(time, seq, context_id, stack_id," \
		      " profile_value, profile_create_timestamp, profile_in_timestamp) VALUES"

static const char *const wstmt_sql[W_COUNT] = {
	[W_BEGIN] = "BEGIN IMMEDIATE",
	[W_COMMIT] = "COMMIT",
	[W_ROLLBACK] = "ROLLBACK",
	[W_BATCH_GET] = "SELECT 1 FROM batches WHERE batch_id = ?",
	[W_BATCH_PUT] = "INSERT INTO batches(batch_id, rows, received_us) VALUES(?, ?, ?)",
	/* read and written inside the batch's write transaction: right with other writers too */
	[W_SEQ_GET] = "SELECT value FROM meta WHERE key = 'next_seq'",
	[W_SEQ_PUT] = "INSERT OR REPLACE INTO meta(key, value) VALUES('next_seq', ?)",
	/* a compressed text never equals a plain one: it reads as NULL */
	[W_STACK_GET] = "SELECT iif(compression_algo = '', text, NULL) FROM stacks WHERE id = ?",
	[W_STACK_PUT] = "INSERT INTO stacks(id, text) VALUES(?, ?)",
	[W_CONTEXT_GET] = "SELECT ckey FROM contexts WHERE id = ?",
	[W_CONTEXT_PUT] = sql_context_put,
	[W_SAMPLE_PUT] = SAMPLE_INSERT SAMPLE_VALUES,
	[W_SAMPLE_PUT_GROUP] = SAMPLE_INSERT SAMPLE_VALUES_GROUP,
};

/*
 * Ingest decodes a batch's stack dictionary once, so rows of one batch share the same string
 * for the same stack: the address alone finds the id again, without strlen, hash or cache miss.
 */
struct sq_memo_slot {
	const char *text;
	int64_t id;
	uint64_t batch; /* the batch it is valid for */
};

/*
 * The same for contexts: ingest shares one string per distinct short text of a batch, so the
 * addresses of a row's context texts and tags (and its two numbers) find the context id again
 * without building and hashing its key. The tag arrays are those of a row of the same batch.
 */
#define CONTEXT_TEXTS 19
struct sq_ctx_memo_slot {
	const char *text[CONTEXT_TEXTS];
	int64_t process_id, process_start_time;
	size_t n_tags;
	const char *const *tag_names;
	const char *const *tag_values;
	int64_t id;
	uint64_t batch; /* the batch it is valid for; 0 = never */
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

	pthread_mutex_t wlock; /* the write connection, its statements and the id caches */
	atomic_int wwaiting;   /* batches waiting for wlock (sq_wlock_pause lets them in) */
	struct sq_conn w;
	sqlite3_stmt *wstmt[W_COUNT];
	struct sq_cache_slot *stack_cache;   /* STACK_CACHE_ENTRIES */
	struct sq_cache_slot *context_cache; /* CONTEXT_CACHE_ENTRIES */
	struct strbuf ckey, last_ckey;       /* context key of this row and of the last one */
	int64_t last_context_id;
	struct sq_memo_slot memo[POINTER_MEMO_ENTRIES];
	struct sq_ctx_memo_slot ctx_memo[CONTEXT_MEMO_ENTRIES];
	uint64_t batch_seq;
	struct strbuf tag_names, tag_values;

	pthread_mutex_t rlock; /* readers[].in_use */
	pthread_cond_t rfree;
	struct sq_conn readers[READERS];

	/* The checkpointer: its own connection and thread (see sq_wal_hook). */
	pthread_mutex_t cklock; /* ck_wanted, ck_stop, wal_pages, commits */
	pthread_cond_t ckwake;
	int ck_wanted, ck_stop, ck_started;
	int wal_pages;    /* WAL pages after the last commit; 0 once checkpointed while idle */
	uint64_t commits; /* counts commits, to see the writer go idle */
	pthread_t ck_thread;
	struct sq_conn ck;
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

static inline uint64_t sq_round(uint64_t acc, uint64_t w)
{
	return sq_rotl(acc + w * 0x87c37b91114253d5ull, 31) * 0x4cf5ad432745937full;
}

/*
 * 128 bits over the text in one pass: two 64-bit lanes, each taking every other 8-byte word
 * (two independent multiply chains run in parallel), crossed and finalised at the end.
 */
static void sq_hash128(const char *p, size_t n, uint64_t *h1, uint64_t *h2)
{
	uint64_t a = 0x9e3779b97f4a7c15ull ^ n, b = 0x85ebca77c2b2ae63ull, w, x;
	size_t i;

	for (i = 0; i + 16 <= n; i += 16) {
		memcpy(&w, p + i, 8);
		memcpy(&x, p + i + 8, 8);
		a = sq_round(a, w);
		b = sq_round(b, x);
	}
	w = x = 0;
	memcpy(&w, p + i, n - i < 8 ? n - i : 8);
	if (n - i > 8)
		memcpy(&x, p + i + 8, n - i - 8);
	a = sq_round(a, w);
	b = sq_round(b, x);
	*h1 = sq_fmix(a ^ sq_rotl(b, 17));
	*h2 = sq_fmix(b + sq_rotl(a, 29) + n) | 1; /* never 0: 0 marks an empty cache slot */
}

static void sq_cache_clear(struct sq_db *d)
{
	memset(d->stack_cache, 0, sizeof(*d->stack_cache) * STACK_CACHE_ENTRIES);
	memset(d->context_cache, 0, sizeof(*d->context_cache) * CONTEXT_CACHE_ENTRIES);
	sb_reset(&d->last_ckey);
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

/* The single integer a PRAGMA answers, or -1. */
static int64_t sq_pragma_int(sqlite3 *db, const char *sql)
{
	sqlite3_stmt *stmt;
	int64_t v = -1;

	if (sqlite3_prepare_v2(db, sql, -1, &stmt, NULL) != SQLITE_OK)
		return -1;
	if (sqlite3_step(stmt) == SQLITE_ROW)
		v = sqlite3_column_int64(stmt, 0);
	sqlite3_finalize(stmt);
	return v;
}

static int sq_conn_open(struct sq_conn *c, const char *path, int create, int cache_kib, char *err,
			size_t errlen)
{
	int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | (create ? SQLITE_OPEN_CREATE : 0);
	char pragmas[384];
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
	/*
	 * auto_vacuum first, by the writer of a new (empty) file only: it takes effect before WAL
	 * mode and the first table, and then the pages retention frees can be given back to the
	 * file system (sq_reclaim). On a file that has it already the pragma writes, so a reader
	 * that sent it would wait for the writer's lock.
	 */
	snprintf(pragmas, sizeof(pragmas),
		 "%sPRAGMA page_size=%d; PRAGMA journal_mode=WAL;"
		 " PRAGMA synchronous=NORMAL; PRAGMA cache_size=-%d; PRAGMA mmap_size=%lld;"
		 " PRAGMA journal_size_limit=%lld;",
		 create && sq_pragma_int(c->db, "PRAGMA page_count") == 0
		     ? "PRAGMA auto_vacuum=INCREMENTAL; "
		     : "",
		 PAGE_SIZE, cache_kib, MMAP_BYTES, WAL_KEEP_BYTES);
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
	if (d->ck_started) {
		pthread_mutex_lock(&d->cklock);
		d->ck_stop = 1;
		pthread_cond_signal(&d->ckwake);
		pthread_mutex_unlock(&d->cklock);
		pthread_join(d->ck_thread, NULL);
	}
	sq_conn_close(&d->ck);
	for (int i = 0; i < W_COUNT; i++)
		sqlite3_finalize(d->wstmt[i]);
	sq_conn_close(&d->w);
	for (int i = 0; i < READERS; i++)
		sq_conn_close(&d->readers[i]);
	free(d->stack_cache);
	free(d->context_cache);
	sb_free(&d->ckey);
	sb_free(&d->last_ckey);
	sb_free(&d->tag_names);
	sb_free(&d->tag_values);
	pthread_mutex_destroy(&d->wlock);
	pthread_mutex_destroy(&d->rlock);
	pthread_cond_destroy(&d->rfree);
	pthread_mutex_destroy(&d->cklock);
	pthread_cond_destroy(&d->ckwake);
	free(d);
}

/*
 * Checkpoints off the ingest path. SQLite's default runs a checkpoint inside the commit that
 * finds the WAL over 1000 pages: that copies the WAL into the database file while the write
 * lock (ours, d->wlock) is held, so every other batch waits for it — measured in bench/query:
 * 318k rows/s with it, 528k rows/s without. Instead the write connection's WAL hook wakes this
 * thread, which runs PASSIVE checkpoints on its own connection while the writer goes on (WAL
 * allows a checkpoint next to readers and a writer). The WAL stays bounded: a checkpoint that
 * caught up lets the next write transaction start the WAL file over, and if the background
 * thread falls behind (readers holding old snapshots, a busy disk), the writer checkpoints
 * itself from CKPT_HARD_PAGES on, as SQLite would have.
 */
static int sq_wal_hook(void *arg, sqlite3 *db, const char *name, int pages)
{
	struct sq_db *d = arg;
	int rc;

	if (pages >= CKPT_HARD_PAGES) {
		rc = sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
		if (rc != SQLITE_OK && rc != SQLITE_BUSY)
			log_warn("sqlite %s: checkpoint by the writer at %d WAL pages: %s", d->path,
				 pages, sqlite3_errstr(rc));
		return SQLITE_OK;
	}
	pthread_mutex_lock(&d->cklock);
	d->wal_pages = pages;
	d->commits++;
	if (pages >= CKPT_PAGES) {
		d->ck_wanted = 1;
		pthread_cond_signal(&d->ckwake);
	}
	pthread_mutex_unlock(&d->cklock);
	return SQLITE_OK;
}

/*
 * Also checkpoints what is left in the WAL once the writer has been idle for CKPT_IDLE_MS: reads
 * of pages still in the WAL go through read() instead of the memory map.
 */
static void *sq_ckpt_run(void *arg)
{
	struct sq_db *d = arg;
	struct timespec until;
	uint64_t seen;
	int rc;

	for (;;) {
		pthread_mutex_lock(&d->cklock);
		seen = d->commits;
		while (!d->ck_wanted && !d->ck_stop) {
			clock_gettime(CLOCK_REALTIME, &until);
			until.tv_sec += CKPT_IDLE_MS / 1000;
			until.tv_nsec += (CKPT_IDLE_MS % 1000) * 1000000l;
			if (until.tv_nsec >= 1000000000l) {
				until.tv_sec++;
				until.tv_nsec -= 1000000000l;
			}
			if (pthread_cond_timedwait(&d->ckwake, &d->cklock, &until) == ETIMEDOUT &&
			    d->commits == seen && d->wal_pages > 0) {
				d->wal_pages = 0;
				break;
			}
			seen = d->commits;
		}
		if (d->ck_stop) {
			pthread_mutex_unlock(&d->cklock);
			return NULL;
		}
		d->ck_wanted = 0;
		pthread_mutex_unlock(&d->cklock);
		rc = sqlite3_wal_checkpoint_v2(d->ck.db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
		if (rc != SQLITE_OK && rc != SQLITE_BUSY)
			log_warn("sqlite %s: background checkpoint: %s", d->path, sqlite3_errstr(rc));
	}
}

/* Opens the checkpointer's connection and starts its thread, then takes over the WAL hook. */
static int sq_ckpt_start(struct sq_db *d, char *err, size_t errlen)
{
	int rc;

	rc = sq_conn_open(&d->ck, d->path, 0, CKPT_CACHE_KIB, err, errlen);
	if (rc)
		return rc;
	rc = pthread_create(&d->ck_thread, NULL, sq_ckpt_run, d);
	if (rc) {
		snprintf(err, errlen, "sqlite %.200s: starting the checkpointer: %s", d->path,
			 strerror(rc));
		return -rc;
	}
	d->ck_started = 1;
	/* Replaces SQLite's own auto-checkpoint hook of the write connection. */
	sqlite3_wal_hook(d->w.db, sq_wal_hook, d);
	return 0;
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
	pthread_mutex_init(&d->cklock, NULL);
	pthread_cond_init(&d->ckwake, NULL);
	d->stack_cache = calloc(STACK_CACHE_ENTRIES, sizeof(*d->stack_cache));
	d->context_cache = calloc(CONTEXT_CACHE_ENTRIES, sizeof(*d->context_cache));
	if (!d->stack_cache || !d->context_cache) {
		snprintf(err, errlen, "sqlite %.200s: out of memory for the id caches", path);
		rc = -ENOMEM;
		goto fail;
	}
	rc = sq_conn_open(&d->w, path, 1, WRITER_CACHE_KIB, err, errlen);
	if (rc)
		goto fail;
	rc = sq_migrate(d->w.db, path, err, errlen);
	if (rc)
		goto fail;
	rc = sq_ckpt_start(d, err, errlen);
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

typedef int (*sq_put_fn)(struct sq_db *d, int64_t id, const void *arg);

/*
 * The id of key in a hash-keyed table (stacks or contexts), storing it if new: the cache, else
 * get (SELECT key WHERE id = ?) from the preferred id on until the same key or a free id.
 * Called inside the batch transaction.
 */
static int sq_intern(struct sq_db *d, struct sq_cache_slot *cache, uint32_t entries,
		     sqlite3_stmt *get, const char *key, size_t len, sq_put_fn put,
		     const void *arg, int64_t *id)
{
	uint64_t h1, h2, probe;
	struct sq_cache_slot *slot;
	int rc;

	sq_hash128(key, len, &h1, &h2);
	slot = &cache[h1 & (entries - 1)];
	if (slot->check == h2) {
		*id = slot->id;
		return SQLITE_OK;
	}
	for (probe = h1;; probe++) {
		sqlite3_bind_int64(get, 1, (int64_t)probe);
		rc = sqlite3_step(get);
		if (rc == SQLITE_ROW) {
			const void *have = sqlite3_column_blob(get, 0);
			size_t have_len = (size_t)sqlite3_column_bytes(get, 0);
			int same = have && have_len == len && memcmp(have, key, len) == 0;

			sqlite3_reset(get);
			if (same)
				break;
			continue; /* another key owns this id: try the next one */
		}
		sqlite3_reset(get);
		if (rc != SQLITE_DONE)
			return rc;
		rc = put(d, (int64_t)probe, arg);
		if (rc != SQLITE_OK)
			return rc;
		break;
	}
	slot->check = h2;
	slot->id = (int64_t)probe;
	*id = (int64_t)probe;
	return SQLITE_OK;
}

static int sq_stack_put(struct sq_db *d, int64_t id, const void *arg)
{
	sqlite3_stmt *put = d->wstmt[W_STACK_PUT];
	int rc;

	sqlite3_bind_int64(put, 1, id);
	sqlite3_bind_text(put, 2, arg, -1, SQLITE_STATIC);
	rc = sq_step_done(put);
	sqlite3_clear_bindings(put);
	return rc;
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

/* The context texts of a row as given (NULL = ""), in table order from app_service on. */
static void sq_context_ptrs(const struct profile_row *r, const char *v[CONTEXT_TEXTS])
{
	const char *t[CONTEXT_TEXTS] = {
		r->app_service, r->app_instance, r->profile_value_unit, r->profile_event_type,
		r->profile_language_type, NULL, NULL, /* process_id, process_start_time */
		r->host, r->agent, r->host_ip, r->container_id, r->pod_cluster, r->pod_ns,
		r->pod_node, r->pod, r->pod_group, r->trace_id, r->span_name, r->profile_id,
	};

	memcpy(v, t, sizeof(t));
}

/* The context columns of a row, in table order from app_service on. */
static void sq_context_texts(const struct profile_row *r, const char *t[CONTEXT_TEXTS])
{
	sq_context_ptrs(r, t);
	for (int i = 0; i < CONTEXT_TEXTS; i++)
		t[i] = sq_str(t[i]);
}

static int sq_context_put(struct sq_db *d, int64_t id, const void *arg)
{
	const struct profile_row *r = arg;
	sqlite3_stmt *put = d->wstmt[W_CONTEXT_PUT];
	const char *t[CONTEXT_TEXTS];
	int k = 1, rc;

	sq_context_texts(r, t);
	sqlite3_bind_int64(put, k++, id);
	sqlite3_bind_blob(put, k++, d->ckey.buf, (int)d->ckey.len, SQLITE_STATIC);
	for (int i = 0; i < 5; i++)
		sqlite3_bind_text(put, k++, t[i], -1, SQLITE_STATIC);
	sqlite3_bind_int64(put, k++, r->process_id);
	sqlite3_bind_int64(put, k++, r->process_start_time);
	for (int i = 7; i < 16; i++)
		sqlite3_bind_text(put, k++, t[i], -1, SQLITE_STATIC);
	sq_tags_json(&d->tag_names, r->tag_names, r->n_tags);
	sq_tags_json(&d->tag_values, r->tag_values, r->n_tags);
	sqlite3_bind_text(put, k++, d->tag_names.buf, (int)d->tag_names.len, SQLITE_STATIC);
	sqlite3_bind_text(put, k++, d->tag_values.buf, (int)d->tag_values.len, SQLITE_STATIC);
	for (int i = 16; i < CONTEXT_TEXTS; i++)
		sqlite3_bind_text(put, k++, t[i], -1, SQLITE_STATIC);
	rc = sq_step_done(put);
	sqlite3_clear_bindings(put);
	return rc;
}

/* The memo slot of a row: its text and tag addresses and its numbers, hashed. */
static struct sq_ctx_memo_slot *sq_ctx_memo_slot(struct sq_db *d, const struct profile_row *r,
						 const char *v[CONTEXT_TEXTS])
{
	uint64_t h = (uint64_t)r->process_id * 0x9e3779b97f4a7c15ull ^
		     (uint64_t)r->process_start_time ^ r->n_tags;

	for (int i = 0; i < CONTEXT_TEXTS; i++)
		h = (h ^ (uintptr_t)v[i]) * 0x100000001b3ull;
	for (size_t i = 0; i < r->n_tags; i++)
		h = (h ^ (uintptr_t)r->tag_names[i] ^ (uintptr_t)r->tag_values[i] << 1) *
		    0x100000001b3ull;
	return &d->ctx_memo[(h ^ h >> 29) & (CONTEXT_MEMO_ENTRIES - 1)];
}

/* 1 if the slot holds this row's context: the same addresses (so the same texts) and numbers. */
static int sq_ctx_memo_hit(const struct sq_db *d, const struct sq_ctx_memo_slot *m,
			   const struct profile_row *r, const char *v[CONTEXT_TEXTS])
{
	if (m->batch != d->batch_seq || m->process_id != r->process_id ||
	    m->process_start_time != r->process_start_time || m->n_tags != r->n_tags ||
	    memcmp(m->text, v, sizeof(m->text)) != 0)
		return 0;
	for (size_t i = 0; i < r->n_tags; i++)
		if (m->tag_names[i] != r->tag_names[i] || m->tag_values[i] != r->tag_values[i])
			return 0;
	return 1;
}

/* ckey: every context column of the row, texts NUL-terminated, numbers as 8 raw bytes. */
static int sq_context_id(struct sq_db *d, const struct profile_row *r, int64_t *id)
{
	const char *t[CONTEXT_TEXTS];
	struct sq_ctx_memo_slot *m;
	uint64_t n_tags = r->n_tags;
	int rc;

	sq_context_ptrs(r, t);
	m = sq_ctx_memo_slot(d, r, t);
	if (sq_ctx_memo_hit(d, m, r, t)) {
		*id = m->id;
		return SQLITE_OK;
	}
	sq_context_texts(r, t);
	sb_reset(&d->ckey);
	for (int i = 0; i < CONTEXT_TEXTS; i++)
		sb_append(&d->ckey, t[i], strlen(t[i]) + 1);
	sb_append(&d->ckey, &r->process_id, 8);
	sb_append(&d->ckey, &r->process_start_time, 8);
	sb_append(&d->ckey, &n_tags, 8);
	for (size_t i = 0; i < r->n_tags; i++) {
		sb_append(&d->ckey, r->tag_names[i], strlen(r->tag_names[i]) + 1);
		sb_append(&d->ckey, sq_str(r->tag_values[i]), strlen(sq_str(r->tag_values[i])) + 1);
	}
	/* Rows of one process usually follow each other: skip the hash for a repeat. */
	if (d->last_ckey.len == d->ckey.len && memcmp(d->last_ckey.buf, d->ckey.buf,
						      d->ckey.len) == 0) {
		*id = d->last_context_id;
		rc = SQLITE_OK;
		goto done;
	}
	rc = sq_intern(d, d->context_cache, CONTEXT_CACHE_ENTRIES, d->wstmt[W_CONTEXT_GET],
		       d->ckey.buf, d->ckey.len, sq_context_put, r, id);
	if (rc == SQLITE_OK) {
		sb_reset(&d->last_ckey);
		sb_append(&d->last_ckey, d->ckey.buf, d->ckey.len);
		d->last_context_id = *id;
	}
done:
	if (rc == SQLITE_OK) {
		sq_context_ptrs(r, m->text);
		m->process_id = r->process_id;
		m->process_start_time = r->process_start_time;
		m->n_tags = r->n_tags;
		m->tag_names = r->tag_names;
		m->tag_values = r->tag_values;
		m->id = *id;
		m->batch = d->batch_seq;
	}
	return rc;
}

/* Binds one row's sample columns at parameters k+1 .. k+SAMPLE_COLUMNS of a samples insert. */
static void sq_bind_sample(sqlite3_stmt *st, int k, const struct profile_row *r, int64_t seq,
			   int64_t context_id, int64_t stack_id, int64_t in_us)
{
	sqlite3_bind_int64(st, k + 1, r->time);
	sqlite3_bind_int64(st, k + 2, seq);
	sqlite3_bind_int64(st, k + 3, context_id);
	sqlite3_bind_int64(st, k + 4, stack_id);
	sqlite3_bind_int64(st, k + 5, r->profile_value);
	sqlite3_bind_int64(st, k + 6, r->profile_create_timestamp);
	sqlite3_bind_int64(st, k + 7, r->profile_in_timestamp ? r->profile_in_timestamp : in_us);
}

/* The first free row number of samples; the caller is inside the write transaction. */
static int sq_seq_get(struct sq_db *d, int64_t *seq)
{
	sqlite3_stmt *get = d->wstmt[W_SEQ_GET];
	int rc;

	*seq = 1;
	rc = sqlite3_step(get);
	if (rc == SQLITE_ROW)
		*seq = sqlite3_column_int64(get, 0);
	sqlite3_reset(get);
	return rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* The batch transaction; the caller holds d->wlock. */
static int sq_insert_locked(struct sq_db *d, const char *batch_id, const struct profile_row *rows,
			    size_t n, int *duplicate, char *err, size_t errlen)
{
	int64_t in_us = sq_now_ns(CLOCK_REALTIME) / 1000, stack_id = 0, context_id = 0, seq;
	sqlite3_stmt *bget = d->wstmt[W_BATCH_GET], *bput = d->wstmt[W_BATCH_PUT];
	sqlite3_stmt *sput = d->wstmt[W_SAMPLE_PUT], *gput = d->wstmt[W_SAMPLE_PUT_GROUP];
	size_t grouped = n - n % SAMPLE_GROUP; /* rows inserted by gput */
	const char *what;
	int rc;

	what = "BEGIN";
	rc = sq_step_done(d->wstmt[W_BEGIN]);
	if (rc != SQLITE_OK) {
		snprintf(err, errlen, "%s: %s", what, sqlite3_errmsg(d->w.db));
		return rc;
	}
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
	what = "next_seq";
	rc = sq_seq_get(d, &seq);
	if (rc != SQLITE_OK)
		goto rollback;
	d->batch_seq++;
	for (size_t i = 0; i < n; i++) {
		const struct profile_row *r = &rows[i];
		const char *stack = r->profile_location_str;
		uint64_t slot = ((uintptr_t)stack >> 3) * 0x9e3779b97f4a7c15ull >> 32;
		struct sq_memo_slot *m = &d->memo[slot & (POINTER_MEMO_ENTRIES - 1)];

		what = "stack";
		if (m->text == stack && m->batch == d->batch_seq) {
			stack_id = m->id;
		} else {
			rc = sq_intern(d, d->stack_cache, STACK_CACHE_ENTRIES, d->wstmt[W_STACK_GET],
				       stack, strlen(stack), sq_stack_put, stack, &stack_id);
			if (rc != SQLITE_OK)
				goto rollback;
			*m = (struct sq_memo_slot){.text = stack, .id = stack_id,
						   .batch = d->batch_seq};
		}
		what = "context";
		rc = sq_context_id(d, r, &context_id);
		if (rc != SQLITE_OK)
			goto rollback;
		what = "row";
		if (i < grouped) {
			int k = (int)(i % SAMPLE_GROUP) * SAMPLE_COLUMNS;

			sq_bind_sample(gput, k, r, seq + (int64_t)i, context_id, stack_id, in_us);
			if (k / SAMPLE_COLUMNS < SAMPLE_GROUP - 1)
				continue;
			rc = sq_step_done(gput);
		} else {
			sq_bind_sample(sput, 0, r, seq + (int64_t)i, context_id, stack_id, in_us);
			rc = sq_step_done(sput);
		}
		if (rc != SQLITE_OK)
			goto rollback;
	}
	what = "next_seq";
	sqlite3_bind_int64(d->wstmt[W_SEQ_PUT], 1, seq + (int64_t)n);
	rc = sq_step_done(d->wstmt[W_SEQ_PUT]);
	if (rc != SQLITE_OK)
		goto rollback;
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
	/* Stacks and contexts stored by this transaction are gone again: forget their ids. */
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
	atomic_fetch_add(&d->wwaiting, 1);
	pthread_mutex_lock(&d->wlock);
	atomic_fetch_sub(&d->wwaiting, 1);
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

/* The statement text and its parameters, in text order. */
struct sq_sql {
	struct strbuf sql;
	struct tf_param *p;
	size_t n, cap;
	struct strbuf filter;       /* the compiled tag_filter, "" if none */
	struct tf_params filter_p;  /* its parameters */
	int row_level;              /* the filter reads a per-row column: evaluate on the view */
};

static void sq_sql_param(struct sq_sql *q, struct tf_param v)
{
	if (q->n == q->cap) {
		q->cap = q->cap ? 2 * q->cap : 16;
		q->p = realloc(q->p, q->cap * sizeof(*q->p));
		if (!q->p)
			abort(); /* as strbuf: bounded by the filter text, so a bug, not input */
	}
	q->p[q->n++] = v;
}

static void sq_sql_text(struct sq_sql *q, const char *text)
{
	sq_sql_param(q, (struct tf_param){.type = TF_PARAM_TEXT, .text = text, .len = strlen(text)});
}

static void sq_sql_int(struct sq_sql *q, int64_t v)
{
	sq_sql_param(q, (struct tf_param){.type = TF_PARAM_INT, .i = v});
}

static void sq_sql_free(struct sq_sql *q)
{
	sb_free(&q->sql);
	sb_free(&q->filter);
	free(q->p);
	tagfilter_params_free(&q->filter_p);
}

/*
 * 1 if the compiled filter names a column that lives in samples or stacks, not in contexts.
 * Literals are '?' parameters, so every identifier in the text is SQL the compiler wrote;
 * qualified names (n.value) belong to its json_each subqueries.
 */
static int sq_filter_row_level(const char *sql)
{
	static const char *const row_cols[] = {
		"time", "profile_value", "profile_create_timestamp", "profile_in_timestamp",
		"profile_location_str", "compression_algo", "stack_id", "context_id",
	};

	for (const char *p = sql; *p;) {
		size_t len = 0;

		if (!(*p == '_' || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z'))) {
			p++;
			continue;
		}
		while (p[len] == '_' || (p[len] >= 'a' && p[len] <= 'z') ||
		       (p[len] >= 'A' && p[len] <= 'Z') || (p[len] >= '0' && p[len] <= '9'))
			len++;
		if (p == sql || p[-1] != '.') {
			for (size_t i = 0; i < ARRAY_SIZE(row_cols); i++)
				if (strlen(row_cols[i]) == len && strncmp(p, row_cols[i], len) == 0)
					return 1;
		}
		p += len;
	}
	return 0;
}

static int sq_compile_filter(struct sq_store *st, struct sq_sql *q, const struct store_query *sq)
{
	int rc;

	if (!sq->filter)
		return 0;
	rc = tagfilter_compile(sq->filter, TF_SQLITE, &q->filter, &q->filter_p);
	if (rc) {
		sq_set_err(st, "tag_filter cannot be compiled for SQLite (%s)", strerror(-rc));
		return rc;
	}
	q->row_level = q->filter.len && sq_filter_row_level(q->filter.buf);
	return 0;
}

/* "profile_language_type = ? AND profile_event_type = ? [AND app_service = ?] [AND filter]" */
static void sq_sql_conds(struct sq_sql *q, const struct store_query *sq, int with_service)
{
	sb_puts(&q->sql, "profile_language_type = ? AND profile_event_type = ?");
	sq_sql_text(q, sq->language_type);
	sq_sql_text(q, sq->event_type);
	if (with_service && sq->app_service) {
		sb_puts(&q->sql, " AND app_service = ?");
		sq_sql_text(q, sq->app_service);
	}
	if (q->filter.len) {
		sb_puts(&q->sql, " AND ");
		sb_append(&q->sql, q->filter.buf, q->filter.len);
		for (size_t i = 0; i < q->filter_p.n; i++)
			sq_sql_param(q, q->filter_p.items[i]);
	}
}

/* "[prefix]time >= ? AND [prefix]time <= ?" */
static void sq_sql_time(struct sq_sql *q, const struct store_query *sq, const char *prefix)
{
	sb_printf(&q->sql, "%stime >= ? AND %stime <= ?", prefix, prefix);
	sq_sql_int(q, sq->time_start);
	sq_sql_int(q, sq->time_end);
}

/*
 * The rows that match sq, as a FROM ... WHERE tail whose columns are reachable as s.<samples
 * column> plus, when join_contexts, c.agent and c.process_id (for the gauge grouping).
 * Context path: the ids of the matching contexts first, then the time range of the index,
 * keeping their entries. Row path (the filter reads per-row columns): everything on the view.
 */
static void sq_sql_rows(struct sq_sql *q, const struct store_query *sq, int join_contexts,
			int with_service)
{
	if (q->row_level) {
		sb_puts(&q->sql, " FROM in_process s WHERE ");
		sq_sql_time(q, sq, "");
		sb_puts(&q->sql, " AND ");
		sq_sql_conds(q, sq, with_service);
		return;
	}
	sb_puts(&q->sql, join_contexts ? " FROM samples s JOIN contexts c ON c.id = s.context_id"
				       : " FROM samples s");
	sb_puts(&q->sql, " WHERE s.context_id IN (SELECT id FROM contexts WHERE ");
	sq_sql_conds(q, sq, with_service);
	sb_puts(&q->sql, ") AND ");
	sq_sql_time(q, sq, "s.");
}

static const struct tf_param *sq_param_at(const struct sq_sql *q, size_t k)
{
	return k < q->n ? &q->p[k] : NULL;
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
	size_t n = q->n;
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

/*
 * The start of every read: the organisation's file, the debug info, a reader connection and the
 * bound statement. 1 (and *stmt NULL) when the organisation has no file yet; on an error the
 * outputs set so far stay set, for the caller's clean-up.
 */
static int sq_read_prepare(struct sq_store *st, int org, struct store_query_info *info,
			   const struct sq_sql *sql, struct sq_db **d, struct sq_conn **c,
			   sqlite3_stmt **stmt)
{
	int rc;

	*stmt = NULL;
	rc = sq_db_get(st, org, 1, d);
	if (rc == -ENOENT)
		return 1;
	if (rc)
		return rc;
	sq_info_begin(*d, info);
	rc = sq_reader_get(st, *d, c);
	if (rc)
		return rc;
	return sq_prepare(st, *d, *c, sql, stmt);
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
	struct sq_sql sql = {.sql = STRBUF_INIT, .filter = STRBUF_INIT};
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
	rc = sq_compile_filter(st, &sql, q);
	if (rc)
		goto out;
	/*
	 * Aggregate per stack id first and join the texts of the survivors only; ORDER BY makes
	 * a cut by max_stacks keep the biggest stacks, and makes the order deterministic.
	 * Gauge: SQLite takes the bare column v from the row of max(time) in each group.
	 */
	sb_puts(&sql.sql, "SELECT st.text, st.compression_algo, a.v FROM (");
	if (q->gauge) {
		sb_puts(&sql.sql, "SELECT stack_id, sum(v) AS v FROM (SELECT s.stack_id AS stack_id,"
				  " s.profile_value AS v, max(s.time)");
		sq_sql_rows(&sql, q, 1, 1);
		sb_puts(&sql.sql, sql.row_level ? " GROUP BY s.stack_id, s.agent, s.process_id)"
						: " GROUP BY s.stack_id, c.agent, c.process_id)");
		sb_puts(&sql.sql, " GROUP BY stack_id");
	} else {
		sb_puts(&sql.sql, "SELECT s.stack_id AS stack_id, sum(s.profile_value) AS v");
		sq_sql_rows(&sql, q, 0, 1);
		sb_puts(&sql.sql, " GROUP BY s.stack_id");
	}
	sb_puts(&sql.sql, " ORDER BY v DESC, stack_id");
	if (q->max_stacks && q->max_stacks < INT64_MAX)
		sb_printf(&sql.sql, " LIMIT %" PRIu64, q->max_stacks + 1);
	sb_puts(&sql.sql, ") a JOIN stacks st ON st.id = a.stack_id ORDER BY a.v DESC, a.stack_id");

	rc = sq_read_prepare(st, org, info, &sql, &d, &c, &stmt);
	if (rc) {
		if (rc == 1) /* no file for this organisation: nothing stored */
			rc = 0;
		goto out;
	}
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
	sq_sql_free(&sql);
	return rc;
}

static int sq_list_services(struct store *s, int org, const struct store_query *q, size_t max,
			    char ***names, size_t *n, struct store_query_info *info)
{
	struct sq_store *st = (struct sq_store *)s;
	struct sq_sql sql = {.sql = STRBUF_INIT, .filter = STRBUF_INIT};
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
	rc = sq_compile_filter(st, &sql, q);
	if (rc)
		goto out;
	if (sql.row_level) {
		sb_puts(&sql.sql, "SELECT DISTINCT app_service FROM in_process WHERE ");
		sq_sql_time(&sql, q, "");
		sb_puts(&sql.sql, " AND ");
		sq_sql_conds(&sql, q, 0);
	} else {
		/* the services of matching contexts seen in one scan of the time range */
		sb_puts(&sql.sql, "SELECT DISTINCT app_service FROM contexts WHERE id IN"
				  " (SELECT s.context_id");
		sq_sql_rows(&sql, q, 0, 0);
		sb_puts(&sql.sql, ")");
	}
	sb_printf(&sql.sql, " ORDER BY app_service LIMIT %zu", max < SIZE_MAX ? max + 1 : max);
	rc = sq_read_prepare(st, org, info, &sql, &d, &c, &stmt);
	if (rc) {
		if (rc == 1) /* no file for this organisation: nothing stored */
			rc = 0;
		goto out;
	}
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

/*
 * Between two chunks of maintenance (pruning, giving pages back), with wlock held: releases it,
 * lets the batches waiting for it go first — glibc's mutexes are not fair, an unlock and a lock
 * would take it straight back — for at most PAUSE_MAX_US, and takes it again.
 */
static void sq_wlock_pause(struct sq_db *d)
{
	pthread_mutex_unlock(&d->wlock);
	for (int us = 0; atomic_load(&d->wwaiting) > 0 && us < PAUSE_MAX_US; us += 200)
		usleep(200);
	pthread_mutex_lock(&d->wlock);
}

/*
 * Gives the pages retention freed back to the file system once more than 1/VACUUM_MIN_FREE_DIV
 * of the file is free (less is soon reused by ingest), VACUUM_CHUNK_PAGES per write transaction
 * so that ingest waits one chunk at most; the file shrinks when the checkpointer copies the WAL.
 * Files made before auto_vacuum was set (by older ember) keep their free pages for reuse:
 * `PRAGMA auto_vacuum=INCREMENTAL; VACUUM` once, ember stopped, converts them.
 */
static int sq_reclaim(struct sq_store *st, struct sq_db *d)
{
	int64_t free_pages, last = -1;
	char sql[64];
	int rc = SQLITE_OK;

	snprintf(sql, sizeof(sql), "PRAGMA incremental_vacuum(%d)", VACUUM_CHUNK_PAGES);
	pthread_mutex_lock(&d->wlock);
	if (sq_pragma_int(d->w.db, "PRAGMA auto_vacuum") != 2 ||
	    sq_pragma_int(d->w.db, "PRAGMA freelist_count") * VACUUM_MIN_FREE_DIV <
		sq_pragma_int(d->w.db, "PRAGMA page_count")) {
		pthread_mutex_unlock(&d->wlock);
		return SQLITE_OK;
	}
	for (;;) {
		free_pages = sq_pragma_int(d->w.db, "PRAGMA freelist_count");
		if (free_pages <= 0 || free_pages == last)
			break;
		last = free_pages;
		rc = sqlite3_exec(d->w.db, sql, NULL, NULL, NULL);
		if (rc != SQLITE_OK) {
			sq_set_err(st, "sqlite %.200s: giving back free pages: %s", d->path,
				   sqlite3_errmsg(d->w.db));
			break;
		}
		sq_wlock_pause(d);
	}
	pthread_mutex_unlock(&d->wlock);
	return rc;
}

/* Deletes in short write transactions, so that ingest waits one chunk at most. */
static int sq_prune_db(struct sq_store *st, struct sq_db *d, int64_t before, uint64_t *deleted)
{
	static const char *const orphans_sql[2] = {
	    "DELETE FROM stacks WHERE id IN (SELECT id FROM stacks WHERE id NOT IN"
	    " (SELECT stack_id FROM samples) LIMIT " PRUNE_CHUNK_STR ")",
	    "DELETE FROM contexts WHERE id IN (SELECT id FROM contexts WHERE id NOT IN"
	    " (SELECT context_id FROM samples) LIMIT " PRUNE_CHUNK_STR ")",
	};
	char rows_sql[160];
	uint64_t deleted_before = *deleted;
	int changes, rc;

	snprintf(rows_sql, sizeof(rows_sql),
		 "DELETE FROM samples WHERE (time, seq) IN (SELECT time, seq FROM samples"
		 " WHERE time < ? LIMIT %d)", PRUNE_CHUNK);
	pthread_mutex_lock(&d->wlock);
	for (;;) {
		rc = sq_prune_step(d, rows_sql, before, &changes);
		*deleted += (uint64_t)changes;
		if (rc != SQLITE_OK || changes < PRUNE_CHUNK)
			break;
		sq_wlock_pause(d);
	}
	if (rc == SQLITE_OK)
		rc = sq_prune_step(d, "DELETE FROM batches WHERE received_us < ?",
				   before * 1000000, &changes);
	/* Stacks and contexts no row names any more, in chunks too; the id caches are emptied
	 * before each pause, as they may name what was deleted. */
	for (int table = 0; table < 2 && rc == SQLITE_OK;) {
		rc = sq_prune_step(d, orphans_sql[table], 0, &changes);
		sq_cache_clear(d);
		if (rc != SQLITE_OK)
			break;
		if (changes < PRUNE_CHUNK)
			table++;
		sq_wlock_pause(d);
	}
	if (rc != SQLITE_OK)
		sq_set_err(st, "sqlite %.200s: pruning: %s", d->path, sqlite3_errmsg(d->w.db));
	pthread_mutex_unlock(&d->wlock);
	if (rc == SQLITE_OK && *deleted > deleted_before)
		rc = sq_reclaim(st, d);
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
