/*
 * agent — see agent.h. One thread; the loop sleeps to the next whole second of the wall clock,
 * so a window is [t, t+1) in unix seconds and its rows carry time = t.
 */
#define LOG_MODULE "agent"
#include "agent/agent.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "agent/aggregate.h"
#include "agent/procinfo.h"
#include "agent/symbolize.h"
#include "agent/unwind.h"
#include "agent/upload.h"
#include "common/log.h"

struct agent {
	struct agent_opts opts;
	char host[256];
	char agent_name[300];
	struct sampler *sampler;
	struct symbolizer *sym;
	struct procinfo *procs;
	struct aggregate *agg;
	struct uploader *up;
	pthread_t thread;
	atomic_int stop;
	uint64_t rows_window, rows_total;
};

static int agent_sink(void *arg, const struct profile_row *rows, size_t n)
{
	struct agent *a = arg;
	int rc;

	a->rows_window += n;
	if (n == 0)
		return 0;
	rc = upload_submit(a->up, rows, n);
	if (rc < 0)
		log_warn("could not queue %zu rows: %s", n, strerror(-rc));
	return 0;
}

/* Unwind quality since start: how DWARF walks ended (src/bpf/unwind.h), and the tables. */
static void agent_summary_unwind(const struct sampler_stats *ss)
{
	uint64_t walks = 0;
	char reasons[256];
	size_t o = 0;

	for (unsigned r = 0; r < SAMPLER_UNW_REASONS && r < UNW_REASON_COUNT; r++) {
		walks += ss->unwind_reasons[r];
		if (r && ss->unwind_reasons[r] && o < sizeof(reasons))
			o += (size_t)snprintf(reasons + o, sizeof(reasons) - o, " %s %" PRIu64,
					      unw_reason_name(r), ss->unwind_reasons[r]);
	}
	if (!walks)
		return;
	reasons[o < sizeof(reasons) ? o : sizeof(reasons) - 1] = '\0';
	log_info("unwind: %.1f%% of %" PRIu64 " user stacks complete; stopped:%s; tables %" PRIu64
		 " objects %.1f/%.0f MiB for %" PRIu64 " processes (built %" PRIu64 " in %.0f ms, "
		 "failed %" PRIu64 ", full %" PRIu64 "/%" PRIu64 "); events %" PRIu64 " lost %" PRIu64
		 "; overflow samples %" PRIu64 " lost %" PRIu64,
		 100.0 * (double)ss->unwind_reasons[UNW_REASON_COMPLETE] / (double)walks, walks,
		 o ? reasons : " none", ss->unwind_objects,
		 (double)ss->unwind_slots_used * 8 / (1 << 20),
		 (double)ss->unwind_slots_max * 8 / (1 << 20), ss->unwind_procs,
		 ss->unwind_tables_built, (double)ss->unwind_build_ns / 1e6,
		 ss->unwind_table_failures, ss->unwind_slots_full, ss->unwind_procs_full,
		 ss->unwind_events, ss->unwind_events_lost, ss->overflow_samples, ss->overflow_lost);
}

static void agent_summary(struct agent *a)
{
	struct sampler_stats ss;
	struct aggregate_stats as;
	struct upload_stats us;
	struct sym_stats ys;

	sampler_get_stats(a->sampler, &ss);
	aggregate_get_stats(a->agg, &as);
	upload_get_stats(a->up, &us);
	sym_get_stats(a->sym, &ys);
	log_info("samples %" PRIu64 ", rows %" PRIu64 " (sent %" PRIu64 "), drops: samples %" PRIu64
		 " map-full %" PRIu64 " collisions %" PRIu64 " rows %" PRIu64
		 ", spool %" PRIu64 " batches %" PRIu64 " bytes, server %s, symbol files %" PRIu64
		 ", unknown frames %" PRIu64 "/%" PRIu64 ", bpf %.2f us/sample",
		 ss.samples, a->rows_total, us.rows_sent, as.samples_dropped, ss.map_full_drops,
		 ss.stack_collisions, us.rows_dropped, us.queued_batches + us.spooled_batches,
		 us.queued_bytes + us.spooled_bytes, us.server_ok ? "ok" : "unreachable",
		 ys.files_loaded, ys.frames_unknown, ys.frames,
		 ss.bpf_run_cnt ? (double)ss.bpf_run_ns / (double)ss.bpf_run_cnt / 1000.0 : 0.0);
	if (a->opts.off_cpu)
		log_info("off-CPU: %" PRIu64 " blocks counted (%" PRIu64 " without stacks: capture "
			 "budget), %" PRIu64 " not followed; bpf %.2f us per context switch",
			 ss.offcpu_blocks, ss.offcpu_skipped, ss.offcpu_nostore,
			 ss.offcpu_bpf_run_cnt
			     ? (double)ss.offcpu_bpf_run_ns / (double)ss.offcpu_bpf_run_cnt / 1000.0
			     : 0.0);
	if (a->opts.off_cpu_wakers)
		log_info("off-CPU wakers: %" PRIu64 " taken, %" PRIu64 " not (capture budget)",
			 ss.offcpu_wakers, ss.offcpu_wakers_skipped);
	agent_summary_unwind(&ss);
}

