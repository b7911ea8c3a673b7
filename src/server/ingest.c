/*
 * ingest — see ingest.h. The body is read by a streaming decoder written for the protocol's one
 * shape (no document tree): strings are unescaped into one arena per batch and the rows point
 * into it; each entry of the 'stacks' dictionary is decoded once, so every row naming it shares
 * one pointer (the store memoizes stacks by address). Row keys are looked up by binary search in
 * a sorted table whose entries say where in struct profile_row the value goes. The whole
 * document is read before it is judged, so errors come in the order the protocol gives them:
 * syntax (with line and column), then batch fields, then the first bad row.
 */
#define LOG_MODULE "ingest"
#include "server/ingest.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/types.h>
#include <time.h>

#include "common/log.h"
#include "common/wire.h"
#include "server/api_profile.h"
#include "server/metrics.h"
#include "store/store.h"

/* The largest time whose microseconds (the default profile_create_timestamp) fit an int64. */
#define INGEST_MAX_TIME (INT64_MAX / 1000000)
/*
 * Row string values up to INTERN_MAX_LEN bytes (service, host, unit ...) are stored once per
 * batch: every row naming the same text gets the same pointer, which keeps them out of the
 * arena and lets the store recognise a repeated context by its pointers. At most
 * INTERN_ENTRIES * 3/4 distinct texts are shared; the rest are copied as before.
 */
#define INTERN_ENTRIES 4096 /* slots of the per-batch table, 16 bytes each */
#define INTERN_MAX_LEN 128

enum field_kind { F_STR, F_INT, F_STACK, F_TAGS };

struct row_field {
	const char *key;
	size_t len; /* strlen(key) */
	enum field_kind kind;
	size_t offset; /* into struct profile_row */
};

#define RF(name, kind) {#name, sizeof(#name) - 1, kind, offsetof(struct profile_row, name)}
/* Sorted by key for bsearch. */
static const struct row_field row_fields[] = {
	RF(agent, F_STR),
	RF(app_instance, F_STR),
	RF(app_service, F_STR),
	RF(container_id, F_STR),
	RF(host, F_STR),
	RF(host_ip, F_STR),
	RF(pod, F_STR),
	RF(pod_cluster, F_STR),
	RF(pod_group, F_STR),
	RF(pod_node, F_STR),
	RF(pod_ns, F_STR),
	RF(process_id, F_INT),
	RF(process_start_time, F_INT),
	RF(profile_create_timestamp, F_INT),
	RF(profile_event_type, F_STR),
	RF(profile_id, F_STR),
	RF(profile_language_type, F_STR),
	RF(profile_location_str, F_STR),
	RF(profile_value, F_INT),
	RF(profile_value_unit, F_STR),
	RF(span_name, F_STR),
	{"stack", 5, F_STACK, 0},
	{"tags", 4, F_TAGS, 0},
	RF(time, F_INT),
	RF(trace_id, F_STR),
};
#undef RF
#define N_ROW_FIELDS (sizeof(row_fields) / sizeof(row_fields[0]))

struct row_key {
	const char *s;
	size_t len;
};

/* strcmp's order, for keys that are not NUL-terminated (no key holds a NUL: it is refused). */
static int row_field_cmp(const void *key, const void *elem)
{
	const struct row_key *k = key;
	const struct row_field *f = elem;
	int c = memcmp(k->s, f->key, k->len < f->len ? k->len : f->len);

	return c ? c : (k->len > f->len) - (k->len < f->len);
}

/* What a JSON value is, as the error messages name it. */
enum jkind { K_NONE, K_OBJ, K_ARR, K_STR, K_INT, K_REAL, K_BOOL, K_NULL };

static const char *jkind_name(enum jkind k)
{
	switch (k) {
	case K_OBJ: return "an object";
	case K_ARR: return "an array";
	case K_STR: return "a string";
	case K_INT: return "an integer";
	case K_REAL: return "a fractional number";
	case K_BOOL: return "a boolean";
	default: return "null";
	}
}

/* A scalar value as read; compound values are skipped and only their kind is kept. */
struct jval {
	enum jkind kind;
	const char *s; /* K_STR: NUL-terminated, in the arena */
	int64_t i;     /* K_INT */
};

/*
 * The parser: a cursor over the body and the batch's string arena. Every decoded string is at
 * most as long as its JSON text including the quotes, so an arena of len + 1 bytes holds all of
 * them; keys and skipped strings are decoded at the arena's top and rolled back.
 */
struct jp {
	const char *start, *p, *end;
	char *arena;
	size_t alen, acap;
	const char *errpos; /* syntax error: where, and what */
	char errmsg[128];
};

/* Byte classes inside a string: 0 copy, 1 quote, 2 backslash, 3 control, 4 non-ASCII. */
static const unsigned char str_class[256] = {
	[0x00 ... 0x1f] = 3, ['"'] = 1, ['\\'] = 2, [0x80 ... 0xff] = 4,
};

__attribute__((format(printf, 3, 4))) static int jp_fail(struct jp *jp, const char *at,
							   const char *fmt, ...)
{
	va_list ap;

	if (!jp->errpos) {
		jp->errpos = at;
		va_start(ap, fmt);
		vsnprintf(jp->errmsg, sizeof(jp->errmsg), fmt, ap);
		va_end(ap);
	}
	return -1;
}

