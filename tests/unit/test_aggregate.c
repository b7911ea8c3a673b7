/*
 * test_aggregate — sample records to rows, with the real symbolizer and procinfo reading this
 * test process's own /proc: user frames are addresses of functions of this binary, kernel frames
 * addresses from /proc/kallsyms, the kernel thread is kthreadd (pid 2).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "agent/aggregate.h"

#define NO_SUCH_PID 0x3ffffff0u /* above pid_max: never a live process */

/* Functions whose addresses stand for user frames. Distinct bodies so none are merged. */
__attribute__((noinline)) int agg_test_leaf(int x)
{
	__asm__ volatile("" : "+r"(x));
	return x * 3 + 1;
}

__attribute__((noinline)) int agg_test_mid(int x)
{
	__asm__ volatile("" : "+r"(x));
	return agg_test_leaf(x) * 5 + 2;
}

__attribute__((noinline)) int agg_test_root(int x)
{
	__asm__ volatile("" : "+r"(x));
	return agg_test_mid(x) * 7 + 3;
}

struct fixture {
	struct symbolizer *sym;
	struct procinfo *procs;
	struct aggregate *agg;
	char comm[16];	     /* this process's comm */
	uint64_t uframes[3]; /* leaf first: leaf, mid, root */
	uint64_t kframes[2]; /* innermost first */
	char kname[2][128];
};

struct sink_rows {
	const struct profile_row *rows;
	size_t n;
	int calls;
};

static int sink_keep(void *arg, const struct profile_row *rows, size_t n)
{
	struct sink_rows *sr = arg;

	sr->rows = rows;
	sr->n = n;
	sr->calls++;
	return 0;
}

static const struct profile_row *find_row(const struct sink_rows *sr, const char *app,
					  const char *stack)
{
	for (size_t i = 0; i < sr->n; i++) {
		if (strcmp(sr->rows[i].app_service, app) == 0 &&
		    strcmp(sr->rows[i].profile_location_str, stack) == 0)
			return &sr->rows[i];
	}
	return NULL;
}

/* Address of a text symbol from /proc/kallsyms, 0 if absent or hidden (addresses zeroed). */
static uint64_t kallsyms_addr(const char *name)
{
	FILE *f = fopen("/proc/kallsyms", "r");
	char line[512], sym[256], type;
	unsigned long long addr;
	uint64_t found = 0;

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%llx %c %255s", &addr, &type, sym) == 3 &&
		    (type == 'T' || type == 't') && strcmp(sym, name) == 0) {
			found = addr;
			break;
		}
	}
	fclose(f);
	return found;
}

static int setup_opts(void **state, const char *regex, size_t max_rows)
{
	struct fixture *fx = calloc(1, sizeof(*fx));
	struct sym_opts so = {0};
	struct aggregate_opts ao = {.frequency = 99,
				    .process_regex = regex,
				    .max_rows = max_rows,
				    .host = "h1",
				    .agent = "a1",
				    .host_ip = "10.0.0.1"};
	const char *knames[2] = {"do_syscall_64", "entry_SYSCALL_64"};
	FILE *f;

	assert_non_null(fx);
	assert_int_equal(sym_open(&so, &fx->sym), 0);
	assert_int_equal(procinfo_open(64, "/proc", &fx->procs), 0);
	ao.sym = fx->sym;
	ao.procs = fx->procs;
	assert_int_equal(aggregate_new(&ao, &fx->agg), 0);

	f = fopen("/proc/self/comm", "r");
	assert_non_null(f);
	assert_non_null(fgets(fx->comm, sizeof(fx->comm), f));
	fclose(f);
	fx->comm[strcspn(fx->comm, "\n")] = '\0';

	/* The leaf is an exact pc; callers are return addresses (looked up at addr - 1). */
	fx->uframes[0] = (uintptr_t)agg_test_leaf;
	fx->uframes[1] = (uintptr_t)agg_test_mid + 1;
	fx->uframes[2] = (uintptr_t)agg_test_root + 1;
	for (int i = 0; i < 2; i++) {
		fx->kframes[i] = kallsyms_addr(knames[i]);
		if (fx->kframes[i])
			fx->kframes[i] += 1;
		snprintf(fx->kname[i], sizeof(fx->kname[i]), "[k] %s", knames[i]);
	}
	*state = fx;
	return 0;
}

