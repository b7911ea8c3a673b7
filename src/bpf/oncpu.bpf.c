// SPDX-License-Identifier: GPL-2.0
/*
 * oncpu — on-CPU sampling: runs on every software cpu-clock perf event (one per CPU, opened by
 * src/agent/sampler.c) and counts (process, thread, kernel stack, user stack) IN THE KERNEL, so
 * user space reads one entry per distinct stack instead of one record per sample.
 *
 * Two map sets, A and B: `active_set` (.bss, written by user space through the skeleton's mmap)
 * selects the set this program writes. User space flips it, waits for programs still running on
 * the old set (an RCU grace period, see sampler.c), then drains and clears the old set at leisure.
 *
 * Kernel stacks come from bpf_get_stackid(). No BPF_F_REUSE_STACKID: a bucket collision returns
 * -EEXIST, which is counted and leaves the sample with an error stack rather than silently
 * pointing it at another stack. User stacks (frame pointers) come from bpf_get_stack() into a
 * per-CPU scratch buffer, are hashed to 64 bits and stored once per hash in ustacks_<set>, a
 * plain HASH map, so distinct stacks never collide (see profile.h).
 *
 * With unwind_dwarf set, user stacks come instead from a DWARF walk over .eh_frame tables
 * (design/dwarf-unwinding.md §2.3-2.5, the plain-C twin is src/agent/unwind.c): tables live in
 * one global ARRAY of 8-byte slots (unw_slots), each process's sorted executable mappings in
 * unw_procs; the walk is one bpf_loop of up to UNW_MAX_FRAMES steps, and its stop reason is
 * counted per CPU. Exec, exit and samples at unknown addresses send unw_event records so user
 * space keeps unw_procs current. A sample whose counts map is full goes whole to the overflow
 * ring buffer instead of being lost.
 *
 * In front of each set's counts map sits a per-CPU counts cache (profile.h): a sample whose key
 * is cached costs one cache line of one page instead of the ustacks and counts map operations.
 * The walk keeps a per-CPU rule cache (unw_rcache below): a return address seen before, or a leaf
 * inside the row of the last leaf, costs one line instead of the mapping list's and the table's
 * lookups.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#include "profile.h"
#include "unwind.h"

#define ENOENT 2
#define E2BIG 7
#define ENOMEM 12
#define EFAULT 14
#define EEXIST 17
#define TASK_INTERRUPTIBLE 0x1
#define TASK_UNINTERRUPTIBLE 0x2
#define TASK_NOLOAD 0x400 /* with UNINTERRUPTIBLE: TASK_IDLE, "I" in ps, not "D" */

char LICENSE[] SEC("license") = "GPL";

/* 0: every process; else only this tgid (ember record -p). Set before load. */
const volatile __u32 targ_tgid = 0;
/* 1: also every process targ_tgid forks, and theirs (ember record -- CMD): tracked in followed
 * by oncpu_fork. Set before load. */
const volatile __u32 follow_children = 0;

/* 1: user stacks by the DWARF walk; 0: frame pointers (bpf_get_stack). Set before load. */
const volatile __u32 unwind_dwarf = 0;
/* 1: the DWARF walk looks return addresses up in the per-CPU rule cache first. Set before load. */
const volatile __u32 rcache_on = 1;
/* Minimum interval between two UNW_EVENT_UNKNOWN events of one process. */
const volatile __u64 unknown_interval_ns = 200000000ull;
/* ... in its first unknown_young_ns after exec (or fork): ld.so maps the libraries after the
 * exec, and each is outside the list until user space rescans, so the start-up window is as
 * short as this interval (a JIT process's first second costs ~100 events). */
const volatile __u64 unknown_young_ns = 1000000000ull;
const volatile __u64 unknown_young_interval_ns = 10000000ull;

/* Entries of each CPU's counts cache in use: a power of two ≤ PROFILE_CCACHE_ENTRIES, or 0 for
 * no cache (profile.h). Set before load. */
const volatile __u32 ccache_entries = 0;

/* The set samples go to, 0 (A) or 1 (B). Written by user space only. */
__u32 active_set = 0;

#define PROFILE_KSTACK_MAP(name)                                                                   \
	struct {                                                                                   \
		__uint(type, BPF_MAP_TYPE_STACK_TRACE);                                            \
		__uint(max_entries, PROFILE_STACK_MAP_DEFAULT);                                    \
		__type(key, __u32);                                                                \
		__uint(value_size, sizeof(struct profile_stack));                                  \
	} name SEC(".maps")

#define PROFILE_USTACK_MAP(name)                                                                   \
	struct {                                                                                   \
		__uint(type, BPF_MAP_TYPE_HASH);                                                   \
		__uint(max_entries, PROFILE_STACK_MAP_DEFAULT);                                    \
		__type(key, __u64);                                                                \
		__type(value, struct profile_stack);                                               \
	} name SEC(".maps")

#define PROFILE_COUNTS_MAP(name)                                                                   \
	struct {                                                                                   \
		__uint(type, BPF_MAP_TYPE_HASH);                                                   \
		__uint(max_entries, PROFILE_COUNTS_MAP_DEFAULT);                                   \
		__type(key, struct profile_key);                                                   \
		__type(value, __u64);                                                              \
	} name SEC(".maps")

PROFILE_KSTACK_MAP(kstacks_a);
PROFILE_KSTACK_MAP(kstacks_b);
PROFILE_USTACK_MAP(ustacks_a);
PROFILE_USTACK_MAP(ustacks_b);
PROFILE_COUNTS_MAP(counts_a);
PROFILE_COUNTS_MAP(counts_b);

#define PROFILE_CCACHE_MAP(name)                                                                   \
	struct {                                                                                   \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);                                           \
		__uint(max_entries, 1);                                                            \
		__type(key, __u32);                                                                \
		__type(value, struct profile_ccache);                                              \
	} name SEC(".maps")

PROFILE_CCACHE_MAP(ccache_a);
PROFILE_CCACHE_MAP(ccache_b);

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PROFILE_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* Where bpf_get_stack() writes the user stack before it is hashed and stored. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct profile_stack);
} ustack_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, PROFILE_OVERFLOW_RB_DEFAULT);
} overflow SEC(".maps");

/* Descendants of targ_tgid (with follow_children): tgid → 1, added at fork, removed at exit.
 * Bounded: a fork beyond PROFILE_FOLLOW_MAX live descendants is not followed. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PROFILE_FOLLOW_MAX);
	__type(key, __u32);
	__type(value, __u8);
} followed SEC(".maps");

/* The tgid filter of every program: all processes, targ_tgid, or targ_tgid's descendants. */
static __always_inline int tgid_wanted(__u32 tgid)
{
	if (!targ_tgid || tgid == targ_tgid)
		return 1;
	return follow_children && tgid && bpf_map_lookup_elem(&followed, &tgid);
}

