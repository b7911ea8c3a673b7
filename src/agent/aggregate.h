/*
 * aggregate — drained on-CPU samples (sampler.h) to rows of profile.in_process (row.h), one
 * 1-second window at a time, following DeepFlow's rules (DESIGN.md "Folded stacks and frame
 * labels", spec/deepflow-behaviour.md §4.4–4.5):
 *
 *  - every sample of a process whose comm matches the process regex (all processes when there
 *    is none) becomes a row keyed by (tgid, folded stack): "[p] <thread comm>" on the main
 *    thread or "[t] <thread comm>" on another, user frames outermost → leaf, kernel frames
 *    outermost → innermost. Threads of the same name merge. app_service = the process's comm;
 *  - every sample of every process also feeds a "Total" row: "[p] <process comm>" (main
 *    thread) or "[p] <process comm>;[t] <thread comm>", process_id 0; equal Total strings of
 *    different processes merge (process_id is 0 anyway);
 *  - value = samples × ⌊10⁶ / frequency⌋ µs (10101 at 99 Hz);
 *  - off-CPU records (sample_rec.event) become "off-cpu" rows the same way, value = µs blocked,
 *    without Total rows; a thread's µs beyond one second are cut into one-second rows going
 *    back in time (time - 1, time - 2, ...: a long block's time where it was spent, as
 *    DeepFlow's ingester splits off-CPU rows); their kernel frames start at the scheduler;
 *  - with DWARF unwinding, every stack row of a process carries the custom tag
 *    AGGREGATE_TAG_UNWIND_COMPLETE = "000".."100": ⌊100 × complete walks / walks⌋ of that
 *    process in the window, three digits so string comparisons order it ("100" only when
 *    every walk reached the entry point). Total rows and frame-pointer rows have none;
 *  - every off-CPU row carries AGGREGATE_TAG_OFFCPU_STATE = "S" (its threads slept:
 *    TASK_INTERRUPTIBLE) or "D" (uninterruptible: disk I/O, some locks, a vfork parent), one
 *    row per state when a stack has both.
 *
 * Rows are bounded: at most max_rows distinct rows per window; samples that would need another
 * row are dropped and counted. aggregate_flush() hands the window's rows to a sink as one array;
 * the rows and their strings stay valid until the next aggregate_flush() or aggregate_free().
 *
 * A flush also tells the symbolizer and procinfo to forget processes that exited, one window
 * late (their last samples may come with the next drain).
 *
 * For `ember record` the same aggregator runs without windows: aggregate_write_folded() writes
 * "<process comm>;<stack> <value>\n" lines (Total rows left out; processes of one name merged,
 * as under one app_service), value in samples by default (the flamegraph.pl convention) or in µs.
 *
 * Threading: one thread uses an aggregator. The symbolizer and procinfo cache are borrowed.
 */
#ifndef EMBER_AGENT_AGGREGATE_H
#define EMBER_AGENT_AGGREGATE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "agent/procinfo.h"
#include "agent/sampler.h"
#include "agent/symbolize.h"
#include "common/row.h"
#include "common/strbuf.h"

#define AGGREGATE_DEFAULT_MAX_ROWS 100000
#define AGGREGATE_TAG_UNWIND_COMPLETE "ember.unwind.complete_pct"
#define AGGREGATE_TAG_OFFCPU_STATE "ember.offcpu.state"
/* Off-CPU rows are cut into pieces of at most this (one second), at most this many. */
#define AGGREGATE_OFFCPU_SPLIT_US 1000000u
#define AGGREGATE_OFFCPU_MAX_SPLITS 4000u
/* The frame of an off-CPU row whose stacks were not captured (the per-CPU capture budget). */
#define AGGREGATE_FRAME_NOT_CAPTURED "[stacks not captured]"

struct aggregate_opts {
	int frequency;		   /* Hz the sampler runs at; sets the µs per sample */
	const char *process_regex; /* POSIX ERE, unanchored, on the process comm; NULL = all */
	size_t max_rows; /* distinct rows per window, default AGGREGATE_DEFAULT_MAX_ROWS */
	const char *host, *agent, *host_ip; /* copied; NULL = "" */
	struct symbolizer *sym;		    /* borrowed */
	struct procinfo *procs;		    /* borrowed */
};

struct aggregate_stats {
	uint64_t samples;	  /* samples added */
	uint64_t samples_dropped; /* samples of rows over max_rows */
	uint64_t rows_dropped;	  /* distinct rows refused over max_rows */
	uint64_t rows_flushed;
	uint64_t ustack_errors; /* samples whose user stack could not be read */
	uint64_t kstack_errors;
};

enum aggregate_value { AGGREGATE_VALUE_SAMPLES, AGGREGATE_VALUE_US };

struct aggregate;

/* Returns 0 or -EINVAL (bad regex or frequency, logged) / -ENOMEM. */
int aggregate_new(const struct aggregate_opts *opts, struct aggregate **out);
void aggregate_free(struct aggregate *agg);

/* A sampler_cb: arg is the struct aggregate. */
void aggregate_add(void *agg, const struct sample_rec *rec);

typedef int (*aggregate_sink_fn)(void *arg, const struct profile_row *rows, size_t n);
/*
 * Ends the window that started at window_start (unix seconds): calls sink once with every row
 * (also when there are none, n = 0) and starts an empty window. Returns the sink's result.
 */
int aggregate_flush(struct aggregate *agg, int64_t window_start, aggregate_sink_fn sink, void *arg);
/* Writes the rows accumulated so far as folded text, sorted; does not reset. 0 or -errno. */
int aggregate_write_folded(struct aggregate *agg, FILE *out, enum aggregate_value unit);
void aggregate_get_stats(struct aggregate *agg, struct aggregate_stats *st);

/*
 * Building blocks, exposed for tests. The process comm used for app_service and Total (procinfo,
 * else the sampled comm); the folded stack of a sample, appended to out.
 */
void aggregate_process_comm(struct aggregate *agg, const struct sample_rec *rec, char comm[16]);
void aggregate_build_stack(struct aggregate *agg, const struct sample_rec *rec, struct strbuf *out);

#endif
