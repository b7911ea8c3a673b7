/*
 * test_sampler — loads the real on-CPU BPF program, burns CPU in a function of known address
 * range, drains, and checks the drained samples and the kernel-side counters. Skips (cmocka
 * skip) when not root or when the kernel refuses BPF. Also prints the measured BPF run time per
 * sample and the drain time.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "agent/sampler.h"

/*
 * The busy function lives alone in this section so the linker gives us its exact range. It keeps
 * a frame pointer: without one the walk past the leaf follows whatever rbp holds, every sample
 * becomes a distinct garbage stack, and the stack map sees birthday-bound collisions.
 */
extern const char __start_ember_busy[], __stop_ember_busy[];

#define BUSY_ROUNDS_MAX 20       /* drains before giving up on seeing enough samples */
#define BUSY_ROUND_NS 300000000ull
#define WANT_BUSY_SAMPLES 60     /* ≈ 0.6 s of one CPU at 99 Hz */

__attribute__((noinline, section("ember_busy"), optimize("no-omit-frame-pointer"))) static uint64_t busy_spin(uint64_t ns_budget)
{
	struct timespec t0, t;
	uint64_t x = 88172645463325252ull, spent;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	do {
		for (int i = 0; i < 100000; i++) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
		}
		__asm__ volatile("" : "+r"(x));
		clock_gettime(CLOCK_MONOTONIC, &t);
		spent = (uint64_t)(t.tv_sec - t0.tv_sec) * 1000000000ull + (uint64_t)t.tv_nsec -
			(uint64_t)t0.tv_nsec;
	} while (spent < ns_budget);
	return x;
}

__attribute__((noinline)) static void syscall_spin(uint64_t ns_budget)
{
	struct timespec t0, t;
	uint64_t spent;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	do {
		for (int i = 0; i < 1000; i++)
			getppid();
		clock_gettime(CLOCK_MONOTONIC, &t);
		spent = (uint64_t)(t.tv_sec - t0.tv_sec) * 1000000000ull + (uint64_t)t.tv_nsec -
			(uint64_t)t0.tv_nsec;
	} while (spent < ns_budget);
}

struct seen {
	uint32_t tgid;
	uint64_t own_samples;   /* samples of our tgid */
	uint64_t busy_samples;  /* of which the user leaf is in busy_spin */
	uint64_t kernel_samples; /* of our tgid with a kernel stack of kernel addresses */
	uint64_t other_tgids;   /* records of other processes */
	uint64_t total;
	uint64_t bad_frames;    /* n > 0 with a NULL frame array, or n over the limit */
};

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
	if (rec->n_uframes && rec->uframes[0] >= (uintptr_t)__start_ember_busy &&
	    rec->uframes[0] < (uintptr_t)__stop_ember_busy)
		sn->busy_samples += rec->count;
	if (rec->n_kframes && rec->kframes[0] >= 0xffff800000000000ull)
		sn->kernel_samples += rec->count;
}

static struct sampler *open_or_skip(uint32_t only_tgid)
{
	struct sampler_opts o = {.frequency = 99, .unwind = SAMPLER_UNWIND_FP,
				 .only_tgid = only_tgid, .flush_seconds = 1};
	struct sampler *s = NULL;
	int ret;

	if (geteuid() != 0) {
		fprintf(stderr, "not root: cannot load BPF\n");
		skip();
	}
	ret = sampler_open(&o, &s);
	if (ret == -EPERM || ret == -EACCES || ret == -ENOSYS || ret == -EOPNOTSUPP) {
		fprintf(stderr, "BPF unavailable: %s\n", strerror(-ret));
		skip();
	}
	assert_int_equal(ret, 0);
	assert_non_null(s);
	return s;
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
	assert_true(st.idle_skipped + st.samples > 0);
	sampler_close(s);
}

static void test_sampler_dwarf_not_yet(void **state)
{
	struct sampler_opts o = {.frequency = 99, .unwind = SAMPLER_UNWIND_DWARF};
	struct sampler *s = (struct sampler *)&o;

	assert_int_equal(sampler_open(&o, &s), -EOPNOTSUPP);
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

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sampler_cpu_list),
		cmocka_unit_test(test_sampler_boot_offset),
		cmocka_unit_test(test_sampler_dwarf_not_yet),
		cmocka_unit_test(test_sampler_own_process),
		cmocka_unit_test(test_sampler_all_processes),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