static int setup(void **state)
{
	return setup_opts(state, NULL, 0);
}

static int teardown(void **state)
{
	struct fixture *fx = *state;

	aggregate_free(fx->agg);
	procinfo_close(fx->procs);
	sym_close(fx->sym);
	free(fx);
	return 0;
}

static struct sample_rec own_rec(struct fixture *fx, uint32_t tid, const char *comm, uint64_t count)
{
	struct sample_rec r = {.tgid = (uint32_t)getpid(),
			       .tid = tid,
			       .count = count,
			       .n_uframes = 3,
			       .uframes = fx->uframes};

	snprintf(r.comm, sizeof(r.comm), "%s", comm);
	return r;
}

static void test_aggregate_main_thread_rows(void **state)
{
	struct fixture *fx = *state;
	struct sample_rec r = own_rec(fx, (uint32_t)getpid(), fx->comm, 2);
	struct sink_rows sr = {0};
	const struct profile_row *row;
	char want[256], total[64];

	aggregate_add(fx->agg, &r);
	assert_int_equal(aggregate_flush(fx->agg, 1700000000, sink_keep, &sr), 0);
	assert_int_equal(sr.n, 2);

	snprintf(want, sizeof(want), "[p] %s;agg_test_root;agg_test_mid;agg_test_leaf", fx->comm);
	row = find_row(&sr, fx->comm, want);
	assert_non_null(row);
	assert_int_equal(row->profile_value, 2 * 10101);
	assert_int_equal(row->process_id, getpid());
	assert_true(row->process_start_time > 1000000000000ll); /* ms since epoch, after 2001 */
	assert_int_equal(row->time, 1700000000);
	assert_string_equal(row->app_instance, fx->comm);
	assert_string_equal(row->profile_event_type, "on-cpu");
	assert_string_equal(row->profile_language_type, "eBPF");
	assert_string_equal(row->profile_value_unit, "microseconds");
	assert_string_equal(row->host, "h1");
	assert_string_equal(row->agent, "a1");
	assert_string_equal(row->host_ip, "10.0.0.1");
	assert_non_null(row->container_id);
	assert_true(row->profile_create_timestamp > 1700000000ll * 1000000);

	snprintf(total, sizeof(total), "[p] %s", fx->comm);
	row = find_row(&sr, "Total", total);
	assert_non_null(row);
	assert_int_equal(row->profile_value, 2 * 10101);
	assert_int_equal(row->process_id, 0);
	assert_int_equal(row->process_start_time, 0);
	assert_string_equal(row->app_instance, "Total");
}

/* Threads of one name merge; the thread label is [t]; Total has both levels. */
static void test_aggregate_threads_merge(void **state)
{
	struct fixture *fx = *state;
	struct sample_rec a = own_rec(fx, 4000001, "worker-a", 1);
	struct sample_rec b = own_rec(fx, 4000002, "worker-a", 4);
	struct sample_rec c = own_rec(fx, 4000003, "worker-b", 1);
	struct sink_rows sr = {0};
	const struct profile_row *row;
	char want[256];

	aggregate_add(fx->agg, &a);
	aggregate_add(fx->agg, &b);
	aggregate_add(fx->agg, &c);
	aggregate_flush(fx->agg, 1, sink_keep, &sr);
	assert_int_equal(sr.n, 4);
	row = find_row(&sr, fx->comm, "[t] worker-a;agg_test_root;agg_test_mid;agg_test_leaf");
	assert_non_null(row);
	assert_int_equal(row->profile_value, 5 * 10101);
	assert_non_null(find_row(&sr, fx->comm,
				 "[t] worker-b;agg_test_root;agg_test_mid;"
				 "agg_test_leaf"));
	snprintf(want, sizeof(want), "[p] %s;[t] worker-a", fx->comm);
	row = find_row(&sr, "Total", want);
	assert_non_null(row);
	assert_int_equal(row->profile_value, 5 * 10101);
}

