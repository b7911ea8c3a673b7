/*
 * ember agent / run / record.
 *
 * agent: profile this host and send rows to a server. run: the same plus an in-process server
 * on the embedded store, the agent sending to it over loopback (the same path as a fleet).
 * record: one process (and its threads), no server: folded stacks to a file or stdout.
 */
#define LOG_MODULE "cli"
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agent/agent.h"
#include "agent/aggregate.h"
#include "agent/procinfo.h"
#include "agent/sampler.h"
#include "agent/symbolize.h"
#include "agent/unwind.h"
#include "cli/cli.h"
#include "cli/profiler.h"
#include "cli/server_flags.h"
#include "common/export.h"
#include "common/log.h"

enum agent_flag {
	AF_SERVER = 2000,
	AF_FREQUENCY,
	AF_PROCESS_REGEX,
	AF_UNWIND,
	AF_SPOOL_DIR,
	AF_SPOOL_SIZE,
	AF_HOST,
	AF_ORG,
	AF_OFF_CPU,
	AF_OFF_CPU_MIN,
	AF_OFF_CPU_CAPTURES,
	AF_OFF_CPU_WAKERS,
};

static const struct option agent_options[] = {
	{"server", required_argument, NULL, AF_SERVER},
	{"frequency", required_argument, NULL, AF_FREQUENCY},
	{"process-regex", required_argument, NULL, AF_PROCESS_REGEX},
	{"unwind", required_argument, NULL, AF_UNWIND},
	{"spool-dir", required_argument, NULL, AF_SPOOL_DIR},
	{"spool-size", required_argument, NULL, AF_SPOOL_SIZE},
	{"host", required_argument, NULL, AF_HOST},
	{"org", required_argument, NULL, AF_ORG},
	{"off-cpu", no_argument, NULL, AF_OFF_CPU},
	{"off-cpu-min", required_argument, NULL, AF_OFF_CPU_MIN},
	{"off-cpu-captures", required_argument, NULL, AF_OFF_CPU_CAPTURES},
	{"off-cpu-wakers", no_argument, NULL, AF_OFF_CPU_WAKERS},
};
#define N_AGENT_OPTIONS (sizeof(agent_options) / sizeof(agent_options[0]))

static void agent_flags_usage(FILE *f, int with_server)
{
	if (with_server)
		fprintf(f, "  --server URL           where to send rows, e.g. http://HOST:20416\n");
	fprintf(f,
		"  --frequency HZ         samples per second per CPU, 1..1000 (default 99)\n"
		"  --process-regex RE     processes (comm, POSIX ERE) that get full stacks; others\n"
		"                         appear only in Total (default: all)\n"
		"  --unwind dwarf|fp      user stacks from .eh_frame tables walked in BPF, or from\n"
		"                         frame pointers (default dwarf)\n"
		"  --spool-dir DIR        keep undelivered rows on disk while the server is down\n"
		"  --spool-size SIZE      spool bound, oldest dropped beyond it (default 256M)\n"
		"  --host NAME            host label (default: hostname)\n"
		"  --org N                X-Org-Id to send with (default 1)\n"
		"  --off-cpu              also profile blocked time: off-cpu rows, µs each thread\n"
		"                         spent sleeping or waiting, by stack (a capture at every\n"
		"                         context switch: see docs/benchmarks.md for its cost)\n"
		"  --off-cpu-min US       shortest block counted, in µs (default 50)\n"
		"  --off-cpu-captures N   blocks per second and CPU whose stacks are captured\n"
		"                         (default 1000); more still count, as [stacks not captured]\n"
		"  --off-cpu-wakers       (implies --off-cpu) also who ended each block: '[w] comm'\n"
		"                         and the waker's kernel frames above the blocked stack\n");
}

static int parse_unwind(const char *arg, enum sampler_unwind *out)
{
	if (strcmp(arg, "fp") == 0)
		*out = SAMPLER_UNWIND_FP;
	else if (strcmp(arg, "dwarf") == 0)
		*out = SAMPLER_UNWIND_DWARF;
	else
		return -EINVAL;
	return 0;
}

