/*
 * export — see export.h. speedscope and pprof intern the frame names in an open-addressing table
 * (names are not copied: they point into the caller's stacks, which outlive the call).
 *
 * The SVG needs no tree in memory: the stacks are sorted frame by frame (flamegraph.pl sorts its
 * input the same way), so the stacks through any one frame are adjacent and a frame's width is
 * known when the first following stack leaves it. One walk with an open-frame stack of
 * EXPORT_MAX_DEPTH entries lays out every frame; it runs twice, first to learn the height and
 * the omitted count the header needs, then to write. Memory: one index per stack.
 *
 * Output goes through a strbuf flushed to the FILE every EX_CHUNK bytes, except pprof, whose
 * protobuf is built whole (lengths precede nested messages) and then gzip'ed with zlib.
 */
#define LOG_MODULE "export"

#include "common/export.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "common/folded.h"
#include "common/log.h"
#include "common/strbuf.h"

#define EX_CHUNK (64u << 10)
#define EX_MIN_SLOTS 1024u

struct ex_node {
	const char *name;
	uint32_t len;
	uint32_t hash;
};

struct ex_table {
	struct ex_node *nodes;
	size_t n, cap, max;
	uint32_t *slots; /* node index + 1; 0 is an empty slot */
	size_t nslots;	 /* a power of two, at least twice n */
};

static int64_t ex_add_sat(int64_t a, int64_t b)
{
	return a > INT64_MAX - b ? INT64_MAX : a + b;
}

static uint32_t ex_hash(const char *s, size_t len)
{
	uint32_t h = 2166136261u;

	for (size_t i = 0; i < len; i++) {
		h ^= (unsigned char)s[i];
		h *= 16777619u;
	}
	return h;
}

static void ex_table_free(struct ex_table *t)
{
	free(t->nodes);
	free(t->slots);
}

static int ex_table_rehash(struct ex_table *t)
{
	size_t nslots = t->nslots ? t->nslots * 2 : EX_MIN_SLOTS;
	uint32_t *slots = calloc(nslots, sizeof(*slots));

	if (!slots)
		return -ENOMEM;
	for (size_t k = 0; k < t->n; k++) {
		size_t i = t->nodes[k].hash & (nslots - 1);

		while (slots[i])
			i = (i + 1) & (nslots - 1);
		slots[i] = (uint32_t)k + 1;
	}
	free(t->slots);
	t->slots = slots;
	t->nslots = nslots;
	return 0;
}

/* *id = the index of frame s[0..len), added when new. 0, -E2BIG or -ENOMEM. */
static int ex_table_get(struct ex_table *t, const char *s, size_t len, uint32_t *id)
{
	uint32_t h = ex_hash(s, len);
	struct ex_node *nd;
	size_t i;

	if ((t->n + 1) * 2 > t->nslots && ex_table_rehash(t) < 0)
		return -ENOMEM;
	for (i = h & (t->nslots - 1); t->slots[i]; i = (i + 1) & (t->nslots - 1)) {
		nd = &t->nodes[t->slots[i] - 1];
		if (nd->hash == h && nd->len == len && memcmp(nd->name, s, len) == 0) {
			*id = t->slots[i] - 1;
			return 0;
		}
	}
	if (t->n >= t->max || len > UINT32_MAX)
		return -E2BIG;
	if (t->n == t->cap) {
		size_t cap = t->cap ? t->cap * 2 : 256;
		struct ex_node *nodes = realloc(t->nodes, cap * sizeof(*nodes));

		if (!nodes)
			return -ENOMEM;
		t->nodes = nodes;
		t->cap = cap;
	}
	nd = &t->nodes[t->n];
	*nd = (struct ex_node){.name = s, .len = (uint32_t)len, .hash = h};
	t->slots[i] = (uint32_t)t->n + 1;
	*id = (uint32_t)t->n++;
	return 0;
}

/*
 * Interns the frames of one stack, root first, into ids[0..EXPORT_MAX_DEPTH).
 * Returns the number of frames, or -E2BIG / -ENOMEM.
 */
static int ex_intern_stack(struct ex_table *t, const char *s, size_t len, uint32_t *ids)
{
	size_t depth = 0, start = 0;

	for (size_t i = 0; i <= len; i++) {
		int rc;

		if (i < len && s[i] != ';')
			continue;
		if (depth == EXPORT_MAX_DEPTH)
			return -E2BIG;
		rc = ex_table_get(t, s + start, i - start, &ids[depth++]);
		if (rc < 0)
			return rc;
		start = i + 1;
	}
	return (int)depth;
}

static int ex_intern_err(int rc, size_t i, const struct ex_table *t)
{
	if (rc == -E2BIG)
		log_error("stack %zu: more than %d frames, or more than %zu distinct frames", i,
			  EXPORT_MAX_DEPTH, t->max);
	return rc;
}

static int ex_flush(struct strbuf *sb, FILE *out, bool force)
{
	if (!force && sb->len < EX_CHUNK)
		return 0;
	if (sb->len && fwrite(sb->buf, 1, sb->len, out) != sb->len) {
		log_error("write failed: %s", strerror(errno));
		return -EIO;
	}
	sb_reset(sb);
	return 0;
}

/* ---- folded ---- */

