/*
 * clickhouse — the ClickHouse engine of store.h, over ClickHouse's HTTP interface.
 *
 * URL: clickhouse://[USER[:PASSWORD]@]HOST:PORT[/DATABASE][?retention=DURATION&gzip=LEVEL]
 *   USER and PASSWORD are percent-decoded and sent as X-ClickHouse-User / X-ClickHouse-Key.
 *   DATABASE (default "profile") holds organisation 1; organisation N uses "NNNN_DATABASE".
 *   retention (default 72h; units s, m, h, d; 0 = keep forever) is how long rows live: a TTL
 *   on servers that have TTL (>= 19.6), else a background thread that drops old hour partitions.
 *   gzip (0..9) is the deflate level of INSERT bodies: default 0 (stored, CRC only) when HOST is
 *   localhost, 127.x or [::1], else 1.
 *
 * The schema depends on the server version (see docs/clickhouse.md and store_clickhouse_ddl).
 * Everything here is thread-safe; the helpers below have no state.
 */
#ifndef EMBER_STORE_CLICKHOUSE_H
#define EMBER_STORE_CLICKHOUSE_H

#include <stddef.h>

#include "common/strbuf.h"

#define CH_DEFAULT_DATABASE "profile"
#define CH_DEFAULT_RETENTION_S (72L * 3600)
/* Rows in one INSERT statement; a larger batch is rejected with -EINVAL. */
#define CH_MAX_BATCH_ROWS 1000000
/* How often the retention thread of a TTL-less server looks for expired partitions. */
#define CH_RETENTION_CHECK_S 300
/* Timeouts of one HTTP request: statements that write or inspect, and queries without a limit. */
#define CH_WRITE_TIMEOUT_MS 30000
#define CH_QUERY_TIMEOUT_MS 300000
/* Bytes of a buffered (non-streamed) response: version, counts, partition lists, services. */
#define CH_MAX_SMALL_RESPONSE (16u << 20)

/*
 * Appends s (len bytes, any content) as a ClickHouse string literal with its quotes. Quote,
 * backslash, every control byte and every byte that is not part of valid UTF-8 are escaped
 * (\\, \', \xHH), so the literal denotes exactly these bytes whatever they are.
 */
void store_clickhouse_quote(struct strbuf *sb, const char *s, size_t len);

/*
 * Appends the DDL (CREATE DATABASE and CREATE TABLE statements, ';'-terminated, one per line
 * group) that ember runs for a server of the given version ("18.16.1", "23.8.2.7") and database.
 * retention_s > 0 adds a TTL where the version supports it. Returns 0 or -EINVAL (bad version).
 */
int store_clickhouse_ddl(const char *version, const char *database, long retention_s,
			 struct strbuf *out);

#endif