static void *agent_loop(void *arg)
{
	struct agent *a = arg;
	struct timespec now, next;
	int64_t last_summary;

	clock_gettime(CLOCK_REALTIME, &now);
	last_summary = now.tv_sec;
	while (!atomic_load(&a->stop)) {
		int64_t window;

		next.tv_sec = now.tv_sec + 1;
		next.tv_nsec = 0;
		while (clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME, &next, NULL) == EINTR)
			;
		window = next.tv_sec - 1;
		sampler_drain(a->sampler, aggregate_add, a->agg);
		a->rows_window = 0;
		aggregate_flush(a->agg, window, agent_sink, a);
		a->rows_total += a->rows_window;
		clock_gettime(CLOCK_REALTIME, &now);
		if (now.tv_sec - last_summary >= a->opts.summary_interval_s) {
			agent_summary(a);
			last_summary = now.tv_sec;
		}
	}
	/* The last partial window. */
	clock_gettime(CLOCK_REALTIME, &now);
	sampler_drain(a->sampler, aggregate_add, a->agg);
	aggregate_flush(a->agg, now.tv_sec, agent_sink, a);
	return NULL;
}

int agent_start(const struct agent_opts *opts, struct agent **out)
{
	struct agent *a;
	struct sampler_opts so = {0};
	struct sym_opts yo = {0};
	struct aggregate_opts ao = {0};
	struct upload_opts uo = {0};
	int rc;

	*out = NULL;
	a = calloc(1, sizeof(*a));
	if (!a)
		return -ENOMEM;
	a->opts = *opts;
	if (!a->opts.frequency)
		a->opts.frequency = 99;
	if (a->opts.summary_interval_s <= 0)
		a->opts.summary_interval_s = 60;
	if (opts->host && *opts->host)
		snprintf(a->host, sizeof(a->host), "%s", opts->host);
	else if (gethostname(a->host, sizeof(a->host) - 1) < 0)
		snprintf(a->host, sizeof(a->host), "localhost");
	if (opts->agent_name && *opts->agent_name)
		snprintf(a->agent_name, sizeof(a->agent_name), "%s", opts->agent_name);
	else
		snprintf(a->agent_name, sizeof(a->agent_name), "ember-agent@%s", a->host);

	rc = sym_open(&yo, &a->sym);
	if (rc == 0)
		rc = procinfo_open(0, NULL, &a->procs);
	if (rc < 0) {
		log_error("cannot set up symbolization: %s", strerror(-rc));
		goto fail;
	}
	ao.frequency = a->opts.frequency;
	ao.process_regex = opts->process_regex;
	ao.host = a->host;
	ao.agent = a->agent_name;
	ao.host_ip = opts->host_ip;
	ao.sym = a->sym;
	ao.procs = a->procs;
	rc = aggregate_new(&ao, &a->agg);
	if (rc < 0)
		goto fail;
	uo.server_url = opts->server_url;
	uo.host = a->host;
	uo.agent = a->agent_name;
	uo.host_ip = opts->host_ip;
	uo.org = opts->org ? opts->org : 1;
	uo.mem_bytes = opts->mem_bytes;
	uo.spool_dir = opts->spool_dir;
	uo.spool_bytes = opts->spool_bytes;
	rc = upload_open(&uo, &a->up);
	if (rc < 0) {
		log_error("cannot start the uploader to %s: %s", opts->server_url, strerror(-rc));
		goto fail;
	}
	so.frequency = a->opts.frequency;
	so.unwind = opts->unwind;
	so.flush_seconds = 1;
	so.events = SAMPLER_EVENT_ON_CPU | (opts->off_cpu ? SAMPLER_EVENT_OFF_CPU : 0);
	so.off_cpu_min_us = opts->off_cpu_min_us;
	so.off_cpu_captures = opts->off_cpu_captures;
	so.off_cpu_wakers = opts->off_cpu_wakers;
	rc = sampler_open(&so, &a->sampler);
	if (rc < 0) {
		log_error("cannot start sampling: %s (ember needs root and a kernel with BPF, BTF "
			  "and perf events)", strerror(-rc));
		goto fail;
	}
	rc = pthread_create(&a->thread, NULL, agent_loop, a);
	if (rc) {
		rc = -rc;
		goto fail;
	}
	pthread_setname_np(a->thread, "ember-drain");
	log_info("profiling this host at %d Hz (%s unwinding)%s, sending to %s", a->opts.frequency,
		 opts->unwind == SAMPLER_UNWIND_DWARF ? "dwarf" : "frame-pointer",
		 opts->off_cpu ? " and off-CPU" : "", opts->server_url);
	*out = a;
	return 0;
fail:
	sampler_close(a->sampler);
	upload_close(a->up);
	aggregate_free(a->agg);
	procinfo_close(a->procs);
	sym_close(a->sym);
	free(a);
	return rc;
}

