/*
 * unwind — the user-stack walker in plain C, the same algorithm the BPF program runs
 * (design/dwarf-unwinding.md §2.4), so tables and rules can be checked without BPF.
 *
 * Input: registers {ip, sp, bp} of the sampled thread, a memory-read callback (the live process,
 * or a captured stack copy when replaying perf.data), the process's mapping list (struct
 * unw_proc, sorted) and the slot array that holds every table (struct unw_arena). Output: up to
 * UNW_MAX_FRAMES pcs, leaf first, and the reason the walk ended (enum unw_reason).
 *
 * Port rule: unw_walk is a bounded loop of unw_step calls; unw_step has no recursion, its loops
 * are bounded by UNW_MAPPING_STEPS and UNW_ROW_STEPS, every slot index is range-checked, and it
 * keeps all state in struct unw_state. A bpf_loop callback can be written line by line from it.
 *
 * Threading: no globals. An arena or a proc list is written by one thread; walks only read.
 */
#ifndef EMBER_AGENT_UNWIND_H
#define EMBER_AGENT_UNWIND_H

#include <stdint.h>

#include "bpf/unwind.h"

#define UNW_ARENA_MAX_SLOTS (4u << 20) /* 32 MiB of tables, the BPF global array's default */

/* Reads the 8-byte word at addr into *val; returns 0, or a negative errno when unreadable. */
typedef int (*unw_read_fn)(void *arg, uint64_t addr, uint64_t *val);

struct unw_regs {
	uint64_t ip, sp, bp;
};

/* The table slots of every object, as they will sit in the BPF global ARRAY. */
struct unw_arena {
	uint64_t *slots;
	uint32_t n_slots, cap;
};

struct unw_env {
	const struct unw_arena *arena;
	const struct unw_proc *proc;
	unw_read_fn read;
	void *read_arg;
};

struct unw_stack {
	uint32_t n;	 /* frames in ips */
	uint32_t reason; /* enum unw_reason */
	uint64_t ips[UNW_MAX_FRAMES];
};

/* Walk state; the BPF side keeps it in a per-CPU array. */
struct unw_state {
	uint64_t pc, sp, bp;
	uint8_t bp_known; /* bp holds the frame's rbp (not lost to an unencoded save rule) */
	uint8_t exact;	  /* pc is exact (leaf, or resumed after a signal frame): no -1 */
	uint32_t reason;
	struct unw_stack *out;
};

/* Walks one stack. Always fills out (at least the leaf pc); returns out->n. */
int unw_walk(const struct unw_env *env, const struct unw_regs *regs, struct unw_stack *out);
/* One frame: pushes st->pc and moves to the caller. Returns 1 when the walk ends (reason set). */
int unw_step(const struct unw_env *env, struct unw_state *st);

const char *unw_reason_name(unsigned reason);

/* The mapping containing pc (binary search, ≤ UNW_MAPPING_STEPS), or NULL. */
const struct unw_mapping *unw_proc_find(const struct unw_proc *p, uint64_t pc);
/*
 * Inserts m keeping the list sorted; mappings it overlaps are cut or dropped, as mmap does.
 * -ENOSPC when the list would exceed UNW_MAX_MAPPINGS, -EINVAL for an empty range.
 */
int unw_proc_insert(struct unw_proc *p, const struct unw_mapping *m);

/* Appends a table image; *base is the slot index to put in unw_mapping.table_base. */
int unw_arena_add(struct unw_arena *a, const uint64_t *slots, uint32_t n_slots, uint32_t *base);
void unw_arena_free(struct unw_arena *a);

#endif
