/*
 * test_export — every export format written from one set of stacks (names with markup
 * characters, quotes, spaces, UTF-8, invalid UTF-8, an empty frame, a duplicate stack) and read
 * back by independent code: folded by folded_parse, SVG by a small well-formedness checker (and
 * xmllint when installed) plus its titles and widths, speedscope by jansson, pprof by gunzip and
 * a hand-written protobuf decoder (and protoc --decode_raw / go tool pprof when installed).
 * Also the bounds, a failing output file and the folded-text entry point.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <jansson.h>
#include <zlib.h>

#include "common/export.h"
#include "common/folded.h"

static const char *const stk[] = {
    "[p] app;main;work;[k] do_syscall_64",
    "[p] app;main;a <b> & \"c\" 'd'",
    "[p] app;main;work",
    "[t] wörker ☃ 1;[l] libc.so.6;start_thread",
    "[p] app;main;work", /* the same stack again */
    "[p] app;main;;x",	 /* an empty frame */
    "bad\xff\x01name;leaf",
};
static const int64_t val[] = {30, 10, 20, 15, 5, 1, 2};
#define NSTK (sizeof(stk) / sizeof(stk[0]))
#define TOTAL 83
static size_t len[NSTK];

static int setup_lens(void **state)
{
	for (size_t i = 0; i < NSTK; i++)
		len[i] = strlen(stk[i]);
	return 0;
}

struct out {
	char *buf;
	size_t len;
};

/* Runs export_write into memory; returns its result, the bytes in *o (caller frees o->buf). */
static int run(enum export_format f, const struct export_opts *opts, const char *const *s,
	       const size_t *l, const int64_t *v, size_t n, struct out *o)
{
	FILE *fp = open_memstream(&o->buf, &o->len);
	int rc;

	assert_non_null(fp);
	rc = export_write(f, opts, s, l, v, n, fp);
	assert_int_equal(fclose(fp), 0);
	return rc;
}

static void test_parse_format(void **state)
{
	static const char *const names[] = {"folded", "svg", "speedscope", "pprof"};
	enum export_format f = EXPORT_SVG;

	for (int i = 0; i < 4; i++) {
		assert_int_equal(export_parse_format(names[i], &f), 0);
		assert_int_equal(f, i);
		assert_string_equal(export_format_name(f), names[i]);
	}
	assert_int_equal(export_parse_format("SVG", &f), -EINVAL);
	assert_int_equal(export_parse_format("", &f), -EINVAL);
	assert_int_equal(export_parse_format(NULL, &f), -EINVAL);
	assert_string_equal(export_format_name((enum export_format)7), "?");
}

/* ---- folded ---- */

struct lines {
	size_t n;
	char stack[NSTK][128];
	int64_t value[NSTK];
};

static int collect(void *arg, const char *stack, size_t l, int64_t value, size_t line)
{
	struct lines *g = arg;

	assert_true(g->n < NSTK && l < sizeof(g->stack[0]));
	memcpy(g->stack[g->n], stack, l);
	g->stack[g->n][l] = '\0';
	g->value[g->n++] = value;
	return 0;
}

static void test_folded_round_trip(void **state)
{
	struct out o;
	struct lines g = {0};
	size_t bad = 99;

	assert_int_equal(run(EXPORT_FOLDED, NULL, stk, len, val, NSTK, &o), 0);
	assert_int_equal(folded_parse(o.buf, o.len, collect, &g, NULL, 0, &bad), 0);
	assert_int_equal(bad, 0);
	assert_int_equal(g.n, NSTK);
	for (size_t i = 0; i < NSTK; i++) {
		assert_string_equal(g.stack[i], stk[i]);
		assert_int_equal(g.value[i], val[i]);
	}
	free(o.buf);
}

static void test_invalid_input(void **state)
{
	const char *nl[] = {"a\nb"};
	const char *ok[] = {"a;b"};
	size_t l1[] = {3};
	int64_t v1[] = {1}, neg[] = {-1};
	struct export_opts bad_unit = {.unit = "cycles"}, bad_period = {.period = -1};
	struct out o;

	assert_int_equal(run(EXPORT_FOLDED, NULL, nl, l1, v1, 1, &o), -EINVAL);
	free(o.buf);
	for (int f = EXPORT_FOLDED; f <= EXPORT_PPROF; f++) {
		assert_int_equal(run(f, NULL, ok, l1, neg, 1, &o), -EINVAL);
		assert_int_equal(o.len, 0);
		free(o.buf);
		assert_int_equal(run(f, &bad_unit, ok, l1, v1, 1, &o), -EINVAL);
		free(o.buf);
		assert_int_equal(run(f, &bad_period, ok, l1, v1, 1, &o), -EINVAL);
		free(o.buf);
	}
	assert_int_equal(run((enum export_format)9, NULL, ok, l1, v1, 1, &o), -EINVAL);
	free(o.buf);
}

/* ---- SVG ---- */

