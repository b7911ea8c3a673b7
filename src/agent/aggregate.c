/*
 * aggregate — see aggregate.h. One hash table of rows per window, keyed by (tgid, folded stack);
 * Total rows use tgid 0. Rows, their strings and the flushed row array live in a window arena:
 * two arenas alternate, so the rows handed to the sink stay valid while the next window fills
 * the other arena, and a flush frees the window before last in one step.
 */
#define LOG_MODULE "aggregate"
#include "agent/aggregate.h"

#include <errno.h>
#include <regex.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"

#define AGG_ARENA_CHUNK (256u << 10)
#define AGG_MIN_BUCKETS 1024u
#define AGG_UNW_BUCKETS 1024u /* chains of per-process unwind tallies (one per process row) */

/* The custom tags: on every stack row of a process whose user stacks were walked with DWARF,
 * and on every off-CPU row, how its threads blocked. */
static const char *agg_tag_names_unw[] = {AGGREGATE_TAG_UNWIND_COMPLETE};
static const char *agg_tag_names_state[] = {AGGREGATE_TAG_OFFCPU_STATE};
static const char *agg_tag_names_both[] = {AGGREGATE_TAG_UNWIND_COMPLETE,
					   AGGREGATE_TAG_OFFCPU_STATE};
static const char *agg_state_values[2][1] = {{"S"}, {"D"}};

struct agg_chunk {
	struct agg_chunk *next;
	size_t used, cap;
	char data[];
};

struct agg_arena {
	struct agg_chunk *head;
};

struct agg_entry {
	struct agg_entry *next;
	uint64_t hash;
	uint32_t tgid; /* 0 for Total */
	enum sample_event event;
	uint32_t ago;	  /* off-CPU: seconds before the window the row's time is (a long block) */
	uint32_t dstate;  /* off-CPU: 1 for uninterruptible blocks ("D"), 0 for sleeps ("S") */
	uint64_t samples; /* on-CPU: samples; off-CPU: µs */
	int64_t start_ms;
	char app[16];
	const char *container;
	const char *stack;
	size_t stack_len;
};

/* DWARF walks of one process and event in the window (window arena). */
struct agg_unw {
	struct agg_unw *next;
	uint32_t tgid;
	enum sample_event event;
	uint64_t walked, complete; /* samples (off-CPU: µs) */
	const char **value;	   /* the tag value, made at flush */
};

struct aggregate {
	int frequency;
	int64_t us_per_sample;
	size_t max_rows;
	int has_regex;
	regex_t regex;
	char *host, *agent, *host_ip;
	struct symbolizer *sym;
	struct procinfo *procs;

	struct agg_arena arenas[2];
	int cur; /* arena of the window being filled */
	struct agg_entry **buckets;
	size_t n_buckets;
	size_t n_entries;
	struct strbuf scratch;
	struct aggregate_stats stats;
	uint32_t *exited; /* tgids found gone at the last flush, forgotten at the next one */
	size_t n_exited, cap_exited;
	struct agg_unw *unw[AGG_UNW_BUCKETS];
};

static void *agg_arena_alloc(struct agg_arena *a, size_t size)
{
	struct agg_chunk *c = a->head;
	size_t off;

	size = (size + 15) & ~(size_t)15;
	if (!c || c->cap - c->used < size) {
		size_t cap = size > AGG_ARENA_CHUNK ? size : AGG_ARENA_CHUNK;

		c = malloc(sizeof(*c) + cap);
		if (!c)
			abort(); /* as strbuf: callers bound their use, running out is a bug */
		c->used = 0;
		c->cap = cap;
		c->next = a->head;
		a->head = c;
	}
	off = c->used;
	c->used += size;
	return c->data + off;
}

static char *agg_arena_strdup(struct agg_arena *a, const char *s, size_t len)
{
	char *p = agg_arena_alloc(a, len + 1);

	memcpy(p, s, len);
	p[len] = '\0';
	return p;
}

static void agg_arena_free(struct agg_arena *a)
{
	struct agg_chunk *c = a->head, *next;

	for (; c; c = next) {
		next = c->next;
		free(c);
	}
	a->head = NULL;
}

