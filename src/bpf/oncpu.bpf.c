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

/* Perf-event programs do not nest on one CPU (bpf_prog_active), so a plain add is enough. */
static __always_inline void counter_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);

	if (v)
		*v += 1;
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

/* A 64-bit mix of the frame array (murmur3's finaliser per frame), seeded with its length. */
static __always_inline __u64 stack_hash(const struct profile_stack *st, __u32 n)
{
	__u64 h = n * 0x9e3779b97f4a7c15ull;

	for (__u32 i = 0; i < PROFILE_MAX_STACK_DEPTH; i++) {
		if (i >= n)
			break;
		h ^= st->ips[i];
		h ^= h >> 33;
		h *= 0xff51afd7ed558ccdull;
		h ^= h >> 33;
		h *= 0xc4ceb9fe1a85ec53ull;
		h ^= h >> 33;
	}
	return h;
}

/* Fills key->ustack_kind and key->ustack from the user stack of this sample. */
static __always_inline void record_ustack(struct bpf_perf_event_data *ctx, struct profile_key *key,
					  void *ustacks)
{
	__u32 zero = 0;
	struct profile_stack *st = bpf_map_lookup_elem(&ustack_scratch, &zero);
	long len, err;
	__u64 h;

	if (!st) {
		key->ustack_kind = PROFILE_USTACK_ERROR;
		key->ustack = ENOMEM;
		counter_inc(PROFILE_CNT_USTACK_ERR);
		return;
	}
	/* Zero-fills the buffer after the last frame, so equal stacks are equal values. */
	len = bpf_get_stack(ctx, st, sizeof(*st), BPF_F_USER_STACK);
	if (len == -EFAULT || len == 0) {
		key->ustack_kind = PROFILE_USTACK_NONE;
		return;
	}
	if (len < 0) {
		key->ustack_kind = PROFILE_USTACK_ERROR;
		key->ustack = -len;
		counter_inc(PROFILE_CNT_USTACK_ERR);
		return;
	}
	h = stack_hash(st, (__u32)len / sizeof(__u64));
	err = bpf_map_update_elem(ustacks, &h, st, BPF_NOEXIST);
	if (err && err != -EEXIST) {
		key->ustack_kind = PROFILE_USTACK_ERROR;
		key->ustack = -err;
		counter_inc(PROFILE_CNT_USTACK_ERR);
		return;
	}
	key->ustack_kind = PROFILE_USTACK_FP_HASH;
	key->ustack = h;
}

static __always_inline void record_sample(struct bpf_perf_event_data *ctx, struct profile_key *key,
					  void *kstacks, void *ustacks, void *counts,
					  __u32 counted_idx)
{
	long kid = bpf_get_stackid(ctx, kstacks, 0);

	if (kid == -EEXIST)
		counter_inc(PROFILE_CNT_COLLISION);
	else if (kid < 0 && kid != -EFAULT)
		counter_inc(PROFILE_CNT_KSTACK_ERR);
	key->kstack_id = kid;

	record_ustack(ctx, key, ustacks);
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
