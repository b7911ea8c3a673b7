/*
 * clickhouse — profile.in_process in ClickHouse, over the HTTP interface (see clickhouse.h).
 *
 * The idea: ClickHouse does the heavy lifting (storage, compression, GROUP BY); this file builds
 * statements, moves bytes and maps failures to errnos the server can act on.
 *
 * Writes go as RowBinary (length-prefixed strings, little-endian numbers): no escaping, so no byte
 * of any field can be misread, and Int64 microseconds are bit-identical to DateTime64(6) ticks, so
 * one encoder serves the 18.16 schema and the modern one. Bodies are always gzip-framed (the only
 * Content-Encoding every version accepts; 18.16 rejects zstd), even at level 0 (stored blocks,
 * the default towards a loopback server, where compressing only costs CPU): the gzip trailer's
 * CRC and length are what make ClickHouse reject a body cut short. A plain RowBinary body that
 * ends at a row boundary (ember killed mid-send) is a valid shorter INSERT on 18.16, and those
 * rows would then pass the exactly-once probe below as the whole hour.
 *
 * Exactly-once batches. A MergeTree INSERT is atomic per part, and an INSERT makes one part per
 * partition it touches, so a batch is written as one INSERT per hour partition (normally one).
 * Every row carries its batch_id, so the rows are their own ledger: before writing, one probe
 * asks, per hour of the batch, whether a row of this batch sits at the exact sort key of the
 * hour's first row (a primary-key lookup of a granule or two). Found: that hour was written by an
 * earlier attempt (ClickHouse or ember crashed, or a timeout whose INSERT still completed) and is
 * skipped; all found: a duplicate. Two statements per batch, no side table to keep in step. The
 * remaining window: two servers given the same new batch at the same moment both find nothing
 * and both write it. That needs an agent to retry elsewhere while its first attempt is still
 * running, which the agent's timeout (longer than ours) rules out in practice; docs/clickhouse.md
 * says so.
 *
 * Reads stream TabSeparated rows through httpc's on_data callback; every query carries a random
 * query_id so that an abandoned query is stopped with KILL QUERY.
 */
#include "store/clickhouse.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <zlib.h>
#include <zstd.h>

#define LOG_MODULE "clickhouse"
#include "common/httpc.h"
#include "common/log.h"
#include "server/tagfilter.h"
#include "store/store.h"

/* Longest TSV line (one escaped stack) and longest decompressed stack accepted from a read. */
#define CH_MAX_LINE (8u << 20)
#define CH_MAX_STACK_BYTES (4u << 20)
#define CH_MAX_BATCH_ID 256
#define CH_ENCODE_CHUNK (1u << 20) /* RowBinary bytes encoded before each deflate call */
#define CH_GZIP_LEVEL_REMOTE 1     /* default gzip level of INSERT bodies over a network */
#define CH_GZIP_LEVEL_LOOPBACK 0   /* ... to a server on this host: stored blocks, CRC only */
#define CH_DB_NAME_MAX 58 /* ClickHouse allows more; "NNNN_" + this stays short in paths */
#define CH_TYPE_MAX 256       /* longest column type compared by the drift check */
#define CH_TYPE_MAX_DEPTH 8   /* nested parentheses in such a type */
#define CH_EXTRA_COLS_LOGGED 8 /* columns of in_process that are not ember's, named in the log */

/* Server features by version; an unknown version is treated as 18.16 (the oldest supported). */
struct ch_features {
	int lowcard;    /* LowCardinality without the experimental setting: >= 19.1 */
	int ttl;        /* table TTL: >= 19.6 */
	int codecs;     /* column codecs incl. DoubleDelta, T64: >= 19.17 */
	int datetime64; /* DateTime64: >= 20.1 */
};

struct ch_org_state {
	int ensured; /* schema created (or found) in this process */
};

struct ch_store {
	struct store base;
	char hostport[128]; /* for messages and query info */
	char base_url[160]; /* http://HOST:PORT/ */
	char user[128];
	char password[128];
	int has_user;
	char db[CH_DB_NAME_MAX + 1];
	long retention_s;
	int gzip_level; /* of INSERT bodies, 0 (stored) .. 9 */

	pthread_mutex_t lock; /* version, orgs */
	char version[32];     /* "" until the server answered once */
	struct ch_features feat;
	struct ch_org_state orgs[STORE_ORG_MAX + 1];
	char drift_last[512]; /* the last column drift refused (ch_check_columns), "" if none */

	pthread_t retention_thread;
	int retention_started;
	int stopping;
	pthread_cond_t stop_cond;
};

/* ---- strings ---------------------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at p (at most n bytes), or 0 if it is not valid. */
static size_t ch_utf8_len(const unsigned char *p, size_t n)
{
	size_t len;
	uint32_t cp;

	if (p[0] < 0x80)
		return 1;
	if (p[0] >= 0xc2 && p[0] <= 0xdf)
		len = 2, cp = p[0] & 0x1f;
	else if (p[0] >= 0xe0 && p[0] <= 0xef)
		len = 3, cp = p[0] & 0x0f;
	else if (p[0] >= 0xf0 && p[0] <= 0xf4)
		len = 4, cp = p[0] & 0x07;
	else
		return 0;
	if (n < len)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (p[i] & 0x3f);
	}
	/* overlong forms, surrogates and beyond U+10FFFF are not valid UTF-8 */
	if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return len;
}

void store_clickhouse_quote(struct strbuf *sb, const char *s, size_t len)
{
	static const char hex[] = "0123456789ABCDEF";
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0;

	sb_putc(sb, '\'');
	while (i < len) {
		unsigned char c = p[i];
		size_t ulen;

		if (c == '\\' || c == '\'') {
			sb_putc(sb, '\\');
			sb_putc(sb, (char)c);
			i++;
			continue;
		}
		ulen = c >= 0x20 && c != 0x7f ? ch_utf8_len(p + i, len - i) : 0;
		if (ulen) {
			sb_append(sb, p + i, ulen);
			i += ulen;
			continue;
		}
		sb_putc(sb, '\\');
		sb_putc(sb, 'x');
		sb_putc(sb, hex[c >> 4]);
		sb_putc(sb, hex[c & 15]);
		i++;
	}
	sb_putc(sb, '\'');
}

static void ch_quote_str(struct strbuf *sb, const char *s)
{
	store_clickhouse_quote(sb, s ? s : "", s ? strlen(s) : 0);
}

/* Appends s percent-encoded for a URL query value. */
static void ch_urlencode(struct strbuf *sb, const char *s, size_t len)
{
	static const char hex[] = "0123456789ABCDEF";

	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
			sb_putc(sb, (char)c);
		} else {
			sb_putc(sb, '%');
			sb_putc(sb, hex[c >> 4]);
			sb_putc(sb, hex[c & 15]);
		}
	}
}

static int ch_hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = tolower(c);
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Percent-decodes [s, s+len) into out (size outlen); -EINVAL on a bad escape, NUL or overflow. */
static int ch_urldecode(const char *s, size_t len, char *out, size_t outlen)
{
	size_t o = 0;

	for (size_t i = 0; i < len; i++) {
		int c = (unsigned char)s[i];

		if (c == '%') {
			int hi, lo;

			if (i + 2 >= len)
				return -EINVAL;
			hi = ch_hexval((unsigned char)s[i + 1]);
			lo = ch_hexval((unsigned char)s[i + 2]);
			if (hi < 0 || lo < 0)
				return -EINVAL;
			c = hi * 16 + lo;
			i += 2;
		}
		if (c == 0 || o + 1 >= outlen)
			return -EINVAL;
		out[o++] = (char)c;
	}
	out[o] = '\0';
	return 0;
}

/*
 * Decodes one TabSeparated field in place (ClickHouse's escapes: \b \f \n \r \t \0 \a \v \\ \'
 * \xHH; any other escaped character stands for itself). Returns the new length.
 */
static size_t ch_tsv_unescape(char *s, size_t len)
{
	size_t o = 0;

	for (size_t i = 0; i < len; i++) {
		char c = s[i];

		if (c == '\\' && i + 1 < len) {
			c = s[++i];
			switch (c) {
			case 'b': c = '\b'; break;
			case 'f': c = '\f'; break;
			case 'n': c = '\n'; break;
			case 'r': c = '\r'; break;
			case 't': c = '\t'; break;
			case '0': c = '\0'; break;
			case 'a': c = '\a'; break;
			case 'v': c = '\v'; break;
			case 'x':
				if (i + 2 < len && ch_hexval((unsigned char)s[i + 1]) >= 0 &&
				    ch_hexval((unsigned char)s[i + 2]) >= 0) {
					c = (char)(ch_hexval((unsigned char)s[i + 1]) * 16 +
						   ch_hexval((unsigned char)s[i + 2]));
					i += 2;
				}
				break;
			default:
				break;
			}
		}
		s[o++] = c;
	}
	return o;
}