static void test_aggregate_kernel_frames_after_user(void **state)
{
	struct fixture *fx = *state;
	struct sample_rec r = own_rec(fx, (uint32_t)getpid(), fx->comm, 1);
	struct sink_rows sr = {0};
	char want[512];

	if (!fx->kframes[0] || !fx->kframes[1]) {
		fprintf(stderr, "kallsyms hides addresses\n");
		skip();
	}
	r.n_kframes = 2;
	r.kframes = fx->kframes;
	aggregate_add(fx->agg, &r);
	aggregate_flush(fx->agg, 1, sink_keep, &sr);
	/* kframes are innermost first; the string puts the outermost (entry) first. */
	snprintf(want, sizeof(want), "[p] %s;agg_test_root;agg_test_mid;agg_test_leaf;%s;%s",
		 fx->comm, fx->kname[1], fx->kname[0]);
	assert_non_null(find_row(&sr, fx->comm, want));
}

/* A kernel thread is a process of its own with kernel frames only. */
static void test_aggregate_kernel_thread(void **state)
{
	struct fixture *fx = *state;
	struct sample_rec r = {.tgid = 2,
			       .tid = 2,
			       .count = 3,
			       .comm = "kthreadd",
			       .n_kframes = 2,
			       .kframes = fx->kframes};
	struct sink_rows sr = {0};
	const struct profile_row *row;
	char want[512];

	if (!fx->kframes[0] || !fx->kframes[1])
		skip();
	aggregate_add(fx->agg, &r);
	aggregate_flush(fx->agg, 1, sink_keep, &sr);
	snprintf(want, sizeof(want), "[p] kthreadd;%s;%s", fx->kname[1], fx->kname[0]);
	row = find_row(&sr, "kthreadd", want);
	assert_non_null(row);
	assert_int_equal(row->process_id, 2);
	assert_int_equal(row->profile_value, 3 * 10101);
	assert_non_null(find_row(&sr, "Total", "[p] kthreadd"));
}

/* Only matching processes get stacks; every process still gets its Total row. */
static void test_aggregate_regex_filters_stacks_not_total(void **state)
{
	struct fixture *fx = *state;
	struct sample_rec own = own_rec(fx, (uint32_t)getpid(), fx->comm, 1);
	struct sample_rec kt = {.tgid = 2, .tid = 2, .count = 1, .comm = "kthreadd"};
	struct sink_rows sr = {0};
	char total[64];

	aggregate_add(fx->agg, &own);
	aggregate_add(fx->agg, &kt);
	aggregate_flush(fx->agg, 1, sink_keep, &sr);
	assert_int_equal(sr.n, 3);
	assert_non_null(find_row(&sr, "kthreadd", "[p] kthreadd"));
	snprintf(total, sizeof(total), "[p] %s", fx->comm);
	assert_non_null(find_row(&sr, "Total", total));
	assert_non_null(find_row(&sr, "Total", "[p] kthreadd"));
	for (size_t i = 0; i < sr.n; i++)
		assert_string_not_equal(sr.rows[i].app_service, fx->comm);
}

static void test_aggregate_vanished_process(void **state)
{
	struct fixture *fx = *state;
	struct sample_rec main_t = {
	    .tgid = NO_SUCH_PID, .tid = NO_SUCH_PID, .count = 1, .comm = "gone"};
	struct sample_rec thr = {
	    .tgid = NO_SUCH_PID, .tid = NO_SUCH_PID + 1, .count = 1, .comm = "gone-thr"};
	struct sink_rows sr = {0};
	const struct profile_row *row;

	aggregate_add(fx->agg, &main_t);
	aggregate_add(fx->agg, &thr);
	aggregate_flush(fx->agg, 1, sink_keep, &sr);
	row = find_row(&sr, "gone", "[p] gone");
	assert_non_null(row);
	assert_int_equal(row->process_start_time, 0);
	assert_string_equal(row->container_id, "");
	assert_non_null(find_row(&sr, "Total", "[p] gone"));
	/* The process name is unknown for a thread of a vanished process: thread level only. */
	assert_non_null(find_row(&sr, "Total", "[t] gone-thr"));
}