static int xml_name_char(char c)
{
	return c == '_' || c == '-' || c == ':' || c == '.' || (c >= 'a' && c <= 'z') ||
	       (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* Character data or attribute value: '&' only as an entity, no '<'. Returns the end. */
static const char *xml_text(const char *p, const char *end, char stop)
{
	static const char *const ents[] = {"&amp;", "&lt;", "&gt;", "&quot;", "&apos;"};

	while (p < end && *p != stop) {
		assert_true(*p != '<' || stop == '<');
		if (*p == '&') {
			int ok = 0;

			for (int i = 0; i < 5; i++)
				ok |= strncmp(p, ents[i], strlen(ents[i])) == 0;
			assert_true(ok);
		}
		p++;
	}
	return p;
}

/*
 * A minimal XML well-formedness check: one root element, tags nested and matched, attributes
 * quoted, entities known, comments/CDATA closed, the whole text valid UTF-8 without controls.
 */
static void xml_check(const char *doc, size_t n)
{
	const char *p = doc, *end = doc + n;
	char stack[16][32];
	int depth = 0, roots = 0;

	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)doc[i];

		assert_true(c >= 0x20 || c == '\n' || c == '\t');
	}
	assert_true(strncmp(p, "<?xml ", 6) == 0);
	p = strstr(p, "?>") + 2;
	while (p < end) {
		if (*p != '<') {
			if (depth == 0)
				assert_true(*p == '\n' || *p == ' ');
			p = xml_text(p, end, '<');
			continue;
		}
		if (strncmp(p, "<![CDATA[", 9) == 0) {
			p = strstr(p, "]]>");
			assert_non_null(p);
			p += 3;
		} else if (strncmp(p, "</", 2) == 0) {
			size_t k = 0;

			p += 2;
			while (xml_name_char(p[k]))
				k++;
			assert_true(depth > 0);
			depth--;
			assert_int_equal(strlen(stack[depth]), k);
			assert_memory_equal(stack[depth], p, k);
			assert_true(p[k] == '>');
			p += k + 1;
		} else {
			size_t k = 0;

			p++;
			while (xml_name_char(p[k]))
				k++;
			assert_true(k > 0 && k < sizeof(stack[0]) && depth < 16);
			if (depth == 0)
				roots++;
			memcpy(stack[depth], p, k);
			stack[depth][k] = '\0';
			p += k;
			for (;;) {
				char q;

				while (*p == ' ' || *p == '\n')
					p++;
				if (*p == '>' || strncmp(p, "/>", 2) == 0)
					break;
				k = 0;
				while (xml_name_char(p[k]))
					k++;
				assert_true(k > 0 && p[k] == '=');
				q = p[k + 1];
				assert_true(q == '"' || q == '\'');
				p = xml_text(p + k + 2, end, q);
				assert_true(p < end);
				p++;
			}
			if (*p == '>')
				depth++;
			p += *p == '>' ? 1 : 2;
		}
	}
	assert_int_equal(depth, 0);
	assert_int_equal(roots, 1);
}

/* xmllint --noout on the document when libxml2-utils is installed (scripts/setup.sh does). */
static void xmllint_check(const struct out *o)
{
	char path[] = "/tmp/test_export_XXXXXX", cmd[128];
	int fd;

	if (system("command -v xmllint >/dev/null 2>&1") != 0) {
		fprintf(stderr, "note: xmllint not installed, its check skipped\n");
		return;
	}
	fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, o->buf, o->len), (ssize_t)o->len);
	close(fd);
	snprintf(cmd, sizeof(cmd), "xmllint --noout %s", path);
	assert_int_equal(system(cmd), 0);
	unlink(path);
}

struct svg_frame {
	char title[160];
	double x, y, w;
	char fill[32];
	char text[160];
};

/* The frame whose <title> is exactly title, or fails. */
static struct svg_frame svg_find(const char *doc, const char *title)
{
	struct svg_frame f = {0};
	char needle[200];
	const char *p, *q;

	snprintf(needle, sizeof(needle), "<title>%s</title>", title);
	p = strstr(doc, needle);
	if (!p)
		fail_msg("no frame titled %s", title);
	assert_null(strstr(p + 1, needle));
	snprintf(f.title, sizeof(f.title), "%s", title);
	p += strlen(needle);
	assert_int_equal(sscanf(p, "<rect x=\"%lf\" y=\"%lf\" width=\"%lf\"", &f.x, &f.y, &f.w), 3);
	p = strstr(p, "fill=\"") + 6;
	q = strchr(p, '"');
	memcpy(f.fill, p, (size_t)(q - p));
	p = strstr(q, "<text");
	p = strchr(p, '>') + 1;
	q = strstr(p, "</text>");
	memcpy(f.text, p, (size_t)(q - p));
	return f;
}

static void assert_width_of(const struct svg_frame *f, int64_t value, int64_t total)
{
	double want = 1180.0 * (double)value / (double)total;

	if (f->w < want - 0.01 || f->w > want + 0.01)
		fail_msg("%s: width %.2f, want %.2f", f->title, f->w, want);
}

static void assert_width(const struct svg_frame *f, int64_t value)
{
	assert_width_of(f, value, TOTAL);
}