/* ---- versions and DDL -------------------------------------------------------------------- */

static int ch_parse_version(const char *v, int *major, int *minor)
{
	char *end;
	long ma, mi;

	ma = strtol(v, &end, 10);
	if (end == v || *end != '.')
		return -EINVAL;
	mi = strtol(end + 1, &end, 10);
	if (ma < 1 || mi < 0 || ma > 1000 || mi > 1000)
		return -EINVAL;
	*major = (int)ma;
	*minor = (int)mi;
	return 0;
}

static void ch_features_of(int major, int minor, struct ch_features *f)
{
	int v = major * 1000 + minor;

	f->lowcard = v >= 19001;
	f->ttl = v >= 19006;
	f->codecs = v >= 19017;
	f->datetime64 = v >= 20001;
}

enum ch_kind {
	CK_TIME,       /* DateTime('UTC'); row int64 seconds */
	CK_STR,        /* String */
	CK_LCSTR,      /* LowCardinality(String) where supported */
	CK_I64,        /* Int64 */
	CK_PID,        /* UInt32 */
	CK_TS_US,      /* Int64 µs, or DateTime64(6) */
	CK_TS_MS,      /* Int64 ms, or DateTime64(3) */
	CK_TAG_NAMES,  /* Array(LowCardinality(String)) */
	CK_TAG_VALUES, /* Array(String) */
	CK_BATCH,      /* the batch id, String */
};

struct ch_col {
	const char *name;
	enum ch_kind kind;
	size_t off;        /* offset of the field in struct profile_row */
	const char *codec; /* on servers with codecs; NULL = default (LZ4) */
};

#define RF(f) offsetof(struct profile_row, f)
static const struct ch_col ch_cols[] = {
	{"time", CK_TIME, RF(time), "DoubleDelta, LZ4"},
	{"app_service", CK_LCSTR, RF(app_service), NULL},
	{"app_instance", CK_LCSTR, RF(app_instance), NULL},
	{"profile_location_str", CK_STR, RF(profile_location_str), "ZSTD(3)"},
	{"profile_value", CK_I64, RF(profile_value), "T64, LZ4"},
	{"profile_value_unit", CK_LCSTR, RF(profile_value_unit), NULL},
	{"profile_event_type", CK_LCSTR, RF(profile_event_type), NULL},
	{"profile_language_type", CK_LCSTR, RF(profile_language_type), NULL},
	{"profile_create_timestamp", CK_TS_US, RF(profile_create_timestamp), "DoubleDelta, LZ4"},
	{"profile_in_timestamp", CK_TS_US, RF(profile_in_timestamp), "DoubleDelta, LZ4"},
	{"process_id", CK_PID, RF(process_id), NULL},
	{"process_start_time", CK_TS_MS, RF(process_start_time), NULL},
	{"host", CK_LCSTR, RF(host), NULL},
	{"agent", CK_LCSTR, RF(agent), NULL},
	{"host_ip", CK_LCSTR, RF(host_ip), NULL},
	{"container_id", CK_LCSTR, RF(container_id), NULL},
	{"pod_cluster", CK_LCSTR, RF(pod_cluster), NULL},
	{"pod_ns", CK_LCSTR, RF(pod_ns), NULL},
	{"pod_node", CK_LCSTR, RF(pod_node), NULL},
	{"pod", CK_LCSTR, RF(pod), NULL},
	{"pod_group", CK_LCSTR, RF(pod_group), NULL},
	{"tag_names", CK_TAG_NAMES, 0, NULL},
	{"tag_values", CK_TAG_VALUES, 0, "ZSTD(1)"},
	{"trace_id", CK_STR, RF(trace_id), NULL},
	{"span_name", CK_STR, RF(span_name), NULL},
	{"profile_id", CK_STR, RF(profile_id), NULL},
	{"compression_algo", CK_LCSTR, RF(compression_algo), NULL},
	{"batch_id", CK_BATCH, 0, NULL},
};
#define CH_NCOLS (sizeof(ch_cols) / sizeof(ch_cols[0]))

static const char *ch_col_type(const struct ch_col *c, const struct ch_features *f)
{
	switch (c->kind) {
	case CK_TIME:
		return "DateTime('UTC')";
	case CK_STR:
	case CK_BATCH:
		return "String";
	case CK_LCSTR:
		return f->lowcard ? "LowCardinality(String)" : "String";
	case CK_I64:
		return "Int64";
	case CK_PID:
		return "UInt32";
	case CK_TS_US:
		return f->datetime64 ? "DateTime64(6, 'UTC')" : "Int64";
	case CK_TS_MS:
		return f->datetime64 ? "DateTime64(3, 'UTC')" : "Int64";
	case CK_TAG_NAMES:
		return f->lowcard ? "Array(LowCardinality(String))" : "Array(String)";
	case CK_TAG_VALUES:
		return "Array(String)";
	}
	return "String";
}

static void ch_put_interval(struct strbuf *sb, long seconds)
{
	if (seconds % 3600 == 0)
		sb_printf(sb, "INTERVAL %ld HOUR", seconds / 3600);
	else
		sb_printf(sb, "INTERVAL %ld SECOND", seconds);
}

static void ch_ddl(const struct ch_features *f, const char *db, long retention_s,
		   struct strbuf *out)
{
	sb_printf(out, "CREATE DATABASE IF NOT EXISTS `%s`;\n", db);
	sb_printf(out, "CREATE TABLE IF NOT EXISTS `%s`.in_process (\n", db);
	for (size_t i = 0; i < CH_NCOLS; i++) {
		sb_printf(out, "    %s %s", ch_cols[i].name, ch_col_type(&ch_cols[i], f));
		if (f->codecs && ch_cols[i].codec)
			sb_printf(out, " CODEC(%s)", ch_cols[i].codec);
		sb_puts(out, i + 1 < CH_NCOLS ? ",\n" : "\n");
	}
	sb_puts(out, ") ENGINE = MergeTree()\nPARTITION BY toStartOfHour(time)\n"
		     "ORDER BY (app_service, profile_language_type, profile_event_type, time)\n");
	if (f->ttl && retention_s > 0) {
		sb_puts(out, "TTL time + ");
		ch_put_interval(out, retention_s);
		sb_putc(out, '\n');
	}
	sb_puts(out, "SETTINGS index_granularity = 8192;\n");
}

int store_clickhouse_ddl(const char *version, const char *database, long retention_s,
			 struct strbuf *out)
{
	struct ch_features f;
	int major, minor;

	if (ch_parse_version(version, &major, &minor) < 0)
		return -EINVAL;
	ch_features_of(major, minor, &f);
	ch_ddl(&f, database, retention_s, out);
	return 0;
}

/* ---- HTTP -------------------------------------------------------------------------------- */

/* ClickHouse exception codes that mean "try again later" even though the status is 5xx or the
 * code might look permanent; and the ones that mean a bug or bad input (retrying cannot help). */
static int ch_code_permanent(long code)
{
	static const long codes[] = {
		6,   /* CANNOT_PARSE_TEXT */
		26,  /* CANNOT_PARSE_QUOTED_STRING */
		27,  /* CANNOT_PARSE_INPUT_ASSERTION_FAILED */
		33,  /* CANNOT_READ_ALL_DATA */
		36,  /* BAD_ARGUMENTS */
		38,  /* CANNOT_PARSE_DATE */
		41,  /* CANNOT_PARSE_DATETIME */
		42,  /* NUMBER_OF_ARGUMENTS_DOESNT_MATCH */
		43,  /* ILLEGAL_TYPE_OF_ARGUMENT */
		44,  /* ILLEGAL_COLUMN */
		46,  /* UNKNOWN_FUNCTION */
		47,  /* UNKNOWN_IDENTIFIER */
		53,  /* TYPE_MISMATCH */
		62,  /* SYNTAX_ERROR */
		69,  /* ARGUMENT_OUT_OF_BOUND */
		72,  /* CANNOT_PARSE_NUMBER */
		117, /* INCORRECT_DATA */
		131, /* TOO_LARGE_STRING_SIZE */
		164, /* READONLY */
		396, /* TOO_MANY_ROWS_OR_BYTES */
		497, /* ACCESS_DENIED */
	};

	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
		if (codes[i] == code)
			return 1;
	return 0;
}

static long ch_exception_code(const char *body)
{
	const char *p = body ? strstr(body, "Code: ") : NULL;

	return p ? strtol(p + 6, NULL, 10) : -1;
}

/*
 * Maps a finished request to 0 or a negative errno, with a message in err.
 * -EAGAIN: unreachable, timeout, overload or any other 5xx (retry later); -EACCES: credentials;
 * -ENOENT: the database or table does not exist; -EIO: the statement itself is wrong.
 */