/* Copies at most size - 1 bytes of src (which need not be terminated) and terminates dst. */
static void agg_copy_str(char *dst, const char *src, size_t size)
{
	size_t n = strnlen(src, size - 1);

	memcpy(dst, src, n);
	dst[n] = '\0';
}

static uint64_t agg_hash(uint32_t tgid, uint32_t slot, const char *s, size_t len)
{
	uint64_t h = (0xcbf29ce484222325ull ^ tgid) * 0x100000001b3ull ^ slot;

	for (size_t i = 0; i < len; i++) {
		h ^= (unsigned char)s[i];
		h *= 0x100000001b3ull;
	}
	return h;
}

static char *agg_strdup_or_empty(const char *s)
{
	char *d = strdup(s ? s : "");

	if (!d)
		abort();
	return d;
}

int aggregate_new(const struct aggregate_opts *opts, struct aggregate **out)
{
	struct aggregate *agg;
	int ret;

	*out = NULL;
	if (opts->frequency <= 0 || opts->frequency > 1000000 || !opts->sym || !opts->procs) {
		log_error("bad options: frequency %d Hz, symbolizer %p, procinfo %p",
			  opts->frequency, (void *)opts->sym, (void *)opts->procs);
		return -EINVAL;
	}
	agg = calloc(1, sizeof(*agg));
	if (!agg)
		return -ENOMEM;
	if (opts->process_regex) {
		ret = regcomp(&agg->regex, opts->process_regex, REG_EXTENDED | REG_NOSUB);
		if (ret) {
			char msg[128];

			regerror(ret, &agg->regex, msg, sizeof(msg));
			log_error("process regex '%s': %s", opts->process_regex, msg);
			free(agg);
			return -EINVAL;
		}
		agg->has_regex = 1;
	}
	agg->frequency = opts->frequency;
	/* ⌊10⁹/f⌋/1000 as DeepFlow computes it equals ⌊10⁶/f⌋. */
	agg->us_per_sample = 1000000 / opts->frequency;
	agg->max_rows = opts->max_rows ? opts->max_rows : AGGREGATE_DEFAULT_MAX_ROWS;
	agg->host = agg_strdup_or_empty(opts->host);
	agg->agent = agg_strdup_or_empty(opts->agent);
	agg->host_ip = agg_strdup_or_empty(opts->host_ip);
	agg->sym = opts->sym;
	agg->procs = opts->procs;
	agg->n_buckets = AGG_MIN_BUCKETS;
	agg->buckets = calloc(agg->n_buckets, sizeof(*agg->buckets));
	if (!agg->buckets) {
		aggregate_free(agg);
		return -ENOMEM;
	}
	*out = agg;
	return 0;
}

void aggregate_free(struct aggregate *agg)
{
	if (!agg)
		return;
	if (agg->has_regex)
		regfree(&agg->regex);
	agg_arena_free(&agg->arenas[0]);
	agg_arena_free(&agg->arenas[1]);
	free(agg->buckets);
	free(agg->host);
	free(agg->agent);
	free(agg->host_ip);
	sb_free(&agg->scratch);
	free(agg->exited);
	free(agg);
}

static void agg_grow(struct aggregate *agg)
{
	size_t n = agg->n_buckets * 2;
	struct agg_entry **b = calloc(n, sizeof(*b));

	if (!b)
		return; /* longer chains, still correct */
	for (size_t i = 0; i < agg->n_buckets; i++) {
		struct agg_entry *e = agg->buckets[i], *next;

		for (; e; e = next) {
			next = e->next;
			e->next = b[e->hash & (n - 1)];
			b[e->hash & (n - 1)] = e;
		}
	}
	free(agg->buckets);
	agg->buckets = b;
	agg->n_buckets = n;
}

/* The identity of a row besides its process and stack. */
struct agg_slot {
	enum sample_event event;
	uint32_t ago;
	uint32_t dstate;
};

