/*
 * test_sampler — loads the real on-CPU BPF program, burns CPU in a function of known address
 * range, drains, and checks the drained samples and the kernel-side counters. Skips (cmocka
 * skip) when not root or when the kernel refuses BPF. Also prints the measured BPF run time per
 * sample and the drain time.
 *
 * The workload tests run tests/workloads binaries ($EMBER_BUILD/workloads, else next to this
 * binary's build dir) under the sampler and the real aggregator + symbolizer, and check the
 * folded stacks they produce: the end-to-end path of the agent up to the rows.
 */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <link.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include "agent/aggregate.h"
#include "agent/sampler.h"
#include "bpf/unwind.h"

/*
 * The busy function lives alone in this section so the linker gives us its exact range. It keeps
 * a frame pointer: without one the walk past the leaf follows whatever rbp holds, every sample
 * becomes a distinct garbage stack, and the stack map sees birthday-bound collisions.
 */
extern const char __start_ember_busy[], __stop_ember_busy[];

#define BUSY_ROUNDS_MAX 20 /* drains before giving up on seeing enough samples */
/* A round's budget is this thread's CPU time, not wall time: on a loaded host a wall-time
 * round got a fifth of it and 20 rounds fell short of WANT_BUSY_SAMPLES (2026-11-25, load 10). */
#define BUSY_ROUND_NS 300000000ull
#define WANT_BUSY_SAMPLES 60 /* ≈ 0.6 s of one CPU at 99 Hz */

__attribute__((noinline, section("ember_busy"), optimize("no-omit-frame-pointer"))) static uint64_t
busy_spin(uint64_t ns_budget)
{
	struct timespec t0, t;
	uint64_t x = 88172645463325252ull, spent;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
	do {
		for (int i = 0; i < 100000; i++) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
		}
		__asm__ volatile("" : "+r"(x));
		clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
		spent = (uint64_t)(t.tv_sec - t0.tv_sec) * 1000000000ull + (uint64_t)t.tv_nsec -
			(uint64_t)t0.tv_nsec;
	} while (spent < ns_budget);
	return x;
}

__attribute__((noinline)) static void syscall_spin(uint64_t ns_budget)
{
	struct timespec t0, t;
	uint64_t spent;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
	do {
		for (int i = 0; i < 1000; i++)
			getppid();
		clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
		spent = (uint64_t)(t.tv_sec - t0.tv_sec) * 1000000000ull + (uint64_t)t.tv_nsec -
			(uint64_t)t0.tv_nsec;
	} while (spent < ns_budget);
}

struct seen {
	uint32_t tgid;
	uint64_t own_samples;	 /* samples of our tgid */
	uint64_t busy_samples;	 /* of which the user leaf is in busy_spin */
	uint64_t kernel_samples; /* of our tgid with a kernel stack of kernel addresses */
	uint64_t other_tgids;	 /* records of other processes */
	uint64_t total;
	uint64_t bad_frames;   /* n > 0 with a NULL frame array, or n over the limit */
	uint64_t own_complete; /* own samples whose DWARF walk reached the entry point */
	uint64_t own_walked;   /* own samples with a DWARF walk */
	uint64_t encoded_leaf; /* own samples whose leaf is an encoded frame of our executable */
	uint64_t bad_objects;  /* encoded leaves whose object id names nothing */
};

/* The load bias of this executable (va = address - bias), from the dynamic linker. */
static int exe_bias_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
	*(uint64_t *)arg = info->dlpi_addr;
	return 1; /* the first entry is the executable */
}

static uint64_t exe_bias(void)
{
	uint64_t bias = 0;

	dl_iterate_phdr(exe_bias_cb, &bias);
	return bias;
}

/*
 * The address of an encoded leaf in this process: when the object id names this executable
 * (device, inode), the ELF address turned back into a run-time one; else 0.
 */
static uint64_t seen_leaf(struct seen *sn, const struct sample_rec *rec)
{
	uint64_t fr = rec->uframes[0];
	struct sym_object obj;
	struct stat st;
	uint32_t id;

	if (!rec->uframes_encoded || !(fr & UNW_FRAME_ENCODED))
		return fr;
	id = (uint32_t)((fr >> UNW_FRAME_OBJ_SHIFT) & UNW_FRAME_OBJ_MASK);
	if (!rec->resolve_object || rec->resolve_object(rec->resolve_arg, id, &obj)) {
		sn->bad_objects += rec->count;
		return 0;
	}
	if (stat("/proc/self/exe", &st) || obj.ino != (uint64_t)st.st_ino ||
	    obj.dev != (((uint64_t)major(st.st_dev) << 32) | minor(st.st_dev)))
		return 0; /* a library (libc under syscall_spin) */
	sn->encoded_leaf += rec->count;
	return (fr & UNW_FRAME_VA_MASK) + exe_bias();
}

