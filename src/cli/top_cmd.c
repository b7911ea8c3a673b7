/*
 * ember top — which functions burn the CPU right now, as `perf top` shows it, with ember's
 * stacks (DWARF unwinding, so Debian's binaries without frame pointers count their callers too)
 * and no server: the sampler and aggregator of `ember record`, and every --interval seconds a
 * table of the functions with the most samples of that interval, by self (the function was
 * running) and total (it was on the stack), each with the process it ran in. Host-wide, or one
 * process with -p. On a terminal the table replaces the last one; with --batch (or when stdout
 * is not a terminal) tables follow each other, -n of them.
 *
 * With --off-cpu the table is of blocked time instead: every off-CPU stack ends in the kernel at
 * __schedule, so "self" goes to the innermost frame of the program itself (not [k], not a
 * waker's): where it called into the kernel and waited.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/profiler.h"
#include "common/folded.h"
#include "common/strbuf.h"

#define TOP_LINES_DEFAULT 20
#define TOP_LINES_MAX 1000
#define TOP_MAX_FRAMES 4096 /* frames of one stack looked at for its totals */
#define TOP_MAX_ENTRIES (1u << 20) /* distinct (process, function) pairs of one interval */

static volatile sig_atomic_t top_stop;

static void top_on_signal(int sig)
{
	(void)sig;
	top_stop = 1;
}

static void top_usage(FILE *f)
{
	fprintf(f,
		"usage: ember top [-F HZ] [-p PID] [--interval SECONDS] [-n COUNT] [--lines N]\n"
		"                 [--unwind dwarf|fp] [--off-cpu] [--sort self|total] [--batch]\n"
		"Samples this host (or process PID) and every --interval seconds (default 2) shows\n"
		"the functions with the most samples of that interval: self %% (running), total %%\n"
		"(on the stack), and the process. --off-cpu: blocked time instead, self being the\n"
		"program's innermost frame (where it waited); a block counts, whole, in the table\n"
		"of the interval it ends in. --sort total ranks by total %% (callers too). -n stops\n"
		"after COUNT tables; Ctrl-C stops.\n");
}

/* One (process, function) of the interval: samples where it ran, and where it was on the stack. */
struct top_entry {
	const char *app, *fn;
	size_t app_len, fn_len;
	uint64_t self, total;
	uint32_t seen; /* the stack that last counted its total (a recursion counts once) */
};

struct top_table {
	struct top_entry *v;
	size_t n, cap;
	int off_cpu;	  /* values are µs blocked; self goes to the program's innermost frame */
	uint64_t samples; /* or µs */
	uint32_t stack_no;
	size_t *slots; /* open addressing over v, index + 1; 0 empty */
	size_t nslots;
};

static uint64_t top_hash(const char *a, size_t al, const char *b, size_t bl)
{
	uint64_t h = 1469598103934665603ull;

	for (size_t i = 0; i < al; i++)
		h = (h ^ (unsigned char)a[i]) * 1099511628211ull;
	h = (h ^ 0xff) * 1099511628211ull;
	for (size_t i = 0; i < bl; i++)
		h = (h ^ (unsigned char)b[i]) * 1099511628211ull;
	return h;
}

static int top_grow(struct top_table *t)
{
	size_t nslots = t->nslots ? t->nslots * 2 : 4096;
	size_t *slots = calloc(nslots, sizeof(*slots));

	if (!slots)
		return -ENOMEM;
	for (size_t i = 0; i < t->n; i++) {
		const struct top_entry *e = &t->v[i];
		size_t k = top_hash(e->app, e->app_len, e->fn, e->fn_len) & (nslots - 1);

		while (slots[k])
			k = (k + 1) & (nslots - 1);
		slots[k] = i + 1;
	}
	free(t->slots);
	t->slots = slots;
	t->nslots = nslots;
	return 0;
}

