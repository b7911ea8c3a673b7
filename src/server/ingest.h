/*
 * ingest — POST /v1/profile/ingest, the server half of the ingest protocol (docs/protocol.md).
 *
 * A batch is decoded (zstd if Content-Encoding says so, bounded by max_body after
 * decompression), validated completely — an error names the row index and the field — and only
 * then handed to the store as one atomic insert. A batch id already stored is acknowledged
 * without writing again. A store that is down or busy gives 503 with Retry-After, so the agent
 * keeps the batch in its spool. Thread-safe: all state is per request, except a process-wide
 * pool of buffer sets reused from batch to batch (2 sets of 3 buffers, each kept up to 32 MiB).
 */
#ifndef EMBER_SERVER_INGEST_H
#define EMBER_SERVER_INGEST_H

#include <stddef.h>
#include <stdint.h>

#include "common/row.h"
#include "common/strbuf.h"
#include "server/http.h"

struct store;
struct server_metrics;

#define INGEST_MAX_ROWS_DEFAULT 200000
#define INGEST_MAX_DEPTH 32          /* nesting of JSON arrays/objects (the protocol needs 4) */
#define INGEST_MAX_STRING (4 << 20)  /* bytes of one decoded string */

struct ingest_ctx {
	struct store *store;
	size_t max_body;  /* bytes after decompression, default 64 MiB */
	size_t max_rows;  /* rows per batch, default INGEST_MAX_ROWS_DEFAULT */
	int retry_after;  /* seconds advertised on 503, default 5 */
	struct server_metrics *metrics; /* may be NULL */
};

/* A decoded batch. Row strings point into its arena, kept alive by the batch. */
struct ingest_batch {
	void *json; /* the string arena (at most body length + 1 bytes); non-NULL once decoded */
	const char *batch_id;
	struct profile_row *rows;
	size_t n;
	const char **tags; /* storage for every row's tag_names then tag_values */
	int borrowed;      /* json and rows belong to a pooled buffer set (ingest_handle) */
};

/* Decodes and validates a JSON batch; in_ts_us is stamped as every row's profile_in_timestamp.
 * Returns 0, or -EINVAL with a message naming the row and field in err. */
int ingest_decode(const char *json, size_t len, size_t max_rows, int64_t in_ts_us,
		  struct ingest_batch *b, struct strbuf *err);
void ingest_batch_free(struct ingest_batch *b);

void ingest_handle(void *ctx, struct http_exchange *x);

#endif
