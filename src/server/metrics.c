/*
 * metrics — see metrics.h.
 */
#include "server/metrics.h"

#include <inttypes.h>

static uint64_t rd(const atomic_uint_least64_t *c)
{
	return atomic_load_explicit(c, memory_order_relaxed);
}

void metrics_write(const struct server_metrics *m, struct strbuf *out)
{
	sb_puts(out, "# HELP ember_profile_queries_total ProfileTracing requests by outcome.\n"
		     "# TYPE ember_profile_queries_total counter\n");
	sb_printf(out, "ember_profile_queries_total{outcome=\"ok\"} %" PRIu64 "\n", rd(&m->queries_ok));
	sb_printf(out, "ember_profile_queries_total{outcome=\"invalid\"} %" PRIu64 "\n",
		  rd(&m->queries_invalid));
	sb_printf(out, "ember_profile_queries_total{outcome=\"failed\"} %" PRIu64 "\n",
		  rd(&m->queries_failed));
	sb_puts(out, "# HELP ember_profile_query_seconds_total Time spent answering successful queries.\n"
		     "# TYPE ember_profile_query_seconds_total counter\n");
	sb_printf(out, "ember_profile_query_seconds_total %.6f\n", (double)rd(&m->query_us) / 1e6);
	sb_puts(out, "# HELP ember_profile_query_stacks_total Distinct stacks the store returned.\n"
		     "# TYPE ember_profile_query_stacks_total counter\n");
	sb_printf(out, "ember_profile_query_stacks_total %" PRIu64 "\n", rd(&m->query_stacks));
	sb_puts(out, "# HELP ember_profile_queries_truncated_total Queries cut by --max-stacks.\n"
		     "# TYPE ember_profile_queries_truncated_total counter\n");
	sb_printf(out, "ember_profile_queries_truncated_total %" PRIu64 "\n",
		  rd(&m->queries_truncated));
	sb_puts(out, "# HELP ember_ingest_batches_total Ingest batches by outcome.\n"
		     "# TYPE ember_ingest_batches_total counter\n");
	sb_printf(out, "ember_ingest_batches_total{outcome=\"stored\"} %" PRIu64 "\n",
		  rd(&m->batches_stored));
	sb_printf(out, "ember_ingest_batches_total{outcome=\"duplicate\"} %" PRIu64 "\n",
		  rd(&m->batches_duplicate));
	sb_printf(out, "ember_ingest_batches_total{outcome=\"invalid\"} %" PRIu64 "\n",
		  rd(&m->batches_invalid));
	sb_printf(out, "ember_ingest_batches_total{outcome=\"unavailable\"} %" PRIu64 "\n",
		  rd(&m->batches_unavailable));
	sb_puts(out, "# HELP ember_ingest_rows_total Rows stored.\n"
		     "# TYPE ember_ingest_rows_total counter\n");
	sb_printf(out, "ember_ingest_rows_total %" PRIu64 "\n", rd(&m->rows_stored));
}