static int ex_write_folded(const char *const *stacks, const size_t *lens, const int64_t *values,
			   size_t n, FILE *out)
{
	struct strbuf sb = STRBUF_INIT;
	int rc = 0;

	for (size_t i = 0; i < n && rc == 0; i++) {
		rc = folded_write(&sb, stacks[i], lens[i], values[i]);
		if (rc < 0)
			log_error("stack %zu cannot be written as folded text (empty, a newline, a "
				  "trailing blank or a leading '#')",
				  i);
		else
			rc = ex_flush(&sb, out, false);
	}
	if (rc == 0)
		rc = ex_flush(&sb, out, true);
	sb_free(&sb);
	return rc;
}

/* ---- svg ---- */

#define SVG_PAD 10
#define SVG_FRAME_H 16
#define SVG_TOP 36	/* title, Reset Zoom, Search */
#define SVG_BOTTOM 34	/* details line, then matched/omitted line */
#define SVG_CHAR_PX 7.0 /* mean width of a 12px Verdana character, for label clipping */

/* The length of the valid UTF-8 sequence at s[0..n) and its code point, or 0 if invalid. */
static size_t ex_utf8_next(const unsigned char *s, size_t n, uint32_t *cp)
{
	unsigned c = s[0];
	size_t k;
	uint32_t v, min;

	if (c < 0x80) {
		*cp = c;
		return 1;
	}
	if (c >= 0xc2 && c <= 0xdf) {
		k = 2, v = c & 0x1f, min = 0x80;
	} else if ((c & 0xf0) == 0xe0) {
		k = 3, v = c & 0x0f, min = 0x800;
	} else if (c >= 0xf0 && c <= 0xf4) {
		k = 4, v = c & 0x07, min = 0x10000;
	} else {
		return 0;
	}
	if (n < k)
		return 0;
	for (size_t i = 1; i < k; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		v = v << 6 | (s[i] & 0x3f);
	}
	if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
		return 0;
	*cp = v;
	return k;
}

/* Characters of s as ex_xml_escape counts them (an invalid byte is one U+FFFD). */
static size_t ex_utf8_chars(const char *s, size_t len)
{
	size_t chars = 0;
	uint32_t cp;

	for (size_t i = 0; i < len; chars++) {
		size_t k = ex_utf8_next((const unsigned char *)s + i, len - i, &cp);

		i += k ? k : 1;
	}
	return chars;
}

/*
 * Appends the first max_chars characters of s[0..len) as XML character data: & < > " ' as
 * entities, invalid UTF-8 and characters XML 1.0 forbids (controls, U+FFFE, U+FFFF) as U+FFFD,
 * so any frame name gives a well-formed document.
 */
static void ex_xml_escape(struct strbuf *sb, const char *s, size_t len, size_t max_chars)
{
	const unsigned char *u = (const unsigned char *)s;

	for (size_t i = 0, chars = 0; i < len && chars < max_chars; chars++) {
		uint32_t cp;
		size_t k = ex_utf8_next(u + i, len - i, &cp);

		if (k == 0 || (cp < 0x20 && cp != '\t') || cp == 0xfffe || cp == 0xffff) {
			sb_puts(sb, "\xef\xbf\xbd");
			i += k ? k : 1;
			continue;
		}
		switch (cp) {
		case '&':
			sb_puts(sb, "&amp;");
			break;
		case '<':
			sb_puts(sb, "&lt;");
			break;
		case '>':
			sb_puts(sb, "&gt;");
			break;
		case '"':
			sb_puts(sb, "&quot;");
			break;
		case '\'':
			sb_puts(sb, "&apos;");
			break;
		default:
			sb_append(sb, s + i, k);
		}
		i += k;
	}
}

/* What fits in w pixels: the whole name, its first characters and "..", or nothing. */
static void svg_label(struct strbuf *sb, const char *s, size_t len, double w)
{
	double fit = (w - 6) / SVG_CHAR_PX;
	size_t m = fit > 0 ? (size_t)fit : 0;

	if (m < 3)
		return;
	if (ex_utf8_chars(s, len) <= m) {
		ex_xml_escape(sb, s, len, SIZE_MAX);
		return;
	}
	ex_xml_escape(sb, s, len, m - 2);
	sb_puts(sb, "..");
}

/*
 * Colour by frame kind, the variation hashed from the name so a function keeps its colour:
 * kernel orange, library yellow, process/thread/container blue, a waker ([w], [wk]) violet,
 * everything else warm red.
 */
static void svg_color(struct strbuf *sb, const char *s, size_t len, bool root)
{
	uint32_t h = ex_hash(s, len);
	double v1 = (h & 0xff) / 255.0, v2 = ((h >> 8) & 0xff) / 255.0;
	int r, g, b;

	if (root) {
		r = 200, g = 200, b = 200;
	} else if (len >= 4 && memcmp(s, "[k] ", 4) == 0) {
		r = 230 + (int)(25 * v1), g = 120 + (int)(50 * v2), b = (int)(40 * v1);
	} else if ((len >= 4 && memcmp(s, "[w] ", 4) == 0) ||
		   (len >= 5 && memcmp(s, "[wk] ", 5) == 0)) {
		r = 170 + (int)(30 * v1), g = 140 + (int)(30 * v2), b = 220 + (int)(30 * v1);
	} else if (len >= 4 && memcmp(s, "[l] ", 4) == 0) {
		r = 220 + (int)(25 * v1), g = 200 + (int)(30 * v2), b = 40 + (int)(40 * v1);
	} else if (len >= 4 && (memcmp(s, "[p] ", 4) == 0 || memcmp(s, "[t] ", 4) == 0 ||
				memcmp(s, "[c] ", 4) == 0)) {
		r = 80 + (int)(50 * v1), g = 140 + (int)(50 * v2), b = 210 + (int)(30 * v1);
	} else {
		r = 205 + (int)(50 * v1), g = 20 + (int)(90 * v2), b = (int)(40 * v1);
	}
	sb_printf(sb, "rgb(%d,%d,%d)", r, g, b);
}

