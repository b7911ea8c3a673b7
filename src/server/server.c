/*
 * server — see server.h. Owns the store and every route's context for the server's lifetime.
 */
#define LOG_MODULE "server"
#include "server/server.h"

#include <errno.h>
#include <inttypes.h>
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "server/api_profile.h"
#include "server/http.h"
#include "server/ingest.h"
#include "server/metrics.h"
#include "server/web.h"
#include "store/sqlite.h"
#include "store/store.h"

/*
 * Ingest allocates and frees tens of MB per batch (body, decompressed JSON, string arena, rows).
 * With glibc's defaults those blocks are mmap'd or trimmed back to the kernel after every batch
 * and faulted in again for the next (12 % of the server's ingest CPU in bench/query). Keep up to
 * SERVER_MALLOC_TRIM_BYTES of free heap and serve blocks below SERVER_MALLOC_MMAP_BYTES (the
 * largest glibc accepts) from it.
 */
#define SERVER_MALLOC_TRIM_BYTES (256 << 20)
#define SERVER_MALLOC_MMAP_BYTES (32 << 20)

/* How often the SQLite store is pruned of rows older than the retention. */
#define SERVER_PRUNE_INTERVAL_S 300

struct server {
	struct store *store;
	struct http_server *http;
	struct api_ctx api;
	struct ingest_ctx ingest;
	struct server_metrics metrics;
	void (*metrics_extra)(void *arg, struct strbuf *out);
	void *metrics_arg;
	char store_url[512];
	int64_t retention_s;
	pthread_t pruner;
	int pruner_running;
	pthread_mutex_t lock;
	pthread_cond_t wake;
	int stopping;
};

/* SQLite has no TTL: delete what is older than the retention, now and every few minutes.
 * ClickHouse gets the retention in its URL and enforces it itself (TTL or partition drops). */
static void *server_prune_loop(void *arg)
{
	struct server *s = arg;
	struct timespec until;

	pthread_mutex_lock(&s->lock);
	while (!s->stopping) {
		uint64_t deleted = 0;
		int64_t before = (int64_t)time(NULL) - s->retention_s;

		pthread_mutex_unlock(&s->lock);
		if (store_sqlite_prune(s->store, before, &deleted) < 0)
			log_warn("retention: pruning failed: %s", store_errmsg(s->store));
		else if (deleted)
			log_info("retention: deleted %" PRIu64 " rows older than %" PRId64 "s", deleted,
				 s->retention_s);
		pthread_mutex_lock(&s->lock);
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += SERVER_PRUNE_INTERVAL_S;
		while (!s->stopping &&
		       pthread_cond_timedwait(&s->wake, &s->lock, &until) != ETIMEDOUT)
			;
	}
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

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

static void server_metrics(void *ctx, struct http_exchange *x)
{
	struct server *s = ctx;
	char err[512];

	x->status = 200;
	x->content_type = "text/plain; version=0.0.4; charset=utf-8";
	metrics_write(&s->metrics, &x->out);
	sb_printf(&x->out,
		  "# HELP ember_store_up 1 when the store answers.\n# TYPE ember_store_up gauge\n"
		  "ember_store_up{store=\"%s\"} %d\n",
		  s->store->ops->name, store_health(s->store, err, sizeof(err)) == 0);
	if (s->metrics_extra)
		s->metrics_extra(s->metrics_arg, &x->out);
}

int server_start(const struct server_opts *opts, struct server **out)
{
	struct server *s;
	char err[512];
	int rc;

	*out = NULL;
	if (!mallopt(M_TRIM_THRESHOLD, SERVER_MALLOC_TRIM_BYTES) ||
	    !mallopt(M_MMAP_THRESHOLD, SERVER_MALLOC_MMAP_BYTES))
		log_warn("mallopt failed: freed ingest memory goes back to the kernel per batch");
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	snprintf(s->store_url, sizeof(s->store_url), "%s",
		 opts->store_url ? opts->store_url : "sqlite:./ember.db");
	s->retention_s = opts->retention_s;
	if (strncmp(s->store_url, "clickhouse://", 13) == 0 && !strstr(s->store_url, "retention=")) {
		size_t len = strlen(s->store_url);

		snprintf(s->store_url + len, sizeof(s->store_url) - len, "%cretention=%" PRId64 "s",
			 strchr(s->store_url, '?') ? '&' : '?', opts->retention_s);
	}
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->wake, NULL);
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
	s->api.metrics = &s->metrics;
	s->ingest.metrics = &s->metrics;
	s->metrics_extra = opts->metrics_extra;
	s->metrics_arg = opts->metrics_arg;

	const struct http_route routes[] = {
		{"POST", "/v1/profile/ProfileTracing", api_profile_tracing, &s->api},
		{"POST", "/v1/profile/ingest", ingest_handle, &s->ingest},
		{"GET", "/healthz", server_healthz, s},
		{"GET", "/metrics", server_metrics, s},
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
	if (s->retention_s > 0 && strcmp(s->store->ops->name, "sqlite") == 0) {
		if (pthread_create(&s->pruner, NULL, server_prune_loop, s) == 0)
			s->pruner_running = 1;
		else
			log_warn("retention: cannot start the pruning thread; old rows are kept");
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
	if (s->pruner_running) {
		pthread_mutex_lock(&s->lock);
		s->stopping = 1;
		pthread_cond_signal(&s->wake);
		pthread_mutex_unlock(&s->lock);
		pthread_join(s->pruner, NULL);
	}
	store_close(s->store);
	log_info("stopped; store %s closed", s->store_url);
	free(s);
}