static void seen_cb(void *arg, const struct sample_rec *rec)
{
	struct seen *sn = arg;

	sn->total += rec->count;
	if (rec->n_uframes > SAMPLER_MAX_FRAMES || rec->n_kframes > SAMPLER_MAX_FRAMES ||
	    (rec->n_uframes && !rec->uframes) || (rec->n_kframes && !rec->kframes))
		sn->bad_frames++;
	if (rec->tgid != sn->tgid) {
		sn->other_tgids++;
		return;
	}
	sn->own_samples += rec->count;
	if (rec->ustack_reason) {
		sn->own_walked += rec->count;
		if (rec->ustack_reason == 1)
			sn->own_complete += rec->count;
	}
	if (rec->n_uframes) {
		uint64_t leaf = seen_leaf(sn, rec);

		if (leaf >= (uintptr_t)__start_ember_busy && leaf < (uintptr_t)__stop_ember_busy)
			sn->busy_samples += rec->count;
	}
	if (rec->n_kframes && rec->kframes[0] >= 0xffff800000000000ull)
		sn->kernel_samples += rec->count;
}

/* A sampler opened with o, or the test skipped when this host cannot load BPF. */
static struct sampler *open_opts_or_skip(const struct sampler_opts *o)
{
	struct sampler *s = NULL;
	int ret;

	if (geteuid() != 0) {
		fprintf(stderr, "not root: cannot load BPF\n");
		skip();
	}
	ret = sampler_open(o, &s);
	if (ret == -EPERM || ret == -EACCES || ret == -ENOSYS || ret == -EOPNOTSUPP) {
		fprintf(stderr, "BPF unavailable: %s\n", strerror(-ret));
		skip();
	}
	assert_int_equal(ret, 0);
	assert_non_null(s);
	return s;
}

static struct sampler *open_unwind_or_skip(uint32_t only_tgid, enum sampler_unwind unwind)
{
	struct sampler_opts o = {
	    .frequency = 99, .unwind = unwind, .only_tgid = only_tgid, .flush_seconds = 1};

	return open_opts_or_skip(&o);
}

static struct sampler *open_or_skip(uint32_t only_tgid)
{
	return open_unwind_or_skip(only_tgid, SAMPLER_UNWIND_FP);
}

static void report(const char *what, struct sampler *s)
{
	struct sampler_stats st;

	sampler_get_stats(s, &st);
	fprintf(stderr,
		"%s: samples %llu idle %llu collisions %llu kerr %llu uerr %llu full %llu "
		"mismatch %llu drains %llu; BPF %.0f ns/run over %llu runs; last drain %.2f ms\n",
		what, (unsigned long long)st.samples, (unsigned long long)st.idle_skipped,
		(unsigned long long)st.stack_collisions, (unsigned long long)st.kstack_errors,
		(unsigned long long)st.ustack_errors, (unsigned long long)st.map_full_drops,
		(unsigned long long)st.drain_mismatch, (unsigned long long)st.drains,
		st.bpf_run_cnt ? (double)st.bpf_run_ns / (double)st.bpf_run_cnt : 0.0,
		(unsigned long long)st.bpf_run_cnt, st.last_drain_ns / 1e6);
}

/* One process, 99 Hz: the busy function is seen, nothing collides, every count is drained. */
static void test_sampler_own_process(void **state)
{
	struct seen sn = {.tgid = (uint32_t)getpid()};
	struct sampler_stats st;
	struct sampler *s = open_or_skip((uint32_t)getpid());

	for (int round = 0; round < BUSY_ROUNDS_MAX && sn.busy_samples < WANT_BUSY_SAMPLES;
	     round++) {
		busy_spin(BUSY_ROUND_NS);
		assert_int_equal(sampler_drain(s, seen_cb, &sn), 0);
	}
	/* Samples after the last flip sit in the active set: one more drain collects them. */
	assert_int_equal(sampler_drain(s, seen_cb, &sn), 0);
	report("own process", s);
	sampler_get_stats(s, &st);

	assert_true(sn.busy_samples >= WANT_BUSY_SAMPLES);
	assert_int_equal(sn.other_tgids, 0);
	assert_int_equal(sn.bad_frames, 0);
	assert_int_equal(st.stack_collisions, 0);
	assert_int_equal(st.drain_mismatch, 0);
	assert_int_equal(st.lost, 0);
	assert_int_equal(st.kstack_errors, 0);
	assert_int_equal(st.ustack_errors, 0);
	assert_true(st.drains >= 2);
	/* Every sample BPF took went through exactly one drain (the sampler is still running, so
	 * a few may have landed after the final flip). */
	assert_true(sn.total <= st.samples);
	assert_true(st.samples - sn.total <= 5);
	assert_true(st.bpf_run_cnt >= st.samples);
	assert_true(st.bpf_run_ns > 0);
	sampler_close(s);
}

/* Every process: a syscall loop of ours shows kernel frames; others are sampled too. */
static void test_sampler_all_processes(void **state)
{
	struct seen sn = {.tgid = (uint32_t)getpid()};
	struct sampler_stats st;
	struct sampler *s = open_or_skip(0);

	for (int round = 0; round < BUSY_ROUNDS_MAX && sn.kernel_samples < 10; round++) {
		syscall_spin(BUSY_ROUND_NS);
		assert_int_equal(sampler_drain(s, seen_cb, &sn), 0);
	}
	report("all processes", s);
	sampler_get_stats(s, &st);
	assert_true(sn.kernel_samples >= 10);
	assert_int_equal(sn.bad_frames, 0);
	assert_int_equal(st.drain_mismatch, 0);
	assert_int_equal(st.lost, 0);
	/* User stacks are keyed by a 64-bit hash: no collisions, no errors even host-wide. (Kernel
	 * stack ids can still collide, rarely; that is counted, not asserted.) */
	assert_int_equal(st.ustack_errors, 0);
	assert_true(st.idle_skipped + st.samples > 0);
	sampler_close(s);
}