static void test_svg(void **state)
{
	struct export_opts opts = {.title = "cpu <of> \"host\"", .unit = "samples"};
	struct svg_frame all, app, mainf, work, sys, markup, empty, x, thr, lib, st, bad;
	struct out o;
	char *doc;

	assert_int_equal(run(EXPORT_SVG, &opts, stk, len, val, NSTK, &o), 0);
	doc = o.buf;
	xml_check(doc, o.len);
	xmllint_check(&o);
	assert_non_null(strstr(doc, "<text id=\"title\" x=\"600\" y=\"24\">"
				    "cpu &lt;of&gt; &quot;host&quot;</text>"));
	assert_null(strstr(doc, "omitted"));

	all = svg_find(doc, "all (83 samples, 100.00%)");
	app = svg_find(doc, "[p] app (66 samples, 79.52%)");
	mainf = svg_find(doc, "main (66 samples, 79.52%)");
	work = svg_find(doc, "work (55 samples, 66.27%)");
	sys = svg_find(doc, "[k] do_syscall_64 (30 samples, 36.14%)");
	markup =
	    svg_find(doc, "a &lt;b&gt; &amp; &quot;c&quot; &apos;d&apos; (10 samples, 12.05%)");
	empty = svg_find(doc, " (1 samples, 1.20%)");
	x = svg_find(doc, "x (1 samples, 1.20%)");
	thr = svg_find(doc, "[t] wörker ☃ 1 (15 samples, 18.07%)");
	lib = svg_find(doc, "[l] libc.so.6 (15 samples, 18.07%)");
	st = svg_find(doc, "start_thread (15 samples, 18.07%)");
	bad = svg_find(doc, "bad\xef\xbf\xbd\xef\xbf\xbdname (2 samples, 2.41%)");

	/* widths proportional to values, 1180 px for the total */
	assert_width(&all, TOTAL);
	assert_width(&app, 66);
	assert_width(&work, 55);
	assert_width(&sys, 30);
	assert_width(&markup, 10);
	assert_width(&x, 1);
	assert_width(&st, 15);
	/* root at the bottom, one row of 16 px per level */
	assert_true(app.y == all.y - 16 && mainf.y == all.y - 32 && work.y == all.y - 48);
	assert_true(sys.y == all.y - 64 && x.y == all.y - 64 && st.y == all.y - 48);
	/* siblings in byte order of their names: "" < "a <b>.." < "work"; "[p]" < "[t]" < "bad" */
	assert_true(empty.x == mainf.x);
	assert_true(markup.x > empty.x && work.x > markup.x);
	assert_true(work.x + work.w <= mainf.x + mainf.w + 0.01);
	assert_true(app.x == all.x && thr.x > app.x && bad.x > thr.x);
	assert_true(x.x == empty.x && lib.x == thr.x);
	/* a frame's self time (work: 25) sits left of its children, as in flamegraph.pl */
	assert_true(sys.x > work.x + 355 && sys.x + sys.w > work.x + work.w - 0.02 &&
		    sys.x + sys.w < work.x + work.w + 0.02);
	/* colours by kind: kernel orange, library yellow, process/thread blue, else warm */
	assert_true(strncmp(sys.fill, "rgb(2", 5) == 0);
	assert_true(strncmp(thr.fill, "rgb(1", 5) == 0 || strncmp(thr.fill, "rgb(8", 5) == 0 ||
		    strncmp(thr.fill, "rgb(9", 5) == 0);
	{
		int r, g, b;

		assert_int_equal(sscanf(sys.fill, "rgb(%d,%d,%d)", &r, &g, &b), 3);
		assert_true(r >= 230 && g >= 120 && g <= 170 && b <= 40);
		assert_int_equal(sscanf(lib.fill, "rgb(%d,%d,%d)", &r, &g, &b), 3);
		assert_true(r >= 220 && g >= 200 && b >= 40 && b <= 80);
		assert_int_equal(sscanf(app.fill, "rgb(%d,%d,%d)", &r, &g, &b), 3);
		assert_true(b >= 210 && r <= 130);
		assert_int_equal(sscanf(work.fill, "rgb(%d,%d,%d)", &r, &g, &b), 3);
		assert_true(r >= 205 && g >= 20 && g <= 110 && b <= 40);
	}
	/* labels: whole when they fit, escaped; the empty frame has none */
	assert_string_equal(markup.text, "a &lt;b&gt; &amp; &quot;c&quot; &apos;d&apos;");
	assert_string_equal(thr.text, "[t] wörker ☃ 1");
	assert_string_equal(empty.text, "");
	/* x: 14.2 px wide, room for one character: no label */
	assert_string_equal(x.text, "");
	assert_non_null(strstr(doc, "<script type=\"text/ecmascript\"><![CDATA["));
	assert_non_null(strstr(doc, "function zoom("));
	assert_non_null(strstr(doc, "function search("));
	free(o.buf);
}

/*
 * A differential graph: widths are the new values, each frame coloured by its change against
 * the baseline (red grew, the largest change deepest; blue shrank; near white unchanged), the
 * title gives both values; a stack only in the baseline has no frame but counts in its
 * parent's baseline. A baseline is refused for the other formats.
 */
