/*
 * folded — see folded.h. One pass over the buffer: memchr finds each line end, the value is
 * taken from the right end of the line, so frames may hold any byte but ';' and '\n'.
 */
#include "common/folded.h"

#include <errno.h>
#include <string.h>

const char *folded_strerror(enum folded_err kind)
{
	switch (kind) {
	case FOLDED_ERR_NO_VALUE: return "missing value";
	case FOLDED_ERR_BAD_VALUE: return "value is not a non-negative integer";
	case FOLDED_ERR_OVERFLOW: return "value overflows a 64-bit integer";
	case FOLDED_ERR_EMPTY_STACK: return "empty stack";
	case FOLDED_ERR_NUL: return "NUL byte in line";
	case FOLDED_ERR_TOO_LONG: return "line longer than 1 MiB";
	}
	return "unknown error";
}

static int folded_is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\r';
}

/* 0 and the value, or a positive enum folded_err. */
static int folded_parse_value(const char *s, size_t n, int64_t *out)
{
	uint64_t v = 0;

	for (size_t i = 0; i < n; i++) {
		unsigned d = (unsigned char)s[i] - '0';

		if (d > 9)
			return FOLDED_ERR_BAD_VALUE;
		if (v > ((uint64_t)INT64_MAX - d) / 10)
			return FOLDED_ERR_OVERFLOW;
		v = v * 10 + d;
	}
	*out = (int64_t)v;
	return 0;
}

/* One line without its '\n': 0 with the stack and value, -1 to skip it, or an error kind. */
static int folded_parse_line(const char *s, size_t n, size_t *stack_len, int64_t *value)
{
	size_t end = n, vstart;

	if (n > FOLDED_MAX_LINE)
		return FOLDED_ERR_TOO_LONG;
	if (memchr(s, '\0', n))
		return FOLDED_ERR_NUL;
	while (end > 0 && folded_is_space(s[end - 1]))
		end--;
	if (end == 0 || s[0] == '#')
		return -1;
	vstart = end;
	while (vstart > 0 && s[vstart - 1] != ' ' && s[vstart - 1] != '\t')
		vstart--;
	if (vstart == 0)
		return FOLDED_ERR_NO_VALUE;
	*stack_len = vstart;
	while (*stack_len > 0 && folded_is_space(s[*stack_len - 1]))
		(*stack_len)--;
	if (*stack_len == 0)
		return FOLDED_ERR_EMPTY_STACK;
	return folded_parse_value(s + vstart, end - vstart, value);
}

int folded_parse(const char *buf, size_t len, folded_cb cb, void *arg, struct folded_error *errs,
		 size_t max_errs, size_t *n_errs)
{
	size_t pos = 0, line = 0, bad = 0;
	int rc = 0;

	while (pos < len) {
		const char *s = buf + pos;
		const char *nl = memchr(s, '\n', len - pos);
		size_t n = nl ? (size_t)(nl - s) : len - pos;
		size_t stack_len = 0;
		int64_t value = 0;
		int kind;

		line++;
		pos += n + (nl ? 1 : 0);
		kind = folded_parse_line(s, n, &stack_len, &value);
		if (kind < 0)
			continue;
		if (kind > 0) {
			if (bad < max_errs) {
				errs[bad].line = line;
				errs[bad].kind = (enum folded_err)kind;
			}
			bad++;
			continue;
		}
		rc = cb(arg, s, stack_len, value, line);
		if (rc < 0)
			break;
		rc = 0;
	}
	if (n_errs)
		*n_errs = bad;
	return rc;
}

int folded_write(struct strbuf *sb, const char *stack, size_t len, int64_t value)
{
	if (len == 0 || value < 0 || stack[0] == '#' || stack[len - 1] == ' ' ||
	    stack[len - 1] == '\t' || memchr(stack, '\0', len) || memchr(stack, '\n', len) ||
	    memchr(stack, '\r', len))
		return -EINVAL;
	sb_grow(sb, len + 22);
	sb_append(sb, stack, len);
	sb_putc(sb, ' ');
	sb_put_i64(sb, value);
	sb_putc(sb, '\n');
	return 0;
}