/* Adds samples to the row (tgid, event, ago, stack), creating it unless the window is full. */
static void agg_insert(struct aggregate *agg, uint32_t tgid, struct agg_slot slot,
		       const char *stack, size_t len, const char *app, int64_t start_ms,
		       const char *container, uint64_t samples)
{
	uint64_t h = agg_hash(tgid, slot.ago << 2 | slot.dstate << 1 | slot.event, stack, len);
	struct agg_arena *arena = &agg->arenas[agg->cur];
	struct agg_entry *e;

	for (e = agg->buckets[h & (agg->n_buckets - 1)]; e; e = e->next) {
		if (e->hash == h && e->tgid == tgid && e->event == slot.event &&
		    e->ago == slot.ago && e->dstate == slot.dstate && e->stack_len == len &&
		    memcmp(e->stack, stack, len) == 0) {
			e->samples += samples;
			return;
		}
	}
	if (agg->n_entries >= agg->max_rows) {
		if (agg->stats.rows_dropped++ == 0)
			log_warn("more than %zu rows in one window; dropping the rest (counted)",
				 agg->max_rows);
		agg->stats.samples_dropped += samples;
		return;
	}
	if (agg->n_entries >= agg->n_buckets)
		agg_grow(agg);
	e = agg_arena_alloc(arena, sizeof(*e));
	e->hash = h;
	e->tgid = tgid;
	e->event = slot.event;
	e->ago = slot.ago;
	e->dstate = slot.dstate;
	e->samples = samples;
	e->start_ms = start_ms;
	agg_copy_str(e->app, app, sizeof(e->app));
	e->container = container[0] ? agg_arena_strdup(arena, container, strlen(container)) : "";
	e->stack = agg_arena_strdup(arena, stack, len);
	e->stack_len = len;
	e->next = agg->buckets[h & (agg->n_buckets - 1)];
	agg->buckets[h & (agg->n_buckets - 1)] = e;
	agg->n_entries++;
}

/* A comm as a frame label: ';' would split the frame, so it becomes ':' (as in symbols). */
static void agg_put_comm(struct strbuf *sb, const char *prefix, const char *comm)
{
	size_t start;

	sb_puts(sb, prefix);
	start = sb->len;
	sb_append(sb, comm, strnlen(comm, 15));
	for (size_t i = start; i < sb->len; i++) {
		if (sb->buf[i] == ';')
			sb->buf[i] = ':';
	}
}

/*
 * The process's comm (procinfo; else the sampled comm, right for a main thread and the best
 * guess for a thread of a vanished process), its start time and container. Returns whether
 * procinfo knew the process.
 */
static int agg_process_facts(struct aggregate *agg, const struct sample_rec *rec, char comm[16],
			     int64_t *start_ms, char container[65])
{
	const struct proc_facts *f = procinfo_get(agg->procs, rec->tgid);
	int known = f && f->comm[0];

	agg_copy_str(comm, known ? f->comm : rec->comm, 16);
	*start_ms = known ? f->start_time_ms : 0;
	agg_copy_str(container, known ? f->container_id : "", 65);
	return known;
}

void aggregate_process_comm(struct aggregate *agg, const struct sample_rec *rec, char comm[16])
{
	char container[65];
	int64_t start_ms;

	agg_process_facts(agg, rec, comm, &start_ms, container);
}

void aggregate_build_stack(struct aggregate *agg, const struct sample_rec *rec, struct strbuf *out)
{
	int uerr = rec->ustack_error != 0;

	agg_put_comm(out, rec->tid == rec->tgid ? "[p] " : "[t] ", rec->comm);
	if (rec->stacks_skipped) {
		sb_puts(out, ";" AGGREGATE_FRAME_NOT_CAPTURED);
		return;
	}
	if (uerr && rec->kstack_error) {
		sb_puts(out, ";[stack trace lost]");
		return;
	}
	if (uerr)
		sb_puts(out, ";[user stack trace error]");
	else if (rec->n_uframes && rec->uframes_encoded)
		sym_append_user_encoded(agg->sym, rec->tgid, rec->uframes, rec->n_uframes,
					rec->resolve_object, rec->resolve_arg, out);
	else if (rec->n_uframes)
		sym_append_user(agg->sym, rec->tgid, rec->uframes, rec->n_uframes, out);
	if (rec->kstack_error)
		sb_puts(out, ";[kernel stack trace error]");
	else if (rec->n_kframes && rec->event == SAMPLE_OFF_CPU)
		sym_append_kernel_blocked(agg->sym, rec->kframes, rec->n_kframes, out);
	else if (rec->n_kframes)
		sym_append_kernel(agg->sym, rec->kframes, rec->n_kframes, out);
	if (rec->n_wframes)
		sym_append_waker(agg->sym, rec->waker_comm, rec->wframes, rec->n_wframes, out);
}