/*
 * A counts map of 2 entries fills at once: the samples beyond are counted as lost, and the
 * drains still find exactly what BPF counted.
 */
static void test_sampler_counts_map_full(void **state)
{
	struct sampler_opts o = {.frequency = 99,
				 .unwind = SAMPLER_UNWIND_FP,
				 .only_tgid = (uint32_t)getpid(),
				 .counts_entries = 2};
	struct seen sn = {.tgid = (uint32_t)getpid()};
	struct sampler_stats st;
	struct sampler *s = open_opts_or_skip(&o);

	/* Distinct keys: the busy loop and the syscall loop, main and a kernel stack each. */
	for (int round = 0; round < BUSY_ROUNDS_MAX; round++) {
		busy_spin(BUSY_ROUND_NS / 3);
		syscall_spin(BUSY_ROUND_NS / 3);
		busy_spin(BUSY_ROUND_NS / 3);
		assert_int_equal(sampler_drain(s, seen_cb, &sn), 0);
		sampler_get_stats(s, &st);
		if (st.map_full_drops >= 5)
			break;
	}
	assert_int_equal(sampler_drain(s, seen_cb, &sn), 0);
	sampler_get_stats(s, &st);
	report("counts map of 2", s);
	assert_true(st.map_full_drops >= 5);
	/* Samples beyond a full counts map go through the overflow ring buffer, not lost. */
	assert_int_equal(st.overflow_samples + st.overflow_lost, st.map_full_drops);
	assert_int_equal(st.lost, st.overflow_lost);
	assert_true(st.overflow_samples > 0);
	assert_int_equal(st.drain_mismatch, 0);
	assert_true(sn.total + st.lost <= st.samples);
	sampler_close(s);
	o.counts_entries = 1u << 30;
	assert_int_equal(sampler_open(&o, &s), -EINVAL);
}

/*
 * A counts map of 8 entries gets a counts cache of 1 entry per CPU (a quarter of the keys on two
 * CPUs): keys evicted from the cache with their counts fill the map, and the rest go through the
 * overflow ring with their counts. Every drain still finds exactly what BPF counted, and
 * what was neither delivered nor counted lost is at most the samples of the last window.
 */
static void test_sampler_counts_cache_evictions(void **state)
{
	struct sampler_opts o = {.frequency = 999,
				 .unwind = SAMPLER_UNWIND_DWARF,
				 .only_tgid = (uint32_t)getpid(),
				 .counts_entries = 8};
	struct seen sn = {.tgid = (uint32_t)getpid()};
	struct sampler_stats st;
	struct sampler *s = open_opts_or_skip(&o);

	for (int round = 0; round < BUSY_ROUNDS_MAX; round++) {
		busy_spin(BUSY_ROUND_NS / 2);
		syscall_spin(BUSY_ROUND_NS / 2);
		assert_int_equal(sampler_drain(s, seen_cb, &sn), 0);
		sampler_get_stats(s, &st);
		if (st.overflow_samples >= 5)
			break;
	}
	assert_int_equal(sampler_drain(s, seen_cb, &sn), 0);
	sampler_get_stats(s, &st);
	report("counts map of 8, cache of 1", s);
	assert_true(st.overflow_samples >= 5);
	assert_int_equal(st.drain_mismatch, 0);
	assert_int_equal(st.lost, st.overflow_lost);
	assert_int_equal(sn.bad_frames, 0);
	/* Delivered + lost = samples, but for the few taken after the final flip. */
	assert_true(sn.total + st.lost <= st.samples);
	assert_true(st.samples - sn.total - st.lost <= 10);
	sampler_close(s);
}

/*
 * DWARF unwinding of this process (built without frame pointers outside busy_spin): the walk
 * in BPF reaches the entry point (reason complete) for nearly every sample, the busy leaf is
 * seen, and the reason counters add up to the walks.
 */