/*
 * A differential frame: red for growth, blue for shrinkage, the deeper the nearer the largest
 * change of the graph; near white for none (as flamegraph.pl). Changes below half a unit (a
 * scaled baseline's rounding) count as none.
 */
static void svg_diff_color(struct strbuf *sb, double delta, double max_delta)
{
	double k = max_delta > 0 ? fabs(delta) / max_delta : 0;
	int fade = 250 - (int)(200 * (k > 1 ? 1 : k));

	if (delta >= 0.5)
		sb_printf(sb, "rgb(255,%d,%d)", fade, fade);
	else if (delta <= -0.5)
		sb_printf(sb, "rgb(%d,%d,255)", fade, fade);
	else
		sb_puts(sb, "rgb(250,250,250)");
}

/* What a frame weighs: its value, and in a differential graph the baseline's and the change. */
struct svg_val {
	int64_t value;
	double before, max_delta;
	bool diff;
};

/* A baseline value: whole when it is, else one decimal (a scaled baseline). */
static void svg_put_base(struct strbuf *sb, double v)
{
	if (v == floor(v) && fabs(v) < 1e15)
		sb_printf(sb, "%.0f", v);
	else
		sb_printf(sb, "%.1f", v);
}

static void svg_frame(struct strbuf *sb, const char *name, size_t len, bool root,
		      const struct svg_val *v, int64_t total, const char *unit, double x, double y,
		      double w)
{
	sb_puts(sb, "<g class=\"f\"><title>");
	ex_xml_escape(sb, name, len, SIZE_MAX);
	sb_printf(sb, " (%lld %s, %.2f%%", (long long)v->value, unit,
		  total ? 100.0 * (double)v->value / (double)total : 0.0);
	if (v->diff && v->before > 0) {
		double d = (double)v->value - v->before;

		sb_puts(sb, "; before ");
		svg_put_base(sb, v->before);
		sb_puts(sb, d < 0 ? ", -" : ", +");
		svg_put_base(sb, fabs(d));
		sb_printf(sb, ", %+.2f%%", 100.0 * d / v->before);
	} else if (v->diff) {
		sb_puts(sb, "; before 0, new");
	}
	sb_printf(sb,
		  ")</title><rect x=\"%.2f\" y=\"%.1f\" width=\"%.2f\" "
		  "height=\"%d\" rx=\"2\" fill=\"",
		  x, y, w, SVG_FRAME_H - 1);
	if (v->diff)
		svg_diff_color(sb, (double)v->value - v->before, v->max_delta);
	else
		svg_color(sb, name, len, root);
	sb_printf(sb, "\"/><text x=\"%.2f\" y=\"%.1f\">", x + 3, y + 11.5);
	svg_label(sb, name, len, w);
	sb_puts(sb, "</text></g>\n");
}

/*
 * Click a frame to zoom (it and its descendants fill the width, its ancestors stay as full-width
 * bars, the rest hides), "Reset Zoom" to undo, "Search" to colour frames matching a regular
 * expression and show the share of the width they cover. Labels are re-clipped like svg_label.
 * Preceded by "var F=[],W=<frame area width>,P=<left pad>;".
 */
static const char svg_script[] =
    "function init(){var gs=document.querySelectorAll('g.f');\n"
    " for(var i=0;i<gs.length;i++){var g=gs[i],r=g.querySelector('rect'),"
    "t=g.querySelector('title').textContent;\n"
    "  var f={g:g,r:r,t:g.querySelector('text'),x:+r.getAttribute('x'),"
    "w:+r.getAttribute('width'),y:+r.getAttribute('y'),n:t.slice(0,t.lastIndexOf(' (')),"
    "c:r.getAttribute('fill')};\n"
    "  F.push(f);g.onclick=zoom.bind(null,f);g.onmouseover=det.bind(null,t);"
    "g.onmouseout=det.bind(null,' ');}}\n"
    "function det(s){document.getElementById('details').textContent=s}\n"
    "function fit(f,x,w){f.r.setAttribute('x',x);f.r.setAttribute('width',w);"
    "f.t.setAttribute('x',x+3);var m=Math.floor((w-6)/7),n=f.n;\n"
    " f.t.textContent=m<3?'':n.length<=m?n:n.slice(0,m-2)+'..'}\n"
    "function zoom(z){var s=W/z.w,e=0.02;"
    "document.getElementById('reset').setAttribute('display','inline');\n"
    " F.forEach(function(f){if(f.y>z.y&&f.x<=z.x+e&&f.x+f.w>=z.x+z.w-e){f.g.style.display='';"
    "fit(f,P,W)}\n"
    "  else if(f.y<=z.y&&f.x>=z.x-e&&f.x+f.w<=z.x+z.w+e){f.g.style.display='';"
    "fit(f,P+(f.x-z.x)*s,f.w*s)}else f.g.style.display='none'})}\n"
    "function unzoom(){document.getElementById('reset').setAttribute('display','none');\n"
    " F.forEach(function(f){f.g.style.display='';fit(f,f.x,f.w)})}\n"
    "function search(){var q=prompt('Search (regular expression)',''),re,iv=[],m=0,end=-1;"
    "if(q===null)return;\n"
    " try{re=new RegExp(q)}catch(x){alert(x);return}\n"
    " F.forEach(function(f){var hit=q!==''&&re.test(f.n);"
    "f.r.setAttribute('fill',hit?'rgb(230,0,230)':f.c);if(hit)iv.push([f.x,f.x+f.w])});\n"
    " iv.sort(function(a,b){return a[0]-b[0]});\n"
    " iv.forEach(function(v){if(v[1]>end){m+=v[1]-Math.max(v[0],end);end=v[1]}});\n"
    " document.getElementById('matched').textContent=q===''?' ':"
    "'Matched: '+(100*m/W).toFixed(1)+'%'}\n";