static struct agg_unw *agg_unw_find(struct aggregate *agg, uint32_t tgid, enum sample_event ev)
{
	struct agg_unw *u = agg->unw[tgid % AGG_UNW_BUCKETS];

	while (u && (u->tgid != tgid || u->event != ev))
		u = u->next;
	return u;
}

/* Counts one record's DWARF walk (ustack_reason 1 = complete) for its process. */
static void agg_unw_count(struct aggregate *agg, const struct sample_rec *rec)
{
	struct agg_unw *u;

	if (!rec->ustack_reason)
		return;
	u = agg_unw_find(agg, rec->tgid, rec->event);
	if (!u) {
		u = agg_arena_alloc(&agg->arenas[agg->cur], sizeof(*u));
		memset(u, 0, sizeof(*u));
		u->tgid = rec->tgid;
		u->event = rec->event;
		u->next = agg->unw[rec->tgid % AGG_UNW_BUCKETS];
		agg->unw[rec->tgid % AGG_UNW_BUCKETS] = u;
	}
	u->walked += rec->count;
	if (rec->ustack_reason == 1)
		u->complete += rec->count;
}

/*
 * The row's tags. Unwind: ⌊100 × complete / walked⌋ of its process in this window, three digits
 * ("007", "100") so that the server's string comparisons order it (>= '090'). Off-CPU rows: how
 * the time was blocked, "S" (a sleep: TASK_INTERRUPTIBLE) or "D" (TASK_UNINTERRUPTIBLE).
 */
static void agg_tags(struct aggregate *agg, struct profile_row *r, const struct agg_entry *e)
{
	struct agg_unw *u = r->process_id ? agg_unw_find(agg, (uint32_t)r->process_id, e->event)
					  : NULL;
	int state = e->event == SAMPLE_OFF_CPU;

	if (u && !u->walked)
		u = NULL;
	if (u && !u->value) {
		char v[8];
		int len = snprintf(v, sizeof(v), "%03u", (unsigned)(u->complete * 100 / u->walked));

		u->value = agg_arena_alloc(&agg->arenas[agg->cur], sizeof(*u->value));
		u->value[0] = agg_arena_strdup(&agg->arenas[agg->cur], v, (size_t)len);
	}
	if (u && state) {
		const char **v = agg_arena_alloc(&agg->arenas[agg->cur], 2 * sizeof(*v));

		v[0] = u->value[0];
		v[1] = agg_state_values[e->dstate][0];
		r->n_tags = 2;
		r->tag_names = agg_tag_names_both;
		r->tag_values = v;
	} else if (u) {
		r->n_tags = 1;
		r->tag_names = agg_tag_names_unw;
		r->tag_values = u->value;
	} else if (state) {
		r->n_tags = 1;
		r->tag_names = agg_tag_names_state;
		r->tag_values = agg_state_values[e->dstate];
	}
}

/*
 * The value of a record under its row. On-CPU: one piece, its samples. Off-CPU: the thread's
 * blocked µs, cut into one-second pieces going back from the window when a block reached
 * further back than the window (DeepFlow's ingester does the same to every row over 1 s; done
 * here, per thread, before threads of one name merge, a piece is real time of one thread).
 */
