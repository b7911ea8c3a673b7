/*
 * http — see http.h. libmicrohttpd runs the listening socket and a pool of threads (epoll).
 * MHD calls the access handler several times per request: once with the headers, once per body
 * chunk, and once more at the end; the body is collected into a bounded strbuf and the handler
 * runs on the last call. Responses either come from a buffer or are pulled from the handler's
 * callback in 64 KiB chunks, so a large flame tree is never held twice in memory.
 */
#define LOG_MODULE "http"
#include "server/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"

#define HTTP_PULL_CHUNK (64 * 1024)

struct http_server {
	struct MHD_Daemon *mhd;
	struct http_route *routes;
	size_t n_routes;
	size_t max_body;
	unsigned port;
	atomic_int active;
};

struct http_req {
	struct strbuf body;
	int too_large;
	struct timespec start;
};

/* Body of a pulled response: what is left of x->out, then chunks from x->pull. */
struct http_stream {
	struct strbuf buf;
	size_t off;
	int done;
	http_pull_fn pull;
	void *arg;
	void (*free_fn)(void *arg);
};

int http_parse_listen(const char *text, char *addr, size_t addrlen, unsigned *port)
{
	const char *colon;
	const char *host = text;
	size_t hlen;
	char *end;
	unsigned long p;

	if (text[0] == '[') {
		const char *rb = strchr(text, ']');

		if (!rb || rb[1] != ':')
			return -EINVAL;
		host = text + 1;
		hlen = (size_t)(rb - host);
		colon = rb + 1;
	} else {
		colon = strrchr(text, ':');
		if (!colon)
			return -EINVAL;
		hlen = (size_t)(colon - text);
	}
	if (hlen == 0 || hlen >= addrlen)
		return -EINVAL;
	errno = 0;
	p = strtoul(colon + 1, &end, 10);
	if (errno || *end || end == colon + 1 || p > 65535)
		return -EINVAL;
	memcpy(addr, host, hlen);
	addr[hlen] = '\0';
	*port = (unsigned)p;
	return 0;
}

const char *http_header(struct http_exchange *x, const char *name)
{
	return MHD_lookup_connection_value(x->conn, MHD_HEADER_KIND, name);
}