static struct top_entry *top_get(struct top_table *t, const char *app, size_t al, const char *fn,
				 size_t fl)
{
	size_t k;

	if ((t->n + 1) * 2 > t->nslots && top_grow(t) < 0)
		return NULL;
	k = top_hash(app, al, fn, fl) & (t->nslots - 1);
	for (; t->slots[k]; k = (k + 1) & (t->nslots - 1)) {
		struct top_entry *e = &t->v[t->slots[k] - 1];

		if (e->app_len == al && e->fn_len == fl && memcmp(e->app, app, al) == 0 &&
		    memcmp(e->fn, fn, fl) == 0)
			return e;
	}
	if (t->n >= TOP_MAX_ENTRIES)
		return NULL;
	if (t->n == t->cap) {
		size_t cap = t->cap ? t->cap * 2 : 1024;
		struct top_entry *v = realloc(t->v, cap * sizeof(*v));

		if (!v)
			return NULL;
		t->v = v;
		t->cap = cap;
	}
	t->v[t->n] = (struct top_entry){app, fn, al, fl, 0, 0, 0};
	t->slots[k] = ++t->n;
	return &t->v[t->n - 1];
}

/*
 * A folded line "app;[p] comm;frame;...;leaf N": N counts as total of every frame below the
 * process and thread levels, once per stack, and as self of the leaf — off-CPU, of the
 * innermost frame that is the program's own (not [k], [w] or [wk]).
 */
static int top_add_line(void *arg, const char *stack, size_t len, int64_t value, size_t line)
{
	struct top_table *t = arg;
	const char *end = stack + len, *app = stack, *p = memchr(stack, ';', len), *fn;
	size_t app_len = p ? (size_t)(p - stack) : len, frames = 0, leaf = SIZE_MAX;

	(void)line;
	t->samples += (uint64_t)value;
	t->stack_no++;
	for (fn = p ? p + 1 : end; fn < end && frames < TOP_MAX_FRAMES; frames++) {
		const char *q = memchr(fn, ';', (size_t)(end - fn));
		size_t fl = q ? (size_t)(q - fn) : (size_t)(end - fn);
		int level = fl >= 4 && (memcmp(fn, "[p] ", 4) == 0 || memcmp(fn, "[t] ", 4) == 0);
		int kernel = (fl >= 4 && (memcmp(fn, "[k] ", 4) == 0 || memcmp(fn, "[w] ", 4) == 0)) ||
			     (fl >= 5 && memcmp(fn, "[wk] ", 5) == 0);
		struct top_entry *e = level ? NULL : top_get(t, app, app_len, fn, fl);

		if (e && e->seen != t->stack_no) {
			e->seen = t->stack_no;
			e->total += (uint64_t)value;
		}
		/* an index: the next top_get may move the table */
		if (e && !(t->off_cpu && kernel))
			leaf = (size_t)(e - t->v);
		else if (!e && !level && !(t->off_cpu && kernel))
			leaf = SIZE_MAX; /* the leaf had no room: its self is not the caller's */
		if (!q)
			break;
		fn = q + 1;
	}
	if (leaf != SIZE_MAX)
		t->v[leaf].self += (uint64_t)value;
	return 0;
}

/* Process and function, so that rows of equal values keep their order between tables. */
static int top_cmp_names(const struct top_entry *x, const struct top_entry *y)
{
	int c;

	c = memcmp(x->app, y->app, x->app_len < y->app_len ? x->app_len : y->app_len);
	if (c || x->app_len != y->app_len)
		return c ? c : x->app_len < y->app_len ? -1 : 1;
	c = memcmp(x->fn, y->fn, x->fn_len < y->fn_len ? x->fn_len : y->fn_len);
	return c ? c : x->fn_len < y->fn_len ? -1 : x->fn_len > y->fn_len;
}

/* By self, then total (--sort total: the other way round), then by name. */
static int top_cmp(const void *a, const void *b, void *by_total)
{
	const struct top_entry *x = a, *y = b;
	uint64_t x1 = by_total ? x->total : x->self, y1 = by_total ? y->total : y->self;
	uint64_t x2 = by_total ? x->self : x->total, y2 = by_total ? y->self : y->total;

	if (x1 != y1)
		return x1 > y1 ? -1 : 1;
	if (x2 != y2)
		return x2 > y2 ? -1 : 1;
	return top_cmp_names(x, y);
}

