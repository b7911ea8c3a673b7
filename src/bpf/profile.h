/*
 * profile.h — the only layout shared by the on-CPU BPF program (oncpu.bpf.c) and user space
 * (src/agent/sampler.c): the counts key, the stack map value, the counter indices and the map
 * size defaults. Nothing else crosses the kernel/user boundary.
 *
 * The BPF program counts samples in the kernel, in a hash keyed by (process, thread, stacks).
 * The user stack is a tagged 64-bit value: a bpf_get_stackid() id for the frame-pointer walk
 * today, a 64-bit hash of the frame array once DWARF unwinding lands (design/dwarf-unwinding.md
 * §2.5). ustack_kind says which, so the sampler can tell them apart without a second key type.
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
#define PROFILE_STACK_MAP_DEFAULT 1024
#define PROFILE_COUNTS_MAP_DEFAULT 1024

enum profile_ustack_kind {
	PROFILE_USTACK_NONE = 0,  /* no user stack: kernel thread or exiting task (-EFAULT) */
	PROFILE_USTACK_ERROR = 1, /* the walk failed; ustack holds the positive errno */
	PROFILE_USTACK_FP_ID = 2, /* ustack is a bpf_get_stackid() id in ustacks_<set> */
	PROFILE_USTACK_DWARF_HASH = 3, /* reserved: 64-bit hash of a DWARF-unwound frame array */
};

/*
 * Key of the counts maps. kstack_id >= 0 is an id in kstacks_<set>; a negative value is the
 * errno bpf_get_stackid() returned (-EFAULT: the sample hit user mode, no kernel stack).
 * 40 bytes, no padding: the BPF side zeroes it before filling it anyway.
 */
struct profile_key {
	__u32 tgid;
	__u32 tid;
	char comm[PROFILE_COMM_LEN];
	__s32 kstack_id;
	__u32 ustack_kind;
	__u64 ustack;
};

/* Indices of the per-CPU counters array. */
enum profile_counter {
	PROFILE_CNT_SAMPLES = 0,  /* samples of non-idle tasks that passed the tgid filter */
	PROFILE_CNT_IDLE,         /* samples of the idle task, skipped */
	PROFILE_CNT_KSTACK_ERR,   /* kernel stack id errors other than -EFAULT and -EEXIST */
	PROFILE_CNT_USTACK_ERR,   /* user stack id errors other than -EFAULT and -EEXIST */
	PROFILE_CNT_COLLISION,    /* -EEXIST: a stack map bucket held another stack */
	PROFILE_CNT_MAP_FULL,     /* counts map update failed with -E2BIG / -ENOMEM */
	PROFILE_CNT_COUNT_ERR,    /* counts map update failed otherwise */
	PROFILE_CNT_COUNTED_A,    /* samples that reached counts_a: what a drain of set A must find */
	PROFILE_CNT_COUNTED_B,
	PROFILE_CNT_MAX,
};

#endif