static void test_svg_diff(void **state)
{
	const char *s[] = {"a;b", "a;c", "d", "gone"};
	size_t l[] = {3, 3, 1, 4};
	int64_t after[] = {40, 30, 30, 0};
	double before[] = {10, 30, 50, 10};
	struct export_opts opts = {.title = "diff", .before = before};
	struct svg_frame a, b, c, d, all;
	struct out o;
	int r, g, bl;

	assert_int_equal(run(EXPORT_SVG, &opts, s, l, after, 4, &o), 0);
	xml_check(o.buf, o.len);
	xmllint_check(&o);
	all = svg_find(o.buf, "all (100 samples, 100.00%; before 100, +0, +0.00%)");
	a = svg_find(o.buf, "a (70 samples, 70.00%; before 40, +30, +75.00%)");
	b = svg_find(o.buf, "b (40 samples, 40.00%; before 10, +30, +300.00%)");
	c = svg_find(o.buf, "c (30 samples, 30.00%; before 30, +0, +0.00%)");
	d = svg_find(o.buf, "d (30 samples, 30.00%; before 50, -20, -40.00%)");
	assert_null(strstr(o.buf, "<title>gone"));
	/* the stack that is gone is counted as such, not as too narrow */
	assert_non_null(strstr(o.buf, ">1 frames only in the baseline</text>"));
	assert_null(strstr(o.buf, "narrower"));
	assert_width_of(&all, 100, 100);
	assert_width_of(&a, 70, 100);
	assert_width_of(&b, 40, 100);
	assert_string_equal(all.fill, "rgb(250,250,250)");
	assert_string_equal(c.fill, "rgb(250,250,250)");
	/* a and b grew by the largest change (30): the deepest red */
	assert_string_equal(a.fill, "rgb(255,50,50)");
	assert_string_equal(b.fill, "rgb(255,50,50)");
	/* d shrank by 20 of 30: blue, two thirds of the way */
	assert_int_equal(sscanf(d.fill, "rgb(%d,%d,%d)", &r, &g, &bl), 3);
	assert_true(bl == 255 && r == g && r > 50 && r < 250);
	free(o.buf);

	/* a frame absent from the baseline says so */
	before[0] = 0;
	assert_int_equal(run(EXPORT_SVG, &opts, s, l, after, 4, &o), 0);
	svg_find(o.buf, "b (40 samples, 40.00%; before 0, new)");
	free(o.buf);

	/* a scaled baseline keeps its fractions; a root that changed more than any frame (a raw
	 * comparison) stays a colour, the deepest red */
	before[0] = 2.5, before[1] = 7.25, before[2] = 7.5, before[3] = 2.75;
	assert_int_equal(run(EXPORT_SVG, &opts, s, l, after, 4, &o), 0);
	svg_find(o.buf, "b (40 samples, 40.00%; before 2.5, +37.5, +1500.00%)");
	all = svg_find(o.buf, "all (100 samples, 100.00%; before 20, +80, +400.00%)");
	assert_string_equal(all.fill, "rgb(255,50,50)");
	free(o.buf);

	before[0] = -1;
	assert_int_equal(run(EXPORT_SVG, &opts, s, l, after, 4, &o), -EINVAL);
	free(o.buf);
	before[0] = 10;
	for (int f = EXPORT_FOLDED; f <= EXPORT_PPROF; f++) {
		if (f == EXPORT_SVG)
			continue;
		assert_int_equal(run(f, &opts, s, l, after, 4, &o), -EINVAL);
		free(o.buf);
	}
}

static void test_svg_clip_and_omit(void **state)
{
	const char *s[] = {"big", "long_name_abcdefghij", "éééééééééééé", "tiny;tinier"};
	size_t l[4];
	/* 50 px of 1180 for the two names, 0.01 px for tiny and its child */
	int64_t v[] = {117980 - 10000 - 1, 5000, 5000, 1};
	struct out o;
	struct svg_frame a, b;

	for (int i = 0; i < 4; i++)
		l[i] = strlen(s[i]);
	assert_int_equal(run(EXPORT_SVG, NULL, s, l, v, 4, &o), 0);
	xml_check(o.buf, o.len);
	a = svg_find(o.buf, "long_name_abcdefghij (5000 samples, 4.24%)");
	b = svg_find(o.buf, "éééééééééééé (5000 samples, 4.24%)");
	assert_true(a.w > 49.9 && a.w < 50.1);
	/* (50 - 6) / 7 = 6 characters: 4 and ".." (UTF-8 cut on character boundaries) */
	assert_string_equal(a.text, "long..");
	assert_string_equal(b.text, "éééé..");
	assert_null(strstr(o.buf, "tiny"));
	assert_non_null(strstr(o.buf, ">2 frames narrower than 0.1 px omitted</text>"));
	free(o.buf);
}

static void test_svg_empty(void **state)
{
	struct out o;

	assert_int_equal(run(EXPORT_SVG, NULL, NULL, NULL, NULL, 0, &o), 0);
	xml_check(o.buf, o.len);
	assert_non_null(strstr(o.buf, "<title>all (0 samples, 0.00%)</title>"));
	assert_non_null(strstr(o.buf, "<text id=\"title\" x=\"600\" y=\"24\">ember</text>"));
	free(o.buf);
}

/* ---- speedscope ---- */