static void test_sampler_dwarf_own_process(void **state)
{
	struct seen sn = {.tgid = (uint32_t)getpid()};
	struct sampler_stats st;
	struct sampler *s = open_unwind_or_skip((uint32_t)getpid(), SAMPLER_UNWIND_DWARF);
	uint64_t walks = 0;

	for (int round = 0; round < BUSY_ROUNDS_MAX && sn.busy_samples < WANT_BUSY_SAMPLES;
	     round++) {
		busy_spin(BUSY_ROUND_NS / 2);
		syscall_spin(BUSY_ROUND_NS / 2);
		assert_int_equal(sampler_drain(s, seen_cb, &sn), 0);
	}
	assert_int_equal(sampler_drain(s, seen_cb, &sn), 0);
	report("dwarf own process", s);
	sampler_get_stats(s, &st);
	for (int r = 0; r < SAMPLER_UNW_REASONS; r++)
		walks += st.unwind_reasons[r];
	fprintf(stderr, "dwarf: %llu of %llu own samples complete; %llu objects, %llu slots\n",
		(unsigned long long)sn.own_complete, (unsigned long long)sn.own_walked,
		(unsigned long long)st.unwind_objects, (unsigned long long)st.unwind_slots_used);
	assert_true(sn.busy_samples >= WANT_BUSY_SAMPLES);
	/* busy_spin's frames are object id + ELF address, the id naming this executable. */
	assert_true(sn.encoded_leaf >= sn.busy_samples);
	assert_int_equal(sn.bad_objects, 0);
	assert_int_equal(sn.bad_frames, 0);
	assert_int_equal(st.lost, 0);
	assert_int_equal(st.ustack_errors, 0);
	assert_true(sn.own_walked >= sn.busy_samples);
	assert_true(sn.own_complete * 100 >= sn.own_walked * 98);
	assert_true(walks >= sn.own_walked);
	assert_true(st.unwind_procs >= 1 && st.unwind_objects >= 3 && st.unwind_slots_used > 0);
	sampler_close(s);
}

static void test_sampler_bad_unwind(void **state)
{
	struct sampler_opts o = {.frequency = 99, .unwind = (enum sampler_unwind)7};
	struct sampler *s = (struct sampler *)&o;

	assert_int_equal(sampler_open(&o, &s), -EINVAL);
	assert_null(s);
}

static void test_sampler_cpu_list(void **state)
{
	unsigned char on[16];

	assert_int_equal(sampler_parse_cpu_list("0-1\n", on, sizeof(on)), 2);
	assert_true(on[0] && on[1] && !on[2]);
	assert_int_equal(sampler_parse_cpu_list("0,2-4,7\n", on, sizeof(on)), 5);
	assert_true(on[0] && !on[1] && on[2] && on[3] && on[4] && !on[5] && on[7]);
	assert_int_equal(sampler_parse_cpu_list("3", on, sizeof(on)), 1);
	assert_true(on[3] && !on[0]);
	assert_int_equal(sampler_parse_cpu_list("0-31", on, sizeof(on)), -ERANGE);
	assert_int_equal(sampler_parse_cpu_list("", on, sizeof(on)), -EINVAL);
	assert_int_equal(sampler_parse_cpu_list("4-2", on, sizeof(on)), -EINVAL);
	assert_int_equal(sampler_parse_cpu_list("1;2", on, sizeof(on)), -EINVAL);
	assert_int_equal(sampler_parse_cpu_list("x", on, sizeof(on)), -EINVAL);
}

static void test_sampler_boot_offset(void **state)
{
	struct timespec rt, mono;
	int64_t off = sampler_boot_offset_ns(), want;

	clock_gettime(CLOCK_REALTIME, &rt);
	clock_gettime(CLOCK_MONOTONIC, &mono);
	want = ((int64_t)rt.tv_sec - mono.tv_sec) * 1000000000ll + (rt.tv_nsec - mono.tv_nsec);
	/* Both are REALTIME - MONOTONIC taken microseconds apart; NTP slews far less than 1 s. */
	assert_true(off - want < 1000000000ll && want - off < 1000000000ll);
	assert_true(off > 1000000000ll * 1500000000ll);
}

#define WORKLOAD_MAX_SECONDS "30" /* the child's own bound; we stop it once we have enough */
#define WORKLOAD_STORM_CHILDREN "100000" /* storm's bound, the same way */
#define WORKLOAD_DRAIN_NS 500000000ull

static int workload_path(const char *name, char *out, size_t len)
{
	const char *build = getenv("EMBER_BUILD");
	char exe[PATH_MAX];
	ssize_t n;

	if (build && *build) {
		snprintf(out, len, "%s/workloads/%s", build, name);
	} else {
		n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
		if (n < 0)
			return -errno;
		exe[n] = '\0';
		snprintf(out, len, "%s/../workloads/%s", dirname(exe), name);
	}
	return access(out, X_OK) ? -errno : 0;
}

