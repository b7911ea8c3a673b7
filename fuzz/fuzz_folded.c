/*
 * fuzz_folded — folded_parse on arbitrary bytes: never crashes, counts every line as good, bad
 * or skipped, hands out only well-formed stacks, and every stack folded_write accepts reads back
 * as the same stack and value.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/folded.h"

#define FUZZ_FOLDED_MAX_ERRS 8

struct fuzz_state {
	size_t good;
	size_t last_line;
	const char *want_stack; /* set while re-parsing one written line */
	size_t want_len;
	int64_t want_value;
};

static int fuzz_check_line(void *arg, const char *stack, size_t len, int64_t value, size_t line)
{
	struct fuzz_state *st = arg;

	if (len == 0 || value < 0 || line <= st->last_line || memchr(stack, '\n', len) ||
	    memchr(stack, '\0', len) || stack[len - 1] == ' ' || stack[len - 1] == '\t' ||
	    stack[0] == '#')
		abort();
	st->last_line = line;
	st->good++;
	if (st->want_stack) {
		if (len != st->want_len || memcmp(stack, st->want_stack, len) != 0 ||
		    value != st->want_value)
			abort();
		return 0;
	}
	{
		struct strbuf sb = STRBUF_INIT;
		struct fuzz_state again = {
			.want_stack = stack, .want_len = len, .want_value = value};
		size_t n_errs;

		if (folded_write(&sb, stack, len, value) == 0) {
			if (folded_parse(sb.buf, sb.len, fuzz_check_line, &again, NULL, 0,
					 &n_errs) != 0 ||
			    again.good != 1 || n_errs != 0)
				abort();
		}
		sb_free(&sb);
	}
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct folded_error errs[FUZZ_FOLDED_MAX_ERRS];
	struct fuzz_state st = {0};
	size_t n_errs = 0, lines = 0, last_err = 0;

	if (folded_parse((const char *)data, size, fuzz_check_line, &st, errs,
			 FUZZ_FOLDED_MAX_ERRS, &n_errs) != 0)
		abort();
	for (size_t i = 0; i < size; i++)
		lines += data[i] == '\n';
	if (size && data[size - 1] != '\n')
		lines++;
	if (st.good + n_errs > lines)
		abort();
	for (size_t i = 0; i < n_errs && i < FUZZ_FOLDED_MAX_ERRS; i++) {
		if (errs[i].line <= last_err || errs[i].line > lines ||
		    errs[i].kind < FOLDED_ERR_NO_VALUE || errs[i].kind > FOLDED_ERR_TOO_LONG)
			abort();
		last_err = errs[i].line;
	}
	return 0;
}