static void agg_insert_pieces(struct aggregate *agg, const struct sample_rec *rec,
			      const char *pcomm, int64_t start_ms, const char *container)
{
	struct strbuf *sb = &agg->scratch;
	uint64_t left = rec->count;
	uint32_t ago = 0;

	while (left) {
		uint64_t piece = left;

		if (rec->event == SAMPLE_OFF_CPU && left > AGGREGATE_OFFCPU_SPLIT_US &&
		    ago + 1 < AGGREGATE_OFFCPU_MAX_SPLITS)
			piece = AGGREGATE_OFFCPU_SPLIT_US;
		agg_insert(agg, rec->tgid,
			   (struct agg_slot){rec->event, ago, rec->uninterruptible ? 1 : 0}, sb->buf,
			   sb->len,
			   pcomm, start_ms, container, piece);
		left -= piece;
		ago++;
	}
}

void aggregate_add(void *arg, const struct sample_rec *rec)
{
	struct aggregate *agg = arg;
	struct strbuf *sb = &agg->scratch;
	char pcomm[16], container[65];
	int64_t start_ms;
	int known;

	agg->stats.samples += rec->count;
	if (rec->ustack_error)
		agg->stats.ustack_errors += rec->count;
	if (rec->kstack_error)
		agg->stats.kstack_errors += rec->count;

	known = agg_process_facts(agg, rec, pcomm, &start_ms, container);

	/* Total: every process, two levels at most; a vanished process keeps only its thread.
	 * On-CPU only: DeepFlow's off-CPU has no Total. */
	if (rec->event == SAMPLE_ON_CPU) {
		sb_reset(sb);
		if (rec->tid == rec->tgid) {
			agg_put_comm(sb, "[p] ", pcomm);
		} else if (known) {
			agg_put_comm(sb, "[p] ", pcomm);
			agg_put_comm(sb, ";[t] ", rec->comm);
		} else {
			agg_put_comm(sb, "[t] ", rec->comm);
		}
		agg_insert(agg, 0, (struct agg_slot){SAMPLE_ON_CPU, 0, 0}, sb->buf, sb->len, "Total",
			   0, "", rec->count);
	}

	if (agg->has_regex && regexec(&agg->regex, pcomm, 0, NULL, 0) != 0)
		return;
	agg_unw_count(agg, rec);
	sb_reset(sb);
	aggregate_build_stack(agg, rec, sb);
	agg_insert_pieces(agg, rec, pcomm, start_ms, container);
}

static int agg_cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

/*
 * Releases what the symbolizer and procinfo keep for processes that exited. A process found
 * gone at flush N is forgotten at flush N + 1: samples it took just before exiting may sit in
 * the other map set and arrive with the next drain, and must still symbolize.
 */
static void agg_forget_exited(struct aggregate *agg)
{
	size_t n = 0, n_dead = 0;

	for (size_t i = 0; i < agg->n_exited; i++) {
		sym_process_forget(agg->sym, agg->exited[i]);
		procinfo_forget(agg->procs, agg->exited[i]);
	}
	agg->n_exited = 0;
	if (agg->n_entries > agg->cap_exited) {
		uint32_t *v = realloc(agg->exited, agg->n_entries * sizeof(*v));

		if (!v)
			return; /* the caches stay bounded by their LRU; forgetting is an
				   optimisation */
		agg->exited = v;
		agg->cap_exited = agg->n_entries;
	}
	/* Only processes with stacks were symbolized; Total-only ones age out of procinfo's LRU. */
	for (size_t i = 0; i < agg->n_buckets; i++) {
		for (struct agg_entry *e = agg->buckets[i]; e; e = e->next) {
			if (e->tgid)
				agg->exited[n++] = e->tgid;
		}
	}
	qsort(agg->exited, n, sizeof(*agg->exited), agg_cmp_u32);
	for (size_t i = 0; i < n; i++) {
		if (i > 0 && agg->exited[i] == agg->exited[i - 1])
			continue;
		/* A zombie still answers; it is forgotten once reaped. */
		if (kill((pid_t)agg->exited[i], 0) < 0 && errno == ESRCH)
			agg->exited[n_dead++] = agg->exited[i];
	}
	agg->n_exited = n_dead;
}