static void speedscope_check(const struct out *o, const char *unit, const char *const *s,
			     const size_t *l, const int64_t *v, size_t n, size_t nframes)
{
	json_error_t err;
	json_t *root = json_loadb(o->buf, o->len, 0, &err), *frames, *prof, *samples, *weights;
	int64_t total = 0;
	size_t k = 0;

	if (!root)
		fail_msg("speedscope JSON: %s at %d", err.text, err.position);
	assert_string_equal(json_string_value(json_object_get(root, "$schema")),
			    "https://www.speedscope.app/file-format-schema.json");
	frames = json_object_get(json_object_get(root, "shared"), "frames");
	assert_int_equal(json_array_size(frames), nframes);
	/* deduplicated */
	for (size_t i = 0; i < nframes; i++)
		for (size_t j = i + 1; j < nframes; j++)
			assert_string_not_equal(
			    json_string_value(json_object_get(json_array_get(frames, i), "name")),
			    json_string_value(json_object_get(json_array_get(frames, j), "name")));
	assert_int_equal(json_array_size(json_object_get(root, "profiles")), 1);
	prof = json_array_get(json_object_get(root, "profiles"), 0);
	assert_string_equal(json_string_value(json_object_get(prof, "type")), "sampled");
	assert_string_equal(json_string_value(json_object_get(prof, "unit")), unit);
	assert_int_equal(json_integer_value(json_object_get(prof, "startValue")), 0);
	samples = json_object_get(prof, "samples");
	weights = json_object_get(prof, "weights");
	for (size_t i = 0; i < n; i++) {
		char joined[256] = "";
		json_t *smp = json_array_get(samples, k);

		if (l[i] == 0)
			continue;
		/* root first: the frame names joined by ';' give the stack back */
		for (size_t d = 0; d < json_array_size(smp); d++) {
			json_int_t fi = json_integer_value(json_array_get(smp, d));
			const char *name;

			assert_true(fi >= 0 && (size_t)fi < nframes);
			name =
			    json_string_value(json_object_get(json_array_get(frames, fi), "name"));
			if (d)
				strcat(joined, ";");
			strcat(joined, name);
		}
		if (memchr(s[i], 0xff, l[i]) == NULL)
			assert_string_equal(joined, s[i]);
		assert_int_equal(json_integer_value(json_array_get(weights, k)), v[i]);
		total += v[i];
		k++;
	}
	assert_int_equal(json_array_size(samples), k);
	assert_int_equal(json_array_size(weights), k);
	assert_int_equal(json_integer_value(json_object_get(prof, "endValue")), total);
	json_decref(root);
}

static void test_speedscope(void **state)
{
	struct export_opts us = {.title = "t", .unit = "microseconds"};
	struct out o;
	json_t *root;

	/* [p] app, main, work, [k] do_syscall_64, a <b>.., [t] wörker, [l] libc, start_thread,
	 * "", x, bad?name, leaf */
	assert_int_equal(run(EXPORT_SPEEDSCOPE, NULL, stk, len, val, NSTK, &o), 0);
	speedscope_check(&o, "none", stk, len, val, NSTK, 12);
	root = json_loadb(o.buf, o.len, 0, NULL);
	assert_string_equal(json_string_value(json_object_get(root, "name")), "ember");
	/* invalid UTF-8 comes out as U+FFFD */
	assert_non_null(strstr(o.buf, "\"bad\xef\xbf\xbd\\u0001name\""));
	json_decref(root);
	free(o.buf);

	assert_int_equal(run(EXPORT_SPEEDSCOPE, &us, stk, len, val, 3, &o), 0);
	speedscope_check(&o, "microseconds", stk, len, val, 3, 5);
	free(o.buf);

	assert_int_equal(run(EXPORT_SPEEDSCOPE, NULL, NULL, NULL, NULL, 0, &o), 0);
	speedscope_check(&o, "none", NULL, NULL, NULL, 0, 0);
	free(o.buf);
}

/* ---- pprof: gunzip and an independent protobuf decoder ---- */

static unsigned char *gunzip(const struct out *o, size_t *n)
{
	z_stream z = {0};
	size_t cap = 1 << 16;
	unsigned char *buf = malloc(cap);
	int rc;

	assert_true((unsigned char)o->buf[0] == 0x1f && (unsigned char)o->buf[1] == 0x8b);
	assert_int_equal(inflateInit2(&z, 15 + 16), Z_OK);
	z.next_in = (unsigned char *)o->buf;
	z.avail_in = (uInt)o->len;
	*n = 0;
	do {
		if (*n == cap)
			buf = realloc(buf, cap *= 2);
		z.next_out = buf + *n;
		z.avail_out = (uInt)(cap - *n);
		rc = inflate(&z, Z_NO_FLUSH);
		assert_true(rc == Z_OK || rc == Z_STREAM_END);
		*n = cap - z.avail_out;
	} while (rc != Z_STREAM_END);
	assert_int_equal(z.avail_in, 0);
	inflateEnd(&z);
	return buf;
}

struct pb {
	const unsigned char *p, *end;
};

static uint64_t pb_get_varint(struct pb *b)
{
	uint64_t v = 0;

	for (int shift = 0;; shift += 7) {
		assert_true(b->p < b->end && shift < 64);
		v |= (uint64_t)(*b->p & 0x7f) << shift;
		if (!(*b->p++ & 0x80))
			return v;
	}
}

/* Next field: its number, wire type, varint value or sub-buffer. 0 at the end. */
static int pb_next(struct pb *b, unsigned *field, uint64_t *v, struct pb *sub)
{
	uint64_t key, n;

	if (b->p == b->end)
		return 0;
	key = pb_get_varint(b);
	*field = (unsigned)(key >> 3);
	switch (key & 7) {
	case 0:
		*v = pb_get_varint(b);
		sub->p = sub->end = NULL;
		return 1;
	case 2:
		n = pb_get_varint(b);
		assert_true(n <= (uint64_t)(b->end - b->p));
		sub->p = b->p;
		sub->end = b->p + n;
		b->p += n;
		return 1;
	}
	fail_msg("unexpected wire type %u", (unsigned)(key & 7));
	return 0;
}