/* DWARF tables: every object's slot image (src/bpf/unwind.h), placed by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} unw_slots SEC(".maps");

/* tgid → sorted executable mappings. No prealloc: a replaced value is freed after RCU. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct unw_proc);
} unw_procs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, PROFILE_UNW_EVENTS_RB_DEFAULT);
} unw_events SEC(".maps");

/* tgid → its last UNW_EVENT_UNKNOWN and its last exec (rate limit). */
struct unw_unknown_state {
	__u64 last_ns;
	__u64 exec_ns;
};
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct unw_unknown_state);
} unw_unknown_last SEC(".maps");

/* Walk registers and progress, per CPU (the frames go to ustack_scratch). */
struct unw_walk {
	__u64 pc, sp, bp;
	__u64 hash;
	__u32 n;
	__u32 reason;
	__u32 bp_known;
	__u32 exact;
	__u64 miss_pc; /* first pc found outside every mapping, 0 if none */
	__u32 from_fp; /* pc came from a frame-pointer step (may be garbage: no miss_pc) */
	__u32 reserved;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct unw_walk);
} unw_walk_scratch SEC(".maps");

/* Perf-event programs do not nest on one CPU (bpf_prog_active), so a plain add is enough. */
static __always_inline void counter_add(__u32 idx, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);

	if (v)
		*v += n;
}

static __always_inline void counter_inc(__u32 idx)
{
	counter_add(idx, 1);
}

/* The counts map is full: n samples of key go to the overflow ring buffer. */
static __always_inline void overflow_sample(struct profile_key *key, __u64 n, __u32 counted_idx)
{
	struct profile_overflow *o = bpf_ringbuf_reserve(&overflow, sizeof(*o), 0);

	if (!o) {
		counter_add(PROFILE_CNT_OVERFLOW_LOST, n);
		return;
	}
	__builtin_memcpy(&o->key, key, sizeof(*key));
	o->set = counted_idx == PROFILE_CNT_COUNTED_B;
	o->reserved = 0;
	o->count = n;
	bpf_ringbuf_submit(o, 0);
	counter_add(PROFILE_CNT_OVERFLOW, n);
}

/*
 * Adds n samples of key to the counts map. They are in the set's COUNTED counter already; when
 * the map cannot take them (full: overflow ring; other errors: lost) they leave it again, on
 * this CPU, where they were counted since the counter's last reset.
 */
static __always_inline void count_add(void *counts, struct profile_key *key, __u64 n,
				      __u32 counted_idx)
{
	__u64 *v;
	long err;

	v = bpf_map_lookup_elem(counts, key);
	if (!v) {
		err = bpf_map_update_elem(counts, key, &n, BPF_NOEXIST);
		if (!err)
			return;
		if (err == -E2BIG || err == -ENOMEM) {
			counter_add(PROFILE_CNT_MAP_FULL, n);
			counter_add(counted_idx, -n);
			overflow_sample(key, n, counted_idx);
			return;
		}
		/* -EEXIST: another CPU inserted the same key between our lookup and update. */
		v = err == -EEXIST ? bpf_map_lookup_elem(counts, key) : NULL;
		if (!v) {
			counter_add(PROFILE_CNT_COUNT_ERR, n);
			counter_add(counted_idx, -n);
			return;
		}
	}
	__sync_fetch_and_add(v, n);
}

/* One frame into a 64-bit stack hash (murmur3's finaliser). */
static __always_inline __u64 hash_mix(__u64 h, __u64 v)
{
	h ^= v;
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdull;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ull;
	h ^= h >> 33;
	return h;
}

/* A 64-bit mix of the frame array, seeded with its length. */
static __always_inline __u64 stack_hash(const struct profile_stack *st, __u32 n)
{
	__u64 h = n * 0x9e3779b97f4a7c15ull;

	for (__u32 i = 0; i < PROFILE_MAX_STACK_DEPTH; i++) {
		if (i >= n)
			break;
		h = hash_mix(h, st->ips[i]);
	}
	return h;
}

/* ---- DWARF walk (the BPF twin of src/agent/unwind.c's unw_step) ---------------------------- */

/*
 * The rule cache: per CPU, what one step looked up for a pc — the mapping's bias and flags and
 * the table row — together with the range of pcs that row covers, so a return address seen
 * before, or a leaf pc anywhere inside a row already looked up (a hot loop), costs one line of
 * one page instead of the mapping list's binary search and the table's header, bucket, row and
 * next-row lines (scattered over a 32 MiB array). The leaf has one entry of its own, the last
 * leaf's (its pc moves inside a hot loop, and there it stays in one row); a return address finds
 * its entry by a hash of (list gen, pc >> UNW_RCACHE_GRANULE_SHIFT, exact), only from the
 * granule of the pc that filled it, which is enough for a cache. An entry hits when gen and
 * exact match and start <= pc < end. [start, end) is
 * the row's [row.pc, next row.pc) moved to process addresses (+ bias, + 1 for a return address,
 * looked up at pc - 1) and cut to the mapping, so any pc in it gets the same mapping and row
 * from the lists and tables as the pc that filled it.
 *
 * It cannot go stale: user space never changes a list in place; every write (scan, rescan after
 * exec or dlopen, a table that became available) is a whole new list with a new gen from a
 * 64-bit counter, and a process that exits, or a reused pid, gets its list deleted and any new
 * one a new gen. A lookup in list gen G only ever hits entries that list G itself produced, and
 * those hold copies of rows and ranges, not slot numbers, so slots freed and reused later do not
 * reach them. A forked child walks with its parent's list (parent_proc), gen included: same
 * list, same answers. gen 0 (no gen, or rcache_on 0) never hits: entries are filled with gen 0.
 */
#define UNW_RCACHE_ENTRIES 64	   /* 1 + 64 × 48 bytes per CPU: within one 4 KiB page */
#define UNW_RCACHE_GRANULE_SHIFT 4 /* pcs of one 16-byte granule share an entry */

struct unw_rcache_entry {
	__u64 gen;	  /* 0: empty */
	__u64 start, end; /* the pcs [start, end) this entry answers */
	__u64 bias;
	struct unw_row row;
	__u32 flags; /* unw_mapping.flags */
	__u32 exact; /* filled by an exact (leaf or signal) lookup: answers only those */
};

struct unw_rcache {
	struct unw_rcache_entry leaf;
	struct unw_rcache_entry e[UNW_RCACHE_ENTRIES];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct unw_rcache);
} unw_rcache SEC(".maps");

struct unw_ctx {
	struct unw_walk *w;
	struct profile_stack *st;
	struct unw_proc *proc;
	struct unw_rcache *rc;
	__u64 gen; /* 0: the cache never hits */
};

static __always_inline int slot_get(__u64 idx, __u64 *v)
{
	__u32 k = (__u32)idx;
	__u64 *p;

	if (idx > 0xffffffffull)
		return -1;
	p = bpf_map_lookup_elem(&unw_slots, &k);
	if (!p)
		return -1;
	*v = *p;
	return 0;
}

