/*
 * tagfilter — see tagfilter.h for the grammar and the ownership rules; docs/tagfilter.md for the
 * user-facing description.
 *
 * The parser is a recursive-descent parser over a one-token lookahead lexer. AND and OR nodes are
 * n-ary (their operands are a sibling list), so `a AND b AND c ...` is flat: the tree is only as
 * deep as the nesting of parentheses and NOTs, which is bounded by TF_MAX_DEPTH, and both the
 * parser and the compiler recurse at most that deep whatever the length of the text.
 *
 * Every node, value and unescaped string lives in one arena owned by the tf_expr handle, so the
 * tree is freed in one call and TEXT parameters can point into it. Allocation failure aborts, as
 * in strbuf: the input is bounded (TF_MAX_TEXT), so running out of memory here is not an input
 * error.
 *
 * Values are checked against the field's type when parsed: an integer column takes numbers, a
 * text column or a custom tag takes strings, LIKE and REGEXP take a string pattern on a text
 * field. A LIKE pattern is normalised once at parse time into the two forms the engines need
 * (SQLite GLOB, which is case-sensitive unlike SQLite's LIKE; ClickHouse LIKE with canonical
 * backslash escapes). A REGEXP pattern is compiled once with POSIX regcomp to reject bad
 * patterns early, after a cost check that keeps regcomp's own time and memory small.
 */
#define LOG_MODULE "tagfilter"
#include "server/tagfilter.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/log.h"

#define TF_MAX_TEXT (64 * 1024)	 /* bytes of filter text */
#define TF_MAX_DEPTH 64		 /* nesting of parentheses and NOTs */
#define TF_MAX_IN_LIST 10000	 /* values in one IN list */
#define TF_MAX_VALUES 16384	 /* literal values in the whole filter */
#define TF_MAX_NODES 4096	 /* comparisons + AND/OR/NOT nodes */
#define TF_MAX_REGEX_LEN 1024	 /* bytes of one REGEXP pattern */
#define TF_MAX_REGEX_COST 8192	 /* atoms of one REGEXP once {m,n} is expanded, tf_regex_screen */
#define TF_MAX_REGEX_GROUPS 256	 /* parenthesis nesting inside one REGEXP pattern */
#define TF_MAX_REGEX_REPEAT 1000 /* largest count in {m,n}: re2's own limit */
#define TF_ARENA_BLOCK 4096	 /* default arena block size */
#define TF_MSG_NAME_MAX 48	 /* bytes of a name quoted in an error message */

/*
 * The allow-list: the logical columns of profile.in_process and their types. Integer columns
 * hold unix seconds, microseconds, milliseconds or a pid; all others are text.
 */
struct tf_column {
	const char *name;
	int is_int;
};

static const struct tf_column tf_columns[] = {
    {"time", 1},
    {"app_service", 0},
    {"app_instance", 0},
    {"profile_location_str", 0},
    {"profile_value", 1},
    {"profile_value_unit", 0},
    {"profile_event_type", 0},
    {"profile_language_type", 0},
    {"profile_create_timestamp", 1},
    {"profile_in_timestamp", 1},
    {"process_id", 1},
    {"process_start_time", 1},
    {"host", 0},
    {"agent", 0},
    {"host_ip", 0},
    {"container_id", 0},
    {"pod_cluster", 0},
    {"pod_ns", 0},
    {"pod_node", 0},
    {"pod", 0},
    {"pod_group", 0},
    {"trace_id", 0},
    {"span_name", 0},
    {"profile_id", 0},
    {"compression_algo", 0},
};

#define TF_N_COLUMNS (sizeof(tf_columns) / sizeof(tf_columns[0]))

/*
 * DeepFlow tag names (spec §3.5) that mean the same thing as one of ember's columns:
 *   vtap              → agent     (DeepFlow's deprecated name for the agent)
 *   host_hostname     → host      (ember's host is the hostname where the sample was taken)
 *   pod_node_hostname → pod_node  (the Kubernetes node name is its hostname)
 * DeepFlow's id-based platform tags (region, az, vpc, chost, pod_service, gprocess, ...) have no
 * ember column and are rejected as unknown fields rather than silently matching nothing.
 */
static const struct {
	const char *alias;
	const char *column;
} tf_aliases[] = {
    {"vtap", "agent"},
    {"host_hostname", "host"},
    {"pod_node_hostname", "pod_node"},
};

/*
 * Prefixes of custom tags kept verbatim in tag_names (e.g. "k8s.label.app"), and the generic
 * "tag." prefix, which is stripped ("tag.team" is the custom tag "team").
 */
static const char *const tf_tag_prefixes[] = {
    "k8s.label.", "k8s.annotation.", "k8s.env.", "cloud.tag.", "os.app.",
};
static const char tf_tag_strip_prefix[] = "tag.";

enum tf_kind { TF_AND, TF_OR, TF_NOT, TF_CMP };

enum tf_op {
	TF_OP_EQ,
	TF_OP_NE,
	TF_OP_LT,
	TF_OP_LE,
	TF_OP_GT,
	TF_OP_GE,
	TF_OP_IN,
	TF_OP_NOT_IN,
	TF_OP_LIKE,
	TF_OP_NOT_LIKE,
	TF_OP_REGEXP,
};

struct tf_value {
	struct tf_value *next;
	enum tf_param_type type;
	const char *s; /* TEXT: unescaped bytes, NUL-terminated; REGEXP: the pattern */
	size_t len;
	int64_t i;
	double d;
	const char *glob; /* LIKE: the SQLite GLOB pattern */
	size_t glob_len;
	const char *like; /* LIKE: the canonical LIKE pattern (only %, _ and \ escaped) */
	size_t like_len;
};

struct tf_node {
	enum tf_kind kind;
	struct tf_node *kids; /* AND/OR: the operands; NOT: the one operand */
	struct tf_node *next; /* next sibling under an AND/OR */
	int column;	      /* CMP: index in tf_columns, or -1 for a custom tag */
	const char *tag;      /* CMP on a custom tag: its name as stored in tag_names */
	size_t tag_len;
	enum tf_op op;
	struct tf_value *values; /* CMP: one value, or the IN list in order */
};