static void sleep_ns(uint64_t ns)
{
	struct timespec ts = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

/*
 * Runs workload NAME (stopped once the aggregator saw want_samples, or when it ends) under the
 * sampler — only its process when all_procs is 0 — and returns the folded text (caller frees).
 * The workload's argument is its bound in seconds, or with a mode (storm's "fork") its count.
 */
static char *run_workload_unwind(const char *name, const char *mode, int all_procs,
				 const char *regex, uint64_t want_samples,
				 enum sampler_unwind unwind)
{
	char path[PATH_MAX], go = 1, *text = NULL;
	struct aggregate_opts ao = {.frequency = 99, .process_regex = regex};
	struct sampler_opts so = {.frequency = 99, .unwind = unwind, .flush_seconds = 1};
	struct sym_opts symo = {0};
	struct symbolizer *sym;
	struct procinfo *pi;
	struct aggregate *agg;
	struct aggregate_stats ast;
	struct sampler *s;
	size_t len = 0;
	int gate[2], status, ret, done = 0;
	pid_t pid;
	FILE *f;

	if (geteuid() != 0)
		skip();
	if (workload_path(name, path, sizeof(path))) {
		fprintf(stderr, "workload %s not built\n", path);
		skip();
	}
	assert_int_equal(pipe(gate), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		/* Wait until the sampler (which needs our pid) is attached, then run. */
		close(gate[1]);
		if (read(gate[0], &go, 1) != 1)
			_exit(127);
		if (mode)
			execl(path, path, mode, WORKLOAD_STORM_CHILDREN, (char *)NULL);
		else
			execl(path, path, WORKLOAD_MAX_SECONDS, (char *)NULL);
		_exit(127);
	}
	close(gate[0]);
	so.only_tgid = all_procs ? 0 : (uint32_t)pid;
	ret = sampler_open(&so, &s);
	if (ret) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		if (ret == -EPERM || ret == -EACCES || ret == -ENOSYS)
			skip();
		fail_msg("sampler_open: %s", strerror(-ret));
	}
	assert_int_equal(sym_open(&symo, &sym), 0);
	assert_int_equal(procinfo_open(256, "/proc", &pi), 0);
	ao.sym = sym;
	ao.procs = pi;
	assert_int_equal(aggregate_new(&ao, &agg), 0);
	assert_int_equal(write(gate[1], &go, 1), 1);
	close(gate[1]);

	while (!done) {
		sleep_ns(WORKLOAD_DRAIN_NS);
		/* Drain while the child lives: its maps are what the symbolizer reads. */
		assert_int_equal(sampler_drain(s, aggregate_add, agg), 0);
		aggregate_get_stats(agg, &ast);
		done = waitpid(pid, &status, WNOHANG) == pid;
		if (!done && ast.samples >= want_samples) {
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			done = 1;
		}
	}
	assert_int_equal(sampler_drain(s, aggregate_add, agg), 0);
	report(name, s);

	f = open_memstream(&text, &len);
	assert_non_null(f);
	assert_int_equal(aggregate_write_folded(agg, f, AGGREGATE_VALUE_SAMPLES), 0);
	fclose(f);
	if (getenv("EMBER_TEST_VERBOSE"))
		fprintf(stderr, "%s", text);
	aggregate_free(agg);
	procinfo_close(pi);
	sym_close(sym);
	sampler_close(s);
	return text;
}

static char *run_workload(const char *name, int all_procs, const char *regex, uint64_t want_samples)
{
	return run_workload_unwind(name, NULL, all_procs, regex, want_samples, SAMPLER_UNWIND_FP);
}

/* Sum of the values of folded lines that start with prefix, contain mid and end with suffix
 * (each NULL = any). */
static uint64_t tally(const char *text, const char *prefix, const char *mid, const char *suffix)
{
	uint64_t sum = 0;

	for (const char *line = text; *line;) {
		const char *nl = strchr(line, '\n'), *sp;
		size_t len = nl ? (size_t)(nl - line) : strlen(line);
		char buf[8192];

		if (len < sizeof(buf)) {
			memcpy(buf, line, len);
			buf[len] = '\0';
			sp = strrchr(buf, ' ');
			if (sp) {
				size_t slen = (size_t)(sp - buf), sfx = suffix ? strlen(suffix) : 0;

				buf[slen] = '\0';
				if ((!prefix || strncmp(buf, prefix, strlen(prefix)) == 0) &&
				    (!mid || strstr(buf, mid)) &&
				    (!suffix ||
				     (slen >= sfx && strcmp(buf + slen - sfx, suffix) == 0)))
					sum += strtoull(sp + 1, NULL, 10);
			}
		}
		line += len + (nl ? 1 : 0);
	}
	return sum;
}

/* main → work → hot_a / hot_b, 70/30 by construction. */
static void test_workload_cpu_split(void **state)
{
	char *t = run_workload("cpu_split", 0, NULL, 200);
	uint64_t all = tally(t, "cpu_split;", NULL, NULL);
	uint64_t a = tally(t, "cpu_split;[p] cpu_split;", NULL, ";main;work;hot_a");
	uint64_t b = tally(t, "cpu_split;[p] cpu_split;", NULL, ";main;work;hot_b");

	fprintf(stderr, "cpu_split: %llu samples, hot_a %llu, hot_b %llu\n",
		(unsigned long long)all, (unsigned long long)a, (unsigned long long)b);
	assert_true(all >= 100);
	assert_true(a + b >= all * 9 / 10);
	/* 70 % ± 15 points: four standard deviations at 100 samples. */
	assert_true(a * 100 >= (a + b) * 55 && a * 100 <= (a + b) * 85);
	free(t);
}

/* Named threads merge by name, each with its own function, and never with the other's. */
static void test_workload_threads(void **state)
{
	char *t = run_workload("threads", 0, NULL, 200);
	uint64_t wa = tally(t, "threads;[t] worker-a;", NULL, NULL);
	uint64_t wb = tally(t, "threads;[t] worker-b;", NULL, NULL);
	uint64_t wa_ok = tally(t, "threads;[t] worker-a;", NULL, ";burn_a");
	uint64_t wb_ok = tally(t, "threads;[t] worker-b;", NULL, ";burn_b");

	fprintf(stderr, "threads: worker-a %llu (%llu in burn_a), worker-b %llu (%llu in burn_b)\n",
		(unsigned long long)wa, (unsigned long long)wa_ok, (unsigned long long)wb,
		(unsigned long long)wb_ok);
	assert_true(wa >= 30 && wb >= 30);
	assert_true(wa_ok >= wa * 9 / 10 && wb_ok >= wb * 9 / 10);
	assert_int_equal(tally(t, "threads;[t] worker-a;", "burn_b", NULL), 0);
	assert_int_equal(tally(t, "threads;[t] worker-b;", "burn_a", NULL), 0);
	free(t);
}