/* A repeated integer field, packed (sub) or not (v): appends to arr. */
static void pb_ints(struct pb *sub, uint64_t v, uint64_t *arr, size_t *n, size_t cap)
{
	if (!sub->p) {
		assert_true(*n < cap);
		arr[(*n)++] = v;
		return;
	}
	while (sub->p < sub->end) {
		assert_true(*n < cap);
		arr[(*n)++] = pb_get_varint(sub);
	}
}

#define PP_MAX 64

struct pprof {
	size_t nst, ns, nl, nf, nstr, ncomment;
	uint64_t st[4][2];
	uint64_t sloc[PP_MAX][PP_MAX], sval[PP_MAX][4];
	size_t nsloc[PP_MAX], nsval[PP_MAX];
	uint64_t loc_id[PP_MAX], loc_fn[PP_MAX];
	uint64_t fn_id[PP_MAX], fn_name[PP_MAX], fn_sys[PP_MAX];
	struct pb str[PP_MAX];
	uint64_t period_type[2], period, comment[4];
};

static void pprof_decode(const unsigned char *data, size_t n, struct pprof *pp)
{
	struct pb b = {data, data + n}, sub, s2, s3;
	unsigned f, f2, f3;
	uint64_t v, v2, v3;

	memset(pp, 0, sizeof(*pp));
	while (pb_next(&b, &f, &v, &sub)) {
		switch (f) {
		case 1:	 /* sample_type */
		case 11: /* period_type */
			assert_non_null(sub.p);
			while (pb_next(&sub, &f2, &v2, &s2)) {
				assert_true(f2 == 1 || f2 == 2);
				if (f == 1)
					pp->st[pp->nst][f2 - 1] = v2;
				else
					pp->period_type[f2 - 1] = v2;
			}
			if (f == 1)
				pp->nst++;
			break;
		case 2: /* sample */
			assert_true(pp->ns < PP_MAX);
			while (pb_next(&sub, &f2, &v2, &s2)) {
				if (f2 == 1)
					pb_ints(&s2, v2, pp->sloc[pp->ns], &pp->nsloc[pp->ns],
						PP_MAX);
				else if (f2 == 2)
					pb_ints(&s2, v2, pp->sval[pp->ns], &pp->nsval[pp->ns], 4);
				else
					fail_msg("sample field %u", f2);
			}
			pp->ns++;
			break;
		case 4: /* location */
			assert_true(pp->nl < PP_MAX);
			while (pb_next(&sub, &f2, &v2, &s2)) {
				if (f2 == 1) {
					pp->loc_id[pp->nl] = v2;
				} else if (f2 == 4) {
					while (pb_next(&s2, &f3, &v3, &s3))
						if (f3 == 1)
							pp->loc_fn[pp->nl] = v3;
				}
			}
			pp->nl++;
			break;
		case 5: /* function */
			assert_true(pp->nf < PP_MAX);
			while (pb_next(&sub, &f2, &v2, &s2)) {
				if (f2 == 1)
					pp->fn_id[pp->nf] = v2;
				else if (f2 == 2)
					pp->fn_name[pp->nf] = v2;
				else if (f2 == 3)
					pp->fn_sys[pp->nf] = v2;
			}
			pp->nf++;
			break;
		case 6: /* string_table */
			assert_true(pp->nstr < PP_MAX);
			pp->str[pp->nstr++] = sub;
			break;
		case 12:
			pp->period = v;
			break;
		case 13:
			pb_ints(&sub, v, pp->comment, &pp->ncomment, 4);
			break;
		default:
			fail_msg("unexpected profile field %u", f);
		}
	}
}

static void pprof_str(const struct pprof *pp, uint64_t i, char *out, size_t cap)
{
	size_t n;

	assert_true(i < pp->nstr);
	n = (size_t)(pp->str[i].end - pp->str[i].p);
	assert_true(n < cap);
	memcpy(out, pp->str[i].p, n);
	out[n] = '\0';
}

/* The function name of location id. */
static void pprof_loc_name(const struct pprof *pp, uint64_t id, char *out, size_t cap)
{
	for (size_t i = 0; i < pp->nl; i++) {
		if (pp->loc_id[i] != id)
			continue;
		for (size_t j = 0; j < pp->nf; j++) {
			if (pp->fn_id[j] == pp->loc_fn[i]) {
				assert_int_equal(pp->fn_name[j], pp->fn_sys[j]);
				pprof_str(pp, pp->fn_name[j], out, cap);
				return;
			}
		}
		fail_msg("location %llu: no function %llu", (unsigned long long)id,
			 (unsigned long long)pp->loc_fn[i]);
	}
	fail_msg("no location %llu", (unsigned long long)id);
}

static void pprof_check_type(const struct pprof *pp, uint64_t t, uint64_t u, const char *type,
			     const char *unit)
{
	char s[64];

	pprof_str(pp, t, s, sizeof(s));
	assert_string_equal(s, type);
	pprof_str(pp, u, s, sizeof(s));
	assert_string_equal(s, unit);
}