static void test_aggregate_stack_errors(void **state)
{
	struct fixture *fx = *state;
	struct sample_rec r = {.tgid = NO_SUCH_PID,
			       .tid = NO_SUCH_PID,
			       .count = 1,
			       .comm = "x;y",
			       .ustack_error = -EEXIST};
	struct strbuf sb = STRBUF_INIT;

	aggregate_build_stack(fx->agg, &r, &sb);
	assert_string_equal(sb.buf, "[p] x:y;[user stack trace error]");
	sb_reset(&sb);
	r.kstack_error = -EEXIST;
	aggregate_build_stack(fx->agg, &r, &sb);
	assert_string_equal(sb.buf, "[p] x:y;[stack trace lost]");
	sb_reset(&sb);
	r.ustack_error = 0;
	aggregate_build_stack(fx->agg, &r, &sb);
	assert_string_equal(sb.buf, "[p] x:y;[kernel stack trace error]");
	sb_free(&sb);
}

static void test_aggregate_row_cap(void **state)
{
	struct fixture *fx = *state;
	struct aggregate_stats st;
	struct sink_rows sr = {0};
	char comm[16];

	/* Five processes → five Total rows; the cap is 3 rows. */
	for (uint32_t i = 0; i < 5; i++) {
		struct sample_rec r = {.tgid = NO_SUCH_PID + i, .tid = NO_SUCH_PID + i, .count = 2};

		snprintf(comm, sizeof(comm), "p%u", i);
		memcpy(r.comm, comm, sizeof(comm));
		aggregate_add(fx->agg, &r);
	}
	aggregate_flush(fx->agg, 1, sink_keep, &sr);
	aggregate_get_stats(fx->agg, &st);
	assert_int_equal(sr.n, 3);
	assert_int_equal(st.samples, 10);
	assert_int_equal(st.rows_dropped, 7);
	assert_int_equal(st.samples_dropped, 14);
	assert_int_equal(st.rows_flushed, 3);
}

/* Rows stay valid until the next flush; an empty window still reaches the sink. */
static void test_aggregate_flush_lifetime(void **state)
{
	struct fixture *fx = *state;
	struct sample_rec r = own_rec(fx, (uint32_t)getpid(), fx->comm, 1);
	struct sink_rows first = {0}, second = {0};
	char total[64];

	aggregate_add(fx->agg, &r);
	aggregate_flush(fx->agg, 10, sink_keep, &first);
	/* The next window fills while the flushed rows are still in use (as by an uploader). */
	for (int i = 0; i < 1000; i++)
		aggregate_add(fx->agg, &r);
	snprintf(total, sizeof(total), "[p] %s", fx->comm);
	assert_non_null(find_row(&first, "Total", total));
	assert_int_equal(find_row(&first, "Total", total)->profile_value, 10101);
	aggregate_flush(fx->agg, 11, sink_keep, &second);
	assert_int_equal(second.n, 2);
	assert_int_equal(find_row(&second, "Total", total)->profile_value, 1000 * 10101);
	aggregate_flush(fx->agg, 12, sink_keep, &second);
	assert_int_equal(second.calls, 2);
	assert_int_equal(second.n, 0);
}

static void test_aggregate_folded(void **state)
{
	struct fixture *fx = *state;
	struct sample_rec a = own_rec(fx, (uint32_t)getpid(), fx->comm, 3);
	struct sample_rec k = {.tgid = 2, .tid = 2, .count = 2, .comm = "kthreadd"};
	char *text = NULL, want[1024];
	size_t len = 0;
	FILE *f;

	aggregate_add(fx->agg, &a);
	aggregate_add(fx->agg, &k);
	f = open_memstream(&text, &len);
	assert_int_equal(aggregate_write_folded(fx->agg, f, AGGREGATE_VALUE_SAMPLES), 0);
	assert_int_equal(aggregate_write_folded(fx->agg, f, AGGREGATE_VALUE_US), 0);
	fclose(f);
	/* Sorted by process, Total rows left out; then the same in µs. */
	if (strcmp(fx->comm, "kthreadd") < 0)
		snprintf(want, sizeof(want),
			 "%s;[p] %s;agg_test_root;agg_test_mid;agg_test_leaf 3\n"
			 "kthreadd;[p] kthreadd 2\n"
			 "%s;[p] %s;agg_test_root;agg_test_mid;agg_test_leaf 30303\n"
			 "kthreadd;[p] kthreadd 20202\n",
			 fx->comm, fx->comm, fx->comm, fx->comm);
	else
		snprintf(want, sizeof(want),
			 "kthreadd;[p] kthreadd 2\n"
			 "%s;[p] %s;agg_test_root;agg_test_mid;agg_test_leaf 3\n"
			 "kthreadd;[p] kthreadd 20202\n"
			 "%s;[p] %s;agg_test_root;agg_test_mid;agg_test_leaf 30303\n",
			 fx->comm, fx->comm, fx->comm, fx->comm);
	assert_string_equal(text, want);
	free(text);
}