/* 1 if every line's kernel frames ("[k] ") come after all of its user frames. */
static int kernel_after_user(const char *text)
{
	for (const char *line = text; *line;) {
		const char *nl = strchr(line, '\n'), *k = strstr(line, ";[k] "), *semi;
		size_t len = nl ? (size_t)(nl - line) : strlen(line);

		if (k && k < line + len) {
			for (semi = strchr(k + 1, ';'); semi && semi < line + len;
			     semi = strchr(semi + 1, ';')) {
				if (strncmp(semi, ";[k] ", 5) != 0)
					return 0;
			}
		}
		line += len + (nl ? 1 : 0);
	}
	return 1;
}

/*
 * Kernel frames follow the user frames, entry first. libc's syscall wrappers keep no frame
 * pointer, so the frame-pointer walk goes from the wrapper straight to main (do_syscalls is
 * skipped): that is the limit DWARF unwinding removes, and what this test pins down.
 */
static void test_workload_syscalls(void **state)
{
	char *t = run_workload("syscalls", 0, NULL, 150);
	uint64_t all = tally(t, "syscalls;", NULL, NULL);
	uint64_t kern = tally(t, "syscalls;[p] syscalls;", ";[k] entry_SYSCALL_64", NULL);

	fprintf(stderr, "syscalls: %llu samples, %llu entered through entry_SYSCALL_64\n",
		(unsigned long long)all, (unsigned long long)kern);
	assert_true(all >= 50);
	assert_true(kern >= all / 3);
	assert_true(
	    tally(t, "syscalls;[p] syscalls;", ";main;[l] write;[k] entry_SYSCALL_64", NULL) > 0);
	assert_true(kernel_after_user(t));
	free(t);
}

/* Hot code in a shared object gets the [l] label. */
static void test_workload_shlib(void **state)
{
	char *t = run_workload("shlib", 0, NULL, 150);
	uint64_t all = tally(t, "shlib;", NULL, NULL);
	uint64_t lib = tally(t, "shlib;[p] shlib;", ";main;call_lib;[l] hot_lib_spin", NULL);

	fprintf(stderr, "shlib: %llu samples, %llu in [l] hot_lib_spin under call_lib\n",
		(unsigned long long)all, (unsigned long long)lib);
	assert_true(all >= 50);
	assert_true(lib >= all * 8 / 10);
	free(t);
}

/*
 * Short-lived children, host-wide sampling with a process regex: the children (storm fork,
 * renamed short-child) are found under their own name although most are gone before the drain.
 * Their user frames mostly stay unsymbolized (their maps are gone by then); the count is
 * reported, not asserted.
 */
static void test_workload_forkstorm(void **state)
{
	char *t = run_workload_unwind("storm", "fork", 1, "^short-child$", 400, SAMPLER_UNWIND_FP);
	uint64_t kids = tally(t, "short-child;", NULL, NULL);
	uint64_t named = tally(t, "short-child;", "short_burn", NULL);
	uint64_t other = tally(t, NULL, NULL, NULL) - kids;

	fprintf(stderr,
		"fork storm: %llu child samples, %llu symbolized to short_burn; %llu "
		"samples of other processes got stacks\n",
		(unsigned long long)kids, (unsigned long long)named, (unsigned long long)other);
	assert_true(kids >= 10);
	assert_int_equal(other, 0);
	free(t);
}

/*
 * The same storm with DWARF stacks: children live 3 ms and are gone by the drain (every
 * 0.5 s), yet their frames (object id + ELF address) still name short_burn, read from the
 * executable alone; raw addresses of a gone process would be "[unknown]". A child has no
 * mapping list of its own (gone before user space could scan it): BPF walks it with its
 * parent's. Not all samples get there: the first children run before storm's own tables are
 * in place, and a child's last samples are in exit (kernel only). 5 % without the parent's list,
 * about 55 % with it (measured with the 5 ms children of the former forkstorm).
 */
static void test_workload_forkstorm_dwarf(void **state)
{
	char *t = run_workload_unwind("storm", "fork", 1, "^short-child$", 400,
				      SAMPLER_UNWIND_DWARF);
	uint64_t kids = tally(t, "short-child;", NULL, NULL);
	uint64_t named = tally(t, "short-child;", "short_burn", NULL);

	fprintf(stderr, "fork storm (DWARF): %llu child samples, %llu symbolized to short_burn\n",
		(unsigned long long)kids, (unsigned long long)named);
	assert_true(kids >= 10);
	assert_true(named * 5 >= kids);
	free(t);
}

/* ---- off-CPU ----------------------------------------------------------------------------- */