static __always_inline int read_user(__u64 addr, __u64 *v)
{
	return bpf_probe_read_user(v, sizeof(*v), (const void *)addr) ? -1 : 0;
}

/* The mapping containing pc, or NULL (≤ UNW_MAPPING_STEPS binary-search steps). */
static __always_inline struct unw_mapping *proc_find(struct unw_proc *p, __u64 pc)
{
	__u32 lo = 0, hi = p->n;

	if (hi > UNW_MAX_MAPPINGS)
		hi = UNW_MAX_MAPPINGS;
	for (int i = 0; i < UNW_MAPPING_STEPS; i++) {
		__u32 mid;
		struct unw_mapping *m;

		if (lo >= hi)
			break;
		mid = (lo + (hi - lo) / 2) & (UNW_MAX_MAPPINGS - 1);
		m = &p->maps[mid];
		if (pc < m->start)
			hi = mid;
		else if (pc >= m->end)
			lo = mid + 1;
		else
			return m;
	}
	return NULL;
}

/*
 * The row for va in the table at base, and in *end the va where the next row (or the table)
 * begins, so the row holds for every va in [row->pc, *end): 0 found, -1 none.
 */
static __always_inline int find_row(__u32 base, __u64 va, struct unw_row *row, __u64 *end)
{
	__u64 w0, w1, idx, rows;
	__u32 first_va, n_buckets, n_rows, lo, hi;

	if (slot_get(base, &w0) || slot_get((__u64)base + 1, &w1))
		return -1;
	first_va = (__u32)w0;
	n_buckets = (__u32)(w0 >> 32);
	n_rows = (__u32)w1;
	if (va < first_va)
		return -1;
	idx = (va - first_va) >> UNW_BUCKET_SHIFT;
	if (idx >= n_buckets || slot_get((__u64)base + UNW_HDR_SLOTS + idx, &w0))
		return -1;
	lo = (__u32)w0;
	hi = (__u32)(w0 >> 32);
	rows = (__u64)base + UNW_HDR_SLOTS + n_buckets;
	if (lo >= hi || hi > n_rows || slot_get(rows + lo, &w0))
		return -1;
	__builtin_memcpy(row, &w0, sizeof(*row));
	if (row->pc > va)
		return -1;
	for (int i = 0; i < UNW_ROW_STEPS; i++) {
		__u32 mid;

		if (lo + 1 >= hi)
			break;
		mid = lo + (hi - lo) / 2;
		if (slot_get(rows + mid, &w0))
			return -1;
		if ((__u32)w0 <= va) {
			lo = mid;
			__builtin_memcpy(row, &w0, sizeof(*row));
		} else {
			hi = mid;
		}
	}
	if (lo + 1 < hi)
		return -1;
	*end = (__u64)first_va + ((__u64)n_buckets << UNW_BUCKET_SHIFT);
	if (lo + 1 < n_rows) {
		if (slot_get(rows + lo + 1, &w0))
			return -1;
		*end = (__u32)w0;
	}
	return 0;
}

/*
 * What a step needs for pc (exact: looked up at pc, else at pc - 1), into *out without its gen:
 * the mapping's bias and flags, and unless the step will not use it (no table, or a
 * frame-pointer object's non-leaf frame) the row and the pcs [start, end) it answers for (just
 * pc when no row covers it). Returns -1 when pc is in no mapping, 1 when out has no row (not to
 * be cached), 0 when out may be cached.
 *
 * A global function, verified once on its own: inlined into the walk's bpf_loop callback, the
 * binary searches multiply the callback's verifier states past the 1,000,000-instruction limit.
 */
__noinline int unw_rule_lookup(struct unw_proc *proc, __u64 pc, __u32 exact, __u32 leaf,
			       struct unw_rcache_entry *out)
{
	struct unw_mapping *m;
	__u64 va, end, adj = exact ? 0 : 1;

	if (!proc || !out)
		return -1;
	m = proc_find(proc, pc);
	if (!m)
		return -1;
	out->bias = m->bias;
	out->flags = m->flags;
	out->exact = exact;
	if ((m->flags & UNW_MAP_NO_TABLE) || ((m->flags & UNW_MAP_FP) && !leaf))
		return 1;
	va = pc - m->bias - adj;
	if (find_row(m->table_base, va, &out->row, &end) != 0) {
		out->row.kind = UNW_KIND_NONE;
		out->start = pc;
		out->end = pc + 1;
		return 0;
	}
	out->start = out->row.pc + m->bias + adj;
	out->end = end + m->bias + adj;
	if (out->start < m->start)
		out->start = m->start;
	if (out->end > m->end)
		out->end = m->end;
	return 0;
}

/* One frame-pointer step; returns 1 (walk ends with `why`) or 0. */
static __always_inline long fp_step(struct unw_walk *w, __u32 why)
{
	__u64 nbp, ra;

	if (!w->bp_known || w->bp < w->sp) { /* bp == sp: a frame without locals */
		w->reason = why;
		return 1;
	}
	if (read_user(w->bp, &nbp) || read_user(w->bp + 8, &ra)) {
		w->reason = UNW_REASON_READ_FAIL;
		return 1;
	}
	if (ra == 0) {
		w->reason = UNW_REASON_RA_ZERO;
		return 1;
	}
	w->sp = w->bp + 16;
	w->from_fp = 1;
	/* A saved rbp that does not grow is no frame pointer: DWARF goes on from sp. */
	w->bp_known = nbp == 0 || nbp > w->bp;
	w->bp = nbp;
	w->pc = ra;
	w->exact = 0;
	return 0;
}