/* Two processes of one name with one stack: two rows (process_id differs), one folded line. */
static void test_aggregate_folded_merges_processes(void **state)
{
	struct fixture *fx = *state;
	struct sample_rec a = {.tgid = NO_SUCH_PID, .tid = NO_SUCH_PID, .count = 1, .comm = "gone"};
	struct sample_rec b = {
	    .tgid = NO_SUCH_PID + 1, .tid = NO_SUCH_PID + 1, .count = 2, .comm = "gone"};
	char *text = NULL;
	size_t len = 0;
	FILE *f;

	aggregate_add(fx->agg, &a);
	aggregate_add(fx->agg, &b);
	f = open_memstream(&text, &len);
	assert_int_equal(aggregate_write_folded(fx->agg, f, AGGREGATE_VALUE_SAMPLES), 0);
	fclose(f);
	assert_string_equal(text, "gone;[p] gone 3\n");
	free(text);
}

static int sink_count(void *arg, const struct profile_row *rows, size_t n)
{
	return 0;
}

static int child_stack_resolves(struct fixture *fx, uint32_t pid, int64_t window)
{
	struct sample_rec r = own_rec(fx, pid, "child", 1);
	struct sink_rows sr = {0};
	char want[256];

	r.tgid = pid;
	aggregate_add(fx->agg, &r);
	snprintf(want, sizeof(want), "[p] child;agg_test_root;agg_test_mid;agg_test_leaf");
	aggregate_flush(fx->agg, window, sink_keep, &sr);
	return find_row(&sr, fx->comm, want) != NULL || find_row(&sr, "child", want) != NULL;
}

/*
 * An exited process symbolizes from its kept mappings for one more window, then is forgotten.
 * The child is a fork of this test: its mappings hold the agg_test_* functions.
 */
static void test_aggregate_forgets_exited_processes(void **state)
{
	struct fixture *fx = *state;
	int gate[2];
	char c;
	pid_t pid;

	assert_int_equal(pipe(gate), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(gate[1]);
		_exit(read(gate[0], &c, 1) < 0);
	}
	close(gate[0]);
	/* Alive: its maps are read and kept. */
	assert_true(child_stack_resolves(fx, (uint32_t)pid, 1));
	close(gate[1]);
	assert_int_equal(waitpid(pid, NULL, 0), pid);
	/* Gone: the window that notices still resolves (samples from the other map set)... */
	assert_true(child_stack_resolves(fx, (uint32_t)pid, 2));
	assert_true(child_stack_resolves(fx, (uint32_t)pid, 3));
	/* ...and the flush after it forgot the mappings. */
	aggregate_flush(fx->agg, 4, sink_count, NULL);
	assert_false(child_stack_resolves(fx, (uint32_t)pid, 5));
}

/* The row's value of tag name, or NULL. */
static const char *row_tag(const struct profile_row *r, const char *name)
{
	for (size_t i = 0; i < r->n_tags; i++)
		if (strcmp(r->tag_names[i], name) == 0)
			return r->tag_values[i];
	return NULL;
}

/*
 * DWARF walks: every stack row of a process gets the share of its complete walks in the
 * window (floor), Total rows none; frame-pointer samples (reason 0) do not count; the next
 * window starts from zero.
 */
