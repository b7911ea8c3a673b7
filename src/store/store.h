/*
 * store — profile.in_process behind one interface, in SQLite (the embedded default) or ClickHouse.
 *
 * A store is opened from a URL: "sqlite:PATH" (PATH default ./ember.db) or
 * "clickhouse://[USER[:PASSWORD]@]HOST:PORT[/DATABASE]". Every call names an organisation
 * (DeepFlow's X-Org-Id, 1 = default). Organisation 1 uses the database as named; organisation N
 * uses a separate one (SQLite: another file, see docs/api.md; ClickHouse: database "NNNN_profile").
 *
 * Threading: a store is shared by all server threads; every function is thread-safe.
 * The store knows nothing about HTTP. It knows the SQL of its own engine only.
 */
#ifndef EMBER_STORE_STORE_H
#define EMBER_STORE_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "common/row.h"
#include "common/strbuf.h"

struct tf_expr;
struct store;

#define STORE_ORG_MIN 1
#define STORE_ORG_MAX 9999

/* What ProfileTracing asks for. Strings are borrowed for the duration of the call. */
struct store_query {
	int64_t time_start;         /* inclusive, unix seconds */
	int64_t time_end;           /* inclusive */
	const char *app_service;    /* NULL: any service */
	const char *language_type;  /* required */
	const char *event_type;     /* required */
	const struct tf_expr *filter; /* NULL: none */
	int gauge;                  /* 1: latest value per (stack, agent, process), then summed */
	uint64_t max_stacks;        /* at most this many distinct stacks are returned */
	double max_seconds;         /* engine-side time limit; 0 = none */
	/* Optional: polled while the query runs; non-zero cancels it (the engine stops the
	 * statement server-side, e.g. ClickHouse KILL QUERY) and the call returns -ECANCELED. */
	int (*should_abort)(void *arg);
	void *abort_arg;
};

/* One executed statement, for the API's debug object. */
struct store_query_info {
	struct strbuf sql; /* the SQL that ran, parameters shown inline */
	double seconds;    /* wall time of the statement */
	int truncated;     /* 1 if max_stacks cut the result */
	uint64_t n_stacks; /* stacks delivered to the callback */
	char engine[32];   /* "sqlite" | "clickhouse" */
	char host[64];     /* where it ran: file path or host:port */
};

/*
 * Called once per distinct stack. stack is NOT NUL-terminated; len bytes, plain text (already
 * decompressed if stored compressed). Return 0 to continue, non-zero to stop (the query then
 * returns that value).
 */
typedef int (*store_stack_cb)(void *arg, const char *stack, size_t len, int64_t value);

struct store_ops {
	const char *name;
	int (*insert)(struct store *s, int org, const char *batch_id, const struct profile_row *rows,
		      size_t n, int *duplicate);
	int (*query_stacks)(struct store *s, int org, const struct store_query *q,
			    store_stack_cb cb, void *arg, struct store_query_info *info);
	int (*list_services)(struct store *s, int org, const struct store_query *q, size_t max,
			     char ***names, size_t *n, struct store_query_info *info);
	int (*health)(struct store *s, char *err, size_t errlen);
	void (*close)(struct store *s);
};

struct store {
	const struct store_ops *ops;
	char errmsg[512]; /* last error, for logs and API DESCRIPTION */
};

/*
 * Opens (and creates or migrates) the store named by url. Returns 0, or a negative errno with
 * a message in err. A ClickHouse store that cannot be reached still opens (health says why).
 */
int store_open(const char *url, struct store **out, char *err, size_t errlen);

/*
 * Writes rows as one batch, atomically: all rows or none. batch_id (non-empty) is remembered;
 * a batch whose id was already stored is not stored again and *duplicate is set to 1.
 * Returns 0, -EINVAL (bad row; errmsg names row and field), -EAGAIN (engine busy or down:
 * retry later; nothing stored) or another negative errno.
 */
int store_insert(struct store *s, int org, const char *batch_id, const struct profile_row *rows,
		 size_t n, int *duplicate);

/*
 * Sums profile_value per distinct stack (or takes the latest per stack, agent and process when
 * q->gauge) over the rows that match q, and calls cb for each. info (may be NULL) receives the
 * SQL and timing; the caller frees info->sql with sb_free.
 */
int store_query_stacks(struct store *s, int org, const struct store_query *q, store_stack_cb cb,
		       void *arg, struct store_query_info *info);

/* Distinct app_service values matching q (q->app_service ignored), at most max, sorted. */
int store_list_services(struct store *s, int org, const struct store_query *q, size_t max,
			char ***names, size_t *n, struct store_query_info *info);
void store_free_names(char **names, size_t n);

int store_health(struct store *s, char *err, size_t errlen);
void store_close(struct store *s);
const char *store_errmsg(struct store *s);

/* Engine constructors, called by store_open. */
int store_sqlite_open(const char *path, struct store **out, char *err, size_t errlen);
int store_clickhouse_open(const char *url, struct store **out, char *err, size_t errlen);

#endif
