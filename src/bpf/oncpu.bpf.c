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
 * Stacks come from bpf_get_stackid() (frame pointers for user space). No BPF_F_REUSE_STACKID: a
 * bucket collision returns -EEXIST, which is counted and leaves the sample with an error stack
 * rather than silently pointing it at another stack.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#include "profile.h"

#define E2BIG 7
#define ENOMEM 12
#define EFAULT 14
#define EEXIST 17

char LICENSE[] SEC("license") = "GPL";

/* 0: every process; else only this tgid (ember record -p). Set before load. */
const volatile __u32 targ_tgid = 0;

/* The set samples go to, 0 (A) or 1 (B). Written by user space only. */
__u32 active_set = 0;

#define PROFILE_STACK_MAP(name)                                                                    \
	struct {                                                                                   \
		__uint(type, BPF_MAP_TYPE_STACK_TRACE);                                            \
		__uint(max_entries, PROFILE_STACK_MAP_DEFAULT);                                    \
		__type(key, __u32);                                                                \
		__uint(value_size, PROFILE_MAX_STACK_DEPTH * sizeof(__u64));                       \
	} name SEC(".maps")

#define PROFILE_COUNTS_MAP(name)                                                                   \
	struct {                                                                                   \
		__uint(type, BPF_MAP_TYPE_HASH);                                                   \
		__uint(max_entries, PROFILE_COUNTS_MAP_DEFAULT);                                   \
		__type(key, struct profile_key);                                                   \
		__type(value, __u64);                                                              \
	} name SEC(".maps")

PROFILE_STACK_MAP(kstacks_a);
PROFILE_STACK_MAP(kstacks_b);
PROFILE_STACK_MAP(ustacks_a);
PROFILE_STACK_MAP(ustacks_b);
PROFILE_COUNTS_MAP(counts_a);
PROFILE_COUNTS_MAP(counts_b);

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PROFILE_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* Perf-event programs do not nest on one CPU (bpf_prog_active), so a plain add is enough. */
static __always_inline void counter_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);

	if (v)
		*v += 1;
}

static __always_inline void count_stack_error(long err, __u32 other_idx)
{
	if (err == -EEXIST)
		counter_inc(PROFILE_CNT_COLLISION);
	else if (err != -EFAULT)
		counter_inc(other_idx);
}

static __always_inline void count_sample(void *counts, struct profile_key *key, __u32 counted_idx)
{
	__u64 one = 1, *v;
	long err;

	v = bpf_map_lookup_elem(counts, key);
	if (!v) {
		err = bpf_map_update_elem(counts, key, &one, BPF_NOEXIST);
		if (!err) {
			counter_inc(counted_idx);
			return;
		}
		if (err != -EEXIST) {
			counter_inc(err == -E2BIG || err == -ENOMEM ? PROFILE_CNT_MAP_FULL
								    : PROFILE_CNT_COUNT_ERR);
			return;
		}
		/* Another CPU inserted the same key between our lookup and update. */
		v = bpf_map_lookup_elem(counts, key);
		if (!v) {
			counter_inc(PROFILE_CNT_COUNT_ERR);
			return;
		}
	}
	__sync_fetch_and_add(v, 1);
	counter_inc(counted_idx);
}

static __always_inline void record_sample(struct bpf_perf_event_data *ctx, struct profile_key *key,
					  void *kstacks, void *ustacks, void *counts,
					  __u32 counted_idx)
{
	long kid, uid;

	kid = bpf_get_stackid(ctx, kstacks, 0);
	if (kid < 0)
		count_stack_error(kid, PROFILE_CNT_KSTACK_ERR);
	key->kstack_id = kid;

	uid = bpf_get_stackid(ctx, ustacks, BPF_F_USER_STACK);
	if (uid >= 0) {
		key->ustack_kind = PROFILE_USTACK_FP_ID;
		key->ustack = uid;
	} else if (uid == -EFAULT) {
		key->ustack_kind = PROFILE_USTACK_NONE;
	} else {
		count_stack_error(uid, PROFILE_CNT_USTACK_ERR);
		key->ustack_kind = PROFILE_USTACK_ERROR;
		key->ustack = -uid;
	}

	count_sample(counts, key, counted_idx);
}

SEC("perf_event")
int oncpu_sample(struct bpf_perf_event_data *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32, tid = (__u32)id;
	struct profile_key key;

	if (tid == 0) {
		counter_inc(PROFILE_CNT_IDLE);
		return 0;
	}
	if (targ_tgid && tgid != targ_tgid)
		return 0;
	counter_inc(PROFILE_CNT_SAMPLES);

	__builtin_memset(&key, 0, sizeof(key));
	key.tgid = tgid;
	key.tid = tid;
	bpf_get_current_comm(key.comm, sizeof(key.comm));

	if (*(volatile __u32 *)&active_set & 1)
		record_sample(ctx, &key, &kstacks_b, &ustacks_b, &counts_b, PROFILE_CNT_COUNTED_B);
	else
		record_sample(ctx, &key, &kstacks_a, &ustacks_a, &counts_a, PROFILE_CNT_COUNTED_A);
	return 0;
}