static long unw_step_cb(__u32 i, void *arg)
{
	struct unw_ctx *c = arg;
	struct unw_walk *w = c->w;
	struct profile_stack *st = c->st;
	struct unw_rcache_entry *e;
	struct unw_row row;
	__u64 cfa, ra, pc, fr, bias, idx;
	__u32 n, flags, exact;
	int found = 0;

	if (!w || !st || !c->proc || !c->rc)
		return 1;
	n = w->n;
	if (n >= PROFILE_MAX_STACK_DEPTH) {
		w->reason = UNW_REASON_MAX_FRAMES;
		return 1;
	}
	pc = w->pc;
	exact = w->exact != 0;
	idx = hash_mix(c->gen, pc >> UNW_RCACHE_GRANULE_SHIFT | (__u64)exact << 63);
	e = n == 0 ? &c->rc->leaf : &c->rc->e[idx & (UNW_RCACHE_ENTRIES - 1)];
	if (!c->gen || e->gen != c->gen || e->exact != exact || pc < e->start || pc >= e->end) {
		e->gen = 0;
		found = unw_rule_lookup(c->proc, pc, exact, n == 0, e);
		if (found == 0)
			e->gen = c->gen;
	}
	bias = e->bias;
	flags = e->flags;
	__builtin_memcpy(&row, &e->row, sizeof(row));
	/* Object id + va where the object has a table (bias known), else the raw address. */
	fr = pc;
	if (found >= 0 && !(flags & UNW_MAP_NO_TABLE) && (flags >> UNW_MAP_OBJ_SHIFT))
		fr = UNW_FRAME_ENCODED | ((__u64)(flags >> UNW_MAP_OBJ_SHIFT) << UNW_FRAME_OBJ_SHIFT) |
		     ((pc - bias) & UNW_FRAME_VA_MASK);
	st->ips[n] = fr;
	w->n = n + 1;
	w->hash = hash_mix(w->hash, fr);

	if (found < 0) {
		if (!w->miss_pc && !w->from_fp)
			w->miss_pc = pc;
		return fp_step(w, UNW_REASON_NO_MAPPING);
	}
	if (flags & UNW_MAP_NO_TABLE)
		return fp_step(w, UNW_REASON_NO_ROW);
	if (flags & UNW_MAP_FP) {
		/* A saved rbp of 0 marks the outermost frame (Go's goexit, like glibc's _start). */
		if (n > 0 && w->bp_known && w->bp == 0) {
			w->reason = UNW_REASON_COMPLETE;
			return 1;
		}
		if (n > 0)
			return fp_step(w, UNW_REASON_NO_ROW);
	}

	switch (row.kind) {
	case UNW_KIND_NONE:
		return fp_step(w, UNW_REASON_NO_ROW);
	case UNW_KIND_STOP:
		w->reason = UNW_REASON_COMPLETE;
		return 1;
	case UNW_KIND_SIGNAL: {
		__u64 base = w->sp + UNW_SIGFRAME_OFFSET, rbp, rsp, rip;

		if (read_user(base + UNW_SIGCTX_RBP * 8, &rbp) ||
		    read_user(base + UNW_SIGCTX_RSP * 8, &rsp) ||
		    read_user(base + UNW_SIGCTX_RIP * 8, &rip)) {
			w->reason = UNW_REASON_READ_FAIL;
			return 1;
		}
		if (rip == 0) {
			w->reason = UNW_REASON_RA_ZERO;
			return 1;
		}
		w->pc = rip;
		w->sp = rsp;
		w->bp = rbp;
		w->bp_known = 1;
		w->exact = 1;
		w->from_fp = 0;
		return 0;
	}
	case UNW_KIND_RSP:
		cfa = w->sp + (__s64)row.cfa * 8;
		break;
	case UNW_KIND_RBP:
		if (!w->bp_known) {
			w->reason = UNW_REASON_UNSUPPORTED;
			return 1;
		}
		cfa = w->bp + (__s64)row.cfa * 8;
		break;
	case UNW_KIND_PLT:
		cfa = w->sp + 8 + ((pc & 15) >= (__u64)row.cfa ? 8 : 0);
		break;
	default:
		w->reason = UNW_REASON_UNSUPPORTED;
		return 1;
	}

	if (read_user(cfa - 8, &ra)) {
		w->reason = UNW_REASON_READ_FAIL;
		return 1;
	}
	if (row.rbp == UNW_RBP_UNKNOWN) {
		w->bp_known = 0;
	} else if (row.rbp != 0) {
		__u64 nbp;

		/* An epilogue may name a slot already popped: lose rbp, not the walk. */
		w->bp_known = read_user(cfa + (__s64)row.rbp * 8, &nbp) == 0;
		if (w->bp_known)
			w->bp = nbp;
	}
	if (ra == 0) {
		w->reason = UNW_REASON_RA_ZERO;
		return 1;
	}
	w->pc = ra;
	w->sp = cfa;
	w->exact = 0;
	w->from_fp = 0;
	return 0;
}

/*
 * Exits do not wake user space (every fork ends in one, and a wake-up costs the agent more than
 * the event): they wait for the next exec or unknown-address event, or the reader's idle timeout.
 * Those force their wake-up: by default the ring buffer wakes the reader only for a record at
 * the reader's position, so an unread exit would silence the exec behind it.
 */
static __always_inline void send_event(__u32 type, __u32 pid, __u64 pc)
{
	struct unw_event ev = {.type = type, .pid = pid, .pc = pc};
	__u64 flags = type == UNW_EVENT_EXIT ? BPF_RB_NO_WAKEUP : BPF_RB_FORCE_WAKEUP;

	if (bpf_ringbuf_output(&unw_events, &ev, sizeof(ev), flags))
		counter_inc(PROFILE_CNT_UNW_EVENT_LOST);
	else
		counter_inc(PROFILE_CNT_UNW_EVENTS);
}

/*
 * At most one UNW_EVENT_UNKNOWN per process per unknown_interval_ns, per
 * unknown_young_interval_ns while the process is young (since its exec, else its start).
 */
static __always_inline void send_unknown(__u32 tgid, __u64 pc)
{
	struct unw_unknown_state *st = bpf_map_lookup_elem(&unw_unknown_last, &tgid), fresh = {};
	struct task_struct *task = bpf_get_current_task_btf();
	__u64 now = bpf_ktime_get_ns(), born = BPF_CORE_READ(task, group_leader, start_time);
	__u64 interval;

	if (st && st->exec_ns > born)
		born = st->exec_ns;
	interval = now - born < unknown_young_ns ? unknown_young_interval_ns : unknown_interval_ns;
	if (st && now - st->last_ns < interval)
		return;
	if (st) {
		st->last_ns = now;
	} else {
		fresh.last_ns = now;
		bpf_map_update_elem(&unw_unknown_last, &tgid, &fresh, BPF_ANY);
	}
	send_event(UNW_EVENT_UNKNOWN, tgid, pc);
}

/*
 * The current task's user registers as saved at its entry into the kernel (a sample in kernel
 * mode, a thread that blocks). 0 when the task has no user side (kernel thread, exiting).
 */
static __always_inline int task_user_regs(struct unw_walk *w)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct pt_regs *regs;

	if (!task->mm)
		return 0;
	regs = (struct pt_regs *)bpf_task_pt_regs(task);
	if (!regs || (regs->csx & 3) != 3)
		return 0;
	w->pc = regs->ip;
	w->sp = regs->sp;
	w->bp = regs->bp;
	return w->pc != 0;
}

/*
 * The user registers of this sample: from the sample itself when it hit user mode, else the
 * ones saved at kernel entry. 0 when the task has no user side (kernel thread, exiting).
 */
static __always_inline int user_regs(struct bpf_perf_event_data *ctx, struct unw_walk *w)
{
	/* All loads first, and csx (8 bytes): a 2-byte cs load is not a valid ctx access. */
	__u64 ip = ctx->regs.ip, sp = ctx->regs.sp, bp = ctx->regs.bp, cs = ctx->regs.csx;

	/* Keeps clang from sinking the loads into the branches as ctx pointer + offset. */
	asm volatile("" : "+r"(ip), "+r"(sp), "+r"(bp), "+r"(cs));
	if ((cs & 3) != 3)
		return task_user_regs(w);
	w->pc = ip;
	w->sp = sp;
	w->bp = bp;
	return ip != 0;
}