int http_client_gone(struct http_exchange *x)
{
	const union MHD_ConnectionInfo *ci;
	struct pollfd pfd;

	ci = MHD_get_connection_info(x->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
	if (!ci)
		return 0;
	pfd.fd = ci->connect_fd;
	pfd.events = POLLRDHUP;
	pfd.revents = 0;
	if (poll(&pfd, 1, 0) <= 0)
		return 0;
	return (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

void http_reply_envelope(struct http_exchange *x, int status, const char *opt_status,
			 const char *description, const char *result_json)
{
	x->status = status;
	sb_reset(&x->out);
	sb_puts(&x->out, "{\"OPT_STATUS\":");
	sb_json_str(&x->out, opt_status);
	sb_puts(&x->out, ",\"DESCRIPTION\":");
	sb_json_str(&x->out, description ? description : "");
	sb_puts(&x->out, ",\"result\":");
	sb_puts(&x->out, result_json ? result_json : "null");
	sb_puts(&x->out, ",\"debug\":null}");
}

static ssize_t http_stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
	struct http_stream *st = cls;
	size_t n;

	while (st->off == st->buf.len) {
		int rc;

		if (st->done)
			return MHD_CONTENT_READER_END_OF_STREAM;
		sb_reset(&st->buf);
		st->off = 0;
		rc = st->pull(st->arg, &st->buf, HTTP_PULL_CHUNK);
		if (rc < 0)
			return MHD_CONTENT_READER_END_WITH_ERROR;
		if (rc == 1)
			st->done = 1;
	}
	n = st->buf.len - st->off;
	if (n > max)
		n = max;
	memcpy(buf, st->buf.buf + st->off, n);
	st->off += n;
	return (ssize_t)n;
}

static void http_stream_free(void *cls)
{
	struct http_stream *st = cls;

	if (st->free_fn)
		st->free_fn(st->arg);
	sb_free(&st->buf);
	free(st);
}

static const struct http_route *http_route_find(struct http_server *h, const char *method,
					       const char *path, int *path_known)
{
	*path_known = 0;
	for (size_t i = 0; i < h->n_routes; i++) {
		if (strcmp(h->routes[i].path, path) != 0)
			continue;
		*path_known = 1;
		if (strcmp(h->routes[i].method, method) == 0)
			return &h->routes[i];
		if (strcmp(method, "HEAD") == 0 && strcmp(h->routes[i].method, "GET") == 0)
			return &h->routes[i];
	}
	return NULL;
}

static enum MHD_Result http_send(struct MHD_Connection *conn, struct http_exchange *x)
{
	struct MHD_Response *resp;
	enum MHD_Result ret;

	if (x->pull) {
		struct http_stream *st = calloc(1, sizeof(*st));

		if (!st)
			return MHD_NO;
		st->buf = x->out;
		x->out = (struct strbuf)STRBUF_INIT;
		st->pull = x->pull;
		st->arg = x->pull_arg;
		st->free_fn = x->pull_free;
		resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, HTTP_PULL_CHUNK,
							 http_stream_read, st, http_stream_free);
	} else {
		size_t len;
		char *body = sb_detach(&x->out, &len);

		resp = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
	}
	if (!resp)
		return MHD_NO;
	MHD_add_response_header(resp, "Content-Type",
				x->content_type ? x->content_type : "application/json; charset=utf-8");
	if (x->extra_header_name[0])
		MHD_add_response_header(resp, x->extra_header_name, x->extra_header_value);
	ret = MHD_queue_response(conn, (unsigned)x->status, resp);
	MHD_destroy_response(resp);
	return ret;
}

static enum MHD_Result http_access(void *cls, struct MHD_Connection *conn, const char *url,
				   const char *method, const char *version, const char *upload,
				   size_t *upload_size, void **con_cls)
{
	struct http_server *h = cls;
	struct http_req *rq = *con_cls;
	struct http_exchange x;
	const struct http_route *route;
	int path_known;
	enum MHD_Result ret;

	if (!rq) {
		rq = calloc(1, sizeof(*rq));
		if (!rq)
			return MHD_NO;
		clock_gettime(CLOCK_MONOTONIC, &rq->start);
		atomic_fetch_add(&h->active, 1);
		*con_cls = rq;
		return MHD_YES;
	}
	if (*upload_size) {
		if (!rq->too_large && rq->body.len + *upload_size > h->max_body) {
			rq->too_large = 1;
			sb_free(&rq->body);
		}
		if (!rq->too_large)
			sb_append(&rq->body, upload, *upload_size);
		*upload_size = 0;
		return MHD_YES;
	}

	memset(&x, 0, sizeof(x));
	x.method = method;
	x.path = url;
	x.body = rq->body.buf ? rq->body.buf : "";
	x.body_len = rq->body.len;
	x.conn = conn;
	x.status = 200;
	if (rq->too_large) {
		char msg[128];

		snprintf(msg, sizeof(msg), "request body larger than the limit of %zu bytes",
			 h->max_body);
		http_reply_envelope(&x, 413, "INVALID_POST_DATA", msg, NULL);
	} else {
		route = http_route_find(h, method, url, &path_known);
		if (route) {
			route->fn(route->ctx, &x);
		} else if (path_known) {
			char msg[160];

			snprintf(msg, sizeof(msg), "method %s is not allowed on %.100s", method, url);
			http_reply_envelope(&x, 405, "INVALID_POST_DATA", msg, NULL);
		} else {
			char msg[160];

			snprintf(msg, sizeof(msg), "no such path: %.120s", url);
			http_reply_envelope(&x, 404, "RESOURCE_NOT_FOUND", msg, NULL);
		}
	}
	log_debug("%s %s -> %d (%zu bytes in)", method, url, x.status, rq->body.len);
	ret = http_send(conn, &x);
	sb_free(&x.out);
	return ret;
}

static void http_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
			   enum MHD_RequestTerminationCode toe)
{
	struct http_server *h = cls;
	struct http_req *rq = *con_cls;