struct svg_in {
	const char *const *stacks;
	const size_t *lens;
};

/*
 * Frame by frame, each frame's names in byte order with a name before its extensions ("a" <
 * "a b"): ';' sorts below every byte and the end of the stack below ';'.
 */
static int svg_cmp(const void *a, const void *b, void *arg)
{
	const struct svg_in *in = arg;
	size_t i = *(const size_t *)a, j = *(const size_t *)b;
	const unsigned char *x = (const unsigned char *)in->stacks[i];
	const unsigned char *y = (const unsigned char *)in->stacks[j];

	for (size_t k = 0;; k++) {
		int cx = k < in->lens[i] ? (x[k] == ';' ? 0 : x[k] + 1) : -1;
		int cy = k < in->lens[j] ? (y[k] == ';' ? 0 : y[k] + 1) : -1;

		if (cx != cy)
			return cx < cy ? -1 : 1;
		if (cx < 0)
			return i < j ? -1 : i > j;
	}
}

/* The number of frames two stacks share from the root. */
static size_t svg_common(const char *a, size_t la, const char *b, size_t lb)
{
	size_t i = 0, frames = 0, m = la < lb ? la : lb;

	for (; i < m && a[i] == b[i]; i++)
		if (a[i] == ';')
			frames++;
	/* the frame in progress is shared too when it ends in both */
	if ((i == la || a[i] == ';') && (i == lb || b[i] == ';'))
		frames++;
	return frames;
}

struct svg_open {
	const char *name;
	size_t len;
	int64_t start; /* left edge, in value units from the left of "all" */
	double bstart; /* the same in the baseline's values (differential graphs) */
};

struct svg_walk {
	struct svg_open *open; /* [EXPORT_MAX_DEPTH] */
	struct strbuf *sb;     /* NULL in the measuring pass */
	FILE *out;
	const char *unit;
	const double *before; /* baseline values, or NULL */
	int64_t total;
	double bx;	   /* the walk's position in baseline values */
	double max_delta;  /* largest |change| of a drawn frame, from the measuring pass */
	double scale, base; /* px per value unit; y of the "all" frame */
	size_t max_depth, omitted;
	size_t gone; /* differential: frames of the baseline only (no width now) */
};

/* Frame d (1-based depth) of the open stack ends at x = end. */
static int svg_close(struct svg_walk *w, size_t d, int64_t end)
{
	const struct svg_open *f = &w->open[d - 1];
	double width = (double)(end - f->start) * w->scale;
	struct svg_val v = {end - f->start, w->bx - f->bstart, w->max_delta, w->before != NULL};

	if (v.diff && v.value == 0) {
		w->gone++;
		return 0;
	}
	if (width < EXPORT_SVG_MIN_PX) {
		w->omitted++;
		return 0;
	}
	if (d > w->max_depth)
		w->max_depth = d;
	if (!w->sb) {
		if (v.diff && fabs((double)v.value - v.before) > w->max_delta)
			w->max_delta = fabs((double)v.value - v.before);
		return 0;
	}
	svg_frame(w->sb, f->name, f->len, false, &v, w->total, w->unit,
		  SVG_PAD + (double)f->start * w->scale, w->base - (double)d * SVG_FRAME_H, width);
	return ex_flush(w->sb, w->out, false);
}

/* One pass over the stacks in order[0..n) (sorted by svg_cmp, empty stacks left out). */
static int svg_walk(struct svg_walk *w, const struct svg_in *in, const int64_t *values,
		    const size_t *order, size_t n)
{
	size_t depth = 0;
	int64_t x = 0;
	int rc;

	w->max_depth = 0;
	w->omitted = 0;
	w->gone = 0;
	w->bx = 0;
	for (size_t k = 0; k < n; k++) {
		size_t i = order[k], common = 0, frame = 0, start = 0;
		const char *s = in->stacks[i];

		if (k)
			common = svg_common(in->stacks[order[k - 1]], in->lens[order[k - 1]], s,
					    in->lens[i]);
		for (; depth > common; depth--) {
			rc = svg_close(w, depth, x);
			if (rc < 0)
				return rc;
		}
		for (size_t b = 0; b <= in->lens[i]; b++) {
			if (b < in->lens[i] && s[b] != ';')
				continue;
			if (frame++ >= common) {
				if (depth == EXPORT_MAX_DEPTH) {
					log_error("stack %zu: more than %d frames", i,
						  EXPORT_MAX_DEPTH);
					return -E2BIG;
				}
				w->open[depth++] =
				    (struct svg_open){s + start, b - start, x, w->bx};
			}
			start = b + 1;
		}
		x = ex_add_sat(x, values[i]);
		if (w->before)
			w->bx += w->before[i];
	}
	for (; depth > 0; depth--) {
		rc = svg_close(w, depth, x);
		if (rc < 0)
			return rc;
	}
	return 0;
}