/* The napping function lives alone in this section too, for its exact range. */
__attribute__((noinline, section("ember_nap"))) void offcpu_test_nap(int rounds)
{
	struct timespec ts = {0, 3000000};

	for (int i = 0; i < rounds; i++)
		nanosleep(&ts, NULL);
}
extern const char __start_ember_nap[], __stop_ember_nap[];

struct nap {
	pid_t tid;
	uint64_t wall_ns;
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void *nap_thread(void *arg)
{
	struct nap *n = arg;
	uint64_t t0 = now_ns();

	n->tid = gettid();
	offcpu_test_nap(100);
	n->wall_ns = now_ns() - t0;
	return NULL;
}

struct offcpu_seen {
	uint32_t tgid, tid;
	uint64_t on_cpu;      /* on-CPU samples: none expected */
	uint64_t us_thread;   /* blocked µs of the napping thread */
	uint64_t us_in_nap;   /* ... under offcpu_test_nap */
	uint64_t us_kernel;   /* ... with a kernel stack */
	uint64_t us_complete; /* ... whose DWARF walk was complete */
};

/* Frame i of an encoded DWARF stack as an address of this executable, or 0. */
static uint64_t own_frame(const struct sample_rec *rec, uint32_t i)
{
	uint64_t fr = rec->uframes[i];
	struct sym_object obj;
	struct stat st;
	uint32_t id;

	if (!(fr & UNW_FRAME_ENCODED))
		return fr;
	id = (uint32_t)((fr >> UNW_FRAME_OBJ_SHIFT) & UNW_FRAME_OBJ_MASK);
	if (!rec->resolve_object || rec->resolve_object(rec->resolve_arg, id, &obj) ||
	    stat("/proc/self/exe", &st) || obj.ino != (uint64_t)st.st_ino)
		return 0;
	return (fr & UNW_FRAME_VA_MASK) + exe_bias();
}

static void offcpu_cb(void *arg, const struct sample_rec *rec)
{
	struct offcpu_seen *os = arg;

	if (rec->event != SAMPLE_OFF_CPU) {
		os->on_cpu += rec->count;
		return;
	}
	if (rec->tgid != os->tgid || rec->tid != os->tid)
		return;
	os->us_thread += rec->count;
	if (rec->n_kframes && rec->kframes[0] >= 0xffff800000000000ull)
		os->us_kernel += rec->count;
	if (rec->ustack_reason == 1)
		os->us_complete += rec->count;
	for (uint32_t i = 0; i < rec->n_uframes; i++) {
		uint64_t a = own_frame(rec, i);

		if (a > (uintptr_t)__start_ember_nap && a <= (uintptr_t)__stop_ember_nap) {
			os->us_in_nap += rec->count;
			break;
		}
	}
}

/* Runs fn in a thread of its own, then drains its blocks into os (two drains: the second
 * collects what landed after the first flip). */
static void run_and_drain(struct sampler *s, void *(*fn)(void *), struct nap *n,
			  struct offcpu_seen *os)
{
	pthread_t t;