/*
 * A name as the terminal gets it: control bytes (a process may name itself "\e]0;…") become
 * '?', padded to width (0: none).
 */
static void top_put_name(FILE *out, const char *s, size_t len, int width)
{
	int n = 0;

	for (size_t i = 0; i < len; i++, n++)
		fputc((unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i], out);
	for (; n < width; n++)
		fputc(' ', out);
}

/*
 * One table: the interval's folded stacks, ranked by self samples (off_cpu: µs blocked); lost:
 * samples the sampler could not count in it (full maps), said so that a quiet table is not
 * taken for an idle host.
 */
static int top_print(const char *folded, size_t len, double seconds, int frequency, int ncpu,
		     int off_cpu, int by_total, uint64_t lost, size_t lines, int clear, FILE *out)
{
	struct top_table t = {.off_cpu = off_cpu};
	int rc = folded_parse(folded, len, top_add_line, &t, NULL, 0, NULL);

	if (rc < 0)
		goto out;
	if (t.n)
		qsort_r(t.v, t.n, sizeof(*t.v), top_cmp, by_total ? &t : NULL);
	if (clear)
		fputs("\033[H\033[2J", out);
	if (off_cpu)
		fprintf(out,
			"ember top --off-cpu: %.1f s, %.2f s of blocks that ended in it (threads "
			"together; a block counts whole when it ends)\n",
			seconds, (double)t.samples / 1e6);
	else
		fprintf(out,
			"ember top: %.1f s, %" PRIu64 " samples at %d Hz on %d CPUs (%.1f %% busy)\n",
			seconds, t.samples, frequency, ncpu,
			seconds > 0 ? 100.0 * (double)t.samples / (seconds * frequency * ncpu)
				    : 0.0);
	if (lost)
		fprintf(out, "(%" PRIu64 " samples lost: the sampler's maps were full)\n", lost);
	fprintf(out, "%7s %7s  %-16s %s\n", "self%", "total%", "process", "function");
	for (size_t i = 0; i < t.n && i < lines && (by_total || t.v[i].self); i++) {
		const struct top_entry *e = &t.v[i];

		fprintf(out, "%6.2f%% %6.2f%%  ", 100.0 * (double)e->self / (double)t.samples,
			100.0 * (double)e->total / (double)t.samples);
		top_put_name(out, e->app, e->app_len, 16);
		fputc(' ', out);
		top_put_name(out, e->fn, e->fn_len, 0);
		fputc('\n', out);
	}
	fputc('\n', out);
	if (fflush(out) != 0 || ferror(out))
		rc = errno == EPIPE ? -EPIPE : -EIO;
out:
	free(t.v);
	free(t.slots);
	return rc;
}

static int top_discard(void *arg, const struct profile_row *rows, size_t n)
{
	(void)arg, (void)rows, (void)n;
	return 0;
}