static int ex_write_svg(const struct export_opts *o, const char *unit, const char *const *stacks,
			const size_t *lens, const int64_t *values, size_t n, FILE *out)
{
	const double width = EXPORT_SVG_WIDTH - 2 * SVG_PAD;
	struct svg_in in = {stacks, lens};
	struct svg_walk w = {.out = out, .unit = unit, .before = o->before};
	struct svg_val all = {.diff = o->before != NULL};
	struct strbuf sb = STRBUF_INIT;
	size_t *order = malloc((n ? n : 1) * sizeof(*order)), m = 0;
	double height;
	int rc;

	w.open = malloc(EXPORT_MAX_DEPTH * sizeof(*w.open));
	if (!order || !w.open) {
		rc = -ENOMEM;
		goto cleanup;
	}
	for (size_t i = 0; i < n; i++) {
		if (lens[i] == 0)
			continue;
		order[m++] = i;
		w.total = ex_add_sat(w.total, values[i]);
		if (o->before)
			all.before += o->before[i];
	}
	qsort_r(order, m, sizeof(*order), svg_cmp, &in);
	w.scale = w.total ? width / (double)w.total : 0;
	rc = svg_walk(&w, &in, values, order, m);
	if (rc < 0)
		goto cleanup;
	height = SVG_TOP + (double)(w.max_depth + 1) * SVG_FRAME_H + SVG_BOTTOM;
	w.base = height - SVG_BOTTOM - SVG_FRAME_H;

	sb_printf(&sb,
		  "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"no\"?>\n"
		  "<svg version=\"1.1\" xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" "
		  "height=\"%.0f\" viewBox=\"0 0 %d %.0f\" onload=\"init()\">\n"
		  "<style>text{font-family:Verdana,sans-serif;font-size:12px;fill:#000}"
		  "#title{font-size:17px;text-anchor:middle}.r{text-anchor:end}"
		  ".f:hover rect{stroke:#000;stroke-width:0.5}.f,.b{cursor:pointer}</style>\n"
		  "<script type=\"text/ecmascript\"><![CDATA[\nvar F=[],W=%.0f,P=%d;\n%s]]>"
		  "</script>\n"
		  "<rect width=\"100%%\" height=\"100%%\" fill=\"#f4f4f0\"/>\n"
		  "<text id=\"title\" x=\"%d\" y=\"24\">",
		  EXPORT_SVG_WIDTH, height, EXPORT_SVG_WIDTH, height, width, SVG_PAD, svg_script,
		  EXPORT_SVG_WIDTH / 2);
	ex_xml_escape(&sb, o->title, strlen(o->title), SIZE_MAX);
	sb_printf(&sb,
		  "</text>\n"
		  "<text id=\"reset\" class=\"b\" x=\"%d\" y=\"24\" display=\"none\" "
		  "onclick=\"unzoom()\">Reset Zoom</text>\n"
		  "<text id=\"search\" class=\"b r\" x=\"%d\" y=\"24\" "
		  "onclick=\"search()\">Search</text>\n"
		  "<text id=\"details\" x=\"%d\" y=\"%.0f\"> </text>\n"
		  "<text id=\"matched\" class=\"r\" x=\"%d\" y=\"%.0f\"> </text>\n",
		  SVG_PAD, EXPORT_SVG_WIDTH - SVG_PAD, SVG_PAD, height - 20,
		  EXPORT_SVG_WIDTH - SVG_PAD, height - 6);
	if (w.omitted || w.gone) {
		sb_printf(&sb, "<text id=\"omitted\" x=\"%d\" y=\"%.0f\">", SVG_PAD, height - 6);
		if (w.omitted)
			sb_printf(&sb, "%zu frames narrower than %g px omitted%s", w.omitted,
				  EXPORT_SVG_MIN_PX, w.gone ? "; " : "");
		if (w.gone)
			sb_printf(&sb, "%zu frames only in the baseline", w.gone);
		sb_puts(&sb, "</text>\n");
	}
	all.value = w.total;
	all.max_delta = w.max_delta;
	svg_frame(&sb, "all", 3, true, &all, w.total, unit, SVG_PAD, w.base, w.total ? width : 0);
	w.sb = &sb;
	rc = svg_walk(&w, &in, values, order, m);
	if (rc == 0) {
		sb_puts(&sb, "</svg>\n");
		rc = ex_flush(&sb, out, true);
	}
cleanup:
	free(order);
	free(w.open);
	sb_free(&sb);
	return rc;
}

/* ---- shared by speedscope and pprof: frames deduplicated, in first-seen order ---- */

static int ex_intern_frames(struct ex_table *t, const char *const *stacks, const size_t *lens,
			    size_t n, uint32_t *ids)
{
	for (size_t i = 0; i < n; i++) {
		int depth;

		if (lens[i] == 0)
			continue;
		depth = ex_intern_stack(t, stacks[i], lens[i], ids);
		if (depth < 0)
			return ex_intern_err(depth, i, t);
	}
	return 0;
}

/* ---- speedscope ---- */