struct tf_block {
	struct tf_block *next;
	size_t used;
	size_t cap;
	max_align_t data[];
};

struct tf_expr {
	struct tf_block *blocks;
	struct tf_node *root;
};

/* ---- arena ---------------------------------------------------------------------------- */

static void *tf_alloc(struct tf_expr *e, size_t n)
{
	struct tf_block *b = e->blocks;
	size_t align = sizeof(max_align_t);
	void *p;

	n = (n + align - 1) / align * align;
	if (!b || b->cap - b->used < n) {
		size_t cap = n > TF_ARENA_BLOCK ? n : TF_ARENA_BLOCK;

		b = malloc(sizeof(*b) + cap);
		if (!b) {
			log_error("out of memory allocating %zu bytes for a filter tree", cap);
			abort();
		}
		b->used = 0;
		b->cap = cap;
		/* A block made for one big request goes behind the current one, which may still
		 * have room for small ones. */
		if (e->blocks && cap > TF_ARENA_BLOCK) {
			b->next = e->blocks->next;
			e->blocks->next = b;
		} else {
			b->next = e->blocks;
			e->blocks = b;
		}
	}
	p = (char *)b->data + b->used;
	b->used += n;
	memset(p, 0, n);
	return p;
}

void tagfilter_free(struct tf_expr *expr)
{
	struct tf_block *b, *next;

	if (!expr)
		return;
	for (b = expr->blocks; b; b = next) {
		next = b->next;
		free(b);
	}
	free(expr);
}

/* ---- fields --------------------------------------------------------------------------- */

static int tf_column_index(const char *name, size_t len)
{
	size_t i;

	for (i = 0; i < TF_N_COLUMNS; i++)
		if (strlen(tf_columns[i].name) == len && memcmp(tf_columns[i].name, name, len) == 0)
			return (int)i;
	for (i = 0; i < sizeof(tf_aliases) / sizeof(tf_aliases[0]); i++)
		if (strlen(tf_aliases[i].alias) == len &&
		    memcmp(tf_aliases[i].alias, name, len) == 0)
			return tf_column_index(tf_aliases[i].column, strlen(tf_aliases[i].column));
	return -1;
}

static int tf_has_prefix(const char *name, size_t len, const char *prefix)
{
	size_t plen = strlen(prefix);

	return len >= plen && memcmp(name, prefix, plen) == 0;
}

/*
 * Resolves a name the way the parser does. Returns 1 for a column (*column set), 2 for a
 * custom tag (*tag and *tag_len set: the name as stored in tag_names), 0 for an unknown name, -1
 * for a tag prefix with nothing after it. A quoted name that is neither a column nor a
 * prefixed tag is a custom tag taken verbatim.
 */
static int tf_resolve(const char *name, size_t len, int quoted, int *column, const char **tag,
		      size_t *tag_len)
{
	size_t plen = sizeof(tf_tag_strip_prefix) - 1;
	size_t i;

	*column = tf_column_index(name, len);
	if (*column >= 0)
		return 1;
	if (tf_has_prefix(name, len, tf_tag_strip_prefix)) {
		*tag = name + plen;
		*tag_len = len - plen;
		return *tag_len ? 2 : -1;
	}
	for (i = 0; i < sizeof(tf_tag_prefixes) / sizeof(tf_tag_prefixes[0]); i++) {
		if (tf_has_prefix(name, len, tf_tag_prefixes[i])) {
			*tag = name;
			*tag_len = len;
			return len > strlen(tf_tag_prefixes[i]) ? 2 : -1;
		}
	}
	if (quoted) {
		*tag = name;
		*tag_len = len;
		return 2;
	}
	return 0;
}

int tagfilter_field_known(const char *name)
{
	const char *tag;
	size_t tag_len;
	int column;

	if (!name)
		return 0;
	return tf_resolve(name, strlen(name), 0, &column, &tag, &tag_len) > 0;
}

/* ---- lexer ---------------------------------------------------------------------------- */

enum tf_tok_kind {
	TK_END,
	TK_IDENT,  /* bare name or keyword */
	TK_QIDENT, /* `backquoted name` */
	TK_STRING,
	TK_INT,
	TK_REAL,
	TK_LPAREN,
	TK_RPAREN,
	TK_COMMA,
	TK_CMP, /* = != <> < <= > >=; op says which */
};

struct tf_tok {
	enum tf_tok_kind kind;
	size_t pos;    /* offset of the first byte */
	const char *s; /* IDENT: into the text; QIDENT/STRING: unescaped copy in the arena */
	size_t len;
	int64_t i;
	double d;
	enum tf_op op;
};

struct tf_parser {
	const char *text;
	size_t len;
	size_t p;
	struct tf_tok cur;
	struct tf_expr *e;
	struct tf_error *err;
	int depth;
	size_t nodes;
	size_t values;
};

/* Copies a name or token into buf for an error message, truncated, non-printables as '?'. */
static const char *tf_msg_name(char *buf, size_t size, const char *s, size_t len)
{
	size_t n = len < size - 4 ? len : size - 4;
	size_t i;

	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		buf[i] = c >= 0x20 && c < 0x7f && c != '\'' ? (char)c : '?';
	}
	if (n < len) {
		memcpy(buf + n, "...", 3);
		n += 3;
	}
	buf[n] = '\0';
	return buf;
}