/*
 * A process forked without exec has its parent's mappings until user space scans it (often
 * never: a child of a few ms is gone first). Its parent's list serves meanwhile, but only while
 * neither side exec'ed since the fork: the child's self_exec_id still equals the parent's at
 * fork time (parent_exec_id), and so does the parent's. Frames then carry the parent's object
 * ids, which name the same files.
 */
static __always_inline struct unw_proc *parent_proc(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u64 self = BPF_CORE_READ(task, self_exec_id), forked = BPF_CORE_READ(task, parent_exec_id);
	__u64 pself = BPF_CORE_READ(task, real_parent, self_exec_id);
	__u32 ptgid = BPF_CORE_READ(task, real_parent, tgid);

	if (self != forked || pself != forked || !ptgid)
		return NULL;
	return bpf_map_lookup_elem(&unw_procs, &ptgid);
}

/*
 * Fills key->ustack_kind and key->ustack from a DWARF walk of the current task's user stack
 * into st, from the registers in *w (pc, sp, bp). Returns st, which the caller stores under
 * key->ustack (store_stacks), or NULL when the key names no stored stack.
 */
static __always_inline struct profile_stack *
walk_ustack_dwarf(struct unw_walk *w, struct profile_stack *st, struct profile_key *key)
{
	__u32 zero = 0, reason;
	struct unw_rcache *rc = bpf_map_lookup_elem(&unw_rcache, &zero);
	struct unw_proc *proc;
	struct unw_ctx c;

	if (!rc) {
		key->ustack_kind = PROFILE_USTACK_ERROR;
		key->ustack = ENOMEM;
		counter_inc(PROFILE_CNT_USTACK_ERR);
		return NULL;
	}
	w->hash = 0;
	w->n = 0;
	w->bp_known = 1;
	w->exact = 1;
	w->miss_pc = 0;
	w->from_fp = 0;
	w->reason = UNW_REASON_MAX_FRAMES;
	proc = bpf_map_lookup_elem(&unw_procs, &key->tgid);
	if (!proc)
		proc = parent_proc();
	if (proc) {
		c.w = w;
		c.st = st;
		c.proc = proc;
		c.rc = rc;
		c.gen = rcache_on ? proc->gen : 0;
		bpf_loop(UNW_MAX_FRAMES, unw_step_cb, &c, 0);
	} else {
		/* No mapping list yet: keep the leaf so the sample still says where it was. */
		st->ips[0] = w->pc;
		w->n = 1;
		w->hash = hash_mix(0, w->pc);
		w->reason = UNW_REASON_NO_MAPPING;
		w->miss_pc = w->pc;
	}
	/* A pc outside the list that was the leaf or a DWARF step's return address, even when a
	 * frame-pointer step got past it (dlopen'ed code without frame pointers). */
	if (w->miss_pc)
		send_unknown(key->tgid, w->miss_pc);
	reason = w->reason;
	counter_inc(PROFILE_CNT_UNW_REASON + (reason & 7));
	if (w->n < PROFILE_MAX_STACK_DEPTH)
		st->ips[w->n & 127] = 0; /* the drain counts frames up to the first 0 */
	key->ustack_kind = PROFILE_USTACK_DWARF_HASH | (reason << PROFILE_USTACK_REASON_SHIFT);
	key->ustack = hash_mix(w->hash, w->n * 0x9e3779b97f4a7c15ull);
	return st;
}

/* walk_ustack_dwarf() of this sample (perf_event ctx: its registers) or of the current task
 * (ctx NULL: the registers it entered the kernel with), into st. */
static __always_inline struct profile_stack *record_ustack_dwarf(struct bpf_perf_event_data *ctx,
								 struct profile_stack *st,
								 struct profile_key *key)
{
	__u32 zero = 0;
	struct unw_walk *w = bpf_map_lookup_elem(&unw_walk_scratch, &zero);

	if (!st || !w) {
		key->ustack_kind = PROFILE_USTACK_ERROR;
		key->ustack = ENOMEM;
		counter_inc(PROFILE_CNT_USTACK_ERR);
		return NULL;
	}
	if (!(ctx ? user_regs(ctx, w) : task_user_regs(w))) {
		key->ustack_kind = PROFILE_USTACK_NONE;
		return NULL;
	}
	return walk_ustack_dwarf(w, st, key);
}

/* record_ustack_dwarf() for frame pointers: the kernel's walker (bpf_get_stack), any ctx. */
static __always_inline struct profile_stack *record_ustack(void *ctx, struct profile_stack *st,
							   struct profile_key *key)
{
	long len;

	if (!st) {
		key->ustack_kind = PROFILE_USTACK_ERROR;
		key->ustack = ENOMEM;
		counter_inc(PROFILE_CNT_USTACK_ERR);
		return NULL;
	}
	/* Zero-fills the buffer after the last frame, so equal stacks are equal values. */
	len = bpf_get_stack(ctx, st, sizeof(*st), BPF_F_USER_STACK);
	if (len == -EFAULT || len == 0) {
		key->ustack_kind = PROFILE_USTACK_NONE;
		return NULL;
	}
	if (len < 0) {
		key->ustack_kind = PROFILE_USTACK_ERROR;
		key->ustack = -len;
		counter_inc(PROFILE_CNT_USTACK_ERR);
		return NULL;
	}
	key->ustack_kind = PROFILE_USTACK_FP_HASH;
	key->ustack = stack_hash(st, (__u32)len / sizeof(__u64));
	return st;
}

/* Stores st under hash in ustacks: 0, or the positive errno when the map refuses it. */
static __always_inline long store_stack(void *ustacks, __u64 *hash, struct profile_stack *st)
{
	long err = bpf_map_update_elem(ustacks, hash, st, BPF_NOEXIST);

	if (err && err != -EEXIST) {
		counter_inc(PROFILE_CNT_USTACK_ERR);
		return -err;
	}
	return 0;
}

/*
 * Stores the key's stacks not stored yet — the user stack st under key->ustack and, for an
 * off-CPU key, the kernel stack kst under key->kstack and the waker's wst under key->waker; a
 * stack the map refuses turns into its errno in the key (kind ERROR, or a plain kstack_id; a
 * waker the map refuses is forgotten). Returns 1 when the key still names a stored user stack
 * or none, 0 when it now holds an error.
 */
static __always_inline int store_stacks(void *ustacks, struct profile_key *key,
					struct profile_stack *st, struct profile_stack *kst,
					struct profile_stack *wst)
{
	long err;

	if (kst && (err = store_stack(ustacks, &key->kstack, kst))) {
		key->kstack_id = -err;
		key->kstack = 0;
	}
	if (wst && store_stack(ustacks, &key->waker, wst))
		key->waker = 0;
	if (st && (err = store_stack(ustacks, &key->ustack, st))) {
		key->ustack_kind =
		    PROFILE_USTACK_ERROR | (key->ustack_kind & ~PROFILE_USTACK_KIND_MASK);
		key->ustack = err;
		return 0;
	}
	return 1;
}

