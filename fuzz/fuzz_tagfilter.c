/*
 * fuzz_tagfilter — libFuzzer target for the tag_filter parser and compiler.
 *
 * Parses arbitrary bytes (a NUL-terminated copy), compiles an accepted tree for both dialects
 * and checks the invariants that keep the SQL safe: SQLite SQL holds no literal at all (one '?'
 * per parameter, no quote, no ';'), and ClickHouse SQL is a sequence of well-formed literals
 * (only \\ \' \xHH escapes, no raw control byte) with no ';' outside them. A violation aborts.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/tagfilter.h"

static void fuzz_check_sqlite(const struct strbuf *sql, const struct tf_params *params)
{
	size_t i, marks = 0;

	for (i = 0; i < sql->len; i++) {
		char c = sql->buf[i];

		if (c == '\'' || c == '"' || c == ';' || c == '`' || c == '\\')
			abort();
		if (c == '-' && i + 1 < sql->len && sql->buf[i + 1] == '-')
			abort();
		marks += c == '?';
	}
	if (marks != params->n)
		abort();
}

static void fuzz_check_clickhouse(const struct strbuf *sql)
{
	static const char hex[] = "0123456789abcdef";
	size_t i = 0;

	while (i < sql->len) {
		unsigned char c = (unsigned char)sql->buf[i++];

		if (c == ';' || c == '"' || c == '`' || c == '\\' || c < 0x20)
			abort();
		if (c == '-' && i < sql->len && sql->buf[i] == '-')
			abort();
		if (c != '\'')
			continue;
		for (;;) {
			if (i >= sql->len)
				abort();
			c = (unsigned char)sql->buf[i++];
			if (c < 0x20 || c == 0x7f)
				abort();
			if (c == '\'')
				break;
			if (c != '\\')
				continue;
			if (i >= sql->len)
				abort();
			c = (unsigned char)sql->buf[i++];
			if (c == 'x') {
				if (i + 2 > sql->len || !memchr(hex, sql->buf[i], 16) ||
				    !memchr(hex, sql->buf[i + 1], 16))
					abort();
				i += 2;
			} else if (c != '\\' && c != '\'') {
				abort();
			}
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct strbuf sq = STRBUF_INIT, ch = STRBUF_INIT;
	struct tf_params params = {0};
	struct tf_expr *expr = NULL;
	struct tf_error err;
	char *text = malloc(size + 1);
	int rc;

	if (!text)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	rc = tagfilter_parse(text, &expr, &err);
	if (rc == 0 && expr) {
		if (tagfilter_compile(expr, TF_SQLITE, &sq, &params) != 0)
			abort();
		if (tagfilter_compile(expr, TF_CLICKHOUSE, &ch, NULL) != 0)
			abort();
		fuzz_check_sqlite(&sq, &params);
		fuzz_check_clickhouse(&ch);
	} else if (rc != 0 && (expr || err.message[0] == '\0' || err.pos > size)) {
		abort();
	}
	sb_free(&sq);
	sb_free(&ch);
	tagfilter_params_free(&params);
	tagfilter_free(expr);
	free(text);
	return 0;
}
