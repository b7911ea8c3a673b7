/*
 * profile.h — the only layout shared by the on-CPU BPF program (oncpu.bpf.c) and user space
 * (src/agent/sampler.c): the counts key, the stack map value, the counter indices and the map
 * size defaults. Nothing else crosses the kernel/user boundary.
 *
 * The BPF program counts samples in the kernel, in a hash keyed by (process, thread, stacks).
 * Kernel stacks are bpf_get_stackid() ids. User stacks are a tagged 64-bit hash of the frame
 * array, the frames stored once in a HASH map keyed by that hash: the frame-pointer walk
 * (bpf_get_stack) today, the DWARF walk later (design/dwarf-unwinding.md §2.5) — one layout for
 * both, and no bucket collisions. (A STACK_TRACE map holds one stack per bucket, so with
 * non-frame-pointer binaries every sample is a distinct stack and 4 % of host-wide samples
 * collided at 8 buckets per sample on the development VM.)
 *
 * Off-CPU keys share the maps: their value is microseconds of blocked time instead of samples,
 * and their kernel frames are stored like user stacks, in ustacks_<set> under a hash
 * (PROFILE_KSTACK_HASHED), because they are captured when a thread blocks and stored only when
 * it wakes, in whichever set is active then. So is the waker's kernel stack (--off-cpu-wakers):
 * its frames, then the waker's comm in the last two slots (PROFILE_WAKER_COMM_SLOT).
 */
#ifndef EMBER_BPF_PROFILE_H
#define EMBER_BPF_PROFILE_H

#ifndef __bpf__
#include <linux/types.h>
#endif

/* PERF_MAX_STACK_DEPTH: frames kept per stack, kernel and user alike. */
#define PROFILE_MAX_STACK_DEPTH 127
#define PROFILE_COMM_LEN 16

/* Compiled-in map sizes; user space always overrides them with bpf_map__set_max_entries(). */
#define PROFILE_STACK_MAP_DEFAULT 1024 /* kstacks (STACK_TRACE) and ustacks (HASH) alike */
#define PROFILE_COUNTS_MAP_DEFAULT 1024
#define PROFILE_FOLLOW_MAX 16384 /* live descendants followed by ember record -- CMD */

enum profile_ustack_kind {
	PROFILE_USTACK_NONE = 0,       /* no user stack: kernel thread or exiting task (-EFAULT) */
	PROFILE_USTACK_ERROR = 1,      /* the walk failed; ustack holds the positive errno */
	PROFILE_USTACK_FP_HASH = 2,    /* ustack: hash of frame-pointer frames in ustacks_<set> */
	PROFILE_USTACK_DWARF_HASH = 3, /* ustack: hash of DWARF-walked frames in ustacks_<set> */
};
/* profile_key.ustack_kind: the kind in the low byte; for DWARF, the walk's enum unw_reason
 * (src/bpf/unwind.h) above it, so user space knows which stacks are complete; the event
 * (enum profile_event) above that; for off-CPU keys, bit PROFILE_OFFCPU_D_BIT set when the
 * thread blocked uninterruptibly (TASK_UNINTERRUPTIBLE: disk I/O, some locks, vfork; "D" in
 * ps) rather than in an interruptible sleep ("S"). */
#define PROFILE_USTACK_KIND_MASK 0xffu
#define PROFILE_USTACK_REASON_SHIFT 8
#define PROFILE_USTACK_REASON_MASK 0xffu
#define PROFILE_EVENT_SHIFT 16
#define PROFILE_EVENT_MASK 0xffu
#define PROFILE_OFFCPU_D_BIT (1u << 24)

/* What a key counts: on-CPU samples, or microseconds a thread spent blocked (off-CPU). */
enum profile_event {
	PROFILE_EVENT_ON_CPU = 0,
	PROFILE_EVENT_OFF_CPU = 1,
};

/* profile_key.kstack_id of off-CPU keys: the kernel frames are in ustacks_<set> under
 * profile_key.kstack; or no stack was captured for this block (the per-CPU capture budget). */
#define PROFILE_KSTACK_HASHED (-1000)
#define PROFILE_KSTACK_NOT_CAPTURED (-1001)

/* Value of every stack map: leaf (innermost) first, zero-filled after the last frame. */
struct profile_stack {
	__u64 ips[PROFILE_MAX_STACK_DEPTH];
};

/* A waker stack (profile_key.waker): at most PROFILE_WAKER_COMM_SLOT frames, then the waker's
 * comm (16 bytes) in ips[PROFILE_WAKER_COMM_SLOT] and the slot after it. */
#define PROFILE_WAKER_COMM_SLOT (PROFILE_MAX_STACK_DEPTH - 2)

