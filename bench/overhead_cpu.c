/*
 * overhead_cpu — one snapshot of what running processes cost, for bench/overhead.sh.
 *
 * CPU: /proc/PID/stat gives utime+stime in clock ticks (10 ms here): a 30 s window of an agent
 * that should use 2.5 ms per second is 75 ms, so ticks would cost ±25 %. The process CPU clock
 * (clock_getcpuclockid) reads the same quantity — all threads, live and exited, user and
 * system — to the nanosecond.
 *
 * BPF: run_time_ns and run_cnt of every BPF program the process holds a descriptor of, from
 * /proc/PID/fdinfo (counted once per program id; non-zero only while BPF run-time statistics
 * are enabled). BPF programs run in the context of the sampled tasks, so their time is not in
 * the process CPU clock.
 *
 * Usage: overhead_cpu PID...
 * Output: one "PID MONO_NS CPU_NS BPF_RUN_NS BPF_RUN_CNT" line per PID, all read together so a
 * pair of snapshots measures one window; CPU_NS is -1 if the process is gone.
 * Exit status 0 unless an argument is not a pid.
 */
#include <dirent.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define OVERHEAD_MAX_PROGS 256 /* distinct BPF program ids counted per process */

struct bpf_sum {
	uint64_t run_ns, run_cnt;
	uint32_t ids[OVERHEAD_MAX_PROGS];
	size_t n_ids;
};

/* Adds one fdinfo file if it describes a BPF program not counted yet. */
static void overhead_add_fdinfo(const char *path, struct bpf_sum *sum)
{
	FILE *f = fopen(path, "r");
	char line[256];
	uint64_t id = 0, ns = 0, cnt = 0;
	int is_prog = 0;

	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "prog_id: %" SCNu64, &id) == 1)
			is_prog = 1;
		else if (sscanf(line, "run_time_ns: %" SCNu64, &ns) != 1)
			sscanf(line, "run_cnt: %" SCNu64, &cnt);
	}
	fclose(f);
	if (!is_prog)
		return;
	for (size_t i = 0; i < sum->n_ids; i++)
		if (sum->ids[i] == id)
			return;
	if (sum->n_ids == OVERHEAD_MAX_PROGS)
		return;
	sum->ids[sum->n_ids++] = (uint32_t)id;
	sum->run_ns += ns;
	sum->run_cnt += cnt;
}

static void overhead_bpf_sum(long pid, struct bpf_sum *sum)
{
	char dir[64], path[320];
	struct dirent *de;
	DIR *d;

	memset(sum, 0, sizeof(*sum));
	snprintf(dir, sizeof(dir), "/proc/%ld/fdinfo", pid);
	d = opendir(dir);
	if (!d)
		return;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		overhead_add_fdinfo(path, sum);
	}
	closedir(d);
}

int main(int argc, char **argv)
{
	static struct bpf_sum sum;

	for (int i = 1; i < argc; i++) {
		char *end;
		long pid = strtol(argv[i], &end, 10);
		struct timespec mono, cpu;
		clockid_t clk;
		int64_t cpu_ns = -1;

		if (*argv[i] == '\0' || *end != '\0' || pid <= 0) {
			fprintf(stderr, "overhead_cpu: not a pid: '%s'\n", argv[i]);
			return 2;
		}
		clock_gettime(CLOCK_MONOTONIC, &mono);
		if (clock_getcpuclockid((pid_t)pid, &clk) == 0 && clock_gettime(clk, &cpu) == 0)
			cpu_ns = (int64_t)cpu.tv_sec * 1000000000 + cpu.tv_nsec;
		overhead_bpf_sum(pid, &sum);
		printf("%ld %" PRId64 " %" PRId64 " %" PRIu64 " %" PRIu64 "\n", pid,
		       (int64_t)mono.tv_sec * 1000000000 + mono.tv_nsec, cpu_ns, sum.run_ns,
		       sum.run_cnt);
	}
	return 0;
}
