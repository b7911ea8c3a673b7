/*
 * strbuf — a growable byte buffer, always NUL-terminated.
 *
 * The owner frees it with sb_free(). Allocation failure aborts the process: every caller
 * bounds what it appends (request bodies, result rows), so running out of memory here is a
 * bug, not an input error. A strbuf starts as STRBUF_INIT.
 */
#ifndef EMBER_COMMON_STRBUF_H
#define EMBER_COMMON_STRBUF_H

#include <stddef.h>
#include <stdint.h>

struct strbuf {
	char *buf;
	size_t len;
	size_t cap;
};

#define STRBUF_INIT {NULL, 0, 0}

void sb_grow(struct strbuf *sb, size_t extra);
void sb_append(struct strbuf *sb, const void *data, size_t len);
void sb_puts(struct strbuf *sb, const char *s);
void sb_putc(struct strbuf *sb, char c);
void sb_printf(struct strbuf *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sb_put_i64(struct strbuf *sb, int64_t v);
void sb_reset(struct strbuf *sb);
/* Hands the buffer to the caller (who frees it) and leaves sb empty. Never NULL. */
char *sb_detach(struct strbuf *sb, size_t *len);
void sb_free(struct strbuf *sb);

/*
 * JSON string body, the way Go's encoding/json writes it (DeepFlow's querier): '"', '\\' and
 * control characters escaped, '<' '>' '&' as \u003c \u003e \u0026, U+2028/U+2029 escaped,
 * invalid UTF-8 replaced by U+FFFD. Does not add the surrounding quotes.
 */
void sb_json_escape(struct strbuf *sb, const char *s, size_t len);
/* Same, with the surrounding quotes. */
void sb_json_str(struct strbuf *sb, const char *s);

#endif