static int tf_fail(struct tf_parser *ps, size_t pos, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int tf_fail(struct tf_parser *ps, size_t pos, const char *fmt, ...)
{
	/* Leaves room for the " at position N" suffix. */
	char what[sizeof(ps->err->message) - 40];
	va_list ap;

	if (!ps->err)
		return -EINVAL;
	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	ps->err->pos = pos;
	snprintf(ps->err->message, sizeof(ps->err->message), "%s at position %zu", what, pos);
	return -EINVAL;
}

static int tf_is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static int tf_is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static int tf_is_ident_start(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static int tf_is_ident_char(char c)
{
	return tf_is_ident_start(c) || tf_is_digit(c) || c == '.' || c == '-';
}

/*
 * A quoted string or `name`: the closing quote doubled stands for itself; in strings (not
 * names) a backslash before a quote or a backslash escapes it, and any other backslash is kept
 * with the byte after it, so LIKE (`\%`) and REGEXP (`\.`) escapes pass through unchanged.
 */
static int tf_lex_quoted(struct tf_parser *ps, char quote, int is_name)
{
	const char *t = ps->text;
	size_t start = ps->p, end = ps->p + 1, i, n = 0;
	char *out;

	/* First find the closing quote, so that the copy is sized by this literal alone. */
	for (;;) {
		if (end >= ps->len)
			return tf_fail(ps, start,
				       is_name ? "unterminated quoted name"
					       : "unterminated string");
		if (t[end] == quote) {
			if (end + 1 < ps->len && t[end + 1] == quote) {
				end += 2;
				continue;
			}
			break;
		}
		end += t[end] == '\\' && !is_name ? 2 : 1;
	}
	out = tf_alloc(ps->e, end - start);
	for (i = start + 1; i < end;) {
		if (t[i] == quote) {
			out[n++] = quote;
			i += 2;
		} else if (t[i] == '\\' && !is_name &&
			   (t[i + 1] == '\'' || t[i + 1] == '"' || t[i + 1] == '\\')) {
			out[n++] = t[i + 1];
			i += 2;
		} else {
			out[n++] = t[i++];
		}
	}
	out[n] = '\0';
	if (is_name && n == 0)
		return tf_fail(ps, start, "empty quoted name");
	ps->cur.kind = is_name ? TK_QIDENT : TK_STRING;
	ps->cur.s = out;
	ps->cur.len = n;
	ps->p = end + 1;
	return 0;
}

/* Integers (int64) and decimals, optionally negative; no exponent. */
static int tf_lex_number(struct tf_parser *ps)
{
	const char *t = ps->text;
	size_t start = ps->p, i = ps->p;
	int is_real = 0;
	char buf[64];

	if (t[i] == '-')
		i++;
	while (i < ps->len && tf_is_digit(t[i]))
		i++;
	if (i < ps->len && t[i] == '.') {
		is_real = 1;
		i++;
		if (i >= ps->len || !tf_is_digit(t[i]))
			return tf_fail(ps, start, "malformed number");
		while (i < ps->len && tf_is_digit(t[i]))
			i++;
	}
	if (i < ps->len && (tf_is_ident_char(t[i]) || t[i] == '\'' || t[i] == '"' || t[i] == '`'))
		return tf_fail(ps, start, "malformed number");
	if (i - start >= sizeof(buf))
		return tf_fail(ps, start, "number out of range");
	memcpy(buf, t + start, i - start);
	buf[i - start] = '\0';
	errno = 0;
	if (is_real) {
		ps->cur.kind = TK_REAL;
		ps->cur.d = strtod(buf, NULL);
		if (errno || !isfinite(ps->cur.d))
			return tf_fail(ps, start, "number out of range");
	} else {
		ps->cur.kind = TK_INT;
		ps->cur.i = strtoll(buf, NULL, 10);
		if (errno)
			return tf_fail(ps, start, "number out of range");
	}
	ps->p = i;
	return 0;
}

static int tf_next(struct tf_parser *ps)
{
	const char *t = ps->text;
	char c;

	while (ps->p < ps->len && tf_is_space(t[ps->p]))
		ps->p++;
	memset(&ps->cur, 0, sizeof(ps->cur));
	ps->cur.pos = ps->p;
	if (ps->p >= ps->len) {
		ps->cur.kind = TK_END;
		return 0;
	}
	c = t[ps->p];
	if (tf_is_ident_start(c)) {
		size_t i = ps->p;

		while (i < ps->len && tf_is_ident_char(t[i]))
			i++;
		ps->cur.kind = TK_IDENT;
		ps->cur.s = t + ps->p;
		ps->cur.len = i - ps->p;
		ps->p = i;
		return 0;
	}
	if (tf_is_digit(c) || (c == '-' && ps->p + 1 < ps->len && tf_is_digit(t[ps->p + 1])))
		return tf_lex_number(ps);
	if (c == '\'' || c == '"')
		return tf_lex_quoted(ps, c, 0);
	if (c == '`')
		return tf_lex_quoted(ps, c, 1);
	ps->p++;
	switch (c) {
	case '(':
		ps->cur.kind = TK_LPAREN;
		return 0;
	case ')':
		ps->cur.kind = TK_RPAREN;
		return 0;
	case ',':
		ps->cur.kind = TK_COMMA;
		return 0;
	case '=':
		ps->cur.kind = TK_CMP;
		ps->cur.op = TF_OP_EQ;
		return 0;
	case '!':
		if (ps->p < ps->len && t[ps->p] == '=') {
			ps->p++;
			ps->cur.kind = TK_CMP;
			ps->cur.op = TF_OP_NE;
			return 0;
		}
		break;
	case '<':
		ps->cur.kind = TK_CMP;
		ps->cur.op = TF_OP_LT;
		if (ps->p < ps->len && t[ps->p] == '=') {
			ps->p++;
			ps->cur.op = TF_OP_LE;
		} else if (ps->p < ps->len && t[ps->p] == '>') {
			ps->p++;
			ps->cur.op = TF_OP_NE;
		}
		return 0;
	case '>':
		ps->cur.kind = TK_CMP;
		ps->cur.op = TF_OP_GT;
		if (ps->p < ps->len && t[ps->p] == '=') {
			ps->p++;
			ps->cur.op = TF_OP_GE;
		}
		return 0;
	}
	if ((unsigned char)c >= 0x21 && (unsigned char)c < 0x7f)
		return tf_fail(ps, ps->cur.pos, "unexpected character '%c'", c);
	return tf_fail(ps, ps->cur.pos, "unexpected byte 0x%02x", (unsigned char)c);
}

static int tf_is_kw(const struct tf_tok *tok, const char *kw)
{
	return tok->kind == TK_IDENT && strlen(kw) == tok->len &&
	       strncasecmp(tok->s, kw, tok->len) == 0;
}

static int tf_is_keyword(const struct tf_tok *tok)
{
	static const char *const kws[] = {"AND", "OR", "NOT", "IN", "LIKE", "REGEXP"};
	size_t i;

	for (i = 0; i < sizeof(kws) / sizeof(kws[0]); i++)
		if (tf_is_kw(tok, kws[i]))
			return 1;
	return 0;
}

/* Describes the current token for "expected X, found Y" messages. */
static const char *tf_tok_desc(const struct tf_parser *ps, char *buf, size_t size)
{
	const struct tf_tok *tok = &ps->cur;
	char name[TF_MSG_NAME_MAX];

	switch (tok->kind) {
	case TK_END:
		return "the end of the filter";
	case TK_IDENT:
		snprintf(buf, size, "'%s'", tf_msg_name(name, sizeof(name), tok->s, tok->len));
		return buf;
	case TK_QIDENT:
		return "a quoted name";
	case TK_STRING:
		return "a string";
	case TK_INT:
	case TK_REAL:
		return "a number";
	case TK_LPAREN:
		return "'('";
	case TK_RPAREN:
		return "')'";
	case TK_COMMA:
		return "','";
	case TK_CMP:
		return "a comparison operator";
	}
	return "?";
}

/* ---- patterns ------------------------------------------------------------------------- */

/*
 * Builds the two forms of a LIKE pattern. In the pattern, % is any sequence, _ any one
 * character and a backslash makes the next byte literal (a trailing backslash is an error).
 * GLOB (SQLite, case-sensitive): * ? and the literal bytes, with * ? [ written as [*] [?] [[].
 * LIKE (ClickHouse): % _ and the literal bytes, with % _ \ written as \% \_ \\.
 */
static int tf_like_forms(struct tf_parser *ps, struct tf_value *v, size_t pos)
{
	char *glob = tf_alloc(ps->e, 3 * v->len + 1);
	char *like = tf_alloc(ps->e, 2 * v->len + 1);
	size_t g = 0, l = 0, i;

	for (i = 0; i < v->len; i++) {
		char c = v->s[i];

		if (c == '%' || c == '_') {
			glob[g++] = c == '%' ? '*' : '?';
			like[l++] = c;
			continue;
		}
		if (c == '\\') {
			if (++i >= v->len)
				return tf_fail(ps, pos,
					       "LIKE pattern ends with an escape character");
			c = v->s[i];
		}
		if (c == '*' || c == '?' || c == '[') {
			glob[g++] = '[';
			glob[g++] = c;
			glob[g++] = ']';
		} else {
			glob[g++] = c;
		}
		if (c == '%' || c == '_' || c == '\\')
			like[l++] = '\\';
		like[l++] = c;
	}
	glob[g] = '\0';
	like[l] = '\0';
	v->glob = glob;
	v->glob_len = g;
	v->like = like;
	v->like_len = l;
	return 0;
}

/*
 * glibc's regcomp is slow on some small patterns: it copies the operand of {m,n} n times and of
 * + twice, and its epsilon-closure work grows much faster than linearly with the loops inside
 * such copies ((a|b*)+{64} takes 60 ms, ((a?|b?|c?)+){64} more than 10 s). So before regcomp
 * sees a pattern this scan rejects, with a message:
 *   - back-references (not in ClickHouse's re2; exponential to match in glibc);
 *   - a quantifier right after a quantifier (a** a+? a{2}{3}; re2 rejects most of them too);
 *   - + or {m,n} applied to a group that contains a quantifier (nested quantifiers);
 *   - more than TF_MAX_REGEX_COST atoms once counted repetitions are expanded.
 * It also rejects what the two engines read differently, so that a filter means the same on
 * SQLite (glibc POSIX ERE) and ClickHouse (re2): a backslash before a letter or digit (\d is a
 * class in re2 and a plain 'd' in glibc), an unmatched ')', {,n} (literal text in re2) and counts
 * above TF_MAX_REGEX_REPEAT (an error in re2).
 * What remains compiles in milliseconds ((a|b|c){1000}: 8 ms); fuzzing with a per-input time
 * limit looks for exceptions.
 */
static const char *tf_regex_screen(const char *re, size_t len)
{
	size_t sum[TF_MAX_REGEX_GROUPS + 1];	      /* expanded atoms per open group */
	unsigned char has_q[TF_MAX_REGEX_GROUPS + 1]; /* the group contains a quantifier */
	size_t last = 0; /* expanded size of the operand a quantifier would apply to */
	int last_q = 0;	 /* that operand contains a quantifier */
	int after_q = 0; /* the previous token was a quantifier */
	size_t depth = 0, i = 0;

	sum[0] = 0;
	has_q[0] = 0;
	while (i < len) {
		char c = re[i];
		size_t copies = 0;

		if (c == '*' || c == '?' || c == '+' ||
		    (c == '{' && i + 1 < len && (tf_is_digit(re[i + 1]) || re[i + 1] == ','))) {
			if (after_q)
				return "a quantifier follows a quantifier in REGEXP";
			if (c == '{') {
				/* {m} {m,} {m,n}; a malformed one is left to regcomp. */
				size_t m = 0, n, j = i + 1;

				if (re[j] == ',')
					return "write {0,n} instead of {,n} in REGEXP";

				while (j < len && tf_is_digit(re[j]) && m < 100000)
					m = m * 10 + (size_t)(re[j++] - '0');
				n = m;
				if (j < len && re[j] == ',') {
					j++;
					n = m + 1;
					if (j < len && tf_is_digit(re[j])) {
						n = 0;
						while (j < len && tf_is_digit(re[j]) && n < 100000)
							n = n * 10 + (size_t)(re[j++] - '0');
					}
				}
				if (j < len && re[j] == '}')
					j++;
				if (m > TF_MAX_REGEX_REPEAT || n > TF_MAX_REGEX_REPEAT + 1)
					return "repetition count above 1000 in REGEXP";
				copies = (m > n ? m : n) + 1;
				i = j;
			} else {
				copies = c == '+' ? 2 : 0;
				i++;
			}
			if (copies && last_q)
				return "nested quantifiers are not supported in REGEXP";
			if (copies) {
				/* The operand was counted once already; both factors are bounded
				 * (the limit and 100001), so the product fits. */
				sum[depth] += last * (copies - 1);
				if (sum[depth] > TF_MAX_REGEX_COST)
					return "regular expression too complex";
			}
			has_q[depth] = 1;
			after_q = 1;
			continue;
		}
		after_q = 0;
		if (c == '(') {
			if (++depth > TF_MAX_REGEX_GROUPS)
				return "regular expression nested too deeply";
			sum[depth] = 0;
			has_q[depth] = 0;
			last = 0;
			last_q = 0;
			i++;
			continue;
		}
		if (c == ')' && depth > 0) {
			last = sum[depth];
			last_q = has_q[depth];
			depth--;
			sum[depth] += last;
			has_q[depth] |= (unsigned char)last_q;
			i++;
			continue;
		}
		if (c == ')')
			return "unmatched ')' in REGEXP";
		if (c == '\\' && i + 1 < len) {
			if (re[i + 1] >= '1' && re[i + 1] <= '9')
				return "back-references are not supported in REGEXP";
			if (tf_is_ident_start(re[i + 1]) || tf_is_digit(re[i + 1]))
				return "a backslash before a letter or digit is not supported in "
				       "REGEXP";
			i += 2;
		} else if (c == '[') {
			/* A bracket expression is one atom: skip to its closing ']'. */
			size_t j = i + 1;

			if (j < len && re[j] == '^')
				j++;
			if (j < len && re[j] == ']')
				j++;
			while (j < len && re[j] != ']') {
				if (re[j] == '[' && j + 1 < len &&
				    (re[j + 1] == ':' || re[j + 1] == '.' || re[j + 1] == '=')) {
					char end = re[j + 1];

					j += 2;
					while (j + 1 < len && !(re[j] == end && re[j + 1] == ']'))
						j++;
					j += 2;
				} else {
					j++;
				}
			}
			i = j + 1;
		} else {
			i++;
		}
		last = 1;
		last_q = 0;
		if (++sum[depth] > TF_MAX_REGEX_COST)
			return "regular expression too complex";
	}
	while (depth > 0) {
		sum[depth - 1] += sum[depth];
		depth--;
		if (sum[depth] > TF_MAX_REGEX_COST)
			return "regular expression too complex";
	}
	return NULL;
}

static int tf_check_regex(struct tf_parser *ps, const struct tf_value *v, size_t pos)
{
	const char *why;
	char msg[128];
	regex_t re;
	int rc;

	if (v->len > TF_MAX_REGEX_LEN)
		return tf_fail(ps, pos, "regular expression longer than %d bytes",
			       TF_MAX_REGEX_LEN);
	why = tf_regex_screen(v->s, v->len);
	if (why)
		return tf_fail(ps, pos, "%s", why);
	rc = regcomp(&re, v->s, REG_EXTENDED | REG_NOSUB);
	if (rc != 0) {
		regerror(rc, &re, msg, sizeof(msg));
		return tf_fail(ps, pos, "invalid regular expression (%s)", msg);
	}
	regfree(&re);
	return 0;
}

/* ---- parser --------------------------------------------------------------------------- */

static int tf_parse_or(struct tf_parser *ps, struct tf_node **out);

static struct tf_node *tf_new_node(struct tf_parser *ps, enum tf_kind kind)
{
	struct tf_node *n;

	if (ps->nodes >= TF_MAX_NODES)
		return NULL;
	ps->nodes++;
	n = tf_alloc(ps->e, sizeof(*n));
	n->kind = kind;
	n->column = -1;
	return n;
}

static const char *tf_field_desc(const struct tf_node *n, char *buf, size_t size)
{
	if (n->column >= 0)
		return tf_columns[n->column].name;
	return tf_msg_name(buf, size, n->tag, n->tag_len);
}

/* Reads one value for field n with operator op; checks its type. */
static int tf_parse_value(struct tf_parser *ps, struct tf_node *n, struct tf_value **out)
{
	int is_int = n->column >= 0 && tf_columns[n->column].is_int;
	size_t pos = ps->cur.pos;
	char name[TF_MSG_NAME_MAX], desc[TF_MSG_NAME_MAX + 8];
	struct tf_value *v;
	int rc;

	if (ps->cur.kind != TK_STRING && ps->cur.kind != TK_INT && ps->cur.kind != TK_REAL)
		return tf_fail(ps, pos, "expected a value, found %s",
			       tf_tok_desc(ps, desc, sizeof(desc)));
	if (++ps->values > TF_MAX_VALUES)
		return tf_fail(ps, pos, "filter has more than %d values", TF_MAX_VALUES);
	if (n->op == TF_OP_LIKE || n->op == TF_OP_NOT_LIKE || n->op == TF_OP_REGEXP) {
		if (ps->cur.kind != TK_STRING)
			return tf_fail(ps, pos, "%s needs a quoted string pattern",
				       n->op == TF_OP_REGEXP ? "REGEXP" : "LIKE");
	} else if (is_int && ps->cur.kind == TK_STRING) {
		return tf_fail(ps, pos, "field '%s' is an integer; compare it with a number",
			       tf_field_desc(n, name, sizeof(name)));
	} else if (!is_int && ps->cur.kind != TK_STRING) {
		return tf_fail(ps, pos, "field '%s' is text; quote the value",
			       tf_field_desc(n, name, sizeof(name)));
	}
	v = tf_alloc(ps->e, sizeof(*v));
	switch (ps->cur.kind) {
	case TK_STRING:
		v->type = TF_PARAM_TEXT;
		v->s = ps->cur.s;
		v->len = ps->cur.len;
		break;
	case TK_INT:
		v->type = TF_PARAM_INT;
		v->i = ps->cur.i;
		break;
	default:
		v->type = TF_PARAM_REAL;
		v->d = ps->cur.d;
		break;
	}
	if (n->op == TF_OP_LIKE || n->op == TF_OP_NOT_LIKE)
		rc = tf_like_forms(ps, v, pos);
	else if (n->op == TF_OP_REGEXP)
		rc = tf_check_regex(ps, v, pos);
	else
		rc = 0;
	if (rc)
		return rc;
	*out = v;
	return tf_next(ps);
}

/* '(' value (',' value)* ')' after IN / NOT IN. */
static int tf_parse_list(struct tf_parser *ps, struct tf_node *n)
{
	struct tf_value **tail = &n->values;
	size_t count = 0, open = ps->cur.pos;
	char desc[TF_MSG_NAME_MAX + 8];
	int rc;

	if (ps->cur.kind != TK_LPAREN)
		return tf_fail(ps, ps->cur.pos, "expected '(' after IN, found %s",
			       tf_tok_desc(ps, desc, sizeof(desc)));
	rc = tf_next(ps);
	if (rc)
		return rc;
	if (ps->cur.kind == TK_RPAREN)
		return tf_fail(ps, open, "empty IN list");
	for (;;) {
		if (++count > TF_MAX_IN_LIST)
			return tf_fail(ps, ps->cur.pos, "IN list longer than %d values",
				       TF_MAX_IN_LIST);
		rc = tf_parse_value(ps, n, tail);
		if (rc)
			return rc;
		tail = &(*tail)->next;
		if (ps->cur.kind == TK_RPAREN)
			return tf_next(ps);
		if (ps->cur.kind != TK_COMMA)
			return tf_fail(ps, ps->cur.pos, "expected ',' or ')' in IN list, found %s",
				       tf_tok_desc(ps, desc, sizeof(desc)));
		rc = tf_next(ps);
		if (rc)
			return rc;
	}
}

/* field op value | field [NOT] IN (...) | field [NOT] LIKE 'p' | field REGEXP 'p' */
static int tf_parse_cmp(struct tf_parser *ps, struct tf_node **out)
{
	char name[TF_MSG_NAME_MAX], desc[TF_MSG_NAME_MAX + 8];
	size_t field_pos = ps->cur.pos, op_pos;
	int quoted = ps->cur.kind == TK_QIDENT;
	struct tf_node *n;
	int rc, kind;

	if ((ps->cur.kind != TK_IDENT && ps->cur.kind != TK_QIDENT) || tf_is_keyword(&ps->cur))
		return tf_fail(ps, field_pos, "expected a field name or '(', found %s",
			       tf_tok_desc(ps, desc, sizeof(desc)));
	n = tf_new_node(ps, TF_CMP);
	if (!n)
		return tf_fail(ps, field_pos, "filter has more than %d conditions", TF_MAX_NODES);
	kind = tf_resolve(ps->cur.s, ps->cur.len, quoted, &n->column, &n->tag, &n->tag_len);
	if (kind == 0)
		return tf_fail(ps, field_pos, "unknown field '%s'",
			       tf_msg_name(name, sizeof(name), ps->cur.s, ps->cur.len));
	if (kind < 0)
		return tf_fail(ps, field_pos, "custom tag name missing after '%s'",
			       tf_msg_name(name, sizeof(name), ps->cur.s, ps->cur.len));
	rc = tf_next(ps);
	if (rc)
		return rc;
	op_pos = ps->cur.pos;
	if (ps->cur.kind == TK_CMP) {
		n->op = ps->cur.op;
	} else if (tf_is_kw(&ps->cur, "IN")) {
		n->op = TF_OP_IN;
	} else if (tf_is_kw(&ps->cur, "LIKE")) {
		n->op = TF_OP_LIKE;
	} else if (tf_is_kw(&ps->cur, "REGEXP")) {
		n->op = TF_OP_REGEXP;
	} else if (tf_is_kw(&ps->cur, "NOT")) {
		rc = tf_next(ps);
		if (rc)
			return rc;
		if (tf_is_kw(&ps->cur, "IN"))
			n->op = TF_OP_NOT_IN;
		else if (tf_is_kw(&ps->cur, "LIKE"))
			n->op = TF_OP_NOT_LIKE;
		else
			return tf_fail(ps, ps->cur.pos, "expected IN or LIKE after NOT, found %s",
				       tf_tok_desc(ps, desc, sizeof(desc)));
	} else {
		return tf_fail(ps, op_pos, "expected an operator after field '%s', found %s",
			       tf_field_desc(n, name, sizeof(name)),
			       tf_tok_desc(ps, desc, sizeof(desc)));
	}
	if ((n->op == TF_OP_LIKE || n->op == TF_OP_NOT_LIKE || n->op == TF_OP_REGEXP) &&
	    n->column >= 0 && tf_columns[n->column].is_int)
		return tf_fail(ps, op_pos, "%s needs a text field; '%s' is an integer",
			       n->op == TF_OP_REGEXP ? "REGEXP" : "LIKE",
			       tf_columns[n->column].name);
	rc = tf_next(ps);
	if (rc)
		return rc;
	if (n->op == TF_OP_IN || n->op == TF_OP_NOT_IN)
		rc = tf_parse_list(ps, n);
	else
		rc = tf_parse_value(ps, n, &n->values);
	if (rc)
		return rc;
	*out = n;
	return 0;
}

static int tf_enter(struct tf_parser *ps)
{
	if (++ps->depth > TF_MAX_DEPTH)
		return tf_fail(ps, ps->cur.pos, "filter nested deeper than %d levels",
			       TF_MAX_DEPTH);
	return 0;
}

/* NOT not | '(' or ')' | comparison */
static int tf_parse_not(struct tf_parser *ps, struct tf_node **out)
{
	char desc[TF_MSG_NAME_MAX + 8];
	struct tf_node *n;
	size_t open;
	int rc;

	if (tf_is_kw(&ps->cur, "NOT")) {
		rc = tf_enter(ps);
		if (rc)
			return rc;
		n = tf_new_node(ps, TF_NOT);
		if (!n)
			return tf_fail(ps, ps->cur.pos, "filter has more than %d conditions",
				       TF_MAX_NODES);
		rc = tf_next(ps);
		if (rc)
			return rc;
		rc = tf_parse_not(ps, &n->kids);
		if (rc)
			return rc;
		ps->depth--;
		*out = n;
		return 0;
	}
	if (ps->cur.kind != TK_LPAREN)
		return tf_parse_cmp(ps, out);
	open = ps->cur.pos;
	rc = tf_enter(ps);
	if (rc)
		return rc;
	rc = tf_next(ps);
	if (rc)
		return rc;
	if (ps->cur.kind == TK_RPAREN)
		return tf_fail(ps, open, "empty parentheses");
	rc = tf_parse_or(ps, out);
	if (rc)
		return rc;
	if (ps->cur.kind != TK_RPAREN)
		return tf_fail(ps, ps->cur.pos, "expected ')' to close '(' at %zu, found %s", open,
			       tf_tok_desc(ps, desc, sizeof(desc)));
	ps->depth--;
	return tf_next(ps);
}

/* One level of n-ary AND or OR: operand (KW operand)*. */
static int tf_parse_chain(struct tf_parser *ps, struct tf_node **out, enum tf_kind kind)
{
	const char *kw = kind == TF_AND ? "AND" : "OR";
	struct tf_node *first, *n, **tail;
	int rc;

	rc = kind == TF_AND ? tf_parse_not(ps, &first) : tf_parse_chain(ps, &first, TF_AND);
	if (rc)
		return rc;
	if (!tf_is_kw(&ps->cur, kw)) {
		*out = first;
		return 0;
	}
	n = tf_new_node(ps, kind);
	if (!n)
		return tf_fail(ps, ps->cur.pos, "filter has more than %d conditions", TF_MAX_NODES);
	n->kids = first;
	tail = &first->next;
	while (tf_is_kw(&ps->cur, kw)) {
		rc = tf_next(ps);
		if (rc)
			return rc;
		rc = kind == TF_AND ? tf_parse_not(ps, tail) : tf_parse_chain(ps, tail, TF_AND);
		if (rc)
			return rc;
		tail = &(*tail)->next;
	}
	*out = n;
	return 0;
}

static int tf_parse_or(struct tf_parser *ps, struct tf_node **out)
{
	return tf_parse_chain(ps, out, TF_OR);
}

int tagfilter_parse(const char *text, struct tf_expr **out, struct tf_error *err)
{
	struct tf_parser ps = {.text = text, .err = err};
	char desc[TF_MSG_NAME_MAX + 8];
	struct tf_node *root;
	int rc;

	if (err) {
		err->pos = 0;
		err->message[0] = '\0';
	}
	if (!out)
		return -EINVAL;
	*out = NULL;
	if (!text)
		return 0;
	ps.len = strnlen(text, TF_MAX_TEXT + 1);
	if (ps.len > TF_MAX_TEXT)
		return tf_fail(&ps, TF_MAX_TEXT, "filter longer than %d bytes", TF_MAX_TEXT);
	ps.e = calloc(1, sizeof(*ps.e));
	if (!ps.e) {
		log_error("out of memory allocating a filter tree");
		abort();
	}
	rc = tf_next(&ps);
	if (rc)
		goto fail;
	if (ps.cur.kind == TK_END) {
		tagfilter_free(ps.e);
		return 0;
	}
	rc = tf_parse_or(&ps, &root);
	if (rc)
		goto fail;
	if (ps.cur.kind != TK_END) {
		rc = tf_fail(&ps, ps.cur.pos, "unexpected %s after the end of the expression",
			     tf_tok_desc(&ps, desc, sizeof(desc)));
		goto fail;
	}
	ps.e->root = root;
	*out = ps.e;
	return 0;
fail:
	tagfilter_free(ps.e);
	return rc;
}

/* ---- compiler ------------------------------------------------------------------------- */

struct tf_emit {
	enum tf_dialect dialect;
	struct strbuf *sb;
	struct tf_params *params;
};

static void tf_push_param(struct tf_params *params, const struct tf_param *p)
{
	if (params->n == params->cap) {
		size_t cap = params->cap ? params->cap * 2 : 16;
		struct tf_param *items = realloc(params->items, cap * sizeof(*items));

		if (!items) {
			log_error("out of memory growing filter parameters to %zu", cap);
			abort();
		}
		params->items = items;
		params->cap = cap;
	}
	params->items[params->n++] = *p;
}

/*
 * A ClickHouse string literal that reads back as exactly these bytes: backslash and quote
 * escaped, control bytes and DEL as \xHH. Bytes >= 0x80 are copied: the lexer of ClickHouse
 * ends a literal only at an unescaped quote.
 */
static void tf_ch_quote(struct strbuf *sb, const char *s, size_t len)
{
	static const char hex[] = "0123456789abcdef";
	size_t i;

	sb_grow(sb, len + 2);
	sb_putc(sb, '\'');
	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '\\' || c == '\'') {
			sb_putc(sb, '\\');
			sb_putc(sb, (char)c);
		} else if (c < 0x20 || c == 0x7f) {
			char esc[4] = {'\\', 'x', hex[c >> 4], hex[c & 15]};

			sb_append(sb, esc, sizeof(esc));
		} else {
			sb_putc(sb, (char)c);
		}
	}
	sb_putc(sb, '\'');
}

