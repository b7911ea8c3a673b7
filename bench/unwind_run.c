/*
 * unwind_run — runs CMD under the on-CPU sampler with DWARF (or frame-pointer) unwinding, the
 * way `ember record` does, and prints one line of key=value numbers for bench/unwind.sh:
 * samples, user frames per sample, share of complete walks, BPF time per sample and per frame
 * (bpf_stats), tables built (objects, slots, build time), and this process's CPU (sampler
 * threads included: table builds, event handling, drains).
 *
 *   unwind_run [-F HZ] [-u dwarf|fp] -- CMD ARGS...
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agent/sampler.h"
#include "bpf/unwind.h"

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

static double cpu_ms(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 +
	       (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
}

int main(int argc, char **argv)
{
	struct sampler_opts so = {.frequency = 99, .unwind = SAMPLER_UNWIND_DWARF,
				  .flush_seconds = 0.2};
	struct timespec tick = {0, 200 * 1000 * 1000};
	struct sampler_stats st;
	struct tally t = {0};
	struct sampler *s;
	int opt, gate[2], status;
	double cpu0;
	char go = 'g';
	pid_t pid;

	while ((opt = getopt(argc, argv, "+F:u:")) != -1) {
		if (opt == 'F')
			so.frequency = atoi(optarg);
		else if (opt == 'u')
			so.unwind = strcmp(optarg, "fp") ? SAMPLER_UNWIND_DWARF : SAMPLER_UNWIND_FP;
		else
			return 2;
	}
	if (optind >= argc || pipe(gate))
		return 2;
	pid = fork();
	if (pid == 0) {
		close(gate[1]);
		if (read(gate[0], &go, 1) == 1)
			execvp(argv[optind], argv + optind);
		_exit(127);
	}
	close(gate[0]);
	so.only_tgid = (uint32_t)pid;
	cpu0 = cpu_ms();
	if (sampler_open(&so, &s)) {
		kill(pid, SIGKILL);
		return 1;
	}
	if (write(gate[1], &go, 1) != 1)
		return 1;
	while (waitpid(pid, &status, WNOHANG) != pid) {
		nanosleep(&tick, NULL);
		sampler_drain(s, tally_cb, &t);
	}
	sampler_drain(s, tally_cb, &t);
	sampler_get_stats(s, &st);
	fprintf(stderr, "unwind_run: samples=%" PRIu64 " user_samples=%" PRIu64 " frames_per_sample=%.1f complete_pct=%.1f"
	       " bpf_ns_per_run=%.0f bpf_ns_per_sample=%.0f bpf_ns_per_frame=%.0f runs=%" PRIu64
	       " objects=%" PRIu64 " table_mib=%.2f build_ms=%.1f agent_cpu_ms=%.1f\n",
	       t.samples, t.user_samples, t.user_samples ? (double)t.frames / t.user_samples : 0,
	       t.user_samples ? 100.0 * t.complete / t.user_samples : 0,
	       st.bpf_run_cnt ? (double)st.bpf_run_ns / st.bpf_run_cnt : 0,
	       st.samples ? (double)st.bpf_run_ns / st.samples : 0,
	       t.frames ? (double)st.bpf_run_ns / t.frames : 0, st.bpf_run_cnt, st.unwind_objects,
	       (double)st.unwind_slots_used * 8 / (1 << 20), st.unwind_build_ns / 1e6,
	       cpu_ms() - cpu0);
	sampler_close(s);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