/* Runs a real protobuf reader over the raw message when one is installed. */
static void pprof_external_checks(const struct out *o, const unsigned char *raw, size_t n)
{
	char path[] = "/tmp/test_export_XXXXXX", cmd[256];
	int fd;

	if (system("command -v protoc >/dev/null 2>&1") == 0) {
		fd = mkstemp(path);
		assert_true(fd >= 0);
		assert_int_equal(write(fd, raw, n), (ssize_t)n);
		close(fd);
		/* decode_raw prints strings, so the frame name must show */
		snprintf(cmd, sizeof(cmd), "protoc --decode_raw < %s | grep -q 'do_syscall_64'",
			 path);
		assert_int_equal(system(cmd), 0);
		unlink(path);
	} else {
		fprintf(stderr, "note: protoc not installed, its check skipped\n");
	}
	if (system("command -v go >/dev/null 2>&1") == 0) {
		char gz[] = "/tmp/test_export_XXXXXX";

		fd = mkstemp(gz);
		assert_true(fd >= 0);
		assert_int_equal(write(fd, o->buf, o->len), (ssize_t)o->len);
		close(fd);
		/* go tool pprof -top: the flat samples of the leaf; 30 in do_syscall_64 */
		snprintf(
		    cmd, sizeof(cmd),
		    "HOME=${HOME:-/tmp} go tool pprof -top -sample_index=samples %s 2>/dev/null | "
		    "grep -q '^ *30 .*\\[k\\] do_syscall_64$'",
		    gz);
		assert_int_equal(system(cmd), 0);
		unlink(gz);
	}
}

static void test_pprof(void **state)
{
	struct export_opts opts = {.title = "ember record", .period = 10101};
	struct pprof *pp = calloc(1, sizeof(*pp));
	unsigned char *raw;
	struct out o;
	size_t n, k = 0;
	char s[256];
	int64_t sum = 0;

	assert_int_equal(run(EXPORT_PPROF, &opts, stk, len, val, NSTK, &o), 0);
	raw = gunzip(&o, &n);
	pprof_decode(raw, n, pp);
	pprof_str(pp, 0, s, sizeof(s));
	assert_string_equal(s, "");
	assert_int_equal(pp->nst, 2);
	pprof_check_type(pp, pp->st[0][0], pp->st[0][1], "samples", "count");
	pprof_check_type(pp, pp->st[1][0], pp->st[1][1], "cpu", "microseconds");
	pprof_check_type(pp, pp->period_type[0], pp->period_type[1], "cpu", "microseconds");
	assert_int_equal(pp->period, 10101);
	assert_int_equal(pp->ncomment, 1);
	pprof_str(pp, pp->comment[0], s, sizeof(s));
	assert_string_equal(s, "ember record");
	/* one function and one location per distinct frame */
	assert_int_equal(pp->nf, 12);
	assert_int_equal(pp->nl, 12);
	assert_int_equal(pp->ns, NSTK);
	for (size_t i = 0; i < NSTK; i++) {
		char joined[256] = "";

		/* location ids are leaf first: walk them backwards to get the stack */
		for (size_t d = pp->nsloc[k]; d-- > 0;) {
			pprof_loc_name(pp, pp->sloc[k][d], s, sizeof(s));
			strcat(joined, s);
			if (d)
				strcat(joined, ";");
		}
		assert_string_equal(joined, stk[i]);
		assert_int_equal(pp->nsval[k], 2);
		assert_int_equal(pp->sval[k][0], val[i]);
		assert_int_equal(pp->sval[k][1], val[i] * 10101);
		sum += (int64_t)pp->sval[k][0];
		k++;
	}
	assert_int_equal(sum, TOTAL);
	/* sample 0's leaf is the kernel frame */
	pprof_loc_name(pp, pp->sloc[0][0], s, sizeof(s));
	assert_string_equal(s, "[k] do_syscall_64");
	pprof_external_checks(&o, raw, n);
	free(raw);
	free(o.buf);
	free(pp);
}

static void test_pprof_units(void **state)
{
	struct export_opts us = {.unit = "microseconds", .period = 10101};
	struct export_opts bytes = {.unit = "bytes"}, samples = {0};
	struct pprof *pp = calloc(1, sizeof(*pp));
	unsigned char *raw;
	struct out o;
	size_t n;

	assert_int_equal(run(EXPORT_PPROF, &us, stk, len, val, 2, &o), 0);
	raw = gunzip(&o, &n);
	pprof_decode(raw, n, pp);
	assert_int_equal(pp->nst, 1);
	pprof_check_type(pp, pp->st[0][0], pp->st[0][1], "cpu", "microseconds");
	pprof_check_type(pp, pp->period_type[0], pp->period_type[1], "cpu", "microseconds");
	assert_int_equal(pp->sval[1][0], 10);
	free(raw);
	free(o.buf);

	assert_int_equal(run(EXPORT_PPROF, &bytes, stk, len, val, 2, &o), 0);
	raw = gunzip(&o, &n);
	pprof_decode(raw, n, pp);
	assert_int_equal(pp->nst, 1);
	pprof_check_type(pp, pp->st[0][0], pp->st[0][1], "space", "bytes");
	assert_int_equal(pp->period, 0);
	free(raw);
	free(o.buf);

	/* what was measured, named: off-CPU µs */
	us.sample_type = "off-cpu";
	us.period = 0;
	assert_int_equal(run(EXPORT_PPROF, &us, stk, len, val, 2, &o), 0);
	raw = gunzip(&o, &n);
	pprof_decode(raw, n, pp);
	assert_int_equal(pp->nst, 1);
	pprof_check_type(pp, pp->st[0][0], pp->st[0][1], "off-cpu", "microseconds");
	assert_int_equal(pp->period_type[0], 0);
	free(raw);
	free(o.buf);

	/* no period: samples/count only, no period_type */
	assert_int_equal(run(EXPORT_PPROF, &samples, NULL, NULL, NULL, 0, &o), 0);
	raw = gunzip(&o, &n);
	pprof_decode(raw, n, pp);
	assert_int_equal(pp->nst, 1);
	pprof_check_type(pp, pp->st[0][0], pp->st[0][1], "samples", "count");
	assert_int_equal(pp->ns, 0);
	assert_int_equal(pp->nf, 0);
	assert_int_equal(pp->period_type[0], 0);
	free(raw);
	free(o.buf);
	free(pp);
}

