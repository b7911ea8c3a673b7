/*
 * api_profile — POST /v1/profile/ProfileTracing, as DeepFlow documents it (the seed) and as
 * deepflow-behaviour.md §1–2 describes it: the request keys and their Go/gin binding rules, the
 * envelope and statuses, the flame tree in the flat ("O") format or, with "format":"compact",
 * DeepFlow's newer compact format. Where DeepFlow is defective ember is right; docs/api.md lists
 * each difference.
 *
 * The handler parses and validates the request, compiles tag_filter, asks the store for the
 * summed value of each distinct stack (aggregation happens in SQL), builds the tree and streams
 * the JSON out. Thread-safe: all state is per request.
 */
#ifndef EMBER_SERVER_API_PROFILE_H
#define EMBER_SERVER_API_PROFILE_H

#include <stddef.h>
#include <stdint.h>

#include "common/strbuf.h"
#include "server/http.h"

struct store;
struct server_metrics;

#define API_MAX_STACKS_DEFAULT 1000000
#define API_MAX_NODES_DEFAULT 5000000
#define API_MAX_SERVICES 10

struct api_ctx {
	struct store *store;
	uint64_t max_stacks;  /* distinct stacks per query; hitting it is said in DESCRIPTION */
	size_t max_nodes;     /* flame tree nodes per response */
	double query_seconds; /* engine-side time limit per query */
	struct server_metrics *metrics; /* may be NULL */
};

enum api_format { API_FORMAT_FLAT, API_FORMAT_COMPACT };

struct pt_request {
	char *app_service; /* "" = discover (DeepFlow H) */
	char *event_type;
	char *language_type;
	char *tag_filter;
	int64_t time_start;
	int64_t time_end;
	int debug;
	int64_t max_kernel_stack_depth; /* -1 = no clipping */
	enum api_format format;
};

/*
 * Parses a request body with DeepFlow's binding rules (case-insensitive keys, unknown keys
 * ignored, required = non-zero). Returns 0, or -EINVAL with the message for DESCRIPTION in err.
 */
int api_parse_request(const char *body, size_t len, struct pt_request *req, struct strbuf *err);
void api_request_free(struct pt_request *req);

/* Parses X-Org-Id (NULL or "" = 1). Returns 0, -EINVAL (not an integer; err says why, as Go's
 * strconv would) or -ERANGE (outside 1..9999). */
int api_parse_org(const char *header, int *org, struct strbuf *err);

void api_profile_tracing(void *ctx, struct http_exchange *x);

#endif
