/*
 * server — see server.h. Owns the store and every route's context for the server's lifetime.
 */
#define LOG_MODULE "server"
#include "server/server.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "server/api_profile.h"
#include "server/http.h"
#include "server/ingest.h"
#include "server/web.h"
#include "store/store.h"

struct server {
	struct store *store;
	struct http_server *http;
	struct api_ctx api;
	struct ingest_ctx ingest;
	char store_url[512];
};

static void server_healthz(void *ctx, struct http_exchange *x)
{
	struct server *s = ctx;
	char err[512] = "";
	struct strbuf r = STRBUF_INIT;

	if (store_health(s->store, err, sizeof(err)) == 0) {
		sb_printf(&r, "{\"status\":\"ok\",\"store\":\"%s\"}", s->store->ops->name);
		http_reply_envelope(x, 200, "SUCCESS", "", r.buf);
	} else {
		sb_printf(&r, "{\"status\":\"unhealthy\",\"store\":\"%s\"}", s->store->ops->name);
		http_reply_envelope(x, 503, "SERVER_ERROR", err, r.buf);
	}
	sb_free(&r);
}

int server_start(const struct server_opts *opts, struct server **out)
{
	struct server *s;
	char err[512];
	int rc;

	*out = NULL;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	snprintf(s->store_url, sizeof(s->store_url), "%s",
		 opts->store_url ? opts->store_url : "sqlite:./ember.db");
	rc = store_open(s->store_url, &s->store, err, sizeof(err));
	if (rc < 0) {
		log_error("cannot open store %s: %s", s->store_url, err);
		free(s);
		return rc;
	}
	s->api.store = s->store;
	s->api.max_stacks = opts->max_stacks ? opts->max_stacks : API_MAX_STACKS_DEFAULT;
	s->api.max_nodes = opts->max_nodes ? opts->max_nodes : API_MAX_NODES_DEFAULT;
	s->api.query_seconds = opts->query_seconds > 0 ? opts->query_seconds : 60;
	s->ingest.store = s->store;
	s->ingest.max_body = opts->max_body;
	s->ingest.max_rows = opts->max_batch_rows;

	const struct http_route routes[] = {
		{"POST", "/v1/profile/ProfileTracing", api_profile_tracing, &s->api},
		{"POST", "/v1/profile/ingest", ingest_handle, &s->ingest},
		{"GET", "/healthz", server_healthz, s},
		{"GET", "/", web_serve_index, NULL},
	};
	struct http_opts hopts = {
		.listen = opts->listen,
		.threads = opts->threads,
		.max_body = opts->max_body,
	};

	rc = http_start(&hopts, routes, sizeof(routes) / sizeof(routes[0]), &s->http);
	if (rc < 0) {
		store_close(s->store);
		free(s);
		return rc;
	}
	log_info("serving on %s (port %u), store %s", opts->listen ? opts->listen : "127.0.0.1:20416",
		 http_port(s->http), s->store_url);
	*out = s;
	return 0;
}

unsigned server_port(struct server *s)
{
	return http_port(s->http);
}

void server_stop(struct server *s)
{
	if (!s)
		return;
	http_stop(s->http, 10.0);
	store_close(s->store);
	log_info("stopped; store %s closed", s->store_url);
	free(s);
}
