/*
 * agent — the profiling loop of `ember agent` and `ember run`: every second it drains the
 * sampler, turns the samples into the window's rows (aggregate) and hands them to the uploader;
 * every minute it logs a one-line summary (samples, rows, processes, drops, spool, unwind).
 *
 * agent_start() loads the BPF program and returns once sampling runs; the loop has its own
 * thread. agent_stop() ends the loop after a last drain, delivers what it can within a bounded
 * time (the rest stays in the spool when there is one) and frees everything.
 */
#ifndef EMBER_AGENT_AGENT_H
#define EMBER_AGENT_AGENT_H

#include <stddef.h>
#include <stdint.h>

#include "agent/sampler.h"
#include "common/strbuf.h"

struct agent_opts {
	const char *server_url;    /* required */
	int frequency;             /* Hz, default 99 */
	const char *process_regex; /* processes that get full stacks; NULL = all */
	enum sampler_unwind unwind;
	const char *host;          /* default: hostname */
	const char *agent_name;    /* default: "ember-agent@<host>" */
	const char *host_ip;       /* default: "" */
	int org;                   /* X-Org-Id, default 1 */
	const char *spool_dir;     /* NULL: memory only */
	size_t spool_bytes;        /* default 256 MiB */
	size_t mem_bytes;          /* default 16 MiB */
	int summary_interval_s;    /* default 60 */
	int off_cpu;               /* also off-CPU rows: blocked time per stack (sampler.h) */
	uint32_t off_cpu_min_us;   /* shortest block counted; 0 = SAMPLER_OFF_CPU_MIN_US */
	uint32_t off_cpu_captures; /* per CPU and second; 0 = SAMPLER_OFF_CPU_CAPTURES */
	int off_cpu_wakers;        /* off-CPU rows also name who woke the thread (sampler.h) */
};

struct agent;

int agent_start(const struct agent_opts *opts, struct agent **out);
void agent_stop(struct agent *a);
/* Appends the agent's counters (samples, drops, rows, spool, symbols) as Prometheus text.
 * Thread-safe against the agent's loop: counters are read, never reset. */
void agent_write_metrics(struct agent *a, struct strbuf *out);

#endif