static int64_t agg_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int aggregate_flush(struct aggregate *agg, int64_t window_start, aggregate_sink_fn sink, void *arg)
{
	struct agg_arena *arena = &agg->arenas[agg->cur];
	struct profile_row *rows;
	int64_t now_us = agg_now_us();
	size_t n = 0;
	int ret;

	rows = agg_arena_alloc(arena, (agg->n_entries ? agg->n_entries : 1) * sizeof(*rows));
	for (size_t i = 0; i < agg->n_buckets; i++) {
		for (struct agg_entry *e = agg->buckets[i]; e; e = e->next) {
			struct profile_row *r = &rows[n++];

			memset(r, 0, sizeof(*r));
			r->app_service = e->app;
			r->app_instance = e->app;
			r->profile_location_str = e->stack;
			r->time = window_start - (int64_t)e->ago;
			r->profile_value = e->event == SAMPLE_OFF_CPU
					       ? (int64_t)e->samples
					       : (int64_t)e->samples * agg->us_per_sample;
			r->profile_value_unit = "microseconds";
			r->profile_event_type = e->event == SAMPLE_OFF_CPU ? "off-cpu" : "on-cpu";
			r->profile_language_type = "eBPF";
			r->profile_create_timestamp = now_us;
			r->process_id = e->tgid;
			r->process_start_time = e->start_ms;
			r->host = agg->host;
			r->agent = agg->agent;
			r->host_ip = agg->host_ip;
			r->container_id = e->container;
			r->pod_cluster = r->pod_ns = r->pod_node = r->pod = r->pod_group = "";
			r->trace_id = r->span_name = r->profile_id = "";
			r->compression_algo = "";
			agg_tags(agg, r, e);
		}
	}
	ret = sink(arg, rows, n);
	agg->stats.rows_flushed += n;
	agg_forget_exited(agg);

	/* The flushed arena stays alive for the caller; the one before it is released. */
	agg->cur ^= 1;
	agg_arena_free(&agg->arenas[agg->cur]);
	memset(agg->buckets, 0, agg->n_buckets * sizeof(*agg->buckets));
	memset(agg->unw, 0, sizeof(agg->unw));
	agg->n_entries = 0;
	return ret;
}

static int agg_cmp_entry(const void *a, const void *b)
{
	const struct agg_entry *x = *(const struct agg_entry *const *)a;
	const struct agg_entry *y = *(const struct agg_entry *const *)b;
	int c = strcmp(x->app, y->app);

	if (!c && x->event != y->event)
		return x->event < y->event ? -1 : 1;
	return c ? c : strcmp(x->stack, y->stack);
}

int aggregate_write_folded(struct aggregate *agg, FILE *out, enum aggregate_value unit)
{
	struct agg_entry **v;
	size_t n = 0;
	int ret = 0;

	v = malloc((agg->n_entries ? agg->n_entries : 1) * sizeof(*v));
	if (!v)
		return -ENOMEM;
	for (size_t i = 0; i < agg->n_buckets; i++) {
		for (struct agg_entry *e = agg->buckets[i]; e; e = e->next) {
			if (e->tgid)
				v[n++] = e;
		}
	}
	qsort(v, n, sizeof(*v), agg_cmp_entry);
	for (size_t i = 0; i < n; i++) {
		uint64_t value = v[i]->samples;

		/* Processes of one name merge here, as they do under one app_service in the API. */
		while (i + 1 < n && agg_cmp_entry(&v[i], &v[i + 1]) == 0)
			value += v[++i]->samples;
		/* Off-CPU values are µs already. */
		if (unit == AGGREGATE_VALUE_US && v[i]->event == SAMPLE_ON_CPU)
			value *= (uint64_t)agg->us_per_sample;
		/* The process name is the root, as in the API's tree (app_service above the stack).
		 */
		sb_reset(&agg->scratch);
		agg_put_comm(&agg->scratch, "", v[i]->app);
		if (fprintf(out, "%s;%s %llu\n", agg->scratch.buf, v[i]->stack,
			    (unsigned long long)value) < 0) {
			ret = -EIO;
			break;
		}
	}
	free(v);
	return ret;
}

void aggregate_get_stats(struct aggregate *agg, struct aggregate_stats *st)
{
	*st = agg->stats;
}