static __always_inline int key_equal(const struct profile_key *a, const struct profile_key *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;

	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3] && x[4] == y[4] &&
	       x[5] == y[5] && x[6] == y[6];
}

/*
 * Counts value (1 sample, or µs off-CPU) of key, whose stacks (st, kst, wst: NULL if none)
 * are not stored yet: through this CPU's counts cache when there is one (profile.h), else
 * straight into the counts map.
 */
static __always_inline void count_sample(void *ccache, void *counts, void *ustacks,
					 struct profile_key *key, struct profile_stack *st,
					 struct profile_stack *kst, struct profile_stack *wst,
					 __u64 value, __u32 counted_idx)
{
	struct profile_ccache_entry *e;
	struct profile_ccache *cc;
	__u32 zero = 0, idx;

	counter_add(counted_idx, value);
	cc = ccache_entries ? bpf_map_lookup_elem(ccache, &zero) : NULL;
	if (!cc) {
		store_stacks(ustacks, key, st, kst, wst);
		count_add(counts, key, value, counted_idx);
		return;
	}
	idx = (__u32)hash_mix(key->ustack ^ key->kstack ^ key->waker ^
				  ((__u64)key->tgid << 32 | key->tid),
			      (__u64)(__u32)key->kstack_id << 32 | key->ustack_kind);
	e = &cc->e[idx & (ccache_entries - 1) & (PROFILE_CCACHE_ENTRIES - 1)];
	if (e->count && key_equal(&e->key, key)) {
		e->count += value; /* its first sample stored the stacks in this set */
		return;
	}
	if (!store_stacks(ustacks, key, st, kst, wst)) {
		count_add(counts, key, value, counted_idx);
		return;
	}
	/* The slot's old key leaves with its count; never lost (count_add's fallbacks). */
	if (e->count)
		count_add(counts, &e->key, e->count, counted_idx);
	__builtin_memcpy(&e->key, key, sizeof(*key));
	e->count = value;
}

static __always_inline void record_sample(struct bpf_perf_event_data *ctx, struct profile_key *key,
					  void *kstacks, void *ustacks, void *counts, void *ccache,
					  __u32 counted_idx)
{
	struct profile_stack *st;
	__u64 cs = ctx->regs.csx;
	long kid = -EFAULT;

	/*
	 * A sample that hit user mode has no kernel stack: bpf_get_stackid() would answer -EFAULT
	 * after fetching the per-CPU callchain buffer (~1 µs on the development VM, and most
	 * samples of a busy process hit user mode). The same answer, without the call.
	 */
	if ((cs & 3) != 3)
		kid = bpf_get_stackid(ctx, kstacks, 0);

	if (kid == -EEXIST)
		counter_inc(PROFILE_CNT_COLLISION);
	else if (kid < 0 && kid != -EFAULT)
		counter_inc(PROFILE_CNT_KSTACK_ERR);
	key->kstack_id = kid;

	st = bpf_map_lookup_elem(&ustack_scratch, &(__u32){0});
	if (unwind_dwarf)
		st = record_ustack_dwarf(ctx, st, key);
	else
		st = record_ustack(ctx, st, key);
	count_sample(ccache, counts, ustacks, key, st, NULL, NULL, 1, counted_idx);
}

SEC("perf_event")
int oncpu_sample(struct bpf_perf_event_data *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32, tid = (__u32)id;
	struct profile_key key;

	/*
	 * The filter first: under ember record this program still runs for every sample of every
	 * process (the events are per CPU), and all but the profiled one's end here, idle included
	 * (tgid 0), before any map is touched.
	 */
	if (!tgid_wanted(tgid))
		return 0;
	if (tid == 0) {
		counter_inc(PROFILE_CNT_IDLE);
		return 0;
	}
	counter_inc(PROFILE_CNT_SAMPLES);

	__builtin_memset(&key, 0, sizeof(key));
	key.tgid = tgid;
	key.tid = tid;
	bpf_get_current_comm(key.comm, sizeof(key.comm));

	if (*(volatile __u32 *)&active_set & 1)
		record_sample(ctx, &key, &kstacks_b, &ustacks_b, &counts_b, &ccache_b,
			      PROFILE_CNT_COUNTED_B);
	else
		record_sample(ctx, &key, &kstacks_a, &ustacks_a, &counts_a, &ccache_a,
			      PROFILE_CNT_COUNTED_A);
	return 0;
}

/* ---- off-CPU: time threads spend blocked, per (thread, stacks) ------------------------------ */

/*
 * A thread that leaves the CPU blocked (sleeping, waiting for I/O or a lock: TASK_INTERRUPTIBLE
 * or TASK_UNINTERRUPTIBLE, not preempted) gets its stacks captured at once — its user stack is
 * only readable while it is the current task — into its task storage, with the time. When it
 * is switched in again, a block of offcpu_min_ns to offcpu_max_ns counts: its stacks are stored
 * in the active set and the microseconds added to its key (event PROFILE_EVENT_OFF_CPU), as a
 * sample is. Blocks span drains, so the stacks wait in the task storage, not in a set.
 *
 * Captures cost a kernel and a user stack walk each, at the thread's every block, so each CPU
 * captures at most offcpu_captures_per_sec per second. Beyond that, a thread that blocks again
 * from where its last capture was taken — the same registers at its entry into the kernel (ip,
 * sp, bp) and the same system call — keeps that capture's stacks (a loop waiting at one call
 * site: the usual way to block thousands of times a second); any other block still counts,
 * under a key without stacks (PROFILE_KSTACK_NOT_CAPTURED), so a thread's blocked time stays
 * whole. Kernel threads are left out (no user stack), as is everything targ_tgid does not want.
 */
const volatile __u64 offcpu_min_ns = 50000ull;
const volatile __u64 offcpu_max_ns = 3600000000000ull;
const volatile __u32 offcpu_captures_per_sec = 1000;

struct offcpu_task {
	__u64 start_ns; /* when it blocked; 0: not blocked (or switched in since) */
	/* Where the last capture was taken: kernel entry registers, system call (orig_ax) and
	 * address space (an exec'ed image's frames are not the old image's). */
	__u64 at_ip, at_sp, at_bp, at_nr, at_mm;
	__u32 captured; /* key and stacks hold a capture taken there */
	__u32 nocap;	/* this block has no capture: it counts under a key without stacks */
	__u32 dstate;	/* this block is uninterruptible: PROFILE_OFFCPU_D_BIT, else 0 */
	__u32 pad;
	struct profile_key key;
	struct profile_stack ustack;
	struct profile_stack kstack;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct offcpu_task);
} offcpu_tasks SEC(".maps");

