/*
 * sampler — the kernel side of on-CPU profiling: loads src/bpf/oncpu.bpf.c, opens one
 * software cpu-clock perf event per online CPU at the chosen frequency (all tasks, idle
 * excluded; with only_tgid one per thread of that process instead, inherited by what it
 * creates), and drains the counts the BPF program aggregates in the kernel.
 *
 * Counts live in two map sets (A/B), each a counts map with a small per-CPU counts cache in
 * front of it. sampler_drain() flips the set BPF writes to, waits for programs still running on
 * the old set, reads and deletes every entry of the old set's map and cache, and hands each one
 * to the callback (one key may come twice, from the map and a cache: callers add counts up).
 * No sample is lost or counted twice across flips.
 *
 * The user stack has one seam: sample_rec.uframes are either raw addresses from a
 * frame-pointer walk (unwind = SAMPLER_UNWIND_FP) or from the DWARF walk in BPF
 * (SAMPLER_UNWIND_DWARF, the default of the CLI; ustack_reason then says how the walk ended).
 * DWARF stacks come with uframes_encoded = 1: a frame inside an object with a table is
 * UNW_FRAME_ENCODED | object id << 40 | ELF virtual address (src/bpf/unwind.h), so it outlives
 * its process; resolve_object names the object (sym_append_user_encoded()); other frames (JIT,
 * anonymous code) stay raw addresses.
 *
 * DWARF unwinding keeps tables and mapping lists in BPF maps through src/agent/unwinder.c: all
 * processes (or only_tgid) are scanned at open by a builder thread (low priority), which then
 * builds the tables scans queue; an event thread follows exec, exit and unknown-address events
 * from BPF. Both sleep until there is work (epoll / a condvar), never poll. When a counts map is
 * full the sample goes through an overflow ring buffer and is delivered by the next drain.
 *
 * Off-CPU (events with SAMPLER_EVENT_OFF_CPU): a program on every context switch captures the
 * stacks of a thread that blocks and, when it runs again, counts the microseconds it was blocked
 * under them (src/bpf/oncpu.bpf.c); those keys come through the same drain with event
 * SAMPLE_OFF_CPU and count = µs. Without SAMPLER_EVENT_ON_CPU no perf event is opened.
 *
 * Threading: one thread owns a sampler (the event thread is internal). Map sizes are set from
 * frequency × CPUs before load.
 */
#ifndef EMBER_AGENT_SAMPLER_H
#define EMBER_AGENT_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

#include "agent/symbolize.h"

#define SAMPLER_MAX_FRAMES 127

enum sampler_unwind { SAMPLER_UNWIND_FP, SAMPLER_UNWIND_DWARF };

struct sampler_opts {
	int frequency;                /* Hz, 1..1000, default 99 */
	enum sampler_unwind unwind;
	uint32_t only_tgid;           /* 0: all processes; else this process (ember record -p) */
	int follow_children;          /* with only_tgid: also the processes it forks, recursively
				       * (ember record -- CMD); threads are always included */
	double flush_seconds;         /* expected drain period, sizes the maps; default 1 */
	uint32_t counts_entries;      /* distinct keys per drain period; 0: sized from frequency ×
				       * CPUs × flush_seconds (samples beyond are counted, lost) */
	int caches_off;               /* SAMPLER_CACHE_* bits: per-CPU caches the BPF program goes
				       * without, for same-run comparisons (bench/unwind_run) */
	unsigned events;              /* SAMPLER_EVENT_* bits; 0 = on-CPU only */
	uint32_t off_cpu_min_us;      /* shortest block counted off-CPU; 0 = 50 µs */
	uint32_t off_cpu_captures;    /* blocks whose stacks one CPU captures per second; 0 = 1000 */
	int off_cpu_wakers;           /* off-CPU: also the kernel stack and comm of each waker */
};

#define SAMPLER_EVENT_ON_CPU 1  /* cpu-clock samples */
#define SAMPLER_EVENT_OFF_CPU 2 /* blocked time at context switches */
#define SAMPLER_OFF_CPU_MIN_US 50
#define SAMPLER_OFF_CPU_CAPTURES 1000

#define SAMPLER_CACHE_COUNTS 1 /* the counts cache in front of the counts map (profile.h) */
#define SAMPLER_CACHE_RULES 2  /* the DWARF walk's rule cache (oncpu.bpf.c) */

enum sample_event { SAMPLE_ON_CPU = 0, SAMPLE_OFF_CPU = 1 };

