/*
 * store — the dispatch half of store.h: URL parsing and the calls through the engine's ops.
 */
#include "store/store.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int store_open(const char *url, struct store **out, char *err, size_t errlen)
{
	*out = NULL;
	if (!url || !*url)
		url = "sqlite:./ember.db";
	if (strncmp(url, "sqlite:", 7) == 0)
		return store_sqlite_open(url[7] ? url + 7 : "./ember.db", out, err, errlen);
	if (strncmp(url, "clickhouse://", 13) == 0)
		return store_clickhouse_open(url, out, err, errlen);
	snprintf(err, errlen,
		 "unknown store '%s': expected sqlite:PATH or clickhouse://[USER[:PASSWORD]@]HOST:PORT[/DATABASE]",
		 url);
	return -EINVAL;
}

static int store_org_ok(struct store *s, int org)
{
	if (org >= STORE_ORG_MIN && org <= STORE_ORG_MAX)
		return 1;
	snprintf(s->errmsg, sizeof(s->errmsg), "organisation %d out of range %d..%d", org,
		 STORE_ORG_MIN, STORE_ORG_MAX);
	return 0;
}

int store_insert(struct store *s, int org, const char *batch_id, const struct profile_row *rows,
		 size_t n, int *duplicate)
{
	*duplicate = 0;
	if (!store_org_ok(s, org))
		return -EINVAL;
	return s->ops->insert(s, org, batch_id, rows, n, duplicate);
}

int store_query_stacks(struct store *s, int org, const struct store_query *q, store_stack_cb cb,
		       void *arg, struct store_query_info *info)
{
	if (!store_org_ok(s, org))
		return -EINVAL;
	return s->ops->query_stacks(s, org, q, cb, arg, info);
}

int store_list_services(struct store *s, int org, const struct store_query *q, size_t max,
			char ***names, size_t *n, struct store_query_info *info)
{
	*names = NULL;
	*n = 0;
	if (!store_org_ok(s, org))
		return -EINVAL;
	return s->ops->list_services(s, org, q, max, names, n, info);
}

void store_free_names(char **names, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
}

int store_health(struct store *s, char *err, size_t errlen)
{
	return s->ops->health(s, err, errlen);
}

void store_close(struct store *s)
{
	if (s)
		s->ops->close(s);
}

const char *store_errmsg(struct store *s)
{
	return s->errmsg;
}