	if (!rq)
		return;
	sb_free(&rq->body);
	free(rq);
	*con_cls = NULL;
	atomic_fetch_sub(&h->active, 1);
}

static void http_log(void *cls, const char *fmt, va_list ap)
{
	char line[512];

	vsnprintf(line, sizeof(line), fmt, ap);
	line[strcspn(line, "\n")] = '\0';
	log_warn("libmicrohttpd: %s", line);
}

int http_start(const struct http_opts *opts, const struct http_route *routes, size_t n_routes,
	       struct http_server **out)
{
	struct sockaddr_storage ss;
	struct http_server *h;
	char addr[128];
	unsigned port;
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ITC |
			 MHD_USE_ERROR_LOG;
	const union MHD_DaemonInfo *di;

	*out = NULL;
	if (http_parse_listen(opts->listen ? opts->listen : "127.0.0.1:20416", addr, sizeof(addr),
			      &port) < 0) {
		log_error("bad listen address '%s': expected ADDR:PORT", opts->listen);
		return -EINVAL;
	}
	memset(&ss, 0, sizeof(ss));
	if (inet_pton(AF_INET, addr, &((struct sockaddr_in *)&ss)->sin_addr) == 1) {
		((struct sockaddr_in *)&ss)->sin_family = AF_INET;
		((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)port);
	} else if (inet_pton(AF_INET6, addr, &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1) {
		((struct sockaddr_in6 *)&ss)->sin6_family = AF_INET6;
		((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)port);
		flags |= MHD_USE_IPv6;
	} else {
		log_error("bad listen address '%s': '%s' is not an IPv4 or IPv6 address",
			  opts->listen, addr);
		return -EINVAL;
	}
	h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	h->routes = calloc(n_routes, sizeof(*routes));
	if (!h->routes) {
		free(h);
		return -ENOMEM;
	}
	memcpy(h->routes, routes, n_routes * sizeof(*routes));
	h->n_routes = n_routes;
	h->max_body = opts->max_body ? opts->max_body : 64u << 20;
	h->mhd = MHD_start_daemon(
		flags, 0, NULL, NULL, http_access, h, MHD_OPTION_EXTERNAL_LOGGER, http_log, NULL,
		MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
		MHD_OPTION_THREAD_POOL_SIZE, (unsigned)(opts->threads ? opts->threads : 4),
		MHD_OPTION_CONNECTION_LIMIT, (unsigned)(opts->max_conns ? opts->max_conns : 256),
		MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120, MHD_OPTION_NOTIFY_COMPLETED,
		http_completed, h, MHD_OPTION_END);
	if (!h->mhd) {
		log_error("cannot listen on %s: %s (address in use, or not permitted?)",
			  opts->listen ? opts->listen : "127.0.0.1:20416", strerror(errno));
		free(h->routes);
		free(h);
		return -EADDRINUSE;
	}
	di = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_BIND_PORT);
	h->port = di ? di->port : port;
	*out = h;
	return 0;
}

unsigned http_port(struct http_server *h)
{
	return h->port;
}

void http_stop(struct http_server *h, double grace_s)
{
	struct timespec ts = {0, 20 * 1000 * 1000};
	int waited = 0;
	MHD_socket fd;

	if (!h)
		return;
	fd = MHD_quiesce_daemon(h->mhd);
	while (atomic_load(&h->active) > 0 && waited < (int)(grace_s * 50)) {
		nanosleep(&ts, NULL);
		waited++;
	}
	if (atomic_load(&h->active) > 0)
		log_warn("stopping with %d requests still in flight after %.1fs",
			 atomic_load(&h->active), grace_s);
	MHD_stop_daemon(h->mhd);
	if (fd != MHD_INVALID_SOCKET)
		close(fd);
	free(h->routes);
	free(h);
}