/* 0 handled, 1 not an agent flag, -1 bad value. */
static int agent_flags_parse(int opt, const char *arg, struct agent_opts *o)
{
	int64_t v;
	uint64_t u;

	switch (opt) {
	case AF_SERVER: o->server_url = arg; return 0;
	case AF_FREQUENCY:
		if (cli_parse_int(arg, 1, 1000, &v) < 0)
			break;
		o->frequency = (int)v;
		return 0;
	case AF_PROCESS_REGEX: o->process_regex = arg; return 0;
	case AF_UNWIND:
		if (parse_unwind(arg, &o->unwind) < 0)
			break;
		return 0;
	case AF_SPOOL_DIR: o->spool_dir = arg; return 0;
	case AF_SPOOL_SIZE:
		if (cli_parse_size(arg, &u) < 0)
			break;
		o->spool_bytes = u;
		return 0;
	case AF_HOST: o->host = arg; return 0;
	case AF_ORG:
		if (cli_parse_int(arg, 1, 9999, &v) < 0)
			break;
		o->org = (int)v;
		return 0;
	case AF_OFF_CPU: o->off_cpu = 1; return 0;
	case AF_OFF_CPU_WAKERS: o->off_cpu = o->off_cpu_wakers = 1; return 0;
	case AF_OFF_CPU_MIN:
		if (cli_parse_int(arg, 1, 60000000, &v) < 0)
			break;
		o->off_cpu_min_us = (uint32_t)v;
		return 0;
	case AF_OFF_CPU_CAPTURES:
		if (cli_parse_int(arg, 1, 1000000, &v) < 0)
			break;
		o->off_cpu_captures = (uint32_t)v;
		return 0;
	default:
		return 1;
	}
	for (size_t i = 0; i < N_AGENT_OPTIONS; i++)
		if (agent_options[i].val == opt)
			fprintf(stderr, "ember: invalid value '%s' for --%s\n", arg,
				agent_options[i].name);
	return -1;
}

/* ember run: the server's /metrics also shows the in-process agent's counters. */
static struct agent *run_agent;
static pthread_mutex_t run_agent_lock = PTHREAD_MUTEX_INITIALIZER;

static void run_metrics(void *arg, struct strbuf *out)
{
	pthread_mutex_lock(&run_agent_lock);
	if (run_agent)
		agent_write_metrics(run_agent, out);
	pthread_mutex_unlock(&run_agent_lock);
}

static void run_set_agent(struct agent *a)
{
	pthread_mutex_lock(&run_agent_lock);
	run_agent = a;
	pthread_mutex_unlock(&run_agent_lock);
}

static int agent_or_run(int argc, char **argv, int with_server)
{
	struct option longopts[N_AGENT_OPTIONS + 16];
	struct server_opts so;
	struct agent_opts ao = {.frequency = 99, .unwind = SAMPLER_UNWIND_DWARF};
	struct server *srv = NULL;
	struct agent *agent = NULL;
	char url[64];
	size_t n = 0;
	int opt, rc;

	server_opts_defaults(&so);
	for (size_t i = 0; i < N_AGENT_OPTIONS; i++)
		if (!with_server || agent_options[i].val != AF_SERVER)
			longopts[n++] = agent_options[i];
	if (with_server)
		for (const struct option *o = server_long_options; o->name; o++)
			longopts[n++] = *o;
	else
		longopts[n++] = (struct option){"log-level", required_argument, NULL, SF_LOG_LEVEL};
	longopts[n++] = (struct option){"help", no_argument, NULL, 'h'};
	longopts[n] = (struct option){NULL, 0, NULL, 0};

	while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		if (opt == 'h') {
			printf("usage: ember %s [FLAGS]\n", with_server ? "run" : "agent");
			agent_flags_usage(stdout, !with_server);
			if (with_server)
				server_flags_usage(stdout);
			return 0;
		}
		rc = agent_flags_parse(opt, optarg, &ao);
		if (rc == 1)
			rc = server_flags_parse(opt, optarg, &so);
		if (rc != 0) {
			if (rc > 0) {
				agent_flags_usage(stderr, !with_server);
				if (with_server)
					server_flags_usage(stderr);
			}
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "ember: unexpected argument '%s'\n", argv[optind]);
		return 2;
	}
	if (!with_server && !ao.server_url) {
		fprintf(stderr, "ember agent: --server URL is required (e.g. http://127.0.0.1:20416)\n");
		return 2;
	}
	cli_block_signals();
	if (with_server) {
		so.metrics_extra = run_metrics;
		if (server_start(&so, &srv) < 0)
			return 1;
		snprintf(url, sizeof(url), "http://127.0.0.1:%u", server_port(srv));
		ao.server_url = url;
	}
	if (agent_start(&ao, &agent) < 0) {
		server_stop(srv);
		return 1;
	}
	run_set_agent(agent);
	cli_wait_for_signal();
	log_info("signal received, shutting down");
	run_set_agent(NULL);
	agent_stop(agent);
	server_stop(srv);
	return 0;
}

