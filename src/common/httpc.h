/*
 * httpc — a small blocking HTTP client over libcurl, for the agent's uploader, `ember import`,
 * `ember query` and the ClickHouse store. One call = one request; no shared state except libcurl's
 * global init (done once, thread-safe via pthread_once). Callbacks run on the calling thread.
 */
#ifndef EMBER_COMMON_HTTPC_H
#define EMBER_COMMON_HTTPC_H

#include <stddef.h>

#include "common/strbuf.h"

struct httpc_req {
	const char *method;          /* "GET", "POST"; default POST when body != NULL, else GET */
	const char *url;
	const char *body;            /* may be NULL */
	size_t body_len;
	/*
	 * Optional, instead of body: produces the body while it is sent (chunked transfer, so the
	 * peer starts reading before the end exists). Fills up to cap bytes of buf and returns how
	 * many, 0 at the end, or -1 to abort the request (-ECANCELED).
	 */
	long (*on_send)(void *arg, char *buf, size_t cap);
	const char *const *headers;  /* NULL-terminated "Name: value" list, may be NULL */
	long timeout_ms;             /* whole request; 0 = 30 s */
	size_t max_response;         /* bytes kept of the response body; 0 = 64 MiB */
	/* Optional: called with each received chunk instead of buffering; return non-zero to abort. */
	int (*on_data)(void *arg, const char *data, size_t len);
	void *arg;                   /* passed to on_send, on_data and should_abort */
	/* Optional: polled about every 100 ms; return non-zero to abort the transfer. */
	int (*should_abort)(void *arg);
	/*
	 * Keep the connection open for this thread's next keep_alive request (one handle per
	 * thread, freed at thread exit). Only with body, not on_send: a buffered body can be sent
	 * again when the kept connection turns out to be closed.
	 */
	int keep_alive;
};

struct httpc_resp {
	long status;             /* HTTP status, 0 if no response */
	struct strbuf body;      /* caller frees with sb_free */
	long retry_after;        /* seconds from Retry-After, or -1 */
	int os_errno;            /* why the connection failed (ECONNREFUSED, EHOSTUNREACH…), or 0 */
};

/* Upload buffer of a streamed (on_send) body: the most asked of on_send at once. */
#define HTTPC_SEND_BUFFER (512u << 10)

/* Returns 0 when an HTTP response arrived (any status), or a negative errno with a message in
 * err naming the cause (connection refused, no route to host, unknown host, timeout, aborted). */
int httpc_do(const struct httpc_req *req, struct httpc_resp *resp, char *err, size_t errlen);

#endif
