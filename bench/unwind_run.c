/*
 * unwind_run — runs CMD under the on-CPU sampler with DWARF (or frame-pointer) unwinding, the
 * way `ember record` does, and prints one line of key=value numbers for bench/unwind.sh:
 * samples, user frames per sample, share of complete walks, BPF time per sample and per frame
 * (bpf_stats), tables built (objects, slots, build time), and this process's CPU (sampler
 * threads included: table builds, event handling, drains).
 *
 * With -f it runs CMD under two floor programs instead of the sampler, each on its own cpu-clock
 * event opened the way the sampler opens its per-thread events (pid = CMD, cpu = -1, inherit,
 * same frequency, a BPF link): the empty program (return 0), whose bpf_stats time per run is the
 * kernel's dispatch plus bpf_stats' own clock reads, and the user floor, which reads one word at
 * the sample's stack pointer (bpf_probe_read_user) and returns — what any program that reads the
 * user stack pays at least (a DWARF walk reads one or two words per frame). A run of their own:
 * beside ember's program they would fire on the same tick and find the memory it touched warm
 * (3-5 µs cheaper, see -A).
 *
 * With -A MASK (or -B MASK) a twin sampler without the caches in MASK (SAMPLER_CACHE_* bits,
 * sampler_opts.caches_off) samples the same command in the same run, opened after (-A) or before
 * (-B) the measured one, and its BPF time per sample is printed beside (twin_*): an A/B that
 * load on this shared machine cannot tilt. The two events fire together and the program that
 * runs second finds the shared kernel and user memory warm (3-5 µs cheaper here): the order's
 * bias cancels in the mean of (main - twin) over an -A and a -B run, the caches' effect per
 * sample (AB=MASK in bench/unwind.sh). The twin's table builds add to the CPU.
 *
 * With -p PID it samples a process that runs already (until it exits) instead of CMD: two
 * builds of unwind_run attached to one stopped process, then continued, compare any two versions
 * of the program in the same run (bench/unwind_ab.sh).
 *
 *   unwind_run [-F HZ] [-u dwarf|fp] [-A MASK|-B MASK] -- CMD ARGS...
 *   unwind_run [-F HZ] -f -- CMD ARGS...
 *   unwind_run [-F HZ] [-u dwarf|fp] -p PID
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/perf_event.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <linux/bpf_perf_event.h>

#include "agent/sampler.h"
#include "bpf/unwind.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

struct tally {
	uint64_t samples, user_samples, frames, complete;
};

static void tally_cb(void *arg, const struct sample_rec *rec)
{
	struct tally *t = arg;

	t->samples += rec->count;
	if (!rec->n_uframes)
		return;
	t->user_samples += rec->count;
	t->frames += rec->count * rec->n_uframes;
	if (rec->ustack_reason == UNW_REASON_COMPLETE + 1)
		t->complete += rec->count;
}

/* The empty program: return 0. */
static const struct bpf_insn floor_insns[] = {
    {.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 0},
    {.code = BPF_JMP | BPF_EXIT},
};

/* The user floor: bpf_probe_read_user(fp - 8, 8, ctx->regs.rsp); return 0. */
static const struct bpf_insn ufloor_insns[] = {
    {.code = BPF_LDX | BPF_MEM | BPF_DW,
     .dst_reg = BPF_REG_3,
     .src_reg = BPF_REG_1,
     .off = offsetof(struct bpf_perf_event_data, regs.rsp)},
    {.code = BPF_ALU64 | BPF_MOV | BPF_X, .dst_reg = BPF_REG_1, .src_reg = BPF_REG_10},
    {.code = BPF_ALU64 | BPF_ADD | BPF_K, .dst_reg = BPF_REG_1, .imm = -8},
    {.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_2, .imm = 8},
    {.code = BPF_JMP | BPF_CALL, .imm = BPF_FUNC_probe_read_user},
    {.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 0},
    {.code = BPF_JMP | BPF_EXIT},
};