int cli_agent(int argc, char **argv)
{
	return agent_or_run(argc, argv, 0);
}

int cli_run(int argc, char **argv)
{
	return agent_or_run(argc, argv, 1);
}

/* ---- record ----------------------------------------------------------------------------- */

static volatile sig_atomic_t record_stop;

static void record_on_signal(int sig)
{
	record_stop = 1;
}

static void record_usage(FILE *f)
{
	fprintf(f,
		"usage: ember record [-F HZ] [-d SECONDS] [-p PID | -- CMD ARGS...] [-o FILE]\n"
		"                    [--format folded|svg|speedscope|pprof]\n"
		"                    [--value samples|us] [--unwind dwarf|fp (default dwarf)]\n"
		"                    [--max-keys N] [--off-cpu [--off-cpu-min US]]\n"
		"                    [--off-cpu-wakers] [--off-cpu-captures N]\n"
		"Profiles one process (or runs CMD and profiles it) and writes folded stacks\n"
		"('comm;frame;...;frame VALUE' lines, flamegraph.pl's input). With --off-cpu it\n"
		"records where the threads were blocked instead of where they ran: the µs each\n"
		"stack spent sleeping or waiting, blocks of at least --off-cpu-min µs (default 50),\n"
		"kernel frames from the scheduler out; --off-cpu-wakers adds who woke each block\n"
		"('[w] comm' and its kernel frames, above the wait); --off-cpu-captures N, blocks\n"
		"(and wakers) per second and CPU whose stacks are taken (1000). Without -d it stops\n"
		"when the process exits or on Ctrl-C. --format (default: from the -o name: .svg,\n"
		".json = speedscope, .pb.gz/.pprof = pprof; else folded) picks another output.\n"
		"--max-keys N bounds the in-kernel counts map (distinct stacks per 0.2 s drain,\n"
		"default sized from the frequency); samples beyond it go through the overflow ring\n"
		"buffer. The last line on stderr counts samples, overflow, losses and, with DWARF,\n"
		"how the user stack walks ended.\n");
}

#define RECORD_MAX_KEYS_LIMIT (1 << 20) /* --max-keys upper bound */

/* The closing summary on stderr: samples, overflow and losses, and the DWARF stop reasons. */
static void record_summary(const struct sampler_stats *st, int frequency, const char *output)
{
	char reasons[256] = "";
	size_t o = 0;

	for (unsigned r = 0; r < SAMPLER_UNW_REASONS && r < UNW_REASON_COUNT; r++)
		if (o < sizeof(reasons))
			o += (size_t)snprintf(reasons + o, sizeof(reasons) - o, " %s %" PRIu64,
					      unw_reason_name(r), st->unwind_reasons[r]);
	fprintf(stderr, "ember record: %" PRIu64 " samples at %d Hz%s%s\n", st->samples, frequency,
		output ? ", written to " : "", output ? output : "");
	fprintf(stderr,
		"ember record: overflow %" PRIu64 " (lost %" PRIu64 "), lost %" PRIu64
		", user stack errors %" PRIu64 ", drain mismatch %" PRIu64 "; unwind:%s;"
		" unwind events %" PRIu64 " (lost %" PRIu64 "), maps reads %" PRIu64 "\n",
		st->overflow_samples, st->overflow_lost, st->lost, st->ustack_errors,
		st->drain_mismatch, reasons, st->unwind_events, st->unwind_events_lost,
		st->unwind_scans);
}