void agent_stop(struct agent *a)
{
	if (!a)
		return;
	atomic_store(&a->stop, 1);
	pthread_join(a->thread, NULL);
	agent_summary(a);
	sampler_close(a->sampler);
	if (upload_flush(a->up, 5.0) < 0)
		log_warn("rows still undelivered at shutdown%s",
			 a->opts.spool_dir ? "; they stay in the spool" : " are lost (no --spool-dir)");
	upload_close(a->up);
	aggregate_free(a->agg);
	procinfo_close(a->procs);
	sym_close(a->sym);
	free(a);
}

void agent_write_metrics(struct agent *a, struct strbuf *out)
{
	struct sampler_stats ss;
	struct upload_stats us;

	/* Sampler and uploader counters are safe to read from another thread; the aggregator's
	 * and symbolizer's belong to the loop thread and are left to the minute summary. */
	sampler_get_stats(a->sampler, &ss);
	upload_get_stats(a->up, &us);
	sb_printf(out,
		  "# HELP ember_agent_samples_total Samples taken by the BPF program.\n"
		  "# TYPE ember_agent_samples_total counter\n"
		  "ember_agent_samples_total %" PRIu64 "\n"
		  "# HELP ember_agent_samples_dropped_total Samples lost, by reason.\n"
		  "# TYPE ember_agent_samples_dropped_total counter\n"
		  "ember_agent_samples_dropped_total %" PRIu64 "\n"
		  "# HELP ember_agent_samples_overflow_total Samples sent via the overflow ring "
		  "(not lost).\n"
		  "ember_agent_samples_overflow_total %" PRIu64 "\n"
		  "ember_agent_stack_collisions_total %" PRIu64 "\n"
		  "# HELP ember_agent_bpf_run_seconds_total BPF program run time (bpf_stats).\n"
		  "# TYPE ember_agent_bpf_run_seconds_total counter\n"
		  "ember_agent_bpf_run_seconds_total %.9f\n"
		  "ember_agent_bpf_runs_total %" PRIu64 "\n"
		  "ember_agent_rows_sent_total %" PRIu64 "\n"
		  "ember_agent_rows_dropped_total %" PRIu64 "\n"
		  "ember_agent_upload_retries_total %" PRIu64 "\n"
		  "ember_agent_spool_bytes %" PRIu64 "\n"
		  "ember_agent_server_up %d\n"
		  "# HELP ember_agent_offcpu_blocks_total Off-CPU blocks counted.\n"
		  "# TYPE ember_agent_offcpu_blocks_total counter\n"
		  "ember_agent_offcpu_blocks_total %" PRIu64 "\n"
		  "# HELP ember_agent_offcpu_blocks_unstacked_total Off-CPU blocks counted without "
		  "stacks (capture budget).\n"
		  "ember_agent_offcpu_blocks_unstacked_total %" PRIu64 "\n"
		  "ember_agent_offcpu_bpf_run_seconds_total %.9f\n"
		  "ember_agent_offcpu_bpf_runs_total %" PRIu64 "\n"
		  "# HELP ember_agent_offcpu_wakers_total Wakers taken (--off-cpu-wakers).\n"
		  "# TYPE ember_agent_offcpu_wakers_total counter\n"
		  "ember_agent_offcpu_wakers_total %" PRIu64 "\n"
		  "# HELP ember_agent_offcpu_wakers_skipped_total Wakers not taken: their budget.\n"
		  "# TYPE ember_agent_offcpu_wakers_skipped_total counter\n"
		  "ember_agent_offcpu_wakers_skipped_total %" PRIu64 "\n",
		  ss.samples, ss.lost, ss.overflow_samples, ss.stack_collisions,
		  (double)ss.bpf_run_ns / 1e9, ss.bpf_run_cnt, us.rows_sent, us.rows_dropped,
		  us.retries, us.queued_bytes + us.spooled_bytes, us.server_ok, ss.offcpu_blocks,
		  ss.offcpu_skipped, (double)ss.offcpu_bpf_run_ns / 1e9, ss.offcpu_bpf_run_cnt,
		  ss.offcpu_wakers, ss.offcpu_wakers_skipped);
}