/* Program insns on a cpu-clock event of pid: 0 with *prog_fd and *link_fd open, or -1. */
static int floor_open(const char *name, const struct bpf_insn *insns, size_t n, pid_t pid, int hz,
		      int *prog_fd, int *link_fd)
{
	struct perf_event_attr attr = {
	    .type = PERF_TYPE_SOFTWARE,
	    .size = sizeof(attr),
	    .config = PERF_COUNT_SW_CPU_CLOCK,
	    .freq = 1,
	    .sample_freq = (uint64_t)hz,
	    .inherit = 1,
	};
	int pfd;

	*prog_fd = bpf_prog_load(BPF_PROG_TYPE_PERF_EVENT, name, "GPL", insns, n, NULL);
	if (*prog_fd < 0) {
		fprintf(stderr, "unwind_run: load %s: %s\n", name, strerror(errno));
		return -1;
	}
	pfd = (int)syscall(__NR_perf_event_open, &attr, pid, -1, -1, PERF_FLAG_FD_CLOEXEC);
	if (pfd < 0) {
		fprintf(stderr, "unwind_run: cpu-clock event for %s: %s\n", name, strerror(errno));
		close(*prog_fd);
		return -1;
	}
	/* The link holds the event's file: pfd is not needed past this. */
	*link_fd = bpf_link_create(*prog_fd, pfd, BPF_PERF_EVENT, NULL);
	close(pfd);
	if (*link_fd < 0) {
		fprintf(stderr, "unwind_run: attach %s: %s\n", name, strerror(errno));
		close(*prog_fd);
		return -1;
	}
	return 0;
}

/* bpf_stats run time per run of prog, 0 when it has not run or is not open. */
static double floor_ns_per_run(int prog_fd)
{
	struct bpf_prog_info info = {0};
	uint32_t len = sizeof(info);

	if (prog_fd < 0 || bpf_obj_get_info_by_fd(prog_fd, &info, &len) || !info.run_cnt)
		return 0;
	return (double)info.run_time_ns / info.run_cnt;
}

/* 1 while pid runs (not a zombie), for -p: pid is not our child. */
static int process_alive(pid_t pid)
{
	char path[64], buf[256], *p;
	FILE *f;
	int alive = 0;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return 0;
	if (fgets(buf, sizeof(buf), f) && (p = strrchr(buf, ')')) && p[1] == ' ')
		alive = p[2] != 'Z' && p[2] != 'X';
	fclose(f);
	return alive;
}

/* The same sampler without the caches in mask. */
static int twin_open(const struct sampler_opts *so, int mask, struct sampler **twin)
{
	struct sampler_opts to = *so;

	to.caches_off = mask;
	return sampler_open(&to, twin);
}