/*
 * Key of the counts maps. kstack_id >= 0 is an id in kstacks_<set>; a negative value is the
 * errno bpf_get_stackid() returned (-EFAULT: the sample hit user mode, no kernel stack), or one
 * of the PROFILE_KSTACK_* markers of off-CPU keys. 56 bytes, no padding: the BPF side zeroes it
 * before filling it anyway.
 */
struct profile_key {
	__u32 tgid;
	__u32 tid;
	char comm[PROFILE_COMM_LEN];
	__s32 kstack_id;
	__u32 ustack_kind;
	__u64 ustack;
	__u64 kstack; /* PROFILE_KSTACK_HASHED: hash of the kernel frames (in ustacks_<set>) */
	__u64 waker;  /* off-CPU with wakers: hash of the waker's stack and comm (in ustacks_<set>),
		       * 0 when none was captured */
};

/* Indices of the per-CPU counters array. */
enum profile_counter {
	PROFILE_CNT_SAMPLES = 0, /* samples of non-idle tasks that passed the tgid filter */
	PROFILE_CNT_IDLE,	 /* samples of the idle task, skipped (without a tgid filter) */
	PROFILE_CNT_KSTACK_ERR,	 /* kernel stack id errors other than -EFAULT and -EEXIST */
	PROFILE_CNT_USTACK_ERR,	 /* user stack walk errors other than -EFAULT, ustacks map full */
	PROFILE_CNT_COLLISION,	 /* kernel stack -EEXIST: its bucket held another stack */
	PROFILE_CNT_MAP_FULL,	 /* counts map update failed with -E2BIG / -ENOMEM */
	PROFILE_CNT_COUNT_ERR,	 /* counts map update failed otherwise */
	PROFILE_CNT_COUNTED_A, /* samples that reached counts_a: what a drain of set A must find */
	PROFILE_CNT_COUNTED_B,
	PROFILE_CNT_OVERFLOW, /* counts map full: the sample went to the overflow ring buffer */
	PROFILE_CNT_OVERFLOW_LOST,  /* ... and that ring buffer was full too: lost */
	PROFILE_CNT_UNW_EVENTS,	    /* unw_event records sent */
	PROFILE_CNT_UNW_EVENT_LOST, /* unw_event ring buffer full */
	PROFILE_CNT_OFFCPU_BLOCKS,  /* off-CPU blocks counted (long enough, stacks or not) */
	PROFILE_CNT_OFFCPU_SKIPPED, /* ... whose stacks were not captured: the capture budget */
	PROFILE_CNT_OFFCPU_NOSTORE, /* blocks not followed: no task storage for the thread */
	PROFILE_CNT_WAKERS,	    /* wake-ups of a blocked thread whose waker stack was taken */
	PROFILE_CNT_WAKERS_SKIPPED, /* ... not taken: the capture budget, or no task storage */
	PROFILE_CNT_UNW_REASON,	    /* DWARF walks ended by enum unw_reason r: index this + r */
	PROFILE_CNT_MAX = PROFILE_CNT_UNW_REASON + 8,
};

/* Samples whose counts map was full, sent through the overflow ring buffer. */
struct profile_overflow {
	struct profile_key key;
	__u32 set; /* map set (0 A, 1 B) whose stack maps hold key's stacks */
	__u32 reserved;
	__u64 count; /* samples (off-CPU: µs) of key: one sample's, or an evicted cache entry's */
};

/*
 * The counts cache: one per map set, one value per CPU, in front of the counts map. A sample
 * touches one direct-mapped entry (indexed by a hash of its key) instead of the counts HASH map
 * and, when the entry holds its key already, skips the ustacks insert too: the entry was filled
 * by a sample of the same set that stored the stack. An entry whose slot another key takes is
 * added to the counts map (or the overflow ring) with its count. The drain reads and zeroes the
 * cache of the set it drains, after the barrier, like the maps. 64-byte entries (the key and
 * the count), one cache line each; PROFILE_CCACHE_ENTRIES of them fill one 4 KiB page. User space may use fewer (the
 * ccache_entries setting, a power of two; 0 = no cache) so that small counts maps still fill.
 */
#define PROFILE_CCACHE_ENTRIES 64

struct profile_ccache_entry {
	struct profile_key key;
	__u64 count; /* 0: empty */
};

struct profile_ccache {
	struct profile_ccache_entry e[PROFILE_CCACHE_ENTRIES];
};

/* key_equal (oncpu.bpf.c) compares the key as 7 words; a cache entry is one 64-byte line. */
_Static_assert(sizeof(struct profile_key) == 56, "profile_key: 7 words, no padding");
_Static_assert(sizeof(struct profile_ccache_entry) == 64, "counts cache entry: one cache line");

#define PROFILE_OVERFLOW_RB_DEFAULT (256u << 10) /* bytes */
#define PROFILE_UNW_EVENTS_RB_DEFAULT (256u << 10)

#endif