static inline void jp_ws(struct jp *jp)
{
	const char *p = jp->p;

	while (p < jp->end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
		p++;
	jp->p = p;
}

/* The next non-blank character, or 0 at the end of input. */
static inline char jp_peek(struct jp *jp)
{
	jp_ws(jp);
	return jp->p < jp->end ? *jp->p : 0;
}

static int jp_expect(struct jp *jp, char c, const char *what)
{
	if (jp_peek(jp) != c || jp->p == jp->end) {
		if (jp->p == jp->end)
			return jp_fail(jp, jp->p, "premature end of input, %s expected", what);
		return jp_fail(jp, jp->p, "%s expected", what);
	}
	jp->p++;
	return 0;
}

static int hex4(const unsigned char *p, uint32_t *out)
{
	uint32_t v = 0;

	for (int k = 0; k < 4; k++) {
		unsigned c = p[k];

		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= c - '0';
		else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f')
			v |= (c | 0x20) - 'a' + 10;
		else
			return -1;
	}
	*out = v;
	return 0;
}

/* Length of the valid UTF-8 sequence at p (lead byte >= 0x80), or 0 if it is not valid. */
static size_t utf8_len(const unsigned char *p, const unsigned char *end)
{
	unsigned c = p[0], lo = 0x80, hi = 0xbf;
	size_t n;

	if (c >= 0xc2 && c <= 0xdf)
		n = 2;
	else if (c >= 0xe0 && c <= 0xef)
		n = 3, lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
	else if (c >= 0xf0 && c <= 0xf4)
		n = 4, lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
	else
		return 0;
	if ((size_t)(end - p) < n || p[1] < lo || p[1] > hi)
		return 0;
	for (size_t k = 2; k < n; k++)
		if ((p[k] & 0xc0) != 0x80)
			return 0;
	return n;
}

static char *utf8_put(char *d, uint32_t cp)
{
	if (cp < 0x80) {
		*d++ = (char)cp;
	} else if (cp < 0x800) {
		*d++ = (char)(0xc0 | cp >> 6);
		*d++ = (char)(0x80 | (cp & 0x3f));
	} else if (cp < 0x10000) {
		*d++ = (char)(0xe0 | cp >> 12);
		*d++ = (char)(0x80 | (cp >> 6 & 0x3f));
		*d++ = (char)(0x80 | (cp & 0x3f));
	} else {
		*d++ = (char)(0xf0 | cp >> 18);
		*d++ = (char)(0x80 | (cp >> 12 & 0x3f));
		*d++ = (char)(0x80 | (cp >> 6 & 0x3f));
		*d++ = (char)(0x80 | (cp & 0x3f));
	}
	return d;
}

/* Decodes the string at the cursor (on its opening quote) to the arena's top. */
static int jp_string(struct jp *jp, const char **out)
{
	const unsigned char *q = (const unsigned char *)jp->p + 1, *s = q;
	const unsigned char *end = (const unsigned char *)jp->end;
	char *dst = jp->arena + jp->alen, *d = dst;

	for (;;) {
		unsigned c;
		uint32_t cp, lo;
		size_t n;

		while (q < end && !str_class[*q])
			*d++ = (char)*q++;
		if (q == end)
			return jp_fail(jp, jp->end, "premature end of input in a string");
		c = *q;
		switch (str_class[c]) {
		case 1:
			if ((size_t)(d - dst) > INGEST_MAX_STRING)
				return jp_fail(jp, (const char *)s - 1,
					       "string longer than %d bytes", INGEST_MAX_STRING);
			*d++ = 0;
			jp->alen += (size_t)(d - dst);
			jp->p = (const char *)q + 1;
			*out = dst;
			return 0;
		case 3:
			return jp_fail(jp, (const char *)q, "control character 0x%x in a string", c);
		case 4:
			n = utf8_len(q, end);
			if (!n)
				return jp_fail(jp, (const char *)q, "unable to decode byte 0x%x", c);
			memcpy(d, q, n);
			d += n;
			q += n;
			continue;
		}
		/* a backslash */
		if (end - q < 2)
			return jp_fail(jp, jp->end, "premature end of input in a string");
		c = q[1];
		q += 2;
		switch (c) {
		case '"': case '\\': case '/': *d++ = (char)c; continue;
		case 'b': *d++ = '\b'; continue;
		case 'f': *d++ = '\f'; continue;
		case 'n': *d++ = '\n'; continue;
		case 'r': *d++ = '\r'; continue;
		case 't': *d++ = '\t'; continue;
		case 'u': break;
		default:
			return jp_fail(jp, (const char *)q - 2, "invalid escape '\\%c'", c);
		}
		if (end - q < 4 || hex4(q, &cp) < 0)
			return jp_fail(jp, (const char *)q - 2, "invalid \\u escape");
		q += 4;
		if (cp == 0)
			return jp_fail(jp, (const char *)q - 6, "\\u0000 is not allowed");
		if (cp >= 0xdc00 && cp <= 0xdfff)
			return jp_fail(jp, (const char *)q - 6, "invalid Unicode '\\u%04X'", cp);
		if (cp >= 0xd800 && cp <= 0xdbff) {
			if (end - q < 6 || q[0] != '\\' || q[1] != 'u' || hex4(q + 2, &lo) < 0 ||
			    lo < 0xdc00 || lo > 0xdfff)
				return jp_fail(jp, (const char *)q - 6,
					       "invalid Unicode '\\u%04X': no low surrogate", cp);
			q += 6;
			cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
		}
		d = utf8_put(d, cp);
	}
}

/* A number: K_INT with its value, or K_REAL (fraction or exponent). */
static int jp_number(struct jp *jp, struct jval *v)
{
	const char *p = jp->p, *s = p, *end = jp->end;
	int neg = 0;
	uint64_t u = 0;
	int over = 0;

	if (*p == '-')
		neg = 1, p++;
	if (p == end || *p < '0' || *p > '9')
		return jp_fail(jp, s, "invalid token");
	if (*p == '0' && p + 1 < end && p[1] >= '0' && p[1] <= '9')
		return jp_fail(jp, s, "invalid token: leading zero");
	while (p < end && *p >= '0' && *p <= '9') {
		unsigned dg = (unsigned)(*p++ - '0');

		if (u > (UINT64_MAX - dg) / 10)
			over = 1;
		else
			u = u * 10 + dg;
	}
	v->kind = K_INT;
	if (p < end && *p == '.') {
		p++;
		if (p == end || *p < '0' || *p > '9')
			return jp_fail(jp, s, "invalid token: digits expected after '.'");
		while (p < end && *p >= '0' && *p <= '9')
			p++;
		v->kind = K_REAL;
	}
	if (p < end && (*p == 'e' || *p == 'E')) {
		p++;
		if (p < end && (*p == '+' || *p == '-'))
			p++;
		if (p == end || *p < '0' || *p > '9')
			return jp_fail(jp, s, "invalid token: digits expected in the exponent");
		while (p < end && *p >= '0' && *p <= '9')
			p++;
		v->kind = K_REAL;
	}
	if (v->kind == K_INT) {
		if (over || u > (uint64_t)INT64_MAX + neg)
			return jp_fail(jp, s, neg ? "too big negative integer" : "too big integer");
		v->i = neg ? (int64_t)(0 - u) : (int64_t)u;
	}
	jp->p = p;
	return 0;
}

static int jp_literal(struct jp *jp, const char *word, size_t n)
{
	if ((size_t)(jp->end - jp->p) < n || memcmp(jp->p, word, n) != 0)
		return jp_fail(jp, jp->p, "invalid token");
	jp->p += n;
	return 0;
}

static int jp_value(struct jp *jp, struct jval *v, int depth);

/* Skips an object or array (the cursor on its bracket), checking its syntax. */
static int jp_skip_compound(struct jp *jp, int depth)
{
	char close = *jp->p == '{' ? '}' : ']';
	size_t mark = jp->alen;
	struct jval v;
	const char *k;

	if (depth > INGEST_MAX_DEPTH)
		return jp_fail(jp, jp->p, "maximum nesting depth of %d exceeded", INGEST_MAX_DEPTH);
	jp->p++;
	if (jp_peek(jp) == close) {
		jp->p++;
		return 0;
	}
	for (;;) {
		if (close == '}') {
			if (jp_peek(jp) != '"')
				return jp_fail(jp, jp->p, "string or '}' expected");
			if (jp_string(jp, &k) < 0 || jp_expect(jp, ':', "':'") < 0)
				return -1;
		}
		if (jp_value(jp, &v, depth + 1) < 0)
			return -1;
		jp->alen = mark;
		switch (jp_peek(jp)) {
		case ',':
			jp->p++;
			continue;
		default:
			if (jp->p < jp->end && *jp->p == close) {
				jp->p++;
				return 0;
			}
			return jp_fail(jp, jp->p, close == '}' ? "',' or '}' expected"
							    : "',' or ']' expected");
		}
	}
}

/* Reads any value; objects and arrays are skipped (kind only). depth = that of the value. */
static int jp_value(struct jp *jp, struct jval *v, int depth)
{
	switch (jp_peek(jp)) {
	case '"':
		v->kind = K_STR;
		return jp_string(jp, &v->s);
	case '{':
		v->kind = K_OBJ;
		return jp_skip_compound(jp, depth);
	case '[':
		v->kind = K_ARR;
		return jp_skip_compound(jp, depth);
	case 't':
		v->kind = K_BOOL;
		return jp_literal(jp, "true", 4);
	case 'f':
		v->kind = K_BOOL;
		return jp_literal(jp, "false", 5);
	case 'n':
		v->kind = K_NULL;
		return jp_literal(jp, "null", 4);
	case 0:
		if (jp->p == jp->end)
			return jp_fail(jp, jp->p, "premature end of input, a value expected");
		return jp_fail(jp, jp->p, "unexpected character 0x0");
	default:
		if (*jp->p == '-' || (*jp->p >= '0' && *jp->p <= '9'))
			return jp_number(jp, v);
		return jp_fail(jp, jp->p, "invalid token");
	}
}

/*
 * Iterates an object's members: jp_member_start() is called on '{' or after a member's value;
 * returns 1 with the cursor on the next key's opening quote, 0 at the closing brace, -1 on a
 * syntax error.
 */
static int jp_member_start(struct jp *jp, int first)
{
	char c = jp_peek(jp);

	if (first) {
		jp->p++; /* '{' */
		c = jp_peek(jp);
		if (c == '}' && jp->p < jp->end) {
			jp->p++;
			return 0;
		}
	} else {
		if (c == '}' && jp->p < jp->end) {
			jp->p++;
			return 0;
		}
		if (c != ',' || jp->p == jp->end)
			return jp_fail(jp, jp->p, jp->p == jp->end ? "premature end of input, '}' expected"
							       : "',' or '}' expected");
		jp->p++;
		c = jp_peek(jp);
	}
	if (c != '"' || jp->p == jp->end)
		return jp_fail(jp, jp->p, jp->p == jp->end ? "premature end of input, string expected"
						       : "string expected as an object key");
	return 1;
}

/* The same, with the key decoded at the arena top (the caller reads the value next). */
static int jp_member_next(struct jp *jp, int first, const char **key)
{
	int rc = jp_member_start(jp, first);

	if (rc != 1)
		return rc;
	if (jp_string(jp, key) < 0 || jp_expect(jp, ':', "':'") < 0)
		return -1;
	return 1;
}

/*
 * The bytes of a plain string at the cursor (on its quote): one without escapes, control or
 * non-ASCII bytes, which decodes to itself. Returns its length and moves past it, or -1 (the
 * cursor unmoved) when the string needs jp_string.
 */
static inline ssize_t jp_plain(struct jp *jp)
{
	const char *s = jp->p + 1, *q = s;

	while (q < jp->end && !str_class[(unsigned char)*q])
		q++;
	if (q == jp->end || *q != '"')
		return -1;
	jp->p = q + 1;
	return q - s;
}

/* The same for an array's elements: 1 = an element follows (cursor on it), 0 = ']' read. */
static int jp_element_next(struct jp *jp, int first)
{
	char c;

	if (first) {
		jp->p++; /* '[' */
		if (jp_peek(jp) == ']' && jp->p < jp->end) {
			jp->p++;
			return 0;
		}
		return 1;
	}
	c = jp_peek(jp);
	if (c == ']' && jp->p < jp->end) {
		jp->p++;
		return 0;
	}
	if (c != ',' || jp->p == jp->end)
		return jp_fail(jp, jp->p, jp->p == jp->end ? "premature end of input, ']' expected"
						       : "',' or ']' expected");
	jp->p++;
	return 1;
}

/* The whole batch as read, before validation in the protocol's order. */
struct batch_read {
	const char *unknown_key;         /* first unknown or repeated batch field */
	int unknown_dup;
	struct jval version, batch_id, host, agent, host_ip;
	enum jkind stacks_kind, rows_kind;
	const char **stacks; /* stacks[i], NULL if not a string */
	size_t n_stacks, stacks_cap;
	size_t first_bad_stack; /* SIZE_MAX = none */
	const char *rows_at;    /* rows seen before the stacks: parsed at the end */
	size_t n_rows;          /* elements of 'rows', including those not kept */
	size_t rows_cap;
	const char **tags;
	size_t n_tags, tags_cap;
	struct strbuf row_err; /* the first row's error */
	int row_failed;
	struct intern_slot *intern; /* INTERN_ENTRIES, or NULL: nothing is shared */
	size_t n_intern;
};

struct intern_slot {
	const char *s; /* NUL-terminated, in the arena; NULL = free */
	size_t len;
};

/* Copies a plain string's n bytes at s to the arena's top, NUL-terminated. */
static const char *jp_keep(struct jp *jp, const char *s, size_t n)
{
	char *d = jp->arena + jp->alen;

	memcpy(d, s, n);
	d[n] = 0;
	jp->alen += n + 1;
	return d;
}

/*
 * The shared copy of the n bytes at s, or NULL with *free_slot where to add one (NULL when the
 * text is too long to share or the table is full).
 */
static const char *intern_find(struct batch_read *br, const char *s, size_t n,
			       struct intern_slot **free_slot)
{
	struct intern_slot *slot;
	uint32_t h = 2166136261u;

	*free_slot = NULL;
	if (n > INTERN_MAX_LEN || !br->intern)
		return NULL;
	for (size_t k = 0; k < n; k++)
		h = (h ^ (unsigned char)s[k]) * 16777619u; /* FNV-1a */
	for (;; h++) {
		slot = &br->intern[h & (INTERN_ENTRIES - 1)];
		if (!slot->s)
			break;
		if (slot->len == n && memcmp(slot->s, s, n) == 0)
			return slot->s;
	}
	if (br->n_intern < INTERN_ENTRIES / 4 * 3)
		*free_slot = slot;
	return NULL;
}

/* Shares kept, a text that stays in the arena for the rest of the batch. */
static void intern_add(struct batch_read *br, struct intern_slot *slot, const char *kept,
		       size_t n)
{
	if (slot) {
		slot->s = kept;
		slot->len = n;
		br->n_intern++;
	}
}

/* A row's string value (the cursor on its quote), shared with equal short values of the batch. */
static int jp_string_interned(struct jp *jp, struct batch_read *br, const char **out)
{
	const char *s = jp->p + 1;
	ssize_t n = jp_plain(jp);
	struct intern_slot *slot;

	if (n < 0)
		return jp_string(jp, out);
	if (n > INGEST_MAX_STRING)
		return jp_fail(jp, s - 1, "string longer than %d bytes", INGEST_MAX_STRING);
	*out = intern_find(br, s, (size_t)n, &slot);
	if (!*out) {
		*out = jp_keep(jp, s, (size_t)n);
		intern_add(br, slot, *out, (size_t)n);
	}
	return 0;
}

static int grow(void *pptr, size_t *cap, size_t need, size_t elem, size_t first)
{
	void **pp = pptr;
	size_t ncap = *cap ? *cap : first;
	void *n;

	if (need <= *cap)
		return 0;
	while (ncap < need)
		ncap *= 2;
	n = realloc(*pp, ncap * elem);
	if (!n)
		return -ENOMEM;
	*pp = n;
	*cap = ncap;
	return 0;
}

/* Tags of one row: into names/values (at most ROW_MAX_TAGS kept, all counted). */
static int decode_tags(struct jp *jp, size_t i, struct batch_read *br, struct profile_row *r,
		       struct strbuf *err)
{
	const char *names[ROW_MAX_TAGS], *values[ROW_MAX_TAGS];
	const char *tk;
	size_t n = 0;
	int rc, first = 1, bad = 0;
	struct jval tv;
	struct strbuf tag_err = STRBUF_INIT;

	while ((rc = jp_member_next(jp, first, &tk)) == 1) {
		size_t tlen = strlen(tk);
		struct intern_slot *slot;
		const char *shared = intern_find(br, tk, tlen, &slot);

		first = 0;
		if (shared) {
			jp->alen -= tlen + 1; /* the decoded name was the arena's top */
			tk = shared;
		} else {
			intern_add(br, slot, tk, tlen);
		}
		if (jp_peek(jp) == '"') {
			tv.kind = K_STR;
			rc = jp_string_interned(jp, br, &tv.s);
		} else {
			rc = jp_value(jp, &tv, 5);
		}
		if (rc < 0) {
			rc = -1;
			break;
		}
		if (!bad) {
			if (tv.kind != K_STR) {
				sb_printf(&tag_err, "row %zu: field 'tags': tag '%s': expected a string, got %s",
					  i, tk, jkind_name(tv.kind));
				bad = 1;
			} else if (!*tk) {
				sb_printf(&tag_err, "row %zu: field 'tags': empty tag name", i);
				bad = 1;
			}
			for (size_t t = 0; !bad && t < n && t < ROW_MAX_TAGS; t++) {
				if (strcmp(names[t], tk) == 0) {
					sb_printf(&tag_err, "row %zu: field 'tags': duplicate tag '%s'",
						  i, tk);
					bad = 1;
				}
			}
		}
		if (n < ROW_MAX_TAGS) {
			names[n] = tk;
			values[n] = tv.s;
		}
		n++;
	}
	if (rc < 0) {
		sb_free(&tag_err);
		return -1;
	}
	if (n > ROW_MAX_TAGS) {
		sb_printf(err, "row %zu: field 'tags': %zu tags, at most %d allowed", i, n,
			  ROW_MAX_TAGS);
		bad = 1;
	} else if (bad) {
		sb_puts(err, tag_err.buf);
	} else if (grow(&br->tags, &br->tags_cap, br->n_tags + 2 * n, sizeof(char *), 1024) < 0) {
		sb_puts(err, "out of memory decoding the batch");
		bad = 1;
	} else {
		memcpy(br->tags + br->n_tags, names, n * sizeof(char *));
		memcpy(br->tags + br->n_tags + n, values, n * sizeof(char *));
		br->n_tags += 2 * n;
		r->n_tags = n; /* tag_names/tag_values are set once the tag array stops moving */
	}
	sb_free(&tag_err);
	return bad;
}

/*
 * One row (the cursor on its '{'). Returns -1 on a syntax error, 1 if the row is refused (the
 * message in err; the rest of the row was still read), 0 if it is valid.
 */
static int decode_row(struct jp *jp, size_t i, struct batch_read *br, struct profile_row *r,
		      struct strbuf *err)
{
	uint32_t seen = 0;
	int have_stack = 0, have_value = 0, have_time = 0, bad = 0, rc, first = 1;
	struct jval v;

	if (jp_peek(jp) != '{') {
		if (jp_value(jp, &v, 3) < 0)
			return -1;
		sb_printf(err, "row %zu: expected an object, got %s", i, jkind_name(v.kind));
		return 1;
	}
	while ((rc = jp_member_start(jp, first)) == 1) {
		const struct row_field *f = NULL;
		size_t mark = jp->alen; /* the key itself is not kept */
		struct row_key key = {jp->p + 1, 0};
		ssize_t n = jp_plain(jp);

		first = 0;
		if (n < 0) {
			if (jp_string(jp, &key.s) < 0)
				return -1;
			n = (ssize_t)strlen(key.s);
		} else if (n > INGEST_MAX_STRING) {
			return jp_fail(jp, key.s - 1, "string longer than %d bytes",
				       INGEST_MAX_STRING);
		}
		key.len = (size_t)n;
		if (jp_expect(jp, ':', "':'") < 0)
			return -1;
		if (!bad)
			f = bsearch(&key, row_fields, N_ROW_FIELDS, sizeof(row_fields[0]),
				    row_field_cmp);
		if (!bad && !f) {
			sb_printf(err, "row %zu: unknown field '%.*s'", i, (int)key.len, key.s);
			bad = 1;
		}
		if (!bad && seen & 1u << (f - row_fields)) {
			sb_printf(err, "row %zu: duplicate field '%.*s'", i, (int)key.len, key.s);
			bad = 1;
		}
		jp->alen = mark;
		if (bad) {
			if (jp_value(jp, &v, 4) < 0)
				return -1;
			jp->alen = mark;
			continue;
		}
		seen |= 1u << (f - row_fields);
		if (f->kind == F_TAGS && jp_peek(jp) == '{') {
			rc = decode_tags(jp, i, br, r, err);
			if (rc < 0)
				return -1;
			bad = rc;
			continue;
		}
		if (f->kind == F_STR && jp_peek(jp) == '"') {
			v.kind = K_STR;
			if (jp_string_interned(jp, br, &v.s) < 0)
				return -1;
		} else if (jp_value(jp, &v, 4) < 0) {
			return -1;
		}
		switch (f->kind) {
		case F_STR:
			if (v.kind != K_STR) {
				sb_printf(err, "row %zu: field '%s': expected a string, got %s", i,
					  f->key, jkind_name(v.kind));
				bad = 1;
				break;
			}
			*(const char **)((char *)r + f->offset) = v.s;
			if (f->offset == offsetof(struct profile_row, profile_location_str) &&
			    have_stack++) {
				sb_printf(err, "row %zu: both 'stack' and 'profile_location_str' given; send one",
					  i);
				bad = 1;
			}
			break;
		case F_INT:
			if (v.kind != K_INT) {
				sb_printf(err, "row %zu: field '%s': expected an integer, got %s", i,
					  f->key, jkind_name(v.kind));
				bad = 1;
				break;
			}
			*(int64_t *)((char *)r + f->offset) = v.i;
			if (f->offset == offsetof(struct profile_row, profile_value))
				have_value = 1;
			if (f->offset == offsetof(struct profile_row, time))
				have_time = 1;
			break;
		case F_STACK:
			if (v.kind != K_INT) {
				sb_printf(err, "row %zu: field 'stack': expected an integer index into 'stacks', got %s",
					  i, jkind_name(v.kind));
				bad = 1;
				break;
			}
			if (v.i < 0 || (uint64_t)v.i >= br->n_stacks) {
				sb_printf(err, "row %zu: field 'stack': index %" PRId64
					       " is outside 'stacks' (%zu entries)",
					  i, v.i, br->n_stacks);
				bad = 1;
				break;
			}
			if (have_stack++) {
				sb_printf(err, "row %zu: both 'stack' and 'profile_location_str' given; send one",
					  i);
				bad = 1;
				break;
			}
			/* One pointer per dictionary entry: the store memoizes stacks by address. */
			r->profile_location_str = br->stacks[v.i] ? br->stacks[v.i] : "";
			break;
		case F_TAGS:
			sb_printf(err, "row %zu: field 'tags': expected an object of strings, got %s",
				  i, jkind_name(v.kind));
			bad = 1;
			break;
		}
	}
	if (rc < 0)
		return -1;
	if (bad)
		return 1;
	if (!have_time || r->time <= 0 || r->time > INGEST_MAX_TIME) {
		sb_printf(err, "row %zu: field 'time': %s", i,
			  !have_time ? "missing (unix seconds)"
			  : r->time <= 0 ? "must be unix seconds > 0"
					 : "too large: unix seconds whose microseconds fit in 64 bits");
		return 1;
	}
	if (!r->app_service || !*r->app_service) {
		sb_printf(err, "row %zu: field 'app_service': missing or empty", i);
		return 1;
	}
	if (!have_stack || !*r->profile_location_str) {
		sb_printf(err, "row %zu: field 'profile_location_str': %s", i,
			  have_stack ? "empty stack" : "missing (or 'stack')");
		return 1;
	}
	if (!have_value || r->profile_value < 0) {
		sb_printf(err, "row %zu: field 'profile_value': %s", i,
			  have_value ? "must be >= 0" : "missing");
		return 1;
	}
	if (r->process_id < 0 || r->process_id > UINT32_MAX || r->process_start_time < 0) {
		sb_printf(err, "row %zu: field '%s': out of range", i,
			  r->process_start_time < 0 ? "process_start_time" : "process_id");
		return 1;
	}
	return 0;
}

/* The 'rows' array (cursor on '['): rows are kept up to max_rows and the first error. */
static int decode_rows(struct jp *jp, struct batch_read *br, struct ingest_batch *b,
		       size_t max_rows)
{
	int rc, first = 1;
	struct jval v;

	while ((rc = jp_element_next(jp, first)) == 1) {
		size_t i = br->n_rows++;

		first = 0;
		if (!br->row_failed && i < max_rows &&
		    grow(&b->rows, &br->rows_cap, i + 1, sizeof(*b->rows), 1024) < 0) {
			sb_puts(&br->row_err, "out of memory decoding the batch");
			br->row_failed = 1;
		}
		if (br->row_failed || i >= max_rows) {
			size_t mark = jp->alen;

			if (jp_value(jp, &v, 3) < 0)
				return -1;
			jp->alen = mark;
			continue;
		}
		memset(&b->rows[i], 0, sizeof(b->rows[i]));
		rc = decode_row(jp, i, br, &b->rows[i], &br->row_err);
		if (rc < 0)
			return -1;
		br->row_failed = rc;
	}
	return rc;
}

static int batch_scalar(struct jp *jp, struct jval *slot)
{
	return jp_value(jp, slot, 2);
}

/* Reads the top-level object; validation happens afterwards, in the protocol's order. */
static int decode_top(struct jp *jp, struct batch_read *br, struct ingest_batch *b,
		      size_t max_rows)
{
	static const char *const batch_keys[] = {"version", "batch_id", "host", "agent",
						 "host_ip", "stacks", "rows"};
	const char *key;
	unsigned seen = 0;
	int rc, first = 1;

	while ((rc = jp_member_next(jp, first, &key)) == 1) {
		size_t k, mark = jp->alen - strlen(key) - 1;
		struct jval skip;

		first = 0;
		for (k = 0; k < sizeof(batch_keys) / sizeof(batch_keys[0]); k++)
			if (strcmp(key, batch_keys[k]) == 0)
				break;
		if (k == sizeof(batch_keys) / sizeof(batch_keys[0]) || seen & 1u << k) {
			if (!br->unknown_key) {
				br->unknown_key = key; /* kept in the arena */
				br->unknown_dup = k < sizeof(batch_keys) / sizeof(batch_keys[0]);
				mark = jp->alen;
			}
			if (jp_value(jp, &skip, 2) < 0)
				return -1;
			jp->alen = mark;
			continue;
		}
		seen |= 1u << k;
		jp->alen = mark;
		switch (k) {
		case 0: rc = batch_scalar(jp, &br->version); break;
		case 1: rc = batch_scalar(jp, &br->batch_id); break;
		case 2: rc = batch_scalar(jp, &br->host); break;
		case 3: rc = batch_scalar(jp, &br->agent); break;
		case 4: rc = batch_scalar(jp, &br->host_ip); break;
		case 5:
			if (jp_peek(jp) != '[') {
				rc = jp_value(jp, &skip, 2);
				br->stacks_kind = skip.kind;
				break;
			}
			br->stacks_kind = K_ARR;
			first = 1;
			while ((rc = jp_element_next(jp, first)) == 1) {
				struct jval s;
				size_t smark = jp->alen;

				first = 0;
				if (jp_value(jp, &s, 3) < 0)
					return -1;
				if (grow(&br->stacks, &br->stacks_cap, br->n_stacks + 1,
					 sizeof(char *), 256) < 0)
					return jp_fail(jp, jp->p, "out of memory");
				if (s.kind != K_STR) {
					jp->alen = smark;
					s.s = NULL;
					if (br->first_bad_stack == SIZE_MAX)
						br->first_bad_stack = br->n_stacks;
				}
				br->stacks[br->n_stacks++] = s.s;
			}
			first = 0;
			break;
		case 6:
			if (jp_peek(jp) != '[') {
				rc = jp_value(jp, &skip, 2);
				br->rows_kind = skip.kind;
				break;
			}
			br->rows_kind = K_ARR;
			if (seen & 1u << 5) {
				rc = decode_rows(jp, br, b, max_rows);
			} else {
				/* The stacks may follow: read the rows once they are known. */
				br->rows_at = jp->p;
				rc = jp_skip_compound(jp, 2);
				jp->alen = mark;
			}
			break;
		}
		if (rc < 0)
			return -1;
	}
	return rc;
}

static void decode_syntax_error(const struct jp *jp, struct strbuf *err)
{
	int line = 1, column = 1;

	for (const char *q = jp->start; q < jp->errpos; q++) {
		if (*q == '\n')
			line++, column = 1;
		else if ((*q & 0xc0) != 0x80)
			column++;
	}
	sb_printf(err, "invalid JSON at line %d, column %d: %s", line, column, jp->errmsg);
}

static int batch_string(const struct jval *v, const char *key, const char **out,
			struct strbuf *err)
{
	*out = "";
	if (v->kind == K_NONE)
		return 0;
	if (v->kind != K_STR) {
		sb_printf(err, "batch field '%s': expected a string, got %s", key,
			  jkind_name(v->kind));
		return -EINVAL;
	}
	*out = v->s;
	return 0;
}

static void row_defaults(struct profile_row *r, const char *host, const char *agent,
			 const char *host_ip, int64_t in_ts)
{
	if (!r->profile_event_type || !*r->profile_event_type)
		r->profile_event_type = "on-cpu";
	if (!r->profile_language_type || !*r->profile_language_type)
		r->profile_language_type = "eBPF";
	if (!r->profile_value_unit || !*r->profile_value_unit)
		r->profile_value_unit = strncmp(r->profile_event_type, "mem-", 4) == 0 ||
						strncmp(r->profile_event_type, "hbm-", 4) == 0
					? "bytes"
					: "microseconds";
	if (!r->app_instance || !*r->app_instance)
		r->app_instance = r->app_service;
	if (!r->profile_create_timestamp)
		r->profile_create_timestamp = r->time * 1000000;
	r->profile_in_timestamp = in_ts;
	if (!r->host)
		r->host = host;
	if (!r->agent)
		r->agent = agent;
	if (!r->host_ip)
		r->host_ip = host_ip;
}

/* Reads the whole document, then validates it in the order the protocol's errors are given. */
static int decode_batch(struct jp *jp, struct batch_read *br, struct ingest_batch *b,
			size_t max_rows, int64_t in_ts_us, struct strbuf *err)
{
	const char *host, *agent, *host_ip;
	struct jval top;
	size_t n;

	if (jp_peek(jp) != '{') {
		if (jp_peek(jp) != '[')
			jp_fail(jp, jp->p, "'[' or '{' expected");
		else if (jp_value(jp, &top, 1) == 0 && (jp_ws(jp), jp->p < jp->end))
			jp_fail(jp, jp->p, "end of file expected");
		if (jp->errpos) {
			decode_syntax_error(jp, err);
			return -EINVAL;
		}
		sb_puts(err, "the batch must be a JSON object, got an array");
		return -EINVAL;
	}
	if (decode_top(jp, br, b, max_rows) == 0 && jp_peek(jp) != 0)
		jp_fail(jp, jp->p, "end of file expected");
	if (!jp->errpos && jp->p < jp->end)
		jp_fail(jp, jp->p, "end of file expected");
	if (!jp->errpos && br->rows_at) {
		jp->p = br->rows_at;
		decode_rows(jp, br, b, max_rows);
	}
	if (jp->errpos) {
		decode_syntax_error(jp, err);
		return -EINVAL;
	}
	if (br->unknown_key) {
		sb_printf(err, "%s batch field '%s'", br->unknown_dup ? "duplicate" : "unknown",
			  br->unknown_key);
		return -EINVAL;
	}
	if (br->version.kind != K_INT || br->version.i != WIRE_VERSION) {
		sb_printf(err, "batch field 'version': must be %d (this server speaks protocol version %d)",
			  WIRE_VERSION, WIRE_VERSION);
		return -EINVAL;
	}
	if (br->batch_id.kind != K_STR || !wire_batch_id_valid(br->batch_id.s)) {
		sb_puts(err, "batch field 'batch_id': required, 1-128 characters of A-Z a-z 0-9 . _ : -");
		return -EINVAL;
	}
	if (batch_string(&br->host, "host", &host, err) < 0 ||
	    batch_string(&br->agent, "agent", &agent, err) < 0 ||
	    batch_string(&br->host_ip, "host_ip", &host_ip, err) < 0)
		return -EINVAL;
	if (br->stacks_kind != K_NONE && br->stacks_kind != K_ARR) {
		sb_printf(err, "batch field 'stacks': expected an array of strings, got %s",
			  jkind_name(br->stacks_kind));
		return -EINVAL;
	}
	if (br->first_bad_stack != SIZE_MAX) {
		sb_printf(err, "stacks[%zu]: expected a string", br->first_bad_stack);
		return -EINVAL;
	}
	if (br->rows_kind != K_ARR) {
		sb_puts(err, "batch field 'rows': required, an array of row objects");
		return -EINVAL;
	}
	n = br->n_rows;
	if (n == 0 || n > max_rows) {
		sb_printf(err, "batch field 'rows': %zu rows; a batch holds 1 to %zu rows", n, max_rows);
		return -EINVAL;
	}
	if (br->row_failed) {
		sb_puts(err, br->row_err.buf);
		return -EINVAL;
	}
	b->batch_id = br->batch_id.s;
	b->tags = br->tags;
	br->tags = NULL;
	for (size_t i = 0, t = 0; i < n; i++) {
		struct profile_row *r = &b->rows[i];

		if (r->n_tags) {
			r->tag_names = b->tags + t;
			r->tag_values = b->tags + t + r->n_tags;
			t += 2 * r->n_tags;
		}
		row_defaults(r, host, agent, host_ip, in_ts_us);
	}
	b->n = n;
	return 0;
}

/*
 * Buffer sets reused from batch to batch — the decompressed body, the string arena, the rows —
 * so a batch is written into memory that is already mapped: fresh memory costs a page fault per
 * 4 KiB, which was a fifth of the server's CPU during ingest (measured, docs/benchmarks.md).
 * A batch takes a set from a process-wide pool and gives it back; at most SCRATCH_POOL sets are
 * kept (more concurrent batches use fresh ones), and in each only buffers up to
 * SCRATCH_KEEP_BYTES survive their batch. The pool lives as long as the process.
 */
#define SCRATCH_POOL 2
#define SCRATCH_KEEP_BYTES (32u << 20)

struct ingest_scratch {
	struct strbuf plain;
	char *arena;
	size_t arena_cap;
	struct profile_row *rows;
	size_t rows_cap; /* rows */
};

static pthread_mutex_t scratch_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ingest_scratch *scratch_pool[SCRATCH_POOL]; /* the most recently used last */
static size_t scratch_pooled;

static void scratch_free(struct ingest_scratch *sc)
{
	sb_free(&sc->plain);
	free(sc->arena);
	free(sc->rows);
	free(sc);
}

/* A buffer set for one batch, or NULL (out of memory: the batch uses fresh buffers). */
static struct ingest_scratch *scratch_get(void)
{
	struct ingest_scratch *sc = NULL;

	pthread_mutex_lock(&scratch_lock);
	if (scratch_pooled)
		sc = scratch_pool[--scratch_pooled];
	pthread_mutex_unlock(&scratch_lock);
	return sc ? sc : calloc(1, sizeof(*sc));
}

/* After a batch: frees what is larger than the bound, and the set if the pool is full. */
static void scratch_put(struct ingest_scratch *sc)
{
	if (sc->plain.cap > SCRATCH_KEEP_BYTES)
		sb_free(&sc->plain);
	if (sc->arena_cap > SCRATCH_KEEP_BYTES) {
		free(sc->arena);
		sc->arena = NULL;
		sc->arena_cap = 0;
	}
	if (sc->rows_cap > SCRATCH_KEEP_BYTES / sizeof(*sc->rows)) {
		free(sc->rows);
		sc->rows = NULL;
		sc->rows_cap = 0;
	}
	pthread_mutex_lock(&scratch_lock);
	if (scratch_pooled < SCRATCH_POOL) {
		scratch_pool[scratch_pooled++] = sc;
		sc = NULL;
	}
	pthread_mutex_unlock(&scratch_lock);
	if (sc)
		scratch_free(sc);
}

/* ingest_decode(), into the buffers of sc when it is not NULL (the batch borrows them). */
static int ingest_decode_scratch(const char *text, size_t len, size_t max_rows, int64_t in_ts_us,
				 struct ingest_batch *b, struct strbuf *err,
				 struct ingest_scratch *sc)
{
	struct jp jp = {.start = text, .p = text, .end = text + len, .acap = len + 1};
	struct batch_read br = {.first_bad_stack = SIZE_MAX, .row_err = STRBUF_INIT};
	int rc;

	memset(b, 0, sizeof(*b));
	if (sc && sc->arena_cap < jp.acap) {
		free(sc->arena);
		sc->arena = malloc(jp.acap);
		sc->arena_cap = sc->arena ? jp.acap : 0;
	}
	jp.arena = sc ? sc->arena : malloc(jp.acap);
	if (!jp.arena) {
		sb_puts(err, "out of memory decoding the batch");
		return -EINVAL;
	}
	b->json = jp.arena;
	if (sc) {
		b->borrowed = 1;
		b->rows = sc->rows;
		br.rows_cap = sc->rows_cap;
	}
	br.intern = calloc(INTERN_ENTRIES, sizeof(*br.intern)); /* NULL: nothing is shared */
	rc = decode_batch(&jp, &br, b, max_rows, in_ts_us, err);
	if (sc) {
		sc->rows = b->rows; /* moved if it grew */
		sc->rows_cap = br.rows_cap;
	}
	free(br.intern);
	free(br.stacks);
	free(br.tags);
	sb_free(&br.row_err);
	if (rc < 0)
		ingest_batch_free(b);
	return rc;
}

int ingest_decode(const char *text, size_t len, size_t max_rows, int64_t in_ts_us,
		  struct ingest_batch *b, struct strbuf *err)
{
	return ingest_decode_scratch(text, len, max_rows, in_ts_us, b, err, NULL);
}

void ingest_batch_free(struct ingest_batch *b)
{
	if (!b->borrowed) {
		free(b->json);
		free(b->rows);
	}
	free(b->tags);
	memset(b, 0, sizeof(*b));
}

void ingest_handle(void *ctx, struct http_exchange *x)
{
	struct ingest_ctx *ing = ctx;
	struct strbuf err = STRBUF_INIT, own_plain = STRBUF_INIT, result = STRBUF_INIT;
	struct ingest_scratch *sc = scratch_get();
	struct strbuf *plain = sc ? &sc->plain : &own_plain;
	struct ingest_batch b;
	const char *enc = http_header(x, "Content-Encoding");
	const char *body = x->body;
	size_t len = x->body_len;
	size_t max_body = ing->max_body ? ing->max_body : 64u << 20;
	struct timespec now;
	int org, rc, duplicate = 0;

	rc = api_parse_org(http_header(x, "X-Org-Id"), &org, &err);
	if (rc < 0) {
		http_reply_envelope(x, 400, "INVALID_POST_DATA", err.buf, NULL);
		goto out;
	}
	if (enc && *enc && strcasecmp(enc, "identity") != 0) {
		if (strcasecmp(enc, "zstd") != 0) {
			sb_printf(&err, "Content-Encoding '%s' is not supported: send zstd or none", enc);
			http_reply_envelope(x, 400, "INVALID_POST_DATA", err.buf, NULL);
			goto out;
		}
		rc = wire_decompress(body, len, max_body, plain);
		if (rc == -EFBIG) {
			sb_printf(&err, "decompressed body larger than the limit of %zu bytes", max_body);
			http_reply_envelope(x, 413, "INVALID_POST_DATA", err.buf, NULL);
			goto out;
		}
		if (rc < 0) {
			http_reply_envelope(x, 400, "INVALID_POST_DATA",
					    "body is not a valid zstd frame (Content-Encoding: zstd)",
					    NULL);
			goto out;
		}
		body = plain->buf;
		len = plain->len;
	}
	clock_gettime(CLOCK_REALTIME, &now);
	rc = ingest_decode_scratch(body, len,
				   ing->max_rows ? ing->max_rows : INGEST_MAX_ROWS_DEFAULT,
				   (int64_t)now.tv_sec * 1000000 + now.tv_nsec / 1000, &b, &err, sc);
	if (rc < 0) {
		if (ing->metrics)
			metrics_add(&ing->metrics->batches_invalid, 1);
		log_info("batch rejected: %s", err.buf);
		http_reply_envelope(x, 400, "INVALID_POST_DATA", err.buf, NULL);
		goto out;
	}
	rc = store_insert(ing->store, org, b.batch_id, b.rows, b.n, &duplicate);
	if (ing->metrics) {
		struct server_metrics *m = ing->metrics;

		metrics_add(rc == 0 ? (duplicate ? &m->batches_duplicate : &m->batches_stored)
			    : rc == -EINVAL ? &m->batches_invalid
					    : &m->batches_unavailable,
			    1);
		metrics_add(&m->rows_stored, rc == 0 && !duplicate ? b.n : 0);
	}
	if (rc == 0) {
		sb_puts(&result, "{\"batch_id\":");
		sb_json_str(&result, b.batch_id);
		sb_printf(&result, ",\"rows\":%zu,\"duplicate\":%s}", b.n,
			  duplicate ? "true" : "false");
		http_reply_envelope(x, 200, "SUCCESS", "", result.buf);
	} else if (rc == -EINVAL) {
		http_reply_envelope(x, 400, "INVALID_POST_DATA", store_errmsg(ing->store), NULL);
	} else {
		int ra = ing->retry_after > 0 ? ing->retry_after : 5;

		log_warn("batch %s (%zu rows) not stored, client will retry: %s", b.batch_id, b.n,
			 store_errmsg(ing->store));
		snprintf(x->extra_header_name, sizeof(x->extra_header_name), "Retry-After");
		snprintf(x->extra_header_value, sizeof(x->extra_header_value), "%d", ra);
		sb_printf(&err, "store unavailable, retry later: %s", store_errmsg(ing->store));
		http_reply_envelope(x, 503, "SERVER_ERROR", err.buf, NULL);
	}
	ingest_batch_free(&b);
out:
	if (sc)
		scratch_put(sc);
	sb_free(&err);
	sb_free(&own_plain);
	sb_free(&result);
}