/* Text that becomes a '?' (SQLite) or an inline literal (ClickHouse). */
static void tf_emit_text(struct tf_emit *em, const char *s, size_t len)
{
	if (em->dialect == TF_SQLITE) {
		struct tf_param p = {.type = TF_PARAM_TEXT, .text = s, .len = len};

		sb_putc(em->sb, '?');
		tf_push_param(em->params, &p);
	} else {
		tf_ch_quote(em->sb, s, len);
	}
}

static void tf_emit_value(struct tf_emit *em, const struct tf_node *n, const struct tf_value *v)
{
	struct tf_param p = {.type = v->type};

	if (v->type == TF_PARAM_TEXT) {
		if (n->op == TF_OP_LIKE || n->op == TF_OP_NOT_LIKE) {
			if (em->dialect == TF_SQLITE)
				tf_emit_text(em, v->glob, v->glob_len);
			else
				tf_emit_text(em, v->like, v->like_len);
		} else {
			tf_emit_text(em, v->s, v->len);
		}
		return;
	}
	if (em->dialect == TF_SQLITE) {
		p.i = v->i;
		p.d = v->d;
		sb_putc(em->sb, '?');
		tf_push_param(em->params, &p);
	} else if (v->type == TF_PARAM_INT) {
		sb_put_i64(em->sb, v->i);
	} else {
		sb_printf(em->sb, "%.17g", v->d);
	}
}