static void test_aggregate_unwind_tag(void **state)
{
	struct fixture *fx = *state;
	struct sample_rec r = own_rec(fx, (uint32_t)getpid(), fx->comm, 2);
	struct sink_rows sr = {0};
	char total[64];
	int stack_rows = 0;

	r.ustack_reason = 1; /* complete */
	aggregate_add(fx->agg, &r);
	r.count = 1;
	r.ustack_reason = 3; /* stopped: no row */
	r.n_uframes = 1;     /* another stack, another row */
	aggregate_add(fx->agg, &r);
	r.ustack_reason = 0; /* a frame-pointer sample of the same process */
	r.count = 5;
	aggregate_add(fx->agg, &r);
	assert_int_equal(aggregate_flush(fx->agg, 1700000000, sink_keep, &sr), 0);
	snprintf(total, sizeof(total), "[p] %s", fx->comm);
	for (size_t i = 0; i < sr.n; i++) {
		const char *v = row_tag(&sr.rows[i], AGGREGATE_TAG_UNWIND_COMPLETE);

		if (sr.rows[i].process_id == 0) {
			assert_null(v);
			continue;
		}
		assert_non_null(v);
		assert_string_equal(v, "066"); /* 2 of 3 walks, three digits */
		assert_int_equal(sr.rows[i].n_tags, 1);
		stack_rows++;
	}
	assert_int_equal(stack_rows, 2);

	/* A window of complete walks only: "100". Of frame pointers only: no tag. */
	r.ustack_reason = 1;
	aggregate_add(fx->agg, &r);
	assert_int_equal(aggregate_flush(fx->agg, 1700000001, sink_keep, &sr), 0);
	for (size_t i = 0; i < sr.n; i++)
		if (sr.rows[i].process_id)
			assert_string_equal(row_tag(&sr.rows[i], AGGREGATE_TAG_UNWIND_COMPLETE),
					    "100");
	r.ustack_reason = 0;
	aggregate_add(fx->agg, &r);
	assert_int_equal(aggregate_flush(fx->agg, 1700000002, sink_keep, &sr), 0);
	assert_true(sr.n >= 2);
	for (size_t i = 0; i < sr.n; i++)
		assert_int_equal(sr.rows[i].n_tags, 0);
}

static void test_aggregate_bad_options(void **state)
{
	struct fixture *fx = *state;
	struct aggregate_opts o = {
	    .frequency = 99, .process_regex = "([a-z", .sym = fx->sym, .procs = fx->procs};
	struct aggregate *agg = (struct aggregate *)fx;

	assert_int_equal(aggregate_new(&o, &agg), -EINVAL);
	assert_null(agg);
	o.process_regex = NULL;
	o.frequency = 0;
	assert_int_equal(aggregate_new(&o, &agg), -EINVAL);
	o.frequency = 97;
	assert_int_equal(aggregate_new(&o, &agg), 0);
	aggregate_free(agg);
}

static int setup_regex_kthreadd(void **state)
{
	return setup_opts(state, "thread", 0);
}

static int setup_cap3(void **state)
{
	return setup_opts(state, NULL, 3);
}

/* Off-CPU records: their own rows (event off-cpu, value µs as counted), no Total. */
static void test_aggregate_offcpu_rows(void **state)
{
	struct fixture *fx = *state;
	struct sample_rec on = own_rec(fx, (uint32_t)getpid(), fx->comm, 3);
	struct sample_rec off = own_rec(fx, (uint32_t)getpid(), fx->comm, 250000);
	struct sink_rows sr = {0};
	const struct profile_row *row;
	char want[256];
	int offcpu_rows = 0;

	off.event = SAMPLE_OFF_CPU;
	aggregate_add(fx->agg, &on);
	aggregate_add(fx->agg, &off);
	aggregate_flush(fx->agg, 1700000000, sink_keep, &sr);
	/* on-CPU stack, on-CPU Total, off-CPU stack: same stack string, two rows. */
	assert_int_equal(sr.n, 3);
	snprintf(want, sizeof(want), "[p] %s;agg_test_root;agg_test_mid;agg_test_leaf", fx->comm);
	for (size_t i = 0; i < sr.n; i++) {
		row = &sr.rows[i];
		if (strcmp(row->profile_event_type, "off-cpu") != 0)
			continue;
		offcpu_rows++;
		assert_string_equal(row->app_service, fx->comm);
		assert_string_equal(row->profile_location_str, want);
		assert_int_equal(row->profile_value, 250000);
		assert_string_equal(row->profile_value_unit, "microseconds");
		assert_int_equal(row->time, 1700000000);
		assert_int_equal(row->process_id, getpid());
	}
	assert_int_equal(offcpu_rows, 1);
	row = find_row(&sr, fx->comm, want);
	assert_non_null(row);
	snprintf(want, sizeof(want), "[p] %s", fx->comm);
	row = find_row(&sr, "Total", want);
	assert_non_null(row);
	assert_string_equal(row->profile_event_type, "on-cpu");
	assert_int_equal(row->profile_value, 3 * 10101);
}