static int ex_write_speedscope(const struct export_opts *o, const char *unit,
			       const char *const *stacks, const size_t *lens, const int64_t *values,
			       size_t n, FILE *out)
{
	struct ex_table t = {.max = o->max_frames};
	struct strbuf sb = STRBUF_INIT;
	uint32_t *ids = malloc(EXPORT_MAX_DEPTH * sizeof(*ids));
	const char *ss_unit = strcmp(unit, "samples") == 0 ? "none" : unit;
	int64_t total = 0;
	bool first = true;
	int rc;

	if (!ids)
		return -ENOMEM;
	rc = ex_intern_frames(&t, stacks, lens, n, ids);
	if (rc < 0)
		goto cleanup;
	for (size_t i = 0; i < n; i++)
		if (lens[i])
			total = ex_add_sat(total, values[i]);

	sb_puts(&sb, "{\"$schema\":\"https://www.speedscope.app/file-format-schema.json\","
		     "\"exporter\":\"ember\",\"name\":");
	sb_json_str(&sb, o->title);
	sb_puts(&sb, ",\"activeProfileIndex\":0,\"shared\":{\"frames\":[");
	for (size_t i = 0; i < t.n && rc == 0; i++) {
		sb_puts(&sb, i ? ",{\"name\":\"" : "{\"name\":\"");
		sb_json_escape(&sb, t.nodes[i].name, t.nodes[i].len);
		sb_puts(&sb, "\"}");
		rc = ex_flush(&sb, out, false);
	}
	sb_puts(&sb, "]},\"profiles\":[{\"type\":\"sampled\",\"name\":");
	sb_json_str(&sb, o->title);
	sb_printf(&sb, ",\"unit\":\"%s\",\"startValue\":0,\"endValue\":%lld,\"samples\":[", ss_unit,
		  (long long)total);
	for (size_t i = 0; i < n && rc == 0; i++) {
		int depth;

		if (lens[i] == 0)
			continue;
		/* every frame is known: this only looks them up */
		depth = ex_intern_stack(&t, stacks[i], lens[i], ids);
		if (depth < 0) {
			rc = depth;
			break;
		}
		sb_puts(&sb, first ? "[" : ",[");
		for (int d = 0; d < depth; d++) {
			if (d)
				sb_putc(&sb, ',');
			sb_put_i64(&sb, ids[d]);
		}
		sb_putc(&sb, ']');
		first = false;
		rc = ex_flush(&sb, out, false);
	}
	sb_puts(&sb, "],\"weights\":[");
	first = true;
	for (size_t i = 0; i < n && rc == 0; i++) {
		if (lens[i] == 0)
			continue;
		sb_printf(&sb, first ? "%lld" : ",%lld", (long long)values[i]);
		first = false;
		rc = ex_flush(&sb, out, false);
	}
	if (rc == 0) {
		sb_puts(&sb, "]}]}\n");
		rc = ex_flush(&sb, out, true);
	}
cleanup:
	free(ids);
	sb_free(&sb);
	ex_table_free(&t);
	return rc;
}

/* ---- pprof: protobuf encoding (varints and length-delimited fields only) ---- */

enum { PB_VARINT = 0, PB_LEN = 2 };

static void pb_varint(struct strbuf *sb, uint64_t v)
{
	unsigned char b[10];
	size_t n = 0;

	do {
		b[n++] = (unsigned char)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
		v >>= 7;
	} while (v);
	sb_append(sb, b, n);
}

/* A varint field; zero is the default and left out, as proto3 encoders do. */
static void pb_uint(struct strbuf *sb, unsigned field, uint64_t v)
{
	if (!v)
		return;
	pb_varint(sb, (uint64_t)field << 3 | PB_VARINT);
	pb_varint(sb, v);
}

static void pb_bytes(struct strbuf *sb, unsigned field, const void *data, size_t len)
{
	pb_varint(sb, (uint64_t)field << 3 | PB_LEN);
	pb_varint(sb, len);
	sb_append(sb, data, len);
}

/* profile.proto field numbers */
enum {
	PROFILE_SAMPLE_TYPE = 1,
	PROFILE_SAMPLE = 2,
	PROFILE_LOCATION = 4,
	PROFILE_FUNCTION = 5,
	PROFILE_STRING_TABLE = 6,
	PROFILE_PERIOD_TYPE = 11,
	PROFILE_PERIOD = 12,
	PROFILE_COMMENT = 13,
	VALUE_TYPE_TYPE = 1,
	VALUE_TYPE_UNIT = 2,
	SAMPLE_LOCATION_ID = 1,
	SAMPLE_VALUE = 2,
	LOCATION_ID = 1,
	LOCATION_LINE = 4,
	LINE_FUNCTION_ID = 1,
	FUNCTION_ID = 1,
	FUNCTION_NAME = 2,
	FUNCTION_SYSTEM_NAME = 3,
};

/* Strings of the table before the frame names; index 0 is "" as profile.proto requires. */
enum { STR_EMPTY, STR_TYPE0, STR_UNIT0, STR_TYPE1, STR_UNIT1, STR_TITLE, STR_FRAMES };

static void pb_value_type(struct strbuf *sb, struct strbuf *tmp, unsigned field, int64_t type,
			  int64_t unit)
{
	sb_reset(tmp);
	pb_uint(tmp, VALUE_TYPE_TYPE, (uint64_t)type);
	pb_uint(tmp, VALUE_TYPE_UNIT, (uint64_t)unit);
	pb_bytes(sb, field, tmp->buf, tmp->len);
}