/* The closing summary of --off-cpu: blocks, those without stacks, the switch program's cost. */
static void record_summary_offcpu(const struct sampler_stats *st, const char *output)
{
	fprintf(stderr,
		"ember record: %" PRIu64 " off-CPU blocks (%" PRIu64 " without stacks: capture "
		"budget; %" PRIu64 " not followed)%s%s\n",
		st->offcpu_blocks, st->offcpu_skipped, st->offcpu_nostore,
		output ? ", written to " : "", output ? output : "");
	fprintf(stderr,
		"ember record: %" PRIu64 " context switches seen, BPF %.2f µs each; user stack "
		"errors %" PRIu64 ", lost %" PRIu64 ", drain mismatch %" PRIu64 "\n",
		st->offcpu_bpf_run_cnt,
		st->offcpu_bpf_run_cnt ? (double)st->offcpu_bpf_run_ns / 1000.0 /
					     (double)st->offcpu_bpf_run_cnt
				       : 0.0,
		st->ustack_errors, st->lost, st->drain_mismatch);
	if (st->offcpu_wakers || st->offcpu_wakers_skipped)
		fprintf(stderr, "ember record: %" PRIu64 " wakers taken, %" PRIu64 " not (capture "
				"budget)\n",
			st->offcpu_wakers, st->offcpu_wakers_skipped);
}