/*
 * Off-CPU rows say how their time was blocked: "S" (sleeps) and "D" (uninterruptible) of one
 * stack are two rows, each tagged; with DWARF walks the unwind tag comes first, the state second.
 * On-CPU rows have no state tag.
 */
static void test_aggregate_offcpu_state_tag(void **state)
{
	struct fixture *fx = *state;
	struct sample_rec s = own_rec(fx, (uint32_t)getpid(), fx->comm, 300000);
	struct sample_rec d = s, on = own_rec(fx, (uint32_t)getpid(), fx->comm, 2);
	struct sink_rows sr = {0};
	int64_t by_state[2] = {0, 0};

	s.event = d.event = SAMPLE_OFF_CPU;
	d.uninterruptible = 1;
	d.count = 200000;
	aggregate_add(fx->agg, &s);
	aggregate_add(fx->agg, &d);
	aggregate_add(fx->agg, &on);
	d.ustack_reason = 1; /* a DWARF walk of the same stack, also uninterruptible */
	d.count = 50000;
	aggregate_add(fx->agg, &d);
	assert_int_equal(aggregate_flush(fx->agg, 1700000000, sink_keep, &sr), 0);
	for (size_t i = 0; i < sr.n; i++) {
		const struct profile_row *r = &sr.rows[i];
		const char *st = row_tag(r, AGGREGATE_TAG_OFFCPU_STATE);

		if (strcmp(r->profile_event_type, "on-cpu") == 0) {
			assert_null(st);
			continue;
		}
		assert_non_null(st);
		assert_true(strcmp(st, "S") == 0 || strcmp(st, "D") == 0);
		by_state[st[0] == 'D'] += r->profile_value;
		/* the process had a DWARF walk off-CPU: both tags, unwind first */
		assert_int_equal(r->n_tags, 2);
		assert_string_equal(r->tag_names[0], AGGREGATE_TAG_UNWIND_COMPLETE);
		assert_string_equal(r->tag_values[0], "100");
	}
	assert_int_equal(by_state[0], 300000);
	assert_int_equal(by_state[1], 250000);

	/* without a DWARF walk: the state alone */
	s.ustack_reason = 0;
	aggregate_add(fx->agg, &s);
	assert_int_equal(aggregate_flush(fx->agg, 1700000001, sink_keep, &sr), 0);
	assert_int_equal(sr.n, 1);
	assert_int_equal(sr.rows[0].n_tags, 1);
	assert_string_equal(row_tag(&sr.rows[0], AGGREGATE_TAG_OFFCPU_STATE), "S");
}

/*
 * A thread blocked 2.5 s, counted in one window: rows of 1 s at the window's time and the
 * second before, the rest two seconds before. Threads of one name each get their own pieces
 * before they merge, so two threads' 0.6 s stay 1.2 s at the window's time.
 */
static void test_aggregate_offcpu_split(void **state)
{
	struct fixture *fx = *state;
	struct sample_rec a = own_rec(fx, 4000001, "pool", 2500000);
	struct sample_rec b = own_rec(fx, 4000002, "pool", 600000);
	struct sample_rec c = own_rec(fx, 4000003, "pool", 600000);
	struct sink_rows sr = {0};
	int64_t at[3] = {0};
	int64_t sum = 0;

	a.event = b.event = c.event = SAMPLE_OFF_CPU;
	aggregate_add(fx->agg, &a);
	aggregate_add(fx->agg, &b);
	aggregate_add(fx->agg, &c);
	aggregate_flush(fx->agg, 1000, sink_keep, &sr);
	assert_int_equal(sr.n, 3);
	for (size_t i = 0; i < sr.n; i++) {
		assert_string_equal(sr.rows[i].profile_event_type, "off-cpu");
		assert_true(sr.rows[i].time <= 1000 && sr.rows[i].time >= 998);
		at[1000 - sr.rows[i].time] += sr.rows[i].profile_value;
		sum += sr.rows[i].profile_value;
	}
	assert_int_equal(at[0], 1000000 + 1200000);
	assert_int_equal(at[1], 1000000);
	assert_int_equal(at[2], 500000);
	assert_int_equal(sum, 2500000 + 1200000);
}

