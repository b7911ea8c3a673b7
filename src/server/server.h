/*
 * server — ember's server assembled: the store, the routes (ProfileTracing, ingest, health,
 * metrics, the flame-graph page) and the HTTP server. Used by `ember server` and `ember run`.
 */
#ifndef EMBER_SERVER_SERVER_H
#define EMBER_SERVER_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "common/strbuf.h"

struct server_opts {
	const char *listen;      /* default 127.0.0.1:20416 */
	const char *store_url;   /* default sqlite:./ember.db */
	unsigned threads;        /* HTTP worker threads, default 4 */
	size_t max_body;         /* default 64 MiB */
	size_t max_batch_rows;   /* default 200,000 */
	uint64_t max_stacks;     /* default 1,000,000 */
	size_t max_nodes;        /* default 5,000,000 */
	double query_seconds;    /* default 60 */
	int64_t retention_s;     /* default 72 h; 0 keeps everything */
	/* Optional: more Prometheus lines for GET /metrics (ember run adds the agent's). */
	void (*metrics_extra)(void *arg, struct strbuf *out);
	void *metrics_arg;
};

struct server;

int server_start(const struct server_opts *opts, struct server **out);
unsigned server_port(struct server *s);
/* Stops accepting, lets in-flight requests finish (bounded), closes the store. */
void server_stop(struct server *s);

#endif