/* ---- bounds, failures, folded text ---- */

static void test_bounds(void **state)
{
	struct export_opts three = {.max_frames = 3};
	size_t big = EXPORT_MAX_DEPTH + 1;
	char *deep = malloc(2 * big);
	const char *s[] = {deep};
	size_t l[] = {2 * big - 1};
	int64_t v[] = {1};
	struct out o;

	/* 12 distinct frames (speedscope, pprof), more than 3 */
	for (int f = EXPORT_SPEEDSCOPE; f <= EXPORT_PPROF; f++) {
		assert_int_equal(run(f, &three, stk, len, val, NSTK, &o), -E2BIG);
		free(o.buf);
		assert_int_equal(run(f, &three, stk, len, val, 1, &o), -E2BIG);
		free(o.buf);
		/* exactly at the bound is fine: "[p] app;main;work" */
		assert_int_equal(run(f, &three, stk + 2, len + 2, val + 2, 1, &o), 0);
		free(o.buf);
	}
	/* the SVG keeps no frame table: the bound does not apply */
	assert_int_equal(run(EXPORT_SVG, &three, stk, len, val, NSTK, &o), 0);
	free(o.buf);
	/* EXPORT_MAX_DEPTH + 1 frames "a;a;...;a" */
	for (size_t i = 0; i < big; i++) {
		deep[2 * i] = 'a';
		deep[2 * i + 1] = ';';
	}
	deep[2 * big - 1] = '\0';
	for (int f = EXPORT_SVG; f <= EXPORT_PPROF; f++) {
		assert_int_equal(run(f, NULL, s, l, v, 1, &o), -E2BIG);
		free(o.buf);
	}
	l[0] -= 2; /* EXPORT_MAX_DEPTH frames */
	for (int f = EXPORT_SVG; f <= EXPORT_PPROF; f++) {
		assert_int_equal(run(f, NULL, s, l, v, 1, &o), 0);
		free(o.buf);
	}
	free(deep);
}

static void test_write_error(void **state)
{
	FILE *full = fopen("/dev/full", "w");

	if (!full)
		skip();
	for (int f = EXPORT_FOLDED; f <= EXPORT_PPROF; f++)
		assert_int_equal(export_write(f, NULL, stk, len, val, NSTK, full), -EIO);
	fclose(full);
}

static void test_folded_text(void **state)
{
	static const char text[] = "# comment\n"
				   "[p] app;main;work 7\n"
				   "no value\n"
				   "[p] app;main 3\r\n"
				   "[p] app;main;work 2";
	struct out o;
	FILE *fp = open_memstream(&o.buf, &o.len);
	size_t bad = 0;
	json_t *root, *prof;

	assert_int_equal(
	    export_write_folded_text(EXPORT_SPEEDSCOPE, NULL, text, strlen(text), fp, &bad), 0);
	fclose(fp);
	assert_int_equal(bad, 1);
	root = json_loadb(o.buf, o.len, 0, NULL);
	assert_non_null(root);
	prof = json_array_get(json_object_get(root, "profiles"), 0);
	assert_int_equal(json_integer_value(json_object_get(prof, "endValue")), 12);
	assert_int_equal(json_array_size(json_object_get(prof, "samples")), 3);
	assert_int_equal(
	    json_array_size(json_object_get(json_object_get(root, "shared"), "frames")), 3);
	json_decref(root);
	free(o.buf);

	fp = open_memstream(&o.buf, &o.len);
	assert_int_equal(
	    export_write_folded_text(EXPORT_FOLDED, NULL, text, strlen(text), fp, NULL), 0);
	fclose(fp);
	assert_string_equal(o.buf, "[p] app;main;work 7\n[p] app;main 3\n[p] app;main;work 2\n");
	free(o.buf);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_parse_format),      cmocka_unit_test(test_folded_round_trip),
	    cmocka_unit_test(test_invalid_input),     cmocka_unit_test(test_svg),
	    cmocka_unit_test(test_svg_diff),
	    cmocka_unit_test(test_svg_clip_and_omit), cmocka_unit_test(test_svg_empty),
	    cmocka_unit_test(test_speedscope),	      cmocka_unit_test(test_pprof),
	    cmocka_unit_test(test_pprof_units),	      cmocka_unit_test(test_bounds),
	    cmocka_unit_test(test_write_error),	      cmocka_unit_test(test_folded_text),
	};

	return cmocka_run_group_tests(tests, setup_lens, NULL);
}