static double top_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int cli_top(int argc, char **argv)
{
	static const struct option longopts[] = {
	    {"frequency", required_argument, NULL, 'F'}, {"pid", required_argument, NULL, 'p'},
	    {"interval", required_argument, NULL, 'i'},	 {"count", required_argument, NULL, 'n'},
	    {"lines", required_argument, NULL, 'l'},	 {"unwind", required_argument, NULL, 'u'},
	    {"batch", no_argument, NULL, 'b'},		 {"help", no_argument, NULL, 'h'},
	    {"sort", required_argument, NULL, 's'},
	    {"off-cpu", no_argument, NULL, 'O'},
	    {NULL, 0, NULL, 0},
	};
	struct sampler_opts so = {
	    .frequency = 99, .unwind = SAMPLER_UNWIND_DWARF, .flush_seconds = 0.2};
	struct cli_profiler pr = {0};
	struct sampler_stats ss;
	uint64_t lost_before = 0;
	struct timespec tick = {0, 200 * 1000 * 1000};
	int64_t pid = 0, count = 0, lines = TOP_LINES_DEFAULT, v;
	double interval = 2, start;
	int opt, batch = !isatty(STDOUT_FILENO), by_total = 0, ret = 1, shown = 0, rc;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);

	while ((opt = getopt_long(argc, argv, "F:p:n:h", longopts, NULL)) != -1) {
		switch (opt) {
		case 'F':
			if (cli_parse_int(optarg, 1, 1000, &v) < 0) {
				fprintf(stderr, "ember top: -F wants 1..1000 Hz\n");
				return 2;
			}
			so.frequency = (int)v;
			break;
		case 'p':
			if (cli_parse_int(optarg, 1, INT32_MAX, &pid) < 0) {
				fprintf(stderr, "ember top: -p wants a pid\n");
				return 2;
			}
			break;
		case 'i': {
			char *end;

			interval = strtod(optarg, &end);
			if (*end || !(interval >= 0.2 && interval <= 3600)) {
				fprintf(stderr, "ember top: --interval wants 0.2..3600 seconds\n");
				return 2;
			}
			break;
		}
		case 'n':
			if (cli_parse_int(optarg, 1, INT32_MAX, &count) < 0) {
				fprintf(stderr, "ember top: -n wants a count of tables\n");
				return 2;
			}
			break;
		case 'l':
			if (cli_parse_int(optarg, 1, TOP_LINES_MAX, &lines) < 0) {
				fprintf(stderr, "ember top: --lines wants 1..%d\n", TOP_LINES_MAX);
				return 2;
			}
			break;
		case 'u':
			if (strcmp(optarg, "fp") == 0)
				so.unwind = SAMPLER_UNWIND_FP;
			else if (strcmp(optarg, "dwarf") != 0) {
				fprintf(stderr, "ember top: --unwind is dwarf or fp\n");
				return 2;
			}
			break;
		case 'b': batch = 1; break;
		case 's':
			if (strcmp(optarg, "total") == 0)
				by_total = 1;
			else if (strcmp(optarg, "self") != 0) {
				fprintf(stderr, "ember top: --sort is self or total\n");
				return 2;
			}
			break;
		case 'O': so.events = SAMPLER_EVENT_OFF_CPU; break;
		case 'h': top_usage(stdout); return 0;
		default: top_usage(stderr); return 2;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "ember top: unexpected argument '%s'\n", argv[optind]);
		top_usage(stderr);
		return 2;
	}
	if (pid && (pid = cli_profiler_tgid("ember top", pid)) < 0)
		return 1;
	if (ncpu < 1)
		ncpu = 1;
	so.only_tgid = (uint32_t)pid;
	if (cli_profiler_open("ember top", &so, &pr) < 0)
		return 1;
	signal(SIGINT, top_on_signal);
	signal(SIGTERM, top_on_signal);
	start = top_now();
	while (!top_stop) {
		char *buf = NULL;
		size_t len = 0;
		FILE *mem;
		double now;

		nanosleep(&tick, NULL);
		sampler_drain(pr.sampler, aggregate_add, pr.agg);
		now = top_now();
		/* -p: the process gone ends the interval, with its last table */
		if (pid && kill((pid_t)pid, 0) < 0 && errno == ESRCH)
			top_stop = 1;
		if (now - start < interval && !top_stop)
			continue;
		mem = open_memstream(&buf, &len);
		if (!mem || aggregate_write_folded(pr.agg, mem, AGGREGATE_VALUE_SAMPLES) < 0) {
			if (mem)
				fclose(mem);
			free(buf);
			fprintf(stderr, "ember top: out of memory\n");
			goto out;
		}
		fclose(mem);
		sampler_get_stats(pr.sampler, &ss);
		rc = top_print(buf, len, now - start, so.frequency, (int)ncpu,
			       so.events == SAMPLER_EVENT_OFF_CPU, by_total, ss.lost - lost_before,
			       (size_t)lines, !batch, stdout);
		lost_before = ss.lost;
		free(buf);
		if (rc < 0) {
			/* a closed pipe (ember top | head) or a full disk: nobody reads any more */
			if (rc != -EPIPE)
				fprintf(stderr, "ember top: writing the table: %s\n", strerror(-rc));
			goto out;
		}
		aggregate_flush(pr.agg, 0, top_discard, NULL);
		start = now;
		if (count && ++shown >= count)
			break;
	}
	ret = 0;
out:
	cli_profiler_close(&pr);
	return ret;
}
