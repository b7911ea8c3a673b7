/*
 * folded — the folded-stack text of stackcollapse-perf.pl, bpftrace and bcc's `profile -f`:
 * one stack per line, frames root first joined by ';', then whitespace and a count:
 *
 *	[p] app;main;work;[k] do_syscall_64 10101
 *
 * The value is the last whitespace-separated token, a non-negative decimal integer no larger
 * than INT64_MAX; the stack is everything before the last run of spaces/tabs, so frames may
 * contain spaces. Lines end in "\n" or "\r\n"; trailing spaces and tabs are ignored; blank lines
 * and lines whose first byte is '#' are skipped. The last line needs no newline.
 *
 * folded_parse() walks a buffer without copying it: good lines go to the callback (the stack
 * points into the buffer), bad lines are counted and the first max_errs recorded with their
 * line number and reason; a bad line never stops the parse. Stateless and thread-safe.
 */
#ifndef EMBER_COMMON_FOLDED_H
#define EMBER_COMMON_FOLDED_H

#include <stddef.h>
#include <stdint.h>

#include "common/strbuf.h"

/* Longest accepted line, newline excluded. */
#define FOLDED_MAX_LINE (1u << 20)

enum folded_err {
	FOLDED_ERR_NO_VALUE = 1, /* one token only: no "stack value" separation */
	FOLDED_ERR_BAD_VALUE,    /* last token is not a non-negative decimal integer */
	FOLDED_ERR_OVERFLOW,     /* value larger than INT64_MAX */
	FOLDED_ERR_EMPTY_STACK,  /* nothing before the value */
	FOLDED_ERR_NUL,          /* a NUL byte in the line */
	FOLDED_ERR_TOO_LONG,     /* more than FOLDED_MAX_LINE bytes */
};

struct folded_error {
	size_t line; /* 1-based */
	enum folded_err kind;
};

/* A short English reason, e.g. "missing value". */
const char *folded_strerror(enum folded_err kind);

/* Called for each good line. A negative return stops the parse and is returned by it. */
typedef int (*folded_cb)(void *arg, const char *stack, size_t len, int64_t value,
			 size_t line);

/*
 * Parses buf[0..len). Returns 0, or the callback's negative value when it stopped the parse.
 * *n_errs (when not NULL) receives the number of bad lines; the first max_errs of them are
 * written to errs (which may be NULL when max_errs is 0).
 */
int folded_parse(const char *buf, size_t len, folded_cb cb, void *arg, struct folded_error *errs,
		 size_t max_errs, size_t *n_errs);

/*
 * Appends "stack value\n". -EINVAL (nothing appended) when the line would not read back as the
 * same stack and value: empty stack, a NUL, '\r' or '\n' in it, a trailing space or tab, a
 * leading '#', or a negative value.
 */
int folded_write(struct strbuf *sb, const char *stack, size_t len, int64_t value);

#endif