static const char *tf_op_sql(enum tf_op op)
{
	switch (op) {
	case TF_OP_EQ:
		return "=";
	case TF_OP_NE:
		return "!=";
	case TF_OP_LT:
		return "<";
	case TF_OP_LE:
		return "<=";
	case TF_OP_GT:
		return ">";
	case TF_OP_GE:
		return ">=";
	case TF_OP_IN:
		return "IN";
	case TF_OP_NOT_IN:
		return "NOT IN";
	case TF_OP_LIKE:
		return "GLOB";
	case TF_OP_NOT_LIKE:
		return "NOT GLOB";
	case TF_OP_REGEXP:
		return "REGEXP";
	}
	return "?";
}

/* "lhs op value" for op in its positive or negative form; lhs is a column or a tag value. */
static void tf_emit_test(struct tf_emit *em, const struct tf_node *n, enum tf_op op,
			 const char *lhs)
{
	struct strbuf *sb = em->sb;
	const struct tf_value *v;

	if (em->dialect == TF_CLICKHOUSE &&
	    (op == TF_OP_LIKE || op == TF_OP_NOT_LIKE || op == TF_OP_REGEXP)) {
		sb_puts(sb, op == TF_OP_LIKE	   ? "like("
			    : op == TF_OP_NOT_LIKE ? "notLike("
						   : "match(");
		sb_puts(sb, lhs);
		sb_puts(sb, ", ");
		tf_emit_value(em, n, n->values);
		sb_putc(sb, ')');
		return;
	}
	sb_puts(sb, lhs);
	sb_putc(sb, ' ');
	sb_puts(sb, tf_op_sql(op));
	sb_putc(sb, ' ');
	if (op != TF_OP_IN && op != TF_OP_NOT_IN) {
		tf_emit_value(em, n, n->values);
		return;
	}
	sb_putc(sb, '(');
	for (v = n->values; v; v = v->next) {
		tf_emit_value(em, n, v);
		if (v->next)
			sb_puts(sb, ", ");
	}
	sb_putc(sb, ')');
}