struct offcpu_budget {
	__u64 window_ns; /* start of the current second */
	__u64 used[2];	 /* captures in it: blocked stacks, wakers */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct offcpu_budget);
} offcpu_budgets SEC(".maps");

/*
 * Wakers (--off-cpu-wakers): when a followed thread that blocked is woken, the waker's kernel
 * stack and comm go into the wakee's second task storage, tied to that block by its start time,
 * under a per-CPU budget of their own (as many a second as blocked stacks). At switch-in the
 * block counts with them (profile_key.waker). A map of its own, so that only threads whose
 * waker was taken pay its ~1 KiB. The stack is cut after its first frame in the kernel's entry
 * text (a system call, interrupt or exception entry: what lies beyond belongs to whatever the
 * entry interrupted), and when that frame is an interrupt's or exception's entry (irqentry
 * text) the comm is left empty: the task an interrupt found running woke no one. Both make one
 * waker one stack whatever it hit. (The per-CPU preempt count would tell interrupt context
 * apart, but per-CPU variables are not in this kernel's kallsyms, so a ksym of it cannot load.)
 */
const volatile __u32 offcpu_wakers_on = 0;
const volatile __u64 entry_text_start = 0; /* [__entry_text_start, __entry_text_end); 0: none */
const volatile __u64 entry_text_end = 0;
const volatile __u64 irqentry_text_start = 0; /* [__irqentry_text_start, __irqentry_text_end) */
const volatile __u64 irqentry_text_end = 0;

struct offcpu_waker {
	__u64 block_ns; /* start_ns of the block this wake-up ended; 0: none */
	__u64 hash;	/* of stack (frames and comm); 0: not captured */
	struct profile_stack stack;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct offcpu_waker);
} offcpu_wakers SEC(".maps");

/* 1 when this CPU may capture one more block's stacks (which 0) or waker (1) this second. */
static __always_inline int offcpu_budget_take(__u64 now, int which)
{
	__u32 zero = 0;
	struct offcpu_budget *b = bpf_map_lookup_elem(&offcpu_budgets, &zero);

	if (!b)
		return 0;
	if (now - b->window_ns >= 1000000000ull) {
		b->window_ns = now;
		b->used[0] = b->used[1] = 0;
	}
	if (b->used[which & 1] >= offcpu_captures_per_sec)
		return 0;
	b->used[which & 1]++;
	return 1;
}

/*
 * prev, the current task, blocks: its key, stacks and the time into its task storage; dstate
 * (PROFILE_OFFCPU_D_BIT or 0) says how, and is the block's own even when a capture is reused.
 */
static __always_inline void offcpu_start(void *ctx, struct task_struct *prev, __u64 now,
					 __u32 dstate)
{
	__u64 ip = 0, sp = 0, bp = 0, nr = 0;
	struct offcpu_task *t;
	struct profile_key *key;
	struct pt_regs *regs;
	long n;

	t = bpf_task_storage_get(&offcpu_tasks, prev, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!t) {
		counter_inc(PROFILE_CNT_OFFCPU_NOSTORE);
		return;
	}
	regs = (struct pt_regs *)bpf_task_pt_regs(prev);
	if (regs) {
		ip = regs->ip;
		sp = regs->sp;
		bp = regs->bp;
		nr = regs->orig_ax;
	}
	t->start_ns = now;
	t->dstate = dstate;
	key = &t->key;
	if (!offcpu_budget_take(now, 0)) {
		/* The thread's last capture, if it blocks from the same place again. */
		t->nocap = !(t->captured && t->at_mm == (__u64)prev->mm && t->at_ip == ip &&
			     t->at_sp == sp && t->at_bp == bp && t->at_nr == nr);
		/* The capture stays for a later block from its place; the thread is named. */
		key->tgid = prev->tgid;
		key->tid = prev->pid;
		bpf_get_current_comm(key->comm, sizeof(key->comm));
		return;
	}
	t->nocap = 0;
	__builtin_memset(key, 0, sizeof(*key));
	key->tgid = prev->tgid;
	key->tid = prev->pid;
	bpf_get_current_comm(key->comm, sizeof(key->comm));
	t->at_ip = ip;
	t->at_sp = sp;
	t->at_bp = bp;
	t->at_nr = nr;
	t->at_mm = (__u64)prev->mm;
	t->captured = 1;
	/* The kernel stack from here, the scheduler: user space drops the frames of this
	 * program and the tracepoint, inside __schedule. */
	n = bpf_get_stack(ctx, &t->kstack, sizeof(t->kstack), 0);
	if (n > 0) {
		key->kstack = stack_hash(&t->kstack, (__u32)n / sizeof(__u64));
		key->kstack_id = PROFILE_KSTACK_HASHED;
	} else {
		key->kstack_id = n < 0 ? (__s32)n : -ENOENT;
	}
	if (unwind_dwarf)
		record_ustack_dwarf(NULL, &t->ustack, key);
	else
		record_ustack(ctx, &t->ustack, key);
	key->ustack_kind |= PROFILE_EVENT_OFF_CPU << PROFILE_EVENT_SHIFT;
}

/* next comes back on the CPU: a block it started long enough ago counts. */
static __always_inline void offcpu_end(struct task_struct *next, __u64 now)
{
	struct offcpu_task *t = bpf_task_storage_get(&offcpu_tasks, next, 0, 0);
	struct profile_stack *st = NULL, *kst = NULL, *wst = NULL;
	struct offcpu_waker *w = NULL;
	struct profile_key key;
	__u64 d, start;
	__u32 kind;

	if (!t || !t->start_ns)
		return;
	start = t->start_ns;
	d = now - start;
	t->start_ns = 0;
	if (d < offcpu_min_ns || d > offcpu_max_ns)
		return;
	counter_inc(PROFILE_CNT_OFFCPU_BLOCKS);
	__builtin_memcpy(&key, &t->key, sizeof(key));
	if (t->nocap) {
		key.kstack_id = PROFILE_KSTACK_NOT_CAPTURED;
		key.kstack = 0;
		key.ustack_kind =
		    PROFILE_USTACK_NONE | (PROFILE_EVENT_OFF_CPU << PROFILE_EVENT_SHIFT);
		key.ustack = 0;
		counter_inc(PROFILE_CNT_OFFCPU_SKIPPED);
	}
	key.ustack_kind = (key.ustack_kind & ~PROFILE_OFFCPU_D_BIT) | t->dstate;
	key.waker = 0;
	if (offcpu_wakers_on)
		w = bpf_task_storage_get(&offcpu_wakers, next, 0, 0);
	if (w && w->block_ns == start && w->hash) {
		key.waker = w->hash;
		wst = &w->stack;
	}
	kind = key.ustack_kind & PROFILE_USTACK_KIND_MASK;
	if (kind == PROFILE_USTACK_DWARF_HASH || kind == PROFILE_USTACK_FP_HASH)
		st = &t->ustack;
	if (key.kstack_id == PROFILE_KSTACK_HASHED)
		kst = &t->kstack;
	/* Keeps clang from testing kstack_id again instead of the pointers: the verifier
	 * knows a NULL test, not that kst is set exactly when kstack_id says so. */
	asm volatile("" : "+r"(st), "+r"(kst), "+r"(wst));
	if (*(volatile __u32 *)&active_set & 1)
		count_sample(&ccache_b, &counts_b, &ustacks_b, &key, st, kst, wst, d / 1000,
			     PROFILE_CNT_COUNTED_B);
	else
		count_sample(&ccache_a, &counts_a, &ustacks_a, &key, st, kst, wst, d / 1000,
			     PROFILE_CNT_COUNTED_A);
}