/* Writes data[0..len) gzip-compressed. 0, -ENOMEM or -EIO. */
static int ex_gzip_write(const void *data, size_t len, FILE *out)
{
	unsigned char buf[16384];
	z_stream z = {0};
	const unsigned char *p = data;
	int rc = 0, zrc, flush;

	if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) !=
	    Z_OK)
		return -ENOMEM;
	do {
		/* avail_in is 32 bits: feed at most 1 GiB at a time */
		size_t chunk = len < (1u << 30) ? len : (1u << 30);

		z.next_in = (unsigned char *)p;
		z.avail_in = (uInt)chunk;
		p += chunk;
		len -= chunk;
		flush = len ? Z_NO_FLUSH : Z_FINISH;
		do {
			size_t have;

			z.next_out = buf;
			z.avail_out = sizeof(buf);
			zrc = deflate(&z, flush);
			if (zrc == Z_STREAM_ERROR) {
				log_error("zlib deflate failed");
				rc = -EIO;
				goto cleanup;
			}
			have = sizeof(buf) - z.avail_out;
			if (have && fwrite(buf, 1, have, out) != have) {
				log_error("write failed: %s", strerror(errno));
				rc = -EIO;
				goto cleanup;
			}
		} while (z.avail_out == 0);
	} while (flush != Z_FINISH);
cleanup:
	deflateEnd(&z);
	return rc;
}

static int ex_write_pprof(const struct export_opts *o, const char *unit, const char *const *stacks,
			  const size_t *lens, const int64_t *values, size_t n, FILE *out)
{
	struct ex_table t = {.max = o->max_frames};
	struct strbuf pb = STRBUF_INIT, msg = STRBUF_INIT, tmp = STRBUF_INIT;
	uint32_t *ids = malloc(EXPORT_MAX_DEPTH * sizeof(*ids));
	const char *strs[STR_FRAMES] = {""};
	bool samples = strcmp(unit, "samples") == 0;
	bool two = samples && o->period > 0; /* samples/count and cpu/microseconds */
	int rc;

	if (!ids)
		return -ENOMEM;
	rc = ex_intern_frames(&t, stacks, lens, n, ids);
	if (rc < 0)
		goto cleanup;
	if (samples) {
		strs[STR_TYPE0] = "samples", strs[STR_UNIT0] = "count";
		strs[STR_TYPE1] = "cpu", strs[STR_UNIT1] = "microseconds";
	} else if (strcmp(unit, "microseconds") == 0) {
		strs[STR_TYPE0] = strs[STR_TYPE1] = o->sample_type ? o->sample_type : "cpu";
		strs[STR_UNIT0] = strs[STR_UNIT1] = "microseconds";
	} else {
		strs[STR_TYPE0] = strs[STR_TYPE1] = o->sample_type ? o->sample_type : "space";
		strs[STR_UNIT0] = strs[STR_UNIT1] = "bytes";
	}
	strs[STR_TITLE] = o->title;

	pb_value_type(&pb, &tmp, PROFILE_SAMPLE_TYPE, STR_TYPE0, STR_UNIT0);
	if (two)
		pb_value_type(&pb, &tmp, PROFILE_SAMPLE_TYPE, STR_TYPE1, STR_UNIT1);
	for (size_t i = 0; i < n; i++) {
		int depth;

		if (lens[i] == 0)
			continue;
		depth = ex_intern_stack(&t, stacks[i], lens[i], ids);
		if (depth < 0) {
			rc = depth;
			goto cleanup;
		}
		sb_reset(&msg);
		sb_reset(&tmp);
		/* profile.proto: location_id[0] is the leaf */
		for (int d = depth - 1; d >= 0; d--)
			pb_varint(&tmp, (uint64_t)ids[d] + 1);
		pb_bytes(&msg, SAMPLE_LOCATION_ID, tmp.buf, tmp.len);
		sb_reset(&tmp);
		pb_varint(&tmp, (uint64_t)values[i]);
		if (two) {
			int64_t us =
			    values[i] > INT64_MAX / o->period ? INT64_MAX : values[i] * o->period;
			pb_varint(&tmp, (uint64_t)us);
		}
		pb_bytes(&msg, SAMPLE_VALUE, tmp.buf, tmp.len);
		pb_bytes(&pb, PROFILE_SAMPLE, msg.buf, msg.len);
	}
	/* one location and one function per distinct frame, both with id = frame index + 1 */
	for (size_t i = 0; i < t.n; i++) {
		sb_reset(&msg);
		sb_reset(&tmp);
		pb_uint(&tmp, LINE_FUNCTION_ID, i + 1);
		pb_uint(&msg, LOCATION_ID, i + 1);
		pb_bytes(&msg, LOCATION_LINE, tmp.buf, tmp.len);
		pb_bytes(&pb, PROFILE_LOCATION, msg.buf, msg.len);
	}
	for (size_t i = 0; i < t.n; i++) {
		sb_reset(&msg);
		pb_uint(&msg, FUNCTION_ID, i + 1);
		pb_uint(&msg, FUNCTION_NAME, STR_FRAMES + i);
		pb_uint(&msg, FUNCTION_SYSTEM_NAME, STR_FRAMES + i);
		pb_bytes(&pb, PROFILE_FUNCTION, msg.buf, msg.len);
	}
	for (size_t i = 0; i < STR_FRAMES; i++)
		pb_bytes(&pb, PROFILE_STRING_TABLE, strs[i], strlen(strs[i]));
	for (size_t i = 0; i < t.n; i++)
		pb_bytes(&pb, PROFILE_STRING_TABLE, t.nodes[i].name, t.nodes[i].len);
	if (o->period > 0) {
		pb_value_type(&pb, &tmp, PROFILE_PERIOD_TYPE, samples ? STR_TYPE1 : STR_TYPE0,
			      samples ? STR_UNIT1 : STR_UNIT0);
		pb_uint(&pb, PROFILE_PERIOD, (uint64_t)o->period);
	}
	/* comment is a packed repeated int64 */
	sb_reset(&tmp);
	pb_varint(&tmp, STR_TITLE);
	pb_bytes(&pb, PROFILE_COMMENT, tmp.buf, tmp.len);

	rc = ex_gzip_write(pb.buf, pb.len, out);
cleanup:
	free(ids);
	sb_free(&pb);
	sb_free(&msg);
	sb_free(&tmp);
	ex_table_free(&t);
	return rc;
}