/* One aggregated key of one drain period. Pointers are valid during the callback only. */
struct sample_rec {
	uint32_t tgid;
	uint32_t tid;
	char comm[16];        /* the sampled thread's comm */
	enum sample_event event;
	uint64_t count;       /* on-CPU: samples; off-CPU: microseconds blocked */
	int stacks_skipped;   /* off-CPU: no stacks were captured (the per-CPU budget) */
	int uninterruptible;  /* off-CPU: blocked in TASK_UNINTERRUPTIBLE ("D"), else a sleep */
	uint32_t n_kframes;   /* 0 when the sample had no kernel stack */
	const uint64_t *kframes; /* innermost first; off-CPU: from inside the scheduler's
				  * tracepoint (sym_append_kernel_blocked() trims it) */
	uint32_t n_uframes;   /* 0 for kernel threads */
	const uint64_t *uframes; /* leaf first */
	int uframes_encoded;  /* 0: raw addresses; 1: UNW_FRAME_ENCODED frames possible */
	sym_object_fn resolve_object; /* uframes_encoded: object id → file; NULL otherwise */
	void *resolve_arg;
	int ustack_error;     /* negative errno from the user stack walk, 0 if fine */
	int kstack_error;     /* negative errno from the kernel stack walk; 0 if fine or if the
			       * sample hit user mode (no kernel stack is not an error) */
	uint32_t ustack_reason; /* DWARF walk: enum unw_reason + 1 (1 = complete); 0 for frame
				 * pointers or no user stack */
	uint32_t n_wframes;   /* off-CPU with wakers: the waker's kernel frames, 0 if unknown */
	const uint64_t *wframes; /* innermost first, from inside try_to_wake_up's tracepoint */
	char waker_comm[16];  /* the task that ran the wake-up (or that an interrupt found) */
};

#define SAMPLER_UNW_REASONS 8 /* ≥ UNW_REASON_COUNT (src/bpf/unwind.h) */

struct sampler_stats {
	uint64_t samples;         /* seen by BPF */
	uint64_t idle_skipped;
	uint64_t kstack_errors;   /* other than -EFAULT */
	uint64_t ustack_errors;
	uint64_t stack_collisions; /* -EEXIST from bpf_get_stackid */
	uint64_t map_full_drops;   /* counts map full */
	uint64_t lost;             /* samples that reached no map at all */
	uint64_t drains;
	uint64_t bpf_run_ns;       /* from bpf_enable_stats, 0 if unavailable */
	uint64_t bpf_run_cnt;
	uint64_t drain_mismatch;   /* |BPF-counted - drained| samples: must stay 0 */
	uint64_t last_drain_ns;    /* wall time of the last sampler_drain(), callbacks included */
	uint64_t overflow_samples; /* counts map full: delivered through the overflow ring buffer */
	uint64_t overflow_lost;    /* ... that ring buffer was full too (also in lost) */
	/* DWARF unwinding (all 0 with frame pointers) */
	uint64_t unwind_reasons[SAMPLER_UNW_REASONS]; /* walks per enum unw_reason */
	uint64_t unwind_events, unwind_events_lost;   /* exec/exit/unknown events from BPF */
	uint64_t unwind_procs, unwind_objects;        /* mapping lists and tables held now */
	uint64_t unwind_slots_used, unwind_slots_max; /* 8-byte table slots */
	uint64_t unwind_tables_built, unwind_table_failures, unwind_build_ns, unwind_scans;
	uint64_t unwind_slots_full, unwind_procs_full;
	/* off-CPU (all 0 without SAMPLER_EVENT_OFF_CPU) */
	uint64_t offcpu_blocks;	      /* blocks counted */
	uint64_t offcpu_skipped;      /* ... of which without stacks (capture budget) */
	uint64_t offcpu_nostore;      /* blocks not followed: no task storage */
	uint64_t offcpu_wakers;       /* wakers whose stacks were taken */
	uint64_t offcpu_wakers_skipped; /* ... and not: the capture budget, no storage */
	uint64_t offcpu_bpf_run_ns;   /* the context-switch program's bpf_stats (+ the wake-up
				       * program's time with wakers) */
	uint64_t offcpu_bpf_run_cnt;
};

struct sampler;

typedef void (*sampler_cb)(void *arg, const struct sample_rec *rec);

int sampler_open(const struct sampler_opts *opts, struct sampler **out);
/* Flips the map sets and calls cb for every entry of the set that was active. */
int sampler_drain(struct sampler *s, sampler_cb cb, void *arg);
void sampler_get_stats(struct sampler *s, struct sampler_stats *st);
/* Nanoseconds to add to a bpf_ktime_get_ns() value to get unix time. */
int64_t sampler_boot_offset_ns(void);
void sampler_close(struct sampler *s);

/* Parses a kernel CPU list ("0-3,5\n") into online[0..n); returns the CPU count or -errno.
 * Exposed for tests. */
int sampler_parse_cpu_list(const char *text, unsigned char *online, size_t n);

#endif