static int ch_result(struct ch_store *s, int rc, const char *herr, const struct httpc_resp *r,
		     char *err, size_t errlen)
{
	long code;
	size_t n;
	const char *body;

	if (rc == -ECANCELED)
		return rc;
	if (rc < 0) {
		int e = r->os_errno; /* why the connect failed, from httpc */

		if (e) {
			char what[64];

			snprintf(what, sizeof(what), "%s", strerror(e));
			what[0] = (char)tolower((unsigned char)what[0]);
			snprintf(err, errlen, "clickhouse %s: unreachable: %s", s->hostport, what);
		} else {
			snprintf(err, errlen, "clickhouse %s: %s: %s", s->hostport,
				 rc == -ETIMEDOUT ? "timed out" : "unreachable", herr);
		}
		return -EAGAIN;
	}
	if (r->status == 200)
		return 0;
	body = r->body.buf ? r->body.buf : "";
	code = ch_exception_code(body);
	if (code == 192 || code == 193 || code == 194 || code == 516 || r->status == 401) {
		snprintf(err, errlen, "clickhouse %s: authentication failed for user '%s'",
			 s->hostport, s->has_user ? s->user : "default");
		return -EACCES;
	}
	n = strcspn(body, "\n");
	if (n > 400)
		n = 400;
	snprintf(err, errlen, "clickhouse %s: HTTP %ld: %.*s", s->hostport, r->status, (int)n,
		 body);
	if (code == 60 || code == 81) /* UNKNOWN_TABLE, UNKNOWN_DATABASE */
		return -ENOENT;
	if (ch_code_permanent(code))
		return -EIO;
	return r->status >= 500 ? -EAGAIN : -EIO;
}

struct ch_call {
	const char *params;  /* extra URL query string ("a=1&b=2"), may be NULL */
	const char *body;
	size_t body_len;
	long (*on_send)(void *arg, char *buf, size_t cap); /* instead of body: see httpc.h */
	int gzip;            /* body is gzip-compressed */
	long timeout_ms;
	size_t max_response; /* 0 = CH_MAX_SMALL_RESPONSE */
	int (*on_data)(void *arg, const char *data, size_t len);
	int (*should_abort)(void *arg);
	void *arg;
};

static int ch_http(struct ch_store *s, const struct ch_call *c, struct httpc_resp *resp, char *err,
		   size_t errlen)
{
	struct strbuf url = STRBUF_INIT, huser = STRBUF_INIT, hkey = STRBUF_INIT;
	const char *headers[4];
	struct httpc_req req = {0};
	char herr[256] = "";
	size_t nh = 0;
	int rc;

	sb_puts(&url, s->base_url);
	if (c->params) {
		sb_putc(&url, '?');
		sb_puts(&url, c->params);
	}
	if (s->has_user) {
		sb_printf(&huser, "X-ClickHouse-User: %s", s->user);
		sb_printf(&hkey, "X-ClickHouse-Key: %s", s->password);
		headers[nh++] = huser.buf;
		headers[nh++] = hkey.buf;
	}
	if (c->gzip)
		headers[nh++] = "Content-Encoding: gzip";
	headers[nh] = NULL;
	req.method = "POST";
	req.url = url.buf;
	req.body = c->body;
	req.body_len = c->body_len;
	req.on_send = c->on_send;
	req.headers = headers;
	req.timeout_ms = c->timeout_ms ? c->timeout_ms : CH_WRITE_TIMEOUT_MS;
	req.max_response = c->max_response ? c->max_response : CH_MAX_SMALL_RESPONSE;
	req.on_data = c->on_data;
	req.should_abort = c->should_abort;
	req.arg = c->arg;
	rc = httpc_do(&req, resp, herr, sizeof(herr));
	/* httpc prefixes its message with the URL, which holds a whole INSERT statement: drop it */
	if (strlen(herr) >= url.len + 2 && strncmp(herr, url.buf, url.len) == 0)
		memmove(herr, herr + url.len + 2, strlen(herr + url.len + 2) + 1);
	rc = ch_result(s, rc, herr, resp, err, errlen);
	sb_free(&url);
	sb_free(&huser);
	sb_free(&hkey);
	return rc;
}

/* Runs one small statement; the response body (if out) is kept. */
static int ch_exec(struct ch_store *s, const char *sql, struct strbuf *out, char *err,
		   size_t errlen)
{
	struct ch_call c = {.body = sql, .body_len = strlen(sql)};
	struct httpc_resp r = {0};
	int rc;

	rc = ch_http(s, &c, &r, err, errlen);
	if (rc == 0 && out) {
		if (!r.body.buf)
			sb_puts(&r.body, ""); /* an empty answer is still a string */
		*out = r.body;
		return 0;
	}
	sb_free(&r.body);
	return rc;
}

/* ---- schema ------------------------------------------------------------------------------ */

static void ch_org_db(const struct ch_store *s, int org, char *out, size_t outlen)
{
	if (org == 1)
		snprintf(out, outlen, "%s", s->db);
	else
		snprintf(out, outlen, "%04d_%s", org, s->db);
}

/* Asks the server for its version once; later calls reuse it. */
static int ch_detect_version(struct ch_store *s, char *err, size_t errlen)
{
	struct strbuf out = STRBUF_INIT;
	int major, minor, rc;

	pthread_mutex_lock(&s->lock);
	rc = s->version[0] ? 1 : 0;
	pthread_mutex_unlock(&s->lock);
	if (rc)
		return 0;
	rc = ch_exec(s, "SELECT version()", &out, err, errlen);
	if (rc < 0)
		return rc;
	out.len = strcspn(out.buf, "\r\n");
	out.buf[out.len] = '\0';
	if (ch_parse_version(out.buf, &major, &minor) < 0 || out.len >= sizeof(s->version)) {
		snprintf(err, errlen, "clickhouse %s: unexpected version '%.40s'", s->hostport,
			 out.buf);
		sb_free(&out);
		return -EIO;
	}
	pthread_mutex_lock(&s->lock);
	snprintf(s->version, sizeof(s->version), "%s", out.buf);
	ch_features_of(major, minor, &s->feat);
	pthread_mutex_unlock(&s->lock);
	log_info("%s: ClickHouse %s (lowcardinality %d, ttl %d, codecs %d, datetime64 %d;"
		 " insert gzip level %d)",
		 s->hostport, out.buf, s->feat.lowcard, s->feat.ttl, s->feat.codecs,
		 s->feat.datetime64, s->gzip_level);
	sb_free(&out);
	return 0;
}

/*
 * type without its LowCardinality(...) wrappers (also inside Array): LowCardinality changes how
 * ClickHouse stores a column, not its RowBinary bytes. Returns -ENAMETOOLONG past CH_TYPE_MAX
 * bytes or CH_TYPE_MAX_DEPTH nested parentheses.
 */
static int ch_type_plain(const char *type, char *out, size_t outlen)
{
	static const char lc[] = "LowCardinality(";
	unsigned char skip[CH_TYPE_MAX_DEPTH]; /* per open parenthesis: 1 = of a LowCardinality */
	int depth = 0;
	size_t o = 0;

	for (const char *p = type; *p; p++) {
		int is_lc = strncmp(p, lc, sizeof(lc) - 1) == 0;

		if (is_lc || *p == '(') {
			if (depth == CH_TYPE_MAX_DEPTH)
				return -ENAMETOOLONG;
			skip[depth++] = (unsigned char)is_lc;
			if (is_lc) {
				p += sizeof(lc) - 2;
				continue;
			}
		} else if (*p == ')' && depth > 0 && skip[--depth]) {
			continue;
		}
		if (o + 1 >= outlen)
			return -ENAMETOOLONG;
		out[o++] = *p;
	}
	out[o] = '\0';
	return 0;
}

/* 1 if "DateTime64(P" or "DateTime64(P, 'zone')" with precision P. */
static int ch_is_datetime64(const char *plain, int precision)
{
	char pre[16];
	size_t n = (size_t)snprintf(pre, sizeof(pre), "DateTime64(%d", precision);

	return strncmp(plain, pre, n) == 0 && (plain[n] == ')' || plain[n] == ',');
}

/*
 * Whether a column of type found takes what ember writes for c: the same RowBinary bytes with
 * the same meaning (String and LowCardinality(String); Int64 µs or ms and DateTime64(6) or (3)
 * ticks; DateTime in any time zone, a unix time either way).
 */
static int ch_type_takes(const struct ch_col *c, const char *found)
{
	char plain[CH_TYPE_MAX];

	if (ch_type_plain(found, plain, sizeof(plain)) < 0)
		return 0;
	switch (c->kind) {
	case CK_TIME:
		return strcmp(plain, "DateTime") == 0 || strncmp(plain, "DateTime(", 9) == 0;
	case CK_STR:
	case CK_LCSTR:
	case CK_BATCH:
		return strcmp(plain, "String") == 0;
	case CK_I64:
		return strcmp(plain, "Int64") == 0;
	case CK_PID:
		return strcmp(plain, "UInt32") == 0;
	case CK_TS_US:
		return strcmp(plain, "Int64") == 0 || ch_is_datetime64(plain, 6);
	case CK_TS_MS:
		return strcmp(plain, "Int64") == 0 || ch_is_datetime64(plain, 3);
	case CK_TAG_NAMES:
	case CK_TAG_VALUES:
		return strcmp(plain, "Array(String)") == 0;
	}
	return 0;
}