/*
 * A custom tag. The positive operators need the tag to be present; != <> NOT IN NOT LIKE are
 * the exact negations of = = IN LIKE, so a row without the tag matches them (as it matches
 * NOT (tag = 'x')).
 */
static void tf_emit_tag(struct tf_emit *em, const struct tf_node *n)
{
	struct strbuf *sb = em->sb;
	enum tf_op op = n->op;
	int negate = 0;

	if (op == TF_OP_NE || op == TF_OP_NOT_IN || op == TF_OP_NOT_LIKE) {
		negate = 1;
		op = op == TF_OP_NE ? TF_OP_EQ : op == TF_OP_NOT_IN ? TF_OP_IN : TF_OP_LIKE;
	}
	if (em->dialect == TF_SQLITE) {
		sb_puts(sb, negate ? "(NOT EXISTS (" : "(EXISTS (");
		sb_puts(sb, "SELECT 1 FROM json_each(tag_names) n JOIN json_each(tag_values) v"
			    " ON v.key = n.key WHERE n.value = ");
		tf_emit_text(em, n->tag, n->tag_len);
		sb_puts(sb, " AND ");
		tf_emit_test(em, n, op, "v.value");
		sb_puts(sb, "))");
		return;
	}
	sb_puts(sb, negate ? "(NOT (has(tag_names, " : "(has(tag_names, ");
	tf_emit_text(em, n->tag, n->tag_len);
	sb_puts(sb, ") AND ");
	/* indexOf is 0 for a missing name and tag_values[0] is ''; has() makes absence exact. */
	{
		struct strbuf lhs = STRBUF_INIT;

		sb_puts(&lhs, "tag_values[indexOf(tag_names, ");
		tf_ch_quote(&lhs, n->tag, n->tag_len);
		sb_puts(&lhs, ")]");
		tf_emit_test(em, n, op, lhs.buf);
		sb_free(&lhs);
	}
	sb_puts(sb, negate ? "))" : ")");
}