/*
 * Every context switch of the host (attached only with off-CPU profiling on). Runs with the
 * runqueue locked and interrupts off, so it never nests with the sampling program on a CPU and
 * shares its per-CPU scratch; the drain's RCU barrier covers it like the sampling program.
 */
SEC("tp_btf/sched_switch")
int BPF_PROG(oncpu_switch, bool preempt, struct task_struct *prev, struct task_struct *next,
	     unsigned int prev_state)
{
	__u64 now = bpf_ktime_get_ns();

	offcpu_end(next, now);
	if (preempt || !(prev_state & (TASK_INTERRUPTIBLE | TASK_UNINTERRUPTIBLE)))
		return 0;
	if (!prev->pid || !prev->mm || !tgid_wanted(prev->tgid))
		return 0;
	offcpu_start(ctx, prev, now,
		     (prev_state & (TASK_UNINTERRUPTIBLE | TASK_NOLOAD)) == TASK_UNINTERRUPTIBLE
			 ? PROFILE_OFFCPU_D_BIT
			 : 0);
	return 0;
}

/*
 * A wake-up (attached only with --off-cpu-wakers). sched_waking runs in the waker's context,
 * once per real wake-up (after try_to_wake_up matched the sleeping state), before the wakee can
 * run anywhere; sched_wakeup of a remote wake-up would run on the wakee's CPU instead.
 *
 * Nothing is locked between this program and the wakee's switch-in on another CPU: wakers of
 * one task are serialised by its pi_lock, and the wakee is enqueued only after this runs, so
 * its switch-in reads a finished stack (x86 keeps stores in order; hash is written last). A
 * wake-up racing the switch-out (before start_ns is stored) finds no block and takes nothing:
 * that block counts without a waker. The worst outcome of any race is a block without its
 * waker, never lost blocked time.
 */
SEC("tp_btf/sched_waking")
int BPF_PROG(oncpu_waking, struct task_struct *p)
{
	struct offcpu_task *t = bpf_task_storage_get(&offcpu_tasks, p, 0, 0);
	struct offcpu_waker *w;
	__u64 start, now, h, cut = 0;
	__u32 n = 0;
	long len;

	if (!t)
		return 0;
	start = *(volatile __u64 *)&t->start_ns;
	/* Not a block we follow; one without stacks (the budget), whose waker would not show;
	 * or one so short yet that it will most likely not count. */
	if (!start || t->nocap)
		return 0;
	now = bpf_ktime_get_ns();
	if (now - start < offcpu_min_ns)
		return 0;
	w = bpf_task_storage_get(&offcpu_wakers, p, 0, 0);
	if (w && w->block_ns == start)
		return 0; /* this block's waker is known */
	if (!offcpu_budget_take(now, 1)) {
		counter_inc(PROFILE_CNT_WAKERS_SKIPPED);
		return 0;
	}
	if (!w)
		w = bpf_task_storage_get(&offcpu_wakers, p, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!w) {
		counter_inc(PROFILE_CNT_WAKERS_SKIPPED);
		return 0;
	}
	w->block_ns = start;
	w->hash = 0;
	/* The frames, zero-filled up to the comm's slots (bpf_get_stack zeroes the rest). */
	len = bpf_get_stack(ctx, &w->stack, PROFILE_WAKER_COMM_SLOT * sizeof(__u64), 0);
	if (len <= 0) {
		counter_inc(PROFILE_CNT_WAKERS_SKIPPED);
		return 0;
	}
	/* Cut after the first frame in the entry text, the rest zeroed. */
	for (__u32 i = 0; i < PROFILE_WAKER_COMM_SLOT; i++) {
		__u64 ip = w->stack.ips[i];

		if (n) {
			w->stack.ips[i] = 0;
			continue;
		}
		if (!ip)
			break;
		if (ip >= entry_text_start && ip < entry_text_end) {
			n = i + 1;
			cut = ip;
		}
	}
	if (!n)
		n = (__u32)len / sizeof(__u64);
	w->stack.ips[PROFILE_WAKER_COMM_SLOT] = 0;
	w->stack.ips[PROFILE_WAKER_COMM_SLOT + 1] = 0;
	if (!(cut >= irqentry_text_start && cut < irqentry_text_end))
		bpf_get_current_comm(&w->stack.ips[PROFILE_WAKER_COMM_SLOT], PROFILE_COMM_LEN);
	h = stack_hash(&w->stack, n);
	h = hash_mix(h, w->stack.ips[PROFILE_WAKER_COMM_SLOT]);
	w->hash = hash_mix(h, w->stack.ips[PROFILE_WAKER_COMM_SLOT + 1]) | 1; /* never 0 */
	counter_inc(PROFILE_CNT_WAKERS);
	return 0;
}

/* A new program image: user space reads its mappings. */
SEC("tp_btf/sched_process_exec")
int oncpu_exec(void *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	struct unw_unknown_state st = {.exec_ns = bpf_ktime_get_ns()};

	if (!tgid_wanted(tgid))
		return 0;
	/* A new image: its first unknown address is reported at once, then at young intervals. */
	bpf_map_update_elem(&unw_unknown_last, &tgid, &st, BPF_ANY);
	send_event(UNW_EVENT_EXEC, tgid, 0);
	return 0;
}

/* The thread group leader exits: user space drops the process's mapping list. */
SEC("tp_btf/sched_process_exit")
int oncpu_exit(void *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;

	if (tgid != (__u32)id || !tgid_wanted(tgid))
		return 0;
	bpf_map_delete_elem(&unw_unknown_last, &tgid);
	send_event(UNW_EVENT_EXIT, tgid, 0);
	return 0;
}

/* A followed process forks a new process (not a thread): follow the child too. */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(oncpu_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 ptgid = parent->tgid, ctgid = child->tgid;
	__u8 one = 1;

	if (!follow_children || ptgid == ctgid || !tgid_wanted(ptgid))
		return 0;
	bpf_map_update_elem(&followed, &ctgid, &one, BPF_NOEXIST);
	return 0;
}

/* A followed process's leader exits: its tgid may be reused by an unrelated process. */
SEC("tp_btf/sched_process_exit")
int oncpu_follow_exit(void *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;

	if (follow_children && tgid == (__u32)id)
		bpf_map_delete_elem(&followed, &tgid);
	return 0;
}
