/*
 * upload — delivers the agent's rows to a server through the ingest protocol (docs/protocol.md).
 *
 * upload_submit() encodes rows into a compressed batch (one per batch_rows rows) with a fresh
 * batch id at once and queues the bytes; a sender thread POSTs queued batches in order, with retries and exponential backoff
 * (honouring Retry-After). A batch is removed from the queue only when the server acknowledged it
 * (200, duplicate or not); a 400 is logged and the batch dropped (it can never succeed). While the
 * server is unreachable batches wait in memory up to mem_bytes, then in files under spool_dir up
 * to spool_bytes; beyond that the oldest batches are dropped and counted. Spooled batches survive
 * an agent restart and are sent first. Retrying the same bytes with the same id never duplicates.
 *
 * Threading: upload_submit is thread-safe; one internal sender thread.
 */
#ifndef EMBER_AGENT_UPLOAD_H
#define EMBER_AGENT_UPLOAD_H

#include <stddef.h>
#include <stdint.h>

#include "common/row.h"

struct upload_opts {
	const char *server_url;  /* e.g. http://127.0.0.1:20416 */
	const char *host, *agent, *host_ip;
	int org;                 /* X-Org-Id, default 1 */
	size_t mem_bytes;        /* default 16 MiB */
	const char *spool_dir;   /* NULL: memory only */
	size_t spool_bytes;      /* default 256 MiB */
	double max_backoff_s;    /* default 30 */
	double close_grace_s;    /* upload_close tries to deliver this long; default 3 */
	size_t batch_rows;       /* rows per batch, larger submits are split; default 50,000 */
};

struct upload_stats {
	uint64_t batches_sent, rows_sent, batches_rejected, retries;
	uint64_t batches_dropped, rows_dropped; /* bound reached */
	uint64_t queued_batches, queued_bytes, spooled_batches, spooled_bytes;
	int server_ok;
	uint64_t batches_duplicate; /* acknowledged as already stored (a resend) */
};

struct uploader;

int upload_open(const struct upload_opts *opts, struct uploader **out);
/* Encodes and queues rows (copied). Returns 0 or a negative errno (-EINVAL: a row the server
 * would refuse, see wire_encode; batches of earlier rows stay queued). Never blocks on the
 * network. */
int upload_submit(struct uploader *u, const struct profile_row *rows, size_t n);
/* Waits up to timeout_s for the queue to empty (used at shutdown and by tests). 0 when empty. */
int upload_flush(struct uploader *u, double timeout_s);
void upload_get_stats(struct uploader *u, struct upload_stats *st);
/* Stops the sender after up to close_grace_s of delivery; what is left goes to the spool (or is
 * dropped and logged without spool_dir). */
void upload_close(struct uploader *u);

#endif
