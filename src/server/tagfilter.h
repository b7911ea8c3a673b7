/*
 * tagfilter — ember's grammar for the API's `tag_filter` string, and its compilation to SQL.
 *
 * The text is parsed into an expression tree against an allow-list of fields (the logical
 * columns of profile.in_process, plus custom tags such as `k8s.label.app` that live in
 * tag_names/tag_values). The tree is then compiled for one SQL dialect. Literal values never
 * enter the SQL text for SQLite (they become bound parameters); for ClickHouse 18.16, which has
 * no query parameters, they are written as quoted literals with every byte escaped. No input can
 * change the structure of the SQL.
 *
 * Grammar (keywords case-insensitive):
 *   expr    := or
 *   or      := and ( OR and )*
 *   and     := not ( AND not )*
 *   not     := NOT not | primary
 *   primary := '(' expr ')' | field op value | field [NOT] IN '(' value (',' value)* ')'
 *            | field [NOT] LIKE string | field REGEXP string
 *   op      := = | != | <> | < | <= | > | >=
 *   field   := identifier (letters, digits, '_', '.', '-'; may be `backquoted`)
 *   value   := 'single-quoted string' ('' or \' escapes a quote, \\ a backslash) | number
 *
 * Ownership: tagfilter_parse allocates the tree; tagfilter_free releases it. Thread-safe:
 * no global state.
 */
#ifndef EMBER_SERVER_TAGFILTER_H
#define EMBER_SERVER_TAGFILTER_H

#include <stddef.h>
#include <stdint.h>

#include "common/strbuf.h"

struct tf_expr;

struct tf_error {
	size_t pos;       /* 0-based byte offset in the filter text where the problem is */
	char message[256]; /* e.g. "unknown field 'podx' at position 0" */
};

enum tf_dialect { TF_SQLITE, TF_CLICKHOUSE };

enum tf_param_type { TF_PARAM_TEXT, TF_PARAM_INT, TF_PARAM_REAL };

struct tf_param {
	enum tf_param_type type;
	const char *text; /* TEXT: points into the tree; valid while the tree lives */
	size_t len;
	int64_t i;
	double d;
};

struct tf_params {
	struct tf_param *items;
	size_t n;
	size_t cap;
};

/* Returns 0 and a tree (NULL for an empty or all-blank filter), or -EINVAL and fills err. */
int tagfilter_parse(const char *text, struct tf_expr **out, struct tf_error *err);
void tagfilter_free(struct tf_expr *expr);

/*
 * Appends a parenthesised boolean SQL expression to sql. Column names are the logical names of
 * profile.in_process (the store's query exposes them under these names). SQLite: values are
 * appended to params as '?' placeholders, in order. ClickHouse: values are inlined as quoted
 * literals and params is left untouched (may be NULL).
 */
int tagfilter_compile(const struct tf_expr *expr, enum tf_dialect dialect, struct strbuf *sql,
		      struct tf_params *params);
void tagfilter_params_free(struct tf_params *params);

/* 1 if name is an allowed field (column or custom tag). */
int tagfilter_field_known(const char *name);

#endif