/* Kernel frames of a blocked thread start at __schedule; no stacks: one label. */
static void test_aggregate_offcpu_kernel_and_not_captured(void **state)
{
	struct fixture *fx = *state;
	struct sample_rec r = own_rec(fx, (uint32_t)getpid(), fx->comm, 70000);
	struct sample_rec none = own_rec(fx, 4000009, "idle-one", 90000);
	uint64_t k[3];
	struct sink_rows sr = {0};
	char want[512];

	k[0] = kallsyms_addr("bpf_trace_run4"); /* inside the tracepoint: left out */
	k[1] = kallsyms_addr("__schedule");
	k[2] = kallsyms_addr("schedule");
	if (!k[0] || !k[1] || !k[2]) {
		fprintf(stderr, "kallsyms hides addresses\n");
		skip();
	}
	for (int i = 0; i < 3; i++)
		k[i] += 16; /* return addresses inside each function */
	r.event = none.event = SAMPLE_OFF_CPU;
	r.n_kframes = 3;
	r.kframes = k;
	none.n_uframes = 0;
	none.stacks_skipped = 1;
	aggregate_add(fx->agg, &r);
	aggregate_add(fx->agg, &none);
	aggregate_flush(fx->agg, 1, sink_keep, &sr);
	assert_int_equal(sr.n, 2);
	snprintf(want, sizeof(want),
		 "[p] %s;agg_test_root;agg_test_mid;agg_test_leaf;[k] schedule;[k] __schedule",
		 fx->comm);
	assert_non_null(find_row(&sr, fx->comm, want));
	assert_non_null(find_row(&sr, fx->comm, "[t] idle-one;" AGGREGATE_FRAME_NOT_CAPTURED));
}

/* ember record --off-cpu: folded values are µs, whatever unit is asked. */
static void test_aggregate_offcpu_folded(void **state)
{
	struct fixture *fx = *state;
	struct sample_rec r = own_rec(fx, (uint32_t)getpid(), fx->comm, 1500000);
	char *buf = NULL, want[256];
	size_t len = 0;
	FILE *mem = open_memstream(&buf, &len);

	r.event = SAMPLE_OFF_CPU;
	aggregate_add(fx->agg, &r);
	assert_int_equal(aggregate_write_folded(fx->agg, mem, AGGREGATE_VALUE_US), 0);
	fclose(mem);
	/* 1.5 s: two pieces (1 s and 0.5 s back in time) that folded output adds up again. */
	snprintf(want, sizeof(want), "%s;[p] %s;agg_test_root;agg_test_mid;agg_test_leaf 1500000\n",
		 fx->comm, fx->comm);
	assert_string_equal(buf, want);
	free(buf);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_aggregate_main_thread_rows, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_aggregate_threads_merge, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_aggregate_kernel_frames_after_user, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_aggregate_kernel_thread, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_aggregate_regex_filters_stacks_not_total,
					    setup_regex_kthreadd, teardown),
	    cmocka_unit_test_setup_teardown(test_aggregate_vanished_process, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_aggregate_stack_errors, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_aggregate_row_cap, setup_cap3, teardown),
	    cmocka_unit_test_setup_teardown(test_aggregate_flush_lifetime, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_aggregate_folded, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_aggregate_folded_merges_processes, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_aggregate_forgets_exited_processes, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_aggregate_unwind_tag, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_aggregate_bad_options, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_aggregate_offcpu_rows, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_aggregate_offcpu_split, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_aggregate_offcpu_state_tag, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_aggregate_offcpu_kernel_and_not_captured, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_aggregate_offcpu_folded, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