/* ---- entry points ---- */

static const char *const ex_format_names[] = {
    [EXPORT_FOLDED] = "folded",
    [EXPORT_SVG] = "svg",
    [EXPORT_SPEEDSCOPE] = "speedscope",
    [EXPORT_PPROF] = "pprof",
};

int export_parse_format(const char *name, enum export_format *out)
{
	for (size_t i = 0; i < sizeof(ex_format_names) / sizeof(ex_format_names[0]); i++) {
		if (name && strcmp(name, ex_format_names[i]) == 0) {
			*out = (enum export_format)i;
			return 0;
		}
	}
	return -EINVAL;
}

const char *export_format_name(enum export_format fmt)
{
	if ((unsigned)fmt >= sizeof(ex_format_names) / sizeof(ex_format_names[0]))
		return "?";
	return ex_format_names[fmt];
}

int export_write(enum export_format fmt, const struct export_opts *opts, const char *const *stacks,
		 const size_t *lens, const int64_t *values, size_t n, FILE *out)
{
	struct export_opts o = opts ? *opts : (struct export_opts){0};
	const char *unit = o.unit ? o.unit : "samples";
	int rc;

	if (!o.title)
		o.title = "ember";
	if (!o.max_frames)
		o.max_frames = EXPORT_DEFAULT_MAX_FRAMES;
	if (strcmp(unit, "samples") && strcmp(unit, "microseconds") && strcmp(unit, "bytes")) {
		log_error("unknown unit '%s' (samples, microseconds or bytes)", unit);
		return -EINVAL;
	}
	if (o.period < 0) {
		log_error("negative period %lld", (long long)o.period);
		return -EINVAL;
	}
	for (size_t i = 0; i < n; i++) {
		if (values[i] < 0 || (o.before && !(o.before[i] >= 0))) {
			log_error("stack %zu: negative value %g", i,
				  values[i] < 0 ? (double)values[i] : o.before[i]);
			return -EINVAL;
		}
	}
	if (o.before && fmt != EXPORT_SVG) {
		log_error("a baseline (differential graph) is for svg only, not %s",
			  export_format_name(fmt));
		return -EINVAL;
	}
	switch (fmt) {
	case EXPORT_FOLDED:
		rc = ex_write_folded(stacks, lens, values, n, out);
		break;
	case EXPORT_SVG:
		rc = ex_write_svg(&o, unit, stacks, lens, values, n, out);
		break;
	case EXPORT_SPEEDSCOPE:
		rc = ex_write_speedscope(&o, unit, stacks, lens, values, n, out);
		break;
	case EXPORT_PPROF:
		rc = ex_write_pprof(&o, unit, stacks, lens, values, n, out);
		break;
	default:
		return -EINVAL;
	}
	if (rc == 0 && (fflush(out) != 0 || ferror(out))) {
		log_error("write failed: %s", strerror(errno));
		rc = -EIO;
	}
	return rc;
}

struct ex_collect {
	const char **stacks;
	size_t *lens;
	int64_t *values;
	size_t n, cap;
};

static int ex_collect_line(void *arg, const char *stack, size_t len, int64_t value, size_t line)
{
	struct ex_collect *c = arg;

	if (c->n == c->cap) {
		size_t cap = c->cap ? c->cap * 2 : 256;
		const char **s = realloc(c->stacks, cap * sizeof(*s));
		size_t *l;
		int64_t *v;

		if (!s)
			return -ENOMEM;
		c->stacks = s;
		l = realloc(c->lens, cap * sizeof(*l));
		if (!l)
			return -ENOMEM;
		c->lens = l;
		v = realloc(c->values, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		c->values = v;
		c->cap = cap;
	}
	c->stacks[c->n] = stack;
	c->lens[c->n] = len;
	c->values[c->n++] = value;
	return 0;
}

int export_write_folded_text(enum export_format fmt, const struct export_opts *o, const char *buf,
			     size_t len, FILE *out, size_t *n_bad)
{
	struct ex_collect c = {0};
	size_t bad = 0;
	int rc;

	rc = folded_parse(buf, len, ex_collect_line, &c, NULL, 0, &bad);
	if (n_bad)
		*n_bad = bad;
	if (rc == 0)
		rc =
		    export_write(fmt, o, (const char *const *)c.stacks, c.lens, c.values, c.n, out);
	free(c.stacks);
	free(c.lens);
	free(c.values);
	return rc;
}
