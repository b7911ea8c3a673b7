/*
 * metrics — the server's own counters, exported by GET /metrics in Prometheus' text format.
 *
 * Handlers bump them with relaxed atomic adds (any thread); /metrics reads them without locks.
 * A host process may add its own lines (ember run adds the agent's) through server_opts.
 */
#ifndef EMBER_SERVER_METRICS_H
#define EMBER_SERVER_METRICS_H

#include <stdatomic.h>
#include <stdint.h>

#include "common/strbuf.h"

struct server_metrics {
	atomic_uint_least64_t queries_ok, queries_invalid, queries_failed;
	atomic_uint_least64_t query_us;      /* wall time of successful queries */
	atomic_uint_least64_t query_stacks;  /* distinct stacks delivered by the store */
	atomic_uint_least64_t queries_truncated;
	atomic_uint_least64_t batches_stored, batches_duplicate, batches_invalid, batches_unavailable;
	atomic_uint_least64_t rows_stored;
};

static inline void metrics_add(atomic_uint_least64_t *c, uint64_t n)
{
	atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

/* Appends the counters as Prometheus text. */
void metrics_write(const struct server_metrics *m, struct strbuf *out);

#endif