static void tf_emit_node(struct tf_emit *em, const struct tf_node *n)
{
	const struct tf_node *k;

	switch (n->kind) {
	case TF_AND:
	case TF_OR:
		sb_putc(em->sb, '(');
		for (k = n->kids; k; k = k->next) {
			tf_emit_node(em, k);
			if (k->next)
				sb_puts(em->sb, n->kind == TF_AND ? " AND " : " OR ");
		}
		sb_putc(em->sb, ')');
		return;
	case TF_NOT:
		sb_puts(em->sb, "(NOT ");
		tf_emit_node(em, n->kids);
		sb_putc(em->sb, ')');
		return;
	case TF_CMP:
		if (n->column < 0) {
			tf_emit_tag(em, n);
			return;
		}
		sb_putc(em->sb, '(');
		tf_emit_test(em, n, n->op, tf_columns[n->column].name);
		sb_putc(em->sb, ')');
		return;
	}
}

int tagfilter_compile(const struct tf_expr *expr, enum tf_dialect dialect, struct strbuf *sql,
		      struct tf_params *params)
{
	struct tf_emit em = {.dialect = dialect, .sb = sql, .params = params};

	if (!expr || !expr->root || !sql || (dialect != TF_SQLITE && dialect != TF_CLICKHOUSE))
		return -EINVAL;
	if (dialect == TF_SQLITE && !params)
		return -EINVAL;
	tf_emit_node(&em, expr->root);
	return 0;
}

void tagfilter_params_free(struct tf_params *params)
{
	if (!params)
		return;
	free(params->items);
	params->items = NULL;
	params->n = 0;
	params->cap = 0;
}