	assert_int_equal(pthread_create(&t, NULL, fn, n), 0);
	assert_int_equal(pthread_join(t, NULL), 0);
	os->tid = (uint32_t)n->tid;
	assert_int_equal(sampler_drain(s, offcpu_cb, os), 0);
	assert_int_equal(sampler_drain(s, offcpu_cb, os), 0);
}

/*
 * Off-CPU only, this process: a thread that naps 100 x 3 ms shows its blocked time under
 * offcpu_test_nap with kernel frames, and nothing is sampled on-CPU (no perf event is open).
 * Blocked time is at most the thread's wall time and at least half of it (a woken thread that
 * waits for a CPU on a loaded host is not blocked).
 */
static void test_sampler_offcpu_own_process(void **state)
{
	struct sampler_opts o = {.frequency = 99,
				 .unwind = SAMPLER_UNWIND_DWARF,
				 .only_tgid = (uint32_t)getpid(),
				 .flush_seconds = 1,
				 .events = SAMPLER_EVENT_OFF_CPU};
	struct offcpu_seen os = {.tgid = (uint32_t)getpid()};
	struct sampler_stats st;
	struct sampler *s = open_opts_or_skip(&o);
	struct nap n = {0};

	run_and_drain(s, nap_thread, &n, &os);
	sampler_get_stats(s, &st);
	fprintf(stderr,
		"off-CPU: thread %u napped %.1f ms of wall time: blocked %.1f ms, %.1f under "
		"offcpu_test_nap, %.1f with kernel frames, %.1f complete; %llu blocks, BPF %.0f ns "
		"per switch over %llu\n",
		os.tid, n.wall_ns / 1e6, os.us_thread / 1e3, os.us_in_nap / 1e3, os.us_kernel / 1e3,
		os.us_complete / 1e3, (unsigned long long)st.offcpu_blocks,
		st.offcpu_bpf_run_cnt ? (double)st.offcpu_bpf_run_ns / st.offcpu_bpf_run_cnt : 0,
		(unsigned long long)st.offcpu_bpf_run_cnt);
	assert_int_equal(os.on_cpu, 0);
	assert_int_equal(st.samples, 0);
	assert_true(st.offcpu_blocks >= 50);
	assert_int_equal(st.offcpu_skipped, 0);
	assert_int_equal(st.drain_mismatch, 0);
	assert_int_equal(st.lost, 0);
	assert_true(os.us_thread * 1000 <= n.wall_ns);
	assert_true(os.us_thread * 1000 * 2 >= n.wall_ns);
	/* The first nap may come before the table of this executable: allow a few. */
	assert_true(os.us_in_nap * 10 >= os.us_thread * 9);
	assert_true(os.us_complete * 10 >= os.us_thread * 9);
	assert_int_equal(os.us_kernel, os.us_thread);
	assert_true(st.offcpu_bpf_run_cnt > 0);
	sampler_close(s);
}

/* Like offcpu_test_nap, with a frame of another size: it blocks from another stack depth. */
__attribute__((noinline)) void offcpu_test_nap_deep(void)
{
	volatile char pad[256];
	struct timespec ts = {0, 3000000};

	pad[0] = 1;
	nanosleep(&ts, NULL);
	pad[255] = pad[0];
}

static void *nap_alternating_thread(void *arg)
{
	struct nap *n = arg;
	uint64_t t0 = now_ns();

	n->tid = gettid();
	for (int i = 0; i < 50; i++) {
		offcpu_test_nap(1);
		offcpu_test_nap_deep();
	}
	n->wall_ns = now_ns() - t0;
	return NULL;
}

/*
 * A capture budget of 5 per second and CPU: enough for the first blocks of this process's
 * threads, far from the 100 blocks of a napping thread. A thread napping in a loop blocks from
 * the same place every time: its blocks beyond the budget keep the stacks of its last capture.
 * A thread alternating between two places (two stack depths) blocks half the time from
 * elsewhere: those blocks count without stacks, their time still there.
 */
static void test_sampler_offcpu_budget(void **state)
{
	struct sampler_opts o = {.frequency = 99,
				 .unwind = SAMPLER_UNWIND_FP,
				 .only_tgid = (uint32_t)getpid(),
				 .flush_seconds = 1,
				 .events = SAMPLER_EVENT_OFF_CPU,
				 .off_cpu_captures = 5};
	struct offcpu_seen os = {.tgid = (uint32_t)getpid()}, alt = {.tgid = (uint32_t)getpid()};
	struct sampler_stats st;
	struct sampler *s = open_opts_or_skip(&o);
	struct nap n = {0}, m = {0};
	uint64_t skipped;

	run_and_drain(s, nap_thread, &n, &os);
	sampler_get_stats(s, &st);
	skipped = st.offcpu_skipped;
	fprintf(stderr,
		"off-CPU budget 5/s, one place: %llu blocks, %llu without stacks; "
		"blocked %.1f ms, %.1f with stacks\n",
		(unsigned long long)st.offcpu_blocks, (unsigned long long)skipped,
		os.us_thread / 1e3, os.us_kernel / 1e3);
	assert_true(st.offcpu_blocks >= 50);
	assert_true(skipped <= 10);
	assert_true(os.us_thread * 1000 * 2 >= n.wall_ns);
	assert_true(os.us_thread * 1000 <= n.wall_ns);
	/* Frame pointers: gcc keeps none in offcpu_test_nap, so the kernel stack tells. */
	assert_true(os.us_kernel * 10 >= os.us_thread * 9);

	run_and_drain(s, nap_alternating_thread, &m, &alt);
	sampler_get_stats(s, &st);
	fprintf(stderr,
		"off-CPU budget 5/s, two places: %llu more blocks without stacks; "
		"blocked %.1f ms of %.1f, %.1f with stacks\n",
		(unsigned long long)(st.offcpu_skipped - skipped), alt.us_thread / 1e3,
		m.wall_ns / 1e6, alt.us_kernel / 1e3);
	/* 100 blocks, at most 5 captures per CPU and second; then half from the last place. */
	assert_true(st.offcpu_skipped - skipped >= 30);
	assert_true(alt.us_kernel * 10 <= alt.us_thread * 8);
	assert_true(alt.us_thread * 1000 * 2 >= m.wall_ns);
	assert_true(alt.us_thread * 1000 <= m.wall_ns);
	assert_int_equal(st.drain_mismatch, 0);
	sampler_close(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_sampler_cpu_list),
	    cmocka_unit_test(test_sampler_boot_offset),
	    cmocka_unit_test(test_sampler_dwarf_own_process),
	    cmocka_unit_test(test_sampler_bad_unwind),
	    cmocka_unit_test(test_sampler_offcpu_own_process),
	    cmocka_unit_test(test_sampler_offcpu_budget),
	    cmocka_unit_test(test_sampler_own_process),
	    cmocka_unit_test(test_sampler_all_processes),
	    cmocka_unit_test(test_sampler_counts_map_full),
	    cmocka_unit_test(test_sampler_counts_cache_evictions),
	    cmocka_unit_test(test_workload_cpu_split),
	    cmocka_unit_test(test_workload_threads),
	    cmocka_unit_test(test_workload_syscalls),
	    cmocka_unit_test(test_workload_shlib),
	    cmocka_unit_test(test_workload_forkstorm),
	    cmocka_unit_test(test_workload_forkstorm_dwarf),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
