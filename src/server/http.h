/*
 * http — ember's HTTP server on libmicrohttpd: a pool of worker threads, a request-body limit,
 * routing by method and path, streamed responses, and a clean shutdown that lets in-flight
 * requests finish.
 *
 * A handler sees one exchange: the request (method, path, headers, the whole body, already
 * bounded by max_body) and fills the response: status, content type, extra headers, and either
 * a body buffer or a pull callback that produces the body in chunks (used for large flame trees).
 * Handlers run on the pool's threads and may block (store queries); they must be thread-safe.
 *
 * The server owns nothing of the application: api_profile, ingest and the page register routes.
 */
#ifndef EMBER_SERVER_HTTP_H
#define EMBER_SERVER_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "common/strbuf.h"

struct http_exchange;

/* Pull callback: append the next chunk (about `want` bytes) to out; return 1 when the body is
 * complete (out may hold a last chunk), 0 for more, negative to abort the connection. */
typedef int (*http_pull_fn)(void *arg, struct strbuf *out, size_t want);

struct http_exchange {
	/* request */
	const char *method;
	const char *path;
	const char *body;
	size_t body_len;
	void *conn; /* struct MHD_Connection *, for http_header() and http_client_gone() */
	/* response */
	int status;
	const char *content_type; /* default application/json; charset=utf-8 */
	struct strbuf out;
	char extra_header_name[32];
	char extra_header_value[96];
	http_pull_fn pull;        /* when set, the body is pulled from it after `out` */
	void *pull_arg;
	void (*pull_free)(void *arg);
};

typedef void (*http_handler_fn)(void *ctx, struct http_exchange *x);

struct http_route {
	const char *method; /* "GET", "POST" */
	const char *path;   /* exact path */
	http_handler_fn fn;
	void *ctx;
};

struct http_opts {
	const char *listen;   /* "ADDR:PORT", default 127.0.0.1:20416 */
	unsigned threads;     /* worker threads, default 4 */
	size_t max_body;      /* bytes, default 64 MiB */
	unsigned max_conns;   /* default 256 */
};

struct http_server;

int http_start(const struct http_opts *opts, const struct http_route *routes, size_t n_routes,
	       struct http_server **out);
/* The port actually bound (useful with port 0). */
unsigned http_port(struct http_server *h);
/* Stops accepting, waits up to grace_s for in-flight requests, then stops. */
void http_stop(struct http_server *h, double grace_s);

/* Request header value (case-insensitive name), NULL if absent. */
const char *http_header(struct http_exchange *x, const char *name);
/* 1 if the client closed its connection (a long query can stop early). */
int http_client_gone(struct http_exchange *x);

/* DeepFlow's envelope: {"OPT_STATUS":…,"DESCRIPTION":…,"result":<result_json>,"debug":null}. */
void http_reply_envelope(struct http_exchange *x, int status, const char *opt_status,
			 const char *description, const char *result_json);

/* Parses "ADDR:PORT" ("[v6]:port" too) for tests and flags. */
int http_parse_listen(const char *text, char *addr, size_t addrlen, unsigned *port);

#endif