/*
 * Column drift: a table that existed before this process (made by another ember version, or
 * altered by its users) is compared with what ch_cols writes, from system.columns.
 *  - the type ember would create, or one that takes the same bytes (ch_type_takes): written as
 *    is, a different one noted in the log;
 *  - a missing column: added (ALTER TABLE ADD COLUMN changes metadata only; older rows read
 *    the column's default), as an upgrade that adds a column needs;
 *  - any other type: nothing is altered and writes are refused (-EIO, the first such column in
 *    err, every one in the log), because RowBinary bytes read as another type are wrong values
 *    stored silently or an INSERT that fails;
 *  - columns ember does not write are left to their defaults.
 */
static int ch_check_columns(struct ch_store *s, const char *db, const struct ch_features *f,
			    char *err, size_t errlen)
{
	const char *found[CH_NCOLS] = {0}, *extra[CH_EXTRA_COLS_LOGGED];
	struct strbuf sql = STRBUF_INIT, body = STRBUF_INIT;
	char *line, *save = NULL;
	size_t bad = 0, missing = 0, nextra = 0;
	int quiet, rc;

	sb_puts(&sql, "SELECT name, type FROM system.columns WHERE database = ");
	ch_quote_str(&sql, db);
	sb_puts(&sql, " AND table = 'in_process' FORMAT TabSeparated");
	rc = ch_exec(s, sql.buf, &body, err, errlen);
	sb_free(&sql);
	if (rc < 0)
		return rc;
	for (line = strtok_r(body.buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *type = strchr(line, '\t');
		size_t i;

		if (!type)
			continue;
		*type++ = '\0';
		line[ch_tsv_unescape(line, strlen(line))] = '\0';
		type[ch_tsv_unescape(type, strlen(type))] = '\0';
		for (i = 0; i < CH_NCOLS && strcmp(ch_cols[i].name, line) != 0; i++)
			;
		if (i < CH_NCOLS)
			found[i] = type;
		else if (nextra < CH_EXTRA_COLS_LOGGED)
			extra[nextra++] = line;
	}
	for (size_t i = 0; i < CH_NCOLS; i++) {
		const char *want = ch_col_type(&ch_cols[i], f);

		if (!found[i])
			missing++;
		else if (!ch_type_takes(&ch_cols[i], found[i]) && bad++ == 0)
			snprintf(err, errlen,
				 "clickhouse %s: %s.in_process column %s is %s, ember writes %s:"
				 " refusing to write until the column is %s",
				 s->hostport, db, ch_cols[i].name, found[i], want, want);
	}
	/* A refusal repeats on every write and health check: its details are logged once. */
	pthread_mutex_lock(&s->lock);
	quiet = bad && strcmp(s->drift_last, err) == 0;
	snprintf(s->drift_last, sizeof(s->drift_last), "%s", bad ? err : "");
	pthread_mutex_unlock(&s->lock);
	for (size_t i = 0; i < CH_NCOLS && !quiet; i++) {
		const char *want = ch_col_type(&ch_cols[i], f);

		if (!found[i] || strcmp(found[i], want) == 0)
			continue;
		if (!ch_type_takes(&ch_cols[i], found[i]))
			log_error("%s.in_process: column %s is %s, ember writes %s: refusing to write",
				  db, ch_cols[i].name, found[i], want);
		else
			log_warn("%s.in_process: column %s is %s where ember creates %s: the same"
				 " bytes, written as is",
				 db, ch_cols[i].name, found[i], want);
	}
	for (size_t i = 0; i < nextra && !quiet; i++)
		log_info("%s.in_process: column %s is not ember's: left to its default", db,
			 extra[i]);
	for (size_t i = 0; i < CH_NCOLS && !bad && missing; i++) {
		if (found[i])
			continue;
		sb_printf(&sql, "ALTER TABLE `%s`.in_process ADD COLUMN %s %s", db, ch_cols[i].name,
			  ch_col_type(&ch_cols[i], f));
		if (f->codecs && ch_cols[i].codec)
			sb_printf(&sql, " CODEC(%s)", ch_cols[i].codec);
		rc = ch_exec(s, sql.buf, NULL, err, errlen);
		sb_free(&sql);
		if (rc < 0)
			break;
		log_warn("%s.in_process: column %s was missing: added as %s", db, ch_cols[i].name,
			 ch_col_type(&ch_cols[i], f));
	}
	sb_free(&body);
	return bad ? -EIO : rc;
}

/*
 * Creates the organisation's database and tables if this process has not done so yet, and
 * checks an existing table's columns (ch_check_columns); until that passes, every call retries.
 */
static int ch_ensure_schema(struct ch_store *s, int org, char *err, size_t errlen)
{
	struct strbuf ddl = STRBUF_INIT;
	struct ch_features f;
	char db[CH_DB_NAME_MAX + 8];
	char *stmt, *next;
	int done, rc;

	pthread_mutex_lock(&s->lock);
	done = s->orgs[org].ensured;
	pthread_mutex_unlock(&s->lock);
	if (done)
		return 0;
	rc = ch_detect_version(s, err, errlen);
	if (rc < 0)
		return rc;
	pthread_mutex_lock(&s->lock);
	f = s->feat;
	pthread_mutex_unlock(&s->lock);
	ch_org_db(s, org, db, sizeof(db));
	ch_ddl(&f, db, s->retention_s, &ddl);
	/* The HTTP interface takes one statement per request. */
	for (stmt = ddl.buf; stmt && *stmt; stmt = next) {
		next = strchr(stmt, ';');
		if (next)
			*next++ = '\0';
		while (next && *next == '\n')
			next++;
		rc = ch_exec(s, stmt, NULL, err, errlen);
		if (rc < 0) {
			log_error("schema of %s: %s", db, err);
			sb_free(&ddl);
			return rc;
		}
	}
	sb_free(&ddl);
	rc = ch_check_columns(s, db, &f, err, errlen);
	if (rc < 0)
		return rc;
	pthread_mutex_lock(&s->lock);
	s->orgs[org].ensured = 1;
	pthread_mutex_unlock(&s->lock);
	log_info("%s: schema of database %s ready", s->hostport, db);
	return 0;
}

static void ch_forget_schema(struct ch_store *s, int org)
{
	pthread_mutex_lock(&s->lock);
	s->orgs[org].ensured = 0;
	pthread_mutex_unlock(&s->lock);
}

/* ---- writes ------------------------------------------------------------------------------ */

static void ch_put_varint(struct strbuf *sb, uint64_t v)
{
	while (v >= 0x80) {
		sb_putc(sb, (char)(v | 0x80));
		v >>= 7;
	}
	sb_putc(sb, (char)v);
}

static void ch_put_le(struct strbuf *sb, uint64_t v, int bytes)
{
	for (int i = 0; i < bytes; i++)
		sb_putc(sb, (char)(v >> (8 * i)));
}

static void ch_put_string(struct strbuf *sb, const char *s)
{
	size_t n = s ? strlen(s) : 0;

	ch_put_varint(sb, n);
	sb_append(sb, s ? s : "", n);
}

static const char *ch_row_str(const struct profile_row *r, size_t off)
{
	return *(const char *const *)((const char *)r + off);
}

static int64_t ch_row_i64(const struct profile_row *r, size_t off)
{
	return *(const int64_t *)((const char *)r + off);
}

static void ch_encode_row(struct strbuf *sb, const struct profile_row *r, const char *batch_id)
{
	for (size_t i = 0; i < CH_NCOLS; i++) {
		const struct ch_col *c = &ch_cols[i];

		switch (c->kind) {
		case CK_TIME:
		case CK_PID:
			ch_put_le(sb, (uint64_t)ch_row_i64(r, c->off), 4);
			break;
		case CK_I64:
		case CK_TS_US:
		case CK_TS_MS:
			ch_put_le(sb, (uint64_t)ch_row_i64(r, c->off), 8);
			break;
		case CK_STR:
		case CK_LCSTR:
			ch_put_string(sb, ch_row_str(r, c->off));
			break;
		case CK_TAG_NAMES:
		case CK_TAG_VALUES:
			ch_put_varint(sb, r->n_tags);
			for (size_t t = 0; t < r->n_tags; t++)
				ch_put_string(sb, c->kind == CK_TAG_NAMES ? r->tag_names[t]
									  : r->tag_values[t]);
			break;
		case CK_BATCH:
			ch_put_string(sb, batch_id);
			break;
		}
	}
}

static int ch_validate_row(struct ch_store *s, const struct profile_row *r, size_t i)
{
	const char *field = NULL;

	if (r->time < 0 || r->time > UINT32_MAX)
		field = "time (unix seconds within 1970..2106)";
	else if (r->process_id < 0 || r->process_id > UINT32_MAX)
		field = "process_id (0..4294967295)";
	else if (r->n_tags > ROW_MAX_TAGS || (r->n_tags && (!r->tag_names || !r->tag_values)))
		field = "tag_names/tag_values";
	else if (r->compression_algo && *r->compression_algo &&
		 strcmp(r->compression_algo, "zstd") != 0)
		field = "compression_algo (\"\" or \"zstd\")";
	if (!field)
		return 0;
	snprintf(s->base.errmsg, sizeof(s->base.errmsg), "row %zu: invalid %s", i, field);
	return -EINVAL;
}

/*
 * The body of one INSERT, made while libcurl sends it (httpc on_send, chunked transfer): rows
 * are encoded CH_ENCODE_CHUNK bytes at a time and deflated straight into libcurl's upload
 * buffer. ClickHouse parses the first rows while the last are encoded, and neither the RowBinary
 * nor the gzip of a batch (20-25 MB each for 20,000 rows) ever exists whole.
 */
struct ch_body {
	const struct profile_row *rows;
	const size_t *idx;
	size_t n, next; /* rows idx[0..n); idx[next] is the next to encode */
	const char *batch_id;
	struct strbuf raw; /* encoded rows; z.next_in points into it */
	z_stream z;
	int finished; /* the gzip trailer is out */
};

static long ch_body_send(void *arg, char *buf, size_t cap)
{
	struct ch_body *b = arg;
	int zr;

	b->z.next_out = (Bytef *)buf;
	b->z.avail_out = (uInt)(cap > UINT_MAX ? UINT_MAX : cap);
	while (b->z.avail_out > 0 && !b->finished) {
		if (b->z.avail_in == 0 && b->next < b->n) {
			sb_reset(&b->raw);
			while (b->next < b->n && b->raw.len < CH_ENCODE_CHUNK)
				ch_encode_row(&b->raw, &b->rows[b->idx[b->next++]], b->batch_id);
			b->z.next_in = (Bytef *)b->raw.buf;
			b->z.avail_in = (uInt)b->raw.len;
		}
		zr = deflate(&b->z, b->next < b->n ? Z_NO_FLUSH : Z_FINISH);
		if (zr == Z_STREAM_END)
			b->finished = 1;
		else if (zr != Z_OK)
			return -1; /* cannot happen with valid arguments; ends the request */
	}
	return (long)((char *)b->z.next_out - buf);
}

/* One INSERT of rows idx[0..n) (all in one hour partition): RowBinary, gzip, one block. */
static int ch_insert_part(struct ch_store *s, const char *db, const char *batch_id,
			  const struct profile_row *rows, const size_t *idx, size_t n)
{
	struct ch_body b = {.rows = rows, .idx = idx, .n = n, .batch_id = batch_id};
	struct strbuf params = STRBUF_INIT, q = STRBUF_INIT;
	struct httpc_resp r = {0};
	struct ch_call c = {0};
	int rc;

	if (deflateInit2(&b.z, s->gzip_level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
		snprintf(s->base.errmsg, sizeof(s->base.errmsg), "gzip of %zu rows: out of memory",
			 n);
		return -ENOMEM;
	}
	sb_printf(&q, "INSERT INTO `%s`.in_process (", db);
	for (size_t i = 0; i < CH_NCOLS; i++)
		sb_printf(&q, "%s%s", i ? ", " : "", ch_cols[i].name);
	sb_puts(&q, ") FORMAT RowBinary");
	sb_puts(&params, "query=");
	ch_urlencode(&params, q.buf, q.len);
	/* one block, hence one part: the INSERT is atomic */
	sb_printf(&params, "&max_insert_block_size=%zu", n + 1);
	c.params = params.buf;
	c.on_send = ch_body_send;
	c.arg = &b;
	c.gzip = 1;
	rc = ch_http(s, &c, &r, s->base.errmsg, sizeof(s->base.errmsg));
	if (rc == -ECANCELED) {
		snprintf(s->base.errmsg, sizeof(s->base.errmsg), "gzip of %zu rows failed", n);
		rc = -EIO;
	}
	deflateEnd(&b.z);
	sb_free(&b.raw);
	sb_free(&r.body);
	sb_free(&params);
	sb_free(&q);
	return rc;
}

static int ch_cmp_str(const char *a, const char *b)
{
	return a == b ? 0 : strcmp(a ? a : "", b ? b : "");
}

/*
 * Order of a batch's rows: UTC hour (one INSERT each), then the table's sort key (service,
 * language, event type, time), then stack. A block that arrives in sort-key order is written
 * as it is (MergeTree checks, and skips its own sort and the gather of every column); ingest gives
 * the rows of one stack the same string, so equal stacks compare by pointer.
 */
static int ch_cmp_row(const void *a, const void *b, void *arg)
{
	const struct profile_row *ra = (const struct profile_row *)arg + *(const size_t *)a;
	const struct profile_row *rb = (const struct profile_row *)arg + *(const size_t *)b;
	int64_t ha = ra->time / 3600, hb = rb->time / 3600;
	int c;

	if (ha != hb)
		return ha < hb ? -1 : 1;
	if ((c = ch_cmp_str(ra->app_service, rb->app_service)) ||
	    (c = ch_cmp_str(ra->profile_language_type, rb->profile_language_type)) ||
	    (c = ch_cmp_str(ra->profile_event_type, rb->profile_event_type)))
		return c;
	if (ra->time != rb->time)
		return ra->time < rb->time ? -1 : 1;
	return ch_cmp_str(ra->profile_location_str, rb->profile_location_str);
}

/*
 * Which hours of the batch are already stored (an earlier attempt wrote them): present[g] = 1
 * for hour group g, whose rows are idx[first[g] .. first[g + 1]). Each hour was one atomic
 * INSERT, so one row of it tells about all of it; the probe looks for the batch id at the exact
 * sort key of the group's first row, which the primary key narrows to a granule or two per part.
 */
static int ch_probe_hours(struct ch_store *s, const char *db, const char *batch_id,
			  const struct profile_row *rows, const size_t *idx, const size_t *first,
			  size_t ngroups, int *present)
{
	struct strbuf sql = STRBUF_INIT, body = STRBUF_INIT;
	char *line, *save = NULL;
	int rc;

	sb_printf(&sql, "SELECT toUInt32(toStartOfHour(time)) AS h, count() FROM `%s`.in_process"
			" WHERE (",
		  db);
	for (size_t g = 0; g < ngroups; g++) {
		const struct profile_row *r = &rows[idx[first[g]]];

		sb_puts(&sql, g ? " OR (app_service = " : "(app_service = ");
		ch_quote_str(&sql, r->app_service);
		sb_puts(&sql, " AND profile_language_type = ");
		ch_quote_str(&sql, r->profile_language_type);
		sb_puts(&sql, " AND profile_event_type = ");
		ch_quote_str(&sql, r->profile_event_type);
		sb_printf(&sql, " AND time = toDateTime(%" PRId64 "))", r->time);
	}
	sb_puts(&sql, ") AND batch_id = ");
	ch_quote_str(&sql, batch_id);
	sb_puts(&sql, " GROUP BY h FORMAT TabSeparated");
	rc = ch_exec(s, sql.buf, &body, s->base.errmsg, sizeof(s->base.errmsg));
	for (line = rc == 0 ? strtok_r(body.buf, "\n", &save) : NULL; line;
	     line = strtok_r(NULL, "\n", &save)) {
		int64_t hour = strtoll(line, NULL, 10);

		for (size_t g = 0; g < ngroups; g++)
			if (rows[idx[first[g]]].time / 3600 * 3600 == hour)
				present[g] = 1;
	}
	sb_free(&sql);
	sb_free(&body);
	return rc;
}

static int ch_insert(struct store *base, int org, const char *batch_id,
		     const struct profile_row *rows, size_t n, int *duplicate)
{
	struct ch_store *s = (struct ch_store *)base;
	size_t *idx = NULL, *first = NULL, ngroups = 0, skipped = 0;
	char db[CH_DB_NAME_MAX + 8];
	int *present = NULL, rc;

	if (!batch_id || !*batch_id || strlen(batch_id) > CH_MAX_BATCH_ID) {
		snprintf(base->errmsg, sizeof(base->errmsg), "batch id must be 1..%d bytes",
			 CH_MAX_BATCH_ID);
		return -EINVAL;
	}
	if (n > CH_MAX_BATCH_ROWS) {
		snprintf(base->errmsg, sizeof(base->errmsg), "batch of %zu rows exceeds %d", n,
			 CH_MAX_BATCH_ROWS);
		return -EINVAL;
	}
	for (size_t i = 0; i < n; i++) {
		rc = ch_validate_row(s, &rows[i], i);
		if (rc < 0)
			return rc;
	}
	if (n == 0)
		return 0;
	rc = ch_ensure_schema(s, org, base->errmsg, sizeof(base->errmsg));
	if (rc < 0)
		return rc == -ENOENT ? -EAGAIN : rc;
	ch_org_db(s, org, db, sizeof(db));

	idx = malloc(n * sizeof(*idx));
	first = malloc((n + 1) * sizeof(*first));
	present = calloc(n, sizeof(*present));
	if (!idx || !first || !present) {
		rc = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < n; i++)
		idx[i] = i;
	qsort_r(idx, n, sizeof(*idx), ch_cmp_row, (void *)rows);
	for (size_t i = 0; i < n; i++)
		if (i == 0 || rows[idx[i]].time / 3600 != rows[idx[i - 1]].time / 3600)
			first[ngroups++] = i;
	first[ngroups] = n;

	rc = ch_probe_hours(s, db, batch_id, rows, idx, first, ngroups, present);
	if (rc < 0)
		goto fail;
	for (size_t g = 0; g < ngroups; g++) {
		if (present[g]) {
			skipped++; /* written by an earlier attempt */
			continue;
		}
		rc = ch_insert_part(s, db, batch_id, rows, idx + first[g], first[g + 1] - first[g]);
		if (rc < 0)
			goto fail;
	}
	*duplicate = skipped == ngroups;
	rc = 0;
	goto out;
fail:
	if (rc == -ENOENT) {
		/* someone dropped the database or a table: recreate it on the next attempt */
		ch_forget_schema(s, org);
		rc = -EAGAIN;
	} else if (rc == -EIO) {
		/* a statement error may be a table altered under us: check its columns again */
		ch_forget_schema(s, org);
	}
	log_warn("insert of batch %s (org %d, %zu rows): %s", batch_id, org, n, base->errmsg);
out:
	free(idx);
	free(first);
	free(present);
	return rc;
}

/* ---- reads ------------------------------------------------------------------------------- */

static double ch_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int64_t ch_clamp_time(int64_t t)
{
	return t < 0 ? 0 : t > UINT32_MAX ? UINT32_MAX : t;
}

/* The WHERE clause of a query; with_service adds app_service when q names one. */
static int ch_where(struct ch_store *s, const struct store_query *q, int with_service,
		    struct strbuf *sql)
{
	int rc;

	sb_printf(sql, " WHERE time >= toDateTime(%" PRId64 ") AND time <= toDateTime(%" PRId64 ")",
		  ch_clamp_time(q->time_start), ch_clamp_time(q->time_end));
	if (with_service && q->app_service) {
		sb_puts(sql, " AND app_service = ");
		ch_quote_str(sql, q->app_service);
	}
	sb_puts(sql, " AND profile_language_type = ");
	ch_quote_str(sql, q->language_type);
	sb_puts(sql, " AND profile_event_type = ");
	ch_quote_str(sql, q->event_type);
	if (q->filter) {
		sb_puts(sql, " AND ");
		rc = tagfilter_compile(q->filter, TF_CLICKHOUSE, sql, NULL);
		if (rc < 0) {
			snprintf(s->base.errmsg, sizeof(s->base.errmsg),
				 "tag_filter cannot be compiled for ClickHouse (%d)", rc);
			return rc;
		}
	}
	return 0;
}

static void ch_new_query_id(char *out, size_t outlen)
{
	unsigned char b[16];

	if (getrandom(b, sizeof(b), 0) != (ssize_t)sizeof(b)) {
		/* getrandom on Linux >= 3.17 does not fail for 16 bytes; keep ids unique anyway */
		static unsigned long seq;
		uint64_t t = (uint64_t)(ch_now() * 1e9) ^ __atomic_add_fetch(&seq, 1, __ATOMIC_RELAXED);

		memcpy(b, &t, 8);
		memcpy(b + 8, &t, 8);
	}
	b[6] = (b[6] & 0x0f) | 0x40;
	b[8] = (b[8] & 0x3f) | 0x80;
	snprintf(out, outlen,
		 "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
		 b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
		 b[15]);
}

static void ch_kill_query(struct ch_store *s, const char *query_id)
{
	char sql[128], err[256];

	snprintf(sql, sizeof(sql), "KILL QUERY WHERE query_id = '%s' ASYNC", query_id);
	if (ch_exec(s, sql, NULL, err, sizeof(err)) < 0)
		log_warn("cancel of query %s: %s", query_id, err);
	else
		log_info("query %s cancelled (client gone)", query_id);
}

struct ch_stream {
	struct ch_store *s;
	const struct store_query *q;
	store_stack_cb cb;
	void *cb_arg;
	struct strbuf line;  /* a partial line carried over between chunks */
	struct strbuf plain; /* decompressed stack */
	ZSTD_DCtx *zd;
	uint64_t rows;       /* rows seen (to detect the LIMIT max+1 overflow) */
	uint64_t delivered;
	int truncated;
	int cb_ret;          /* non-zero: the callback asked to stop */
	int bad;             /* a line did not parse: ClickHouse reported an error mid-stream */
	int error_status;    /* the response is an error text, buffered in line */
};

static int ch_decompress(struct ch_stream *st, const char *src, size_t len)
{
	ZSTD_inBuffer in = {src, len, 0};
	size_t ret = 1;

	if (!st->zd) {
		st->zd = ZSTD_createDCtx();
		if (!st->zd)
			return -ENOMEM;
	}
	ZSTD_DCtx_reset(st->zd, ZSTD_reset_session_only);
	sb_reset(&st->plain);
	while (in.pos < in.size || ret != 0) {
		ZSTD_outBuffer out;

		if (st->plain.len >= CH_MAX_STACK_BYTES)
			return -EFBIG;
		sb_grow(&st->plain, 64 << 10);
		out.dst = st->plain.buf + st->plain.len;
		out.size = st->plain.cap - 1 - st->plain.len;
		out.pos = 0;
		ret = ZSTD_decompressStream(st->zd, &out, &in);
		if (ZSTD_isError(ret))
			return -EBADMSG;
		st->plain.len += out.pos;
		if (out.pos == 0 && in.pos == in.size && ret != 0)
			return -EBADMSG; /* truncated frame */
	}
	st->plain.buf[st->plain.len] = '\0';
	return 0;
}

/* One row: stack \t compression_algo \t value. */
static int ch_stream_row(struct ch_stream *st, char *line, size_t len)
{
	char *t1 = memchr(line, '\t', len), *t2, *end;
	const char *stack;
	size_t slen;
	int64_t value;

	t2 = t1 ? memchr(t1 + 1, '\t', len - (size_t)(t1 + 1 - line)) : NULL;
	if (!t2)
		return -EBADMSG;
	line[len] = '\0';
	errno = 0;
	value = strtoll(t2 + 1, &end, 10);
	if (errno || end == t2 + 1 || *end)
		return -EBADMSG;
	st->rows++;
	if (st->q->max_stacks && st->rows > st->q->max_stacks) {
		st->truncated = 1;
		return 0;
	}
	slen = ch_tsv_unescape(line, (size_t)(t1 - line));
	stack = line;
	*t2 = '\0';
	if (strcmp(t1 + 1, "zstd") == 0) {
		int rc = ch_decompress(st, line, slen);

		if (rc < 0) {
			log_warn("a zstd stack (%zu bytes) does not decompress (%d); skipped", slen,
				 rc);
			return 0;
		}
		stack = st->plain.buf;
		slen = st->plain.len;
	}
	st->delivered++;
	st->cb_ret = st->cb(st->cb_arg, stack, slen, value);
	return 0;
}

static int ch_stream_data(void *arg, const char *data, size_t len)
{
	struct ch_stream *st = arg;

	if (st->cb_ret || st->bad)
		return 1;
	while (len) {
		const char *nl = memchr(data, '\n', len);
		size_t take = nl ? (size_t)(nl - data) : len;

		if (st->line.len + take > CH_MAX_LINE) {
			st->bad = 1;
			return 1;
		}
		sb_append(&st->line, data, take);
		if (!nl)
			return 0;
		data += take + 1;
		len -= take + 1;
		if (ch_stream_row(st, st->line.buf, st->line.len) < 0) {
			/* an exception text, not a row: keep it (and a little more) for the error */
			st->bad = 1;
			sb_putc(&st->line, ' ');
			sb_append(&st->line, data, len < 512 ? len : 512);
			return 1;
		}
		sb_reset(&st->line);
		if (st->cb_ret)
			return 1;
	}
	return 0;
}

/* Maps an exception that arrived in the streamed body, like ch_result does for buffered ones. */
static int ch_stream_error(struct ch_stream *st)
{
	struct ch_store *s = st->s;
	const char *text = st->line.buf ? st->line.buf : "";
	long code = ch_exception_code(text);
	size_t n = strlen(text);

	snprintf(s->base.errmsg, sizeof(s->base.errmsg), "clickhouse %s: %s%.*s", s->hostport,
		 code < 0 ? "bad result row: " : "", (int)(n > 400 ? 400 : n), text);
	if (code == 192 || code == 193 || code == 194 || code == 516) {
		snprintf(s->base.errmsg, sizeof(s->base.errmsg),
			 "clickhouse %s: authentication failed for user '%s'", s->hostport,
			 s->has_user ? s->user : "default");
		return -EACCES;
	}
	if (code == 60 || code == 81)
		return -ENOENT;
	if (code < 0 || ch_code_permanent(code))
		return -EIO;
	return -EAGAIN;
}

static int ch_stream_abort(void *arg)
{
	struct ch_stream *st = arg;

	return st->q->should_abort && st->q->should_abort(st->q->abort_arg);
}

static void ch_info_fill(struct ch_store *s, struct store_query_info *info, const char *sql,
			 double t0)
{
	if (!info)
		return;
	sb_reset(&info->sql);
	sb_puts(&info->sql, sql);
	info->seconds = ch_now() - t0;
	snprintf(info->engine, sizeof(info->engine), "clickhouse");
	snprintf(info->host, sizeof(info->host), "%.*s", (int)sizeof(info->host) - 1, s->hostport);
}

static void ch_query_params(const struct store_query *q, const char *query_id, struct strbuf *p)
{
	sb_printf(p, "query_id=%s", query_id);
	if (q->max_seconds > 0)
		sb_printf(p, "&max_execution_time=%ld", (long)ceil(q->max_seconds));
}

static int ch_query_stacks(struct store *base, int org, const struct store_query *q,
			   store_stack_cb cb, void *arg, struct store_query_info *info)
{
	struct ch_store *s = (struct ch_store *)base;
	struct strbuf sql = STRBUF_INIT, where = STRBUF_INIT, params = STRBUF_INIT;
	struct ch_stream st = {.s = s, .q = q, .cb = cb, .cb_arg = arg};
	struct httpc_resp r = {0};
	struct ch_call c = {0};
	char db[CH_DB_NAME_MAX + 8], qid[40];
	double t0 = ch_now();
	int rc;

	ch_org_db(s, org, db, sizeof(db));
	rc = ch_where(s, q, 1, &where);
	if (rc < 0)
		goto out;
	if (q->gauge)
		sb_printf(&sql,
			  "SELECT profile_location_str, compression_algo, sum(v) AS value FROM ("
			  "SELECT profile_location_str, compression_algo,"
			  " argMax(profile_value, (time, profile_create_timestamp)) AS v"
			  " FROM `%s`.in_process%s"
			  " GROUP BY profile_location_str, compression_algo, agent, process_id)",
			  db, where.buf);
	else
		sb_printf(&sql,
			  "SELECT profile_location_str, compression_algo, sum(profile_value) AS value"
			  " FROM `%s`.in_process%s",
			  db, where.buf);
	/* the biggest stacks survive a limit, and ties break the same way every time */
	sb_puts(&sql, " GROUP BY profile_location_str, compression_algo"
		      " ORDER BY value DESC, profile_location_str");
	if (q->max_stacks)
		sb_printf(&sql, " LIMIT %" PRIu64, q->max_stacks + 1);
	sb_puts(&sql, " FORMAT TabSeparated");

	ch_new_query_id(qid, sizeof(qid));
	ch_query_params(q, qid, &params);
	c.params = params.buf;
	c.body = sql.buf;
	c.body_len = sql.len;
	c.timeout_ms = q->max_seconds > 0 ? (long)(q->max_seconds * 1000) + 5000 : CH_QUERY_TIMEOUT_MS;
	c.on_data = ch_stream_data;
	c.should_abort = ch_stream_abort;
	c.arg = &st;
	rc = ch_http(s, &c, &r, base->errmsg, sizeof(base->errmsg));
	if (st.cb_ret) {
		rc = st.cb_ret;
	} else if (st.bad || (rc == 0 && st.line.len)) {
		rc = ch_stream_error(&st);
	} else if (rc == -ECANCELED && ch_stream_abort(&st)) {
		ch_kill_query(s, qid);
		snprintf(base->errmsg, sizeof(base->errmsg), "query cancelled by the client");
	}
	if (rc == -ENOENT)
		rc = 0; /* the organisation has no data yet */
	if (info) {
		info->truncated = st.truncated;
		info->n_stacks = st.delivered;
	}
out:
	ch_info_fill(s, info, sql.len ? sql.buf : where.buf, t0);
	if (rc < 0 && rc != -ECANCELED)
		log_warn("query (org %d): %s", org, base->errmsg);
	ZSTD_freeDCtx(st.zd);
	sb_free(&st.line);
	sb_free(&st.plain);
	sb_free(&r.body);
	sb_free(&sql);
	sb_free(&where);
	sb_free(&params);
	return rc;
}

static int ch_list_services(struct store *base, int org, const struct store_query *q, size_t max,
			    char ***names, size_t *n, struct store_query_info *info)
{
	struct ch_store *s = (struct ch_store *)base;
	struct strbuf sql = STRBUF_INIT, params = STRBUF_INIT;
	struct httpc_resp r = {0};
	struct ch_call c = {0};
	char db[CH_DB_NAME_MAX + 8], qid[40];
	char **out = NULL;
	size_t cnt = 0, cap = 0;
	double t0 = ch_now();
	int rc;

	ch_org_db(s, org, db, sizeof(db));
	sb_printf(&sql, "SELECT app_service FROM `%s`.in_process", db);
	rc = ch_where(s, q, 0, &sql);
	if (rc < 0)
		goto out;
	sb_puts(&sql, " GROUP BY app_service ORDER BY app_service");
	if (max)
		sb_printf(&sql, " LIMIT %zu", max);
	sb_puts(&sql, " FORMAT TabSeparated");
	ch_new_query_id(qid, sizeof(qid));
	ch_query_params(q, qid, &params);
	c.params = params.buf;
	c.body = sql.buf;
	c.body_len = sql.len;
	c.timeout_ms = q->max_seconds > 0 ? (long)(q->max_seconds * 1000) + 5000 : CH_QUERY_TIMEOUT_MS;
	rc = ch_http(s, &c, &r, base->errmsg, sizeof(base->errmsg));
	if (rc == -ENOENT) {
		rc = 0;
		goto out;
	}
	if (rc < 0)
		goto out;
	for (size_t i = 0, start = 0; i < r.body.len; i++) {
		if (r.body.buf[i] != '\n')
			continue;
		if (cnt == cap) {
			cap = cap ? cap * 2 : 16;
			out = realloc(out, cap * sizeof(*out));
			if (!out)
				abort();
		}
		out[cnt] = strndup(r.body.buf + start, i - start);
		if (!out[cnt])
			abort();
		out[cnt][ch_tsv_unescape(out[cnt], i - start)] = '\0';
		cnt++;
		start = i + 1;
	}
	*names = out;
	*n = cnt;
out:
	ch_info_fill(s, info, sql.buf, t0);
	if (info)
		info->n_stacks = 0;
	if (rc < 0)
		log_warn("list services (org %d): %s", org, base->errmsg);
	sb_free(&r.body);
	sb_free(&sql);
	sb_free(&params);
	return rc;
}

/* ---- health, retention, open/close ------------------------------------------------------- */

static int ch_health(struct store *base, char *err, size_t errlen)
{
	struct ch_store *s = (struct ch_store *)base;
	struct strbuf out = STRBUF_INIT;
	int rc;

	rc = ch_exec(s, "SELECT 1", &out, err, errlen);
	if (rc == 0 && strncmp(out.buf, "1", 1) != 0) {
		snprintf(err, errlen, "clickhouse %s: unexpected answer to SELECT 1", s->hostport);
		rc = -EIO;
	}
	sb_free(&out);
	/* healthy means ready to write: version known, schema of organisation 1 in place */
	if (rc == 0)
		rc = ch_ensure_schema(s, 1, err, errlen);
	return rc;
}

/*
 * On servers without TTL: drop every hour partition of in_process that ended before
 * now - retention, in the main database and every organisation's.
 */
static void ch_drop_expired(struct ch_store *s)
{
	struct strbuf sql = STRBUF_INIT, body = STRBUF_INIT, pattern = STRBUF_INIT;
	char err[512], *line, *save = NULL;
	int64_t cutoff = (int64_t)time(NULL) - s->retention_s;

	sb_printf(&pattern, "^([0-9]{4}_)?%s$", s->db);
	sb_puts(&sql, "SELECT database, table, partition_id FROM system.parts WHERE active"
		      " AND table = 'in_process' AND match(database, ");
	ch_quote_str(&sql, pattern.buf);
	sb_puts(&sql, ") GROUP BY database, table, partition_id FORMAT TabSeparated");
	if (ch_exec(s, sql.buf, &body, err, sizeof(err)) < 0) {
		log_warn("retention: %s", err);
		goto out;
	}
	for (line = strtok_r(body.buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char db[CH_DB_NAME_MAX + 8], table[16], id[32], *end;
		int64_t start;

		if (sscanf(line, "%65[^\t]\t%15[^\t]\t%31s", db, table, id) != 3)
			continue;
		start = strtoll(id, &end, 10);
		if (*end || end == id)
			continue; /* not a partitioning ember made */
		if (start + 3600 > cutoff)
			continue;
		sb_reset(&sql);
		sb_printf(&sql, "ALTER TABLE `%s`.%s DROP PARTITION ID '%s'", db, table, id);
		if (ch_exec(s, sql.buf, NULL, err, sizeof(err)) < 0)
			log_warn("retention: %s", err);
		else
			log_info("retention: dropped %s.%s partition %s (older than %lds)", db,
				 table, id, s->retention_s);
	}
out:
	sb_free(&sql);
	sb_free(&body);
	sb_free(&pattern);
}

static void *ch_retention_main(void *arg)
{
	struct ch_store *s = arg;
	char err[512];

	pthread_mutex_lock(&s->lock);
	while (!s->stopping) {
		struct timespec until;
		int ttl;

		pthread_mutex_unlock(&s->lock);
		if (ch_detect_version(s, err, sizeof(err)) == 0) {
			pthread_mutex_lock(&s->lock);
			ttl = s->feat.ttl;
			pthread_mutex_unlock(&s->lock);
			if (!ttl)
				ch_drop_expired(s);
		}
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += CH_RETENTION_CHECK_S;
		pthread_mutex_lock(&s->lock);
		while (!s->stopping &&
		       pthread_cond_timedwait(&s->stop_cond, &s->lock, &until) != ETIMEDOUT)
			;
	}
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

static void ch_close(struct store *base)
{
	struct ch_store *s = (struct ch_store *)base;

	if (s->retention_started) {
		pthread_mutex_lock(&s->lock);
		s->stopping = 1;
		pthread_cond_signal(&s->stop_cond);
		pthread_mutex_unlock(&s->lock);
		pthread_join(s->retention_thread, NULL);
	}
	pthread_cond_destroy(&s->stop_cond);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

static const struct store_ops ch_ops = {
	.name = "clickhouse",
	.insert = ch_insert,
	.query_stacks = ch_query_stacks,
	.list_services = ch_list_services,
	.health = ch_health,
	.close = ch_close,
};

/* "72h", "3d", "90m", "3600s", "3600" (seconds) → seconds; -EINVAL otherwise. */
static int ch_parse_duration(const char *text, size_t len, long *out)
{
	char buf[32], *end;
	long v, mul = 1;

	if (len == 0 || len >= sizeof(buf))
		return -EINVAL;
	memcpy(buf, text, len);
	buf[len] = '\0';
	errno = 0;
	v = strtol(buf, &end, 10);
	if (errno || end == buf || v < 0)
		return -EINVAL;
	if (*end == 'd')
		mul = 86400;
	else if (*end == 'h')
		mul = 3600;
	else if (*end == 'm')
		mul = 60;
	else if (*end && *end != 's')
		return -EINVAL;
	if (*end && end[1])
		return -EINVAL;
	if (v > LONG_MAX / mul)
		return -EINVAL;
	*out = v * mul;
	return 0;
}

/* Whether HOST of "HOST:PORT" names this machine: localhost, 127.0.0.0/8 or [::1]. */
static int ch_host_is_loopback(const char *hostport)
{
	size_t n = strcspn(hostport, ":");

	return strncmp(hostport, "[::1]:", 6) == 0 || strncmp(hostport, "127.", 4) == 0 ||
	       (n == 9 && strncmp(hostport, "localhost", 9) == 0);
}

static int ch_parse_url(struct ch_store *s, const char *url, char *err, size_t errlen)
{
	const char *p = url + strlen("clickhouse://"), *at, *slash, *qm, *colon, *hp_end;
	size_t hp_len;

	snprintf(s->db, sizeof(s->db), "%s", CH_DEFAULT_DATABASE);
	s->retention_s = CH_DEFAULT_RETENTION_S;
	s->gzip_level = -1;
	qm = strchr(p, '?');
	slash = strchr(p, '/');
	if (slash && qm && slash > qm)
		slash = NULL;
	hp_end = slash ? slash : qm ? qm : p + strlen(p);
	at = memrchr(p, '@', (size_t)(hp_end - p));
	if (at) {
		colon = memchr(p, ':', (size_t)(at - p));
		if (ch_urldecode(p, (size_t)((colon ? colon : at) - p), s->user, sizeof(s->user)) <
			    0 ||
		    (colon && ch_urldecode(colon + 1, (size_t)(at - colon - 1), s->password,
					   sizeof(s->password)) < 0)) {
			snprintf(err, errlen, "clickhouse URL: bad user or password encoding");
			return -EINVAL;
		}
		s->has_user = s->user[0] != '\0';
		p = at + 1;
	}
	hp_len = (size_t)(hp_end - p);
	colon = memrchr(p, ':', hp_len);
	if (hp_len == 0 || hp_len >= sizeof(s->hostport) || !colon || colon + 1 == hp_end ||
	    strspn(colon + 1, "0123456789") != (size_t)(hp_end - colon - 1)) {
		snprintf(err, errlen, "clickhouse URL '%s': expected clickhouse://"
				      "[USER[:PASSWORD]@]HOST:PORT[/DATABASE][?retention=72h&gzip=1]",
			 url);
		return -EINVAL;
	}
	memcpy(s->hostport, p, hp_len);
	s->hostport[hp_len] = '\0';
	snprintf(s->base_url, sizeof(s->base_url), "http://%s/", s->hostport);
	if (slash) {
		size_t dlen = (size_t)((qm ? qm : slash + strlen(slash)) - slash - 1);

		if (dlen) {
			if (dlen > CH_DB_NAME_MAX ||
			    strspn(slash + 1, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
					      "0123456789_") < dlen) {
				snprintf(err, errlen,
					 "clickhouse URL: database name must be 1..%d of [A-Za-z0-9_]",
					 CH_DB_NAME_MAX);
				return -EINVAL;
			}
			memcpy(s->db, slash + 1, dlen);
			s->db[dlen] = '\0';
		}
	}
	for (const char *opt = qm ? qm + 1 : NULL; opt && *opt;) {
		const char *amp = strchr(opt, '&'), *eq;
		size_t olen = amp ? (size_t)(amp - opt) : strlen(opt);

		eq = memchr(opt, '=', olen);
		if (eq && (size_t)(eq - opt) == 9 && strncmp(opt, "retention", 9) == 0) {
			if (ch_parse_duration(eq + 1, olen - 10, &s->retention_s) < 0) {
				snprintf(err, errlen, "clickhouse URL: bad retention '%.*s'"
						      " (e.g. 72h, 3d, 0 = forever)",
					 (int)(olen - 10), eq + 1);
				return -EINVAL;
			}
		} else if (eq && (size_t)(eq - opt) == 4 && strncmp(opt, "gzip", 4) == 0) {
			if (olen != 6 || eq[1] < '0' || eq[1] > '9') {
				snprintf(err, errlen, "clickhouse URL: bad gzip level '%.*s' (0..9)",
					 (int)(olen - 5), eq + 1);
				return -EINVAL;
			}
			s->gzip_level = eq[1] - '0';
		} else {
			snprintf(err, errlen, "clickhouse URL: unknown option '%.*s'", (int)olen,
				 opt);
			return -EINVAL;
		}
		opt = amp ? amp + 1 : NULL;
	}
	if (s->gzip_level < 0)
		s->gzip_level = ch_host_is_loopback(s->hostport) ? CH_GZIP_LEVEL_LOOPBACK
								 : CH_GZIP_LEVEL_REMOTE;
	return 0;
}

int store_clickhouse_open(const char *url, struct store **out, char *err, size_t errlen)
{
	struct ch_store *s;
	char herr[512];
	int rc;

	*out = NULL;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->base.ops = &ch_ops;
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->stop_cond, NULL);
	rc = ch_parse_url(s, url, err, errlen);
	if (rc < 0) {
		ch_close(&s->base);
		return rc;
	}
	ch_features_of(18, 16, &s->feat);
	/*
	 * Neither an unreachable server nor refused credentials is fatal (store.h): the server
	 * starts, health says why, writes answer -EAGAIN/-EACCES, and the schema is created on the
	 * first call that gets through (a user created later, a ClickHouse started later).
	 */
	rc = ch_ensure_schema(s, 1, herr, sizeof(herr));
	if (rc < 0)
		log_warn("%s (will retry)", herr);
	if (s->retention_s > 0) {
		rc = pthread_create(&s->retention_thread, NULL, ch_retention_main, s);
		if (rc) {
			snprintf(err, errlen, "clickhouse: retention thread: %s", strerror(rc));
			ch_close(&s->base);
			return -rc;
		}
		s->retention_started = 1;
	}
	*out = &s->base;
	return 0;
}