/* Starts CMD held at a pipe until sampling runs; returns its pid or -errno. */
static pid_t record_spawn(char **argv, int *go_fd)
{
	int fds[2];
	pid_t pid;

	if (pipe2(fds, O_CLOEXEC) < 0)
		return -errno;
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		char c;

		close(fds[1]);
		if (read(fds[0], &c, 1) != 1)
			_exit(127);
		execvp(argv[0], argv);
		fprintf(stderr, "ember record: cannot run %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	close(fds[0]);
	*go_fd = fds[1];
	return pid;
}

static enum export_format record_format_from_name(const char *path)
{
	size_t n = strlen(path);
	static const struct {
		const char *suffix;
		enum export_format fmt;
	} by_suffix[] = {{".svg", EXPORT_SVG}, {".json", EXPORT_SPEEDSCOPE},
			 {".pb.gz", EXPORT_PPROF}, {".pprof", EXPORT_PPROF}};

	for (size_t i = 0; i < sizeof(by_suffix) / sizeof(by_suffix[0]); i++) {
		size_t k = strlen(by_suffix[i].suffix);

		if (n > k && strcmp(path + n - k, by_suffix[i].suffix) == 0)
			return by_suffix[i].fmt;
	}
	return EXPORT_FOLDED;
}

/*
 * The recorded stacks in the chosen format: folded text first, converted when asked. Off-CPU
 * µs are blocked time: pprof names them "off-cpu", with no sampling period.
 */
static int record_write(struct aggregate *agg, enum export_format fmt, enum aggregate_value unit,
			int frequency, int off_cpu, const char *title, FILE *out)
{
	struct export_opts eo = {
		.title = title,
		.unit = unit == AGGREGATE_VALUE_US ? "microseconds" : "samples",
		.sample_type = off_cpu ? "off-cpu" : NULL,
		.period = off_cpu ? 0 : 1000000 / frequency,
	};
	char *buf = NULL;
	size_t len = 0;
	FILE *mem;
	int rc;

	if (fmt == EXPORT_FOLDED)
		return aggregate_write_folded(agg, out, unit);
	mem = open_memstream(&buf, &len);
	if (!mem)
		return -ENOMEM;
	rc = aggregate_write_folded(agg, mem, unit);
	fclose(mem);
	if (rc == 0)
		rc = export_write_folded_text(fmt, &eo, buf, len, out, NULL);
	if (rc < 0)
		fprintf(stderr, "ember record: writing %s failed: %s\n", export_format_name(fmt),
			strerror(-rc));
	free(buf);
	return rc;
}

int cli_record(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"frequency", required_argument, NULL, 'F'},
		{"duration", required_argument, NULL, 'd'},
		{"pid", required_argument, NULL, 'p'},
		{"output", required_argument, NULL, 'o'},
		{"value", required_argument, NULL, 'v'},
		{"unwind", required_argument, NULL, 'u'},
		{"format", required_argument, NULL, 'f'},
		{"max-keys", required_argument, NULL, 'k'},
		{"off-cpu", no_argument, NULL, 'O'},
		{"off-cpu-min", required_argument, NULL, 'M'},
		{"off-cpu-wakers", no_argument, NULL, 'W'},
		{"off-cpu-captures", required_argument, NULL, 'C'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct sampler_opts so = {
	    .frequency = 99, .unwind = SAMPLER_UNWIND_DWARF, .flush_seconds = 0.2};
	enum aggregate_value unit = AGGREGATE_VALUE_SAMPLES;
	struct cli_profiler pr = {0};
	const char *output = NULL;
	char title[256];
	int64_t duration = 0, pid = 0, v;
	struct timespec start, now, tick = {0, 200 * 1000 * 1000};
	int opt, go_fd = -1, ret = 1, status = 0, child_done = 0;
	pid_t child = 0;
	FILE *out = stdout;
	enum export_format fmt = EXPORT_FOLDED;
	int fmt_given = 0, value_given = 0;

	while ((opt = getopt_long(argc, argv, "+F:d:p:o:h", longopts, NULL)) != -1) {
		switch (opt) {
		case 'F':
			if (cli_parse_int(optarg, 1, 1000, &v) < 0) {
				fprintf(stderr, "ember record: -F wants 1..1000 Hz\n");
				return 2;
			}
			so.frequency = (int)v;
			break;
		case 'd':
			if (cli_parse_duration(optarg, &duration) < 0 || duration <= 0) {
				fprintf(stderr, "ember record: -d wants seconds (or 10s, 2m)\n");
				return 2;
			}
			break;
		case 'p':
			if (cli_parse_int(optarg, 1, INT32_MAX, &pid) < 0) {
				fprintf(stderr, "ember record: -p wants a pid\n");
				return 2;
			}
			break;
		case 'o': output = optarg; break;
		case 'v':
			if (strcmp(optarg, "us") == 0)
				unit = AGGREGATE_VALUE_US;
			else if (strcmp(optarg, "samples") != 0) {
				fprintf(stderr, "ember record: --value is samples or us\n");
				return 2;
			}
			value_given = unit == AGGREGATE_VALUE_SAMPLES;
			break;
		case 'O': so.events = SAMPLER_EVENT_OFF_CPU; break;
		case 'W':
			so.events = SAMPLER_EVENT_OFF_CPU;
			so.off_cpu_wakers = 1;
			break;
		case 'C':
			if (cli_parse_int(optarg, 1, 1000000, &v) < 0) {
				fprintf(stderr,
					"ember record: --off-cpu-captures wants 1..1000000 per second\n");
				return 2;
			}
			so.off_cpu_captures = (uint32_t)v;
			break;
		case 'M':
			if (cli_parse_int(optarg, 1, 60000000, &v) < 0) {
				fprintf(stderr, "ember record: --off-cpu-min wants µs, 1..60000000\n");
				return 2;
			}
			so.off_cpu_min_us = (uint32_t)v;
			break;
		case 'u':
			if (parse_unwind(optarg, &so.unwind) < 0) {
				fprintf(stderr, "ember record: --unwind is dwarf or fp\n");
				return 2;
			}
			break;
		case 'f':
			if (export_parse_format(optarg, &fmt) < 0) {
				fprintf(stderr, "ember record: --format is folded, svg, speedscope or pprof\n");
				return 2;
			}
			fmt_given = 1;
			break;
		case 'k':
			if (cli_parse_int(optarg, 1, RECORD_MAX_KEYS_LIMIT, &v) < 0) {
				fprintf(stderr, "ember record: --max-keys wants 1..%d\n",
					RECORD_MAX_KEYS_LIMIT);
				return 2;
			}
			so.counts_entries = (uint32_t)v;
			break;
		case 'h': record_usage(stdout); return 0;
		default: record_usage(stderr); return 2;
		}
	}
	if (!fmt_given && output)
		fmt = record_format_from_name(output);
	if (so.events == SAMPLER_EVENT_OFF_CPU) {
		if (value_given) {
			fprintf(stderr, "ember record: --off-cpu counts µs blocked, not samples\n");
			return 2;
		}
		unit = AGGREGATE_VALUE_US;
	}
	if ((pid != 0) == (optind < argc)) {
		fprintf(stderr, "ember record: give either -p PID or -- CMD ARGS...\n");
		record_usage(stderr);
		return 2;
	}
	if (pid && (pid = cli_profiler_tgid("ember record", pid)) < 0)
		return 1;
	if (optind < argc) {
		child = record_spawn(argv + optind, &go_fd);
		if (child < 0) {
			fprintf(stderr, "ember record: cannot start %s: %s\n", argv[optind],
				strerror(-child));
			return 1;
		}
		pid = child;
	}
	so.only_tgid = (uint32_t)pid;
	so.follow_children = child != 0; /* a command's children are part of it; -p PID is one */
	if (cli_profiler_open("ember record", &so, &pr) < 0)
		goto out;
	signal(SIGINT, record_on_signal);
	signal(SIGTERM, record_on_signal);
	if (child && write(go_fd, "g", 1) != 1)
		goto out;
	clock_gettime(CLOCK_MONOTONIC, &start);
	while (!record_stop) {
		nanosleep(&tick, NULL);
		sampler_drain(pr.sampler, aggregate_add, pr.agg);
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (duration && now.tv_sec - start.tv_sec >= duration)
			break;
		if (child && waitpid(child, &status, WNOHANG) == child) {
			child_done = 1;
			break;
		}
		if (!child && kill((pid_t)pid, 0) < 0 && errno == ESRCH)
			break;
	}
	sampler_drain(pr.sampler, aggregate_add, pr.agg);
	if (output && !(out = fopen(output, "w"))) {
		fprintf(stderr, "ember record: cannot write %s: %s\n", output, strerror(errno));
		out = stdout;
		goto out;
	}
	if (optind < argc)
		snprintf(title, sizeof(title), "%s", argv[optind]);
	else
		snprintf(title, sizeof(title), "pid %" PRId64, pid);
	if (so.events == SAMPLER_EVENT_OFF_CPU)
		snprintf(title + strlen(title), sizeof(title) - strlen(title), " (off-CPU)");
	if (record_write(pr.agg, fmt, unit, so.frequency, so.events == SAMPLER_EVENT_OFF_CPU, title,
			 out) < 0)
		goto out;
	{
		struct sampler_stats st;

		sampler_get_stats(pr.sampler, &st);
		if (so.events == SAMPLER_EVENT_OFF_CPU)
			record_summary_offcpu(&st, output);
		else
			record_summary(&st, so.frequency, output);
	}
	ret = 0;
out:
	if (out != stdout)
		fclose(out);
	if (go_fd >= 0)
		close(go_fd);
	if (child && !child_done) {
		if (ret != 0 || record_stop)
			kill(child, SIGTERM);
		waitpid(child, &status, 0);
	}
	cli_profiler_close(&pr);
	return ret;
}