static double cpu_ms(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 +
	       (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
}

int main(int argc, char **argv)
{
	struct sampler_opts so = {
	    .frequency = 99, .unwind = SAMPLER_UNWIND_DWARF, .flush_seconds = 0.2};
	struct timespec tick = {0, 200 * 1000 * 1000};
	struct sampler_stats st, twin_st = {0};
	struct tally t = {0}, twin_t = {0};
	struct sampler *s = NULL, *twin = NULL;
	int opt, gate[2], status, want_twin = 0, twin_mask = 0, floors_only = 0, err;
	int floor_prog = -1, floor_link = -1, ufloor_prog = -1, ufloor_link = -1;
	double cpu0;
	char go = 'g';
	pid_t pid = 0;

	while ((opt = getopt(argc, argv, "+F:u:A:B:p:f")) != -1) {
		if (opt == 'f') {
			floors_only = 1;
		} else if (opt == 'A' || opt == 'B') {
			want_twin = opt == 'A' ? 1 : 2;
			twin_mask = atoi(optarg);
		} else if (opt == 'p') {
			pid = atoi(optarg);
		} else if (opt == 'F') {
			so.frequency = atoi(optarg);
		} else if (opt == 'u') {
			so.unwind = strcmp(optarg, "fp") ? SAMPLER_UNWIND_DWARF : SAMPLER_UNWIND_FP;
		} else {
			return 2;
		}
	}
	if (pid > 0) {
		status = 0;
		gate[1] = -1;
	} else if (optind >= argc || pipe(gate)) {
		return 2;
	} else if ((pid = fork()) == 0) {
		close(gate[1]);
		if (read(gate[0], &go, 1) == 1)
			execvp(argv[optind], argv + optind);
		_exit(127);
	}
	if (gate[1] >= 0)
		close(gate[0]);
	so.only_tgid = (uint32_t)pid;
	cpu0 = cpu_ms();
	/* bpf_stats for the floors (the sampler enables them itself), held until exit. */
	if (floors_only && bpf_enable_stats(BPF_STATS_RUN_TIME) < 0)
		fprintf(stderr, "unwind_run: bpf_enable_stats: %s\n", strerror(errno));
	if (floors_only)
		err = floor_open("ember_floor", floor_insns, ARRAY_SIZE(floor_insns), pid,
				 so.frequency, &floor_prog, &floor_link) ||
		      floor_open("ember_ufloor", ufloor_insns, ARRAY_SIZE(ufloor_insns), pid,
				 so.frequency, &ufloor_prog, &ufloor_link);
	else
		err = (want_twin == 2 && twin_open(&so, twin_mask, &twin)) ||
		      sampler_open(&so, &s) || (want_twin == 1 && twin_open(&so, twin_mask, &twin));
	if (err) {
		if (gate[1] >= 0)
			kill(pid, SIGKILL);
		return 1;
	}
	if (gate[1] >= 0 && write(gate[1], &go, 1) != 1)
		return 1;
	while (gate[1] >= 0 ? waitpid(pid, &status, WNOHANG) != pid : process_alive(pid)) {
		nanosleep(&tick, NULL);
		if (s)
			sampler_drain(s, tally_cb, &t);
		if (twin)
			sampler_drain(twin, tally_cb, &twin_t);
	}
	if (floors_only) {
		fprintf(stderr, "unwind_run: floor_ns_per_run=%.0f user_floor_ns_per_run=%.0f\n",
			floor_ns_per_run(floor_prog), floor_ns_per_run(ufloor_prog));
		close(floor_link);
		close(floor_prog);
		close(ufloor_link);
		close(ufloor_prog);
		return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
	}
	sampler_drain(s, tally_cb, &t);
	sampler_get_stats(s, &st);
	if (twin) {
		sampler_drain(twin, tally_cb, &twin_t);
		sampler_get_stats(twin, &twin_st);
	}
	fprintf(stderr,
		"unwind_run: samples=%" PRIu64 " user_samples=%" PRIu64
		" frames_per_sample=%.1f complete_pct=%.1f"
		" bpf_ns_per_run=%.0f bpf_ns_per_sample=%.0f bpf_ns_per_frame=%.0f runs=%" PRIu64
		" objects=%" PRIu64 " table_mib=%.2f build_ms=%.1f agent_cpu_ms=%.1f"
		" twin_samples=%" PRIu64 " twin_ns_per_sample=%.0f twin_frames_per_sample=%.1f"
		" twin_complete_pct=%.1f\n",
		t.samples, t.user_samples, t.user_samples ? (double)t.frames / t.user_samples : 0,
		t.user_samples ? 100.0 * t.complete / t.user_samples : 0,
		st.bpf_run_cnt ? (double)st.bpf_run_ns / st.bpf_run_cnt : 0,
		st.samples ? (double)st.bpf_run_ns / st.samples : 0,
		t.frames ? (double)st.bpf_run_ns / t.frames : 0, st.bpf_run_cnt, st.unwind_objects,
		(double)st.unwind_slots_used * 8 / (1 << 20), st.unwind_build_ns / 1e6,
		cpu_ms() - cpu0, twin_t.samples,
		twin_st.samples ? (double)twin_st.bpf_run_ns / twin_st.samples : 0,
		twin_t.user_samples ? (double)twin_t.frames / twin_t.user_samples : 0,
		twin_t.user_samples ? 100.0 * twin_t.complete / twin_t.user_samples : 0);
	sampler_close(twin);
	sampler_close(s);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
