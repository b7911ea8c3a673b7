/*
 * sampler — see sampler.h. The story: open the skeleton → size the maps from frequency × CPUs ×
 * flush window → load → one cpu-clock perf event per online CPU, each with the program attached
 * → drain once per flush window → close.
 *
 * Draining without losing or double-counting a sample needs to know when no program still writes
 * to the set that was just switched off. Two ways were considered:
 *  - sleep ~1 ms after the flip: the program runs in hard-irq context for a few µs, so this nearly
 *    always works, but "nearly" fails when a vCPU is descheduled by the hypervisor mid-program;
 *  - wait for an RCU grace period: perf-event programs run under rcu_read_lock() (and in irq
 *    context), and the kernel calls synchronize_rcu() when user space updates a map-in-map
 *    ("maybe_wait_bpf_programs", so user space knows running programs see the new value).
 * We use the second: after the flip, one update of a private ARRAY_OF_MAPS is an exact barrier.
 * It costs a grace period (a few ms, measured in drain_ns) once per drain. The per-set COUNTED
 * counters then let every drain check itself: the entries read must sum to what BPF counted.
 */
#define LOG_MODULE "sampler"
#include "agent/sampler.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/perf_event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "bpf/profile.h"
#include "common/log.h"
#include "oncpu.skel.h"

#define SAMPLER_DEFAULT_FREQUENCY 99
#define SAMPLER_MAX_FREQUENCY 1000
#define SAMPLER_DEFAULT_FLUSH_SECONDS 1.0
#define SAMPLER_MAX_CPUS 4096 /* bound of the online CPU list we parse */
/*
 * Kernel stack maps (STACK_TRACE) are one-stack-per-bucket tables, so collisions follow the
 * birthday bound: keep the worst-case load (every sample a new stack) at 1/8. A bucket costs
 * ~1 KiB (127 frames). User stacks live in a HASH keyed by a 64-bit stack hash (no collisions):
 * like the counts, 4× the samples of a window absorbs a late drain.
 */
#define SAMPLER_KSTACK_FACTOR 8
#define SAMPLER_USTACK_FACTOR 4
#define SAMPLER_STACK_MIN 1024u
#define SAMPLER_STACK_MAX 65536u
#define SAMPLER_COUNTS_FACTOR 4
#define SAMPLER_COUNTS_MIN 1024u
#define SAMPLER_COUNTS_MAX 262144u

struct sampler_set {
	int counts_fd;
	int kstacks_fd;
	int ustacks_fd;
	uint32_t counted_idx;
};

struct sampler {
	struct oncpu_bpf *skel;
	struct sampler_opts opts;
	struct bpf_link **links;
	size_t n_links;
	int n_possible_cpus;
	int barrier_outer_fd; /* ARRAY_OF_MAPS updated only to wait for an RCU grace period */
	int barrier_inner_fd;
	int stats_fd; /* keeps BPF_STATS_RUN_TIME enabled while open; -1 if refused */
	struct sampler_set sets[2];
	uint32_t active;
	uint32_t counts_max;
	uint32_t kstacks_max;
	uint32_t ustacks_max;
	struct profile_key *keys; /* drain buffers, counts_max entries each */
	uint64_t *vals;
	uint64_t kframes[PROFILE_MAX_STACK_DEPTH];
	uint64_t uframes[PROFILE_MAX_STACK_DEPTH];
	uint64_t drains;
	uint64_t drain_mismatch;
	uint64_t last_drain_ns;
};

static uint32_t sampler_pow2_clamp(double want, uint32_t lo, uint32_t hi)
{
	uint32_t n = lo;

	while (n < hi && (double)n < want)
		n <<= 1;
	return n;
}

int sampler_parse_cpu_list(const char *text, unsigned char *online, size_t n)
{
	const char *p = text;
	int count = 0;

	memset(online, 0, n);
	while (*p && *p != '\n') {
		char *end;
		unsigned long a, b;

		errno = 0;
		a = strtoul(p, &end, 10);
		if (end == p || errno)
			return -EINVAL;
		b = a;
		p = end;
		if (*p == '-') {
			p++;
			b = strtoul(p, &end, 10);
			if (end == p || errno || b < a)
				return -EINVAL;
			p = end;
		}
		if (b >= n)
			return -ERANGE;
		for (unsigned long c = a; c <= b; c++) {
			if (!online[c])
				count++;
			online[c] = 1;
		}
		if (*p == ',')
			p++;
		else if (*p && *p != '\n')
			return -EINVAL;
	}
	return count ? count : -EINVAL;
}

static int sampler_read_online(unsigned char *online, size_t n)
{
	char buf[4096];
	ssize_t len;
	int fd, ret;

	fd = open("/sys/devices/system/cpu/online", O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		ret = -errno;
		log_error("open /sys/devices/system/cpu/online: %s", strerror(errno));
		return ret;
	}
	len = read(fd, buf, sizeof(buf) - 1);
	ret = len < 0 ? -errno : 0;
	close(fd);
	if (ret)
		return ret;
	buf[len] = '\0';
	ret = sampler_parse_cpu_list(buf, online, n);
	if (ret < 0)
		log_error("cannot parse online CPU list '%s'", buf);
	return ret;
}

static int sampler_open_barrier(struct sampler *s)
{
	LIBBPF_OPTS(bpf_map_create_opts, mopts);

	s->barrier_inner_fd = bpf_map_create(BPF_MAP_TYPE_ARRAY, "ember_barrier_i", 4, 4, 1, NULL);
	if (s->barrier_inner_fd < 0)
		return -errno;
	mopts.inner_map_fd = s->barrier_inner_fd;
	s->barrier_outer_fd =
	    bpf_map_create(BPF_MAP_TYPE_ARRAY_OF_MAPS, "ember_barrier", 4, 4, 1, &mopts);
	if (s->barrier_outer_fd < 0)
		return -errno;
	return 0;
}

/* Returns once every program that may have read the old active_set has finished. */
static int sampler_wait_programs(struct sampler *s)
{
	uint32_t zero = 0;
	int inner = s->barrier_inner_fd;

	if (bpf_map_update_elem(s->barrier_outer_fd, &zero, &inner, BPF_ANY))
		return -errno;
	return 0;
}

static int sampler_attach_cpus(struct sampler *s)
{
	unsigned char online[SAMPLER_MAX_CPUS];
	struct perf_event_attr attr;
	int n, ret;

	n = sampler_read_online(online, sizeof(online));
	if (n < 0)
		return n;
	s->links = calloc((size_t)n, sizeof(*s->links));
	if (!s->links)
		return -ENOMEM;

	memset(&attr, 0, sizeof(attr));
	attr.type = PERF_TYPE_SOFTWARE;
	attr.size = sizeof(attr);
	attr.config = PERF_COUNT_SW_CPU_CLOCK;
	attr.freq = 1;
	attr.sample_freq = (uint64_t)s->opts.frequency;

	for (int cpu = 0; cpu < SAMPLER_MAX_CPUS; cpu++) {
		struct bpf_link *link;
		int pfd;

		if (!online[cpu])
			continue;
		pfd = (int)syscall(__NR_perf_event_open, &attr, -1, cpu, -1, PERF_FLAG_FD_CLOEXEC);
		if (pfd < 0) {
			/* A CPU that went offline since we read the list. */
			if (errno == ENODEV)
				continue;
			ret = -errno;
			log_error("perf_event_open cpu-clock on cpu %d at %d Hz: %s", cpu,
				  s->opts.frequency, strerror(errno));
			return ret;
		}
		link = bpf_program__attach_perf_event(s->skel->progs.oncpu_sample, pfd);
		if (!link) {
			ret = -errno;
			close(pfd);
			log_error("attach to perf event on cpu %d: %s", cpu, strerror(-ret));
			return ret;
		}
		/* The link owns pfd from here: bpf_link__destroy() closes it. */
		s->links[s->n_links++] = link;
	}
	if (s->n_links == 0) {
		log_error("no online CPU accepted a cpu-clock perf event");
		return -ENODEV;
	}
	return 0;
}

static void sampler_size_maps(struct sampler *s, int ncpu)
{
	double per_window = (double)ncpu * s->opts.frequency * s->opts.flush_seconds;

	s->kstacks_max = sampler_pow2_clamp(per_window * SAMPLER_KSTACK_FACTOR, SAMPLER_STACK_MIN,
					    SAMPLER_STACK_MAX);
	s->ustacks_max = sampler_pow2_clamp(per_window * SAMPLER_USTACK_FACTOR, SAMPLER_STACK_MIN,
					    SAMPLER_STACK_MAX);
	if (s->opts.counts_entries)
		s->counts_max = s->opts.counts_entries;
	else
		s->counts_max = sampler_pow2_clamp(per_window * SAMPLER_COUNTS_FACTOR,
						   SAMPLER_COUNTS_MIN, SAMPLER_COUNTS_MAX);
	bpf_map__set_max_entries(s->skel->maps.kstacks_a, s->kstacks_max);
	bpf_map__set_max_entries(s->skel->maps.kstacks_b, s->kstacks_max);
	bpf_map__set_max_entries(s->skel->maps.ustacks_a, s->ustacks_max);
	bpf_map__set_max_entries(s->skel->maps.ustacks_b, s->ustacks_max);
	bpf_map__set_max_entries(s->skel->maps.counts_a, s->counts_max);
	bpf_map__set_max_entries(s->skel->maps.counts_b, s->counts_max);
}

int sampler_open(const struct sampler_opts *opts, struct sampler **out)
{
	unsigned char online[SAMPLER_MAX_CPUS];
	struct sampler *s;
	int ncpu, ret;

	*out = NULL;
	if (opts->unwind == SAMPLER_UNWIND_DWARF) {
		log_error("DWARF unwinding is not available yet; use frame pointers");
		return -EOPNOTSUPP;
	}
	if (opts->frequency < 0 || opts->frequency > SAMPLER_MAX_FREQUENCY ||
	    opts->flush_seconds < 0 || opts->counts_entries > SAMPLER_COUNTS_MAX) {
		log_error("bad options: frequency %d Hz (1..%d), flush %.3f s, counts %u (max %u)",
			  opts->frequency, SAMPLER_MAX_FREQUENCY, opts->flush_seconds,
			  opts->counts_entries, SAMPLER_COUNTS_MAX);
		return -EINVAL;
	}
	ncpu = sampler_read_online(online, sizeof(online));
	if (ncpu < 0)
		return ncpu;

	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->opts = *opts;
	if (!s->opts.frequency)
		s->opts.frequency = SAMPLER_DEFAULT_FREQUENCY;
	if (s->opts.flush_seconds == 0)
		s->opts.flush_seconds = SAMPLER_DEFAULT_FLUSH_SECONDS;
	s->barrier_inner_fd = s->barrier_outer_fd = s->stats_fd = -1;

	s->n_possible_cpus = libbpf_num_possible_cpus();
	if (s->n_possible_cpus <= 0) {
		ret = s->n_possible_cpus ? s->n_possible_cpus : -EINVAL;
		goto cleanup;
	}

	s->skel = oncpu_bpf__open();
	if (!s->skel) {
		ret = -errno;
		log_error("open BPF skeleton: %s", strerror(-ret));
		goto cleanup;
	}
	s->skel->rodata->targ_tgid = s->opts.only_tgid;
	sampler_size_maps(s, ncpu);

	ret = oncpu_bpf__load(s->skel);
	if (ret) {
		log_error("load BPF program (kernel/user stacks %u/%u, counts %u entries): %s",
			  s->kstacks_max, s->ustacks_max, s->counts_max, strerror(-ret));
		goto cleanup;
	}
	s->sets[0] = (struct sampler_set){
	    bpf_map__fd(s->skel->maps.counts_a), bpf_map__fd(s->skel->maps.kstacks_a),
	    bpf_map__fd(s->skel->maps.ustacks_a), PROFILE_CNT_COUNTED_A};
	s->sets[1] = (struct sampler_set){
	    bpf_map__fd(s->skel->maps.counts_b), bpf_map__fd(s->skel->maps.kstacks_b),
	    bpf_map__fd(s->skel->maps.ustacks_b), PROFILE_CNT_COUNTED_B};

	ret = sampler_open_barrier(s);
	if (ret) {
		log_error("create the map-in-map used as drain barrier: %s", strerror(-ret));
		goto cleanup;
	}
	s->keys = calloc(s->counts_max, sizeof(*s->keys));
	s->vals = calloc(s->counts_max, sizeof(*s->vals));
	if (!s->keys || !s->vals) {
		ret = -ENOMEM;
		goto cleanup;
	}

	/* Run-time statistics are optional telemetry: a refusal is logged, not fatal. */
	s->stats_fd = bpf_enable_stats(BPF_STATS_RUN_TIME);
	if (s->stats_fd < 0)
		log_warn("bpf_enable_stats(RUN_TIME): %s; BPF run time will read 0",
			 strerror(errno));

	ret = sampler_attach_cpus(s);
	if (ret)
		goto cleanup;
	log_info("sampling %zu CPUs at %d Hz%s; kernel/user stacks %u/%u, counts %u entries",
		 s->n_links, s->opts.frequency, s->opts.only_tgid ? " (one process)" : "",
		 s->kstacks_max, s->ustacks_max, s->counts_max);
	*out = s;
	return 0;

cleanup:
	sampler_close(s);
	return ret;
}

/* Number of frames in a zero-terminated stack map value. */
static uint32_t sampler_count_frames(const uint64_t *ips)
{
	uint32_t n = 0;

	while (n < PROFILE_MAX_STACK_DEPTH && ips[n])
		n++;
	return n;
}

static void sampler_emit(struct sampler *s, const struct sampler_set *set,
			 const struct profile_key *key, uint64_t count, sampler_cb cb, void *arg)
{
	struct sample_rec rec;

	memset(&rec, 0, sizeof(rec));
	rec.tgid = key->tgid;
	rec.tid = key->tid;
	memcpy(rec.comm, key->comm, sizeof(rec.comm));
	rec.comm[sizeof(rec.comm) - 1] = '\0';
	rec.count = count;

	if (key->kstack_id >= 0) {
		uint32_t id = (uint32_t)key->kstack_id;

		if (bpf_map_lookup_elem(set->kstacks_fd, &id, s->kframes) == 0) {
			rec.n_kframes = sampler_count_frames(s->kframes);
			rec.kframes = s->kframes;
		} else {
			rec.kstack_error = -ENOENT;
		}
	} else if (key->kstack_id != -EFAULT) {
		rec.kstack_error = key->kstack_id;
	}

	switch (key->ustack_kind) {
	case PROFILE_USTACK_FP_HASH: {
		uint64_t hash = key->ustack;

		if (bpf_map_lookup_elem(set->ustacks_fd, &hash, s->uframes) == 0) {
			rec.n_uframes = sampler_count_frames(s->uframes);
			rec.uframes = s->uframes;
		} else {
			rec.ustack_error = -ENOENT;
		}
		break;
	}
	case PROFILE_USTACK_ERROR:
		rec.ustack_error = -(int)key->ustack;
		break;
	case PROFILE_USTACK_NONE:
		break;
	default: /* PROFILE_USTACK_DWARF_HASH: not produced until the DWARF walk lands */
		rec.ustack_error = -EPROTO;
		break;
	}
	cb(arg, &rec);
}

/* Deletes every entry of a stack map (u32 or u64 keys) that no program writes to any more. */
static void sampler_clear_stacks(int fd)
{
	uint64_t key = 0, next = 0;
	int have = 0;

	while (bpf_map_get_next_key(fd, have ? &key : NULL, &next) == 0) {
		if (have)
			bpf_map_delete_elem(fd, &key);
		key = next;
		have = 1;
	}
	if (have)
		bpf_map_delete_elem(fd, &key);
}

static uint64_t sampler_sum_counter(struct sampler *s, uint32_t idx, int reset)
{
	uint64_t vals[s->n_possible_cpus], sum = 0;

	if (bpf_map_lookup_elem(bpf_map__fd(s->skel->maps.counters), &idx, vals))
		return 0;
	for (int i = 0; i < s->n_possible_cpus; i++)
		sum += vals[i];
	if (reset) {
		memset(vals, 0, sizeof(vals));
		bpf_map_update_elem(bpf_map__fd(s->skel->maps.counters), &idx, vals, BPF_ANY);
	}
	return sum;
}

static uint64_t sampler_now_ns(clockid_t clk)
{
	struct timespec ts;

	clock_gettime(clk, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int sampler_drain(struct sampler *s, sampler_cb cb, void *arg)
{
	uint64_t t0 = sampler_now_ns(CLOCK_MONOTONIC);
	const struct sampler_set *set = &s->sets[s->active];
	uint64_t drained = 0, counted;
	uint32_t batch_in = 0, batch_out = 0, count;
	int first = 1, ret;

	__atomic_store_n(&s->skel->bss->active_set, s->active ^ 1, __ATOMIC_RELEASE);
	ret = sampler_wait_programs(s);
	if (ret) {
		/* Flip back: reading a set BPF may still write would double-count. */
		__atomic_store_n(&s->skel->bss->active_set, s->active, __ATOMIC_RELEASE);
		log_error("wait for running BPF programs: %s", strerror(-ret));
		return ret;
	}

	/* The old set is quiescent; the buffers hold the whole map, so one pass suffices. */
	for (;;) {
		count = s->counts_max;
		ret = bpf_map_lookup_and_delete_batch(set->counts_fd, first ? NULL : &batch_in,
						      &batch_out, s->keys, s->vals, &count, NULL);
		ret = ret < 0 ? -errno : 0;
		if (ret && ret != -ENOENT) {
			log_error("drain counts map of set %u: %s", s->active, strerror(-ret));
			break;
		}
		for (uint32_t i = 0; i < count; i++) {
			sampler_emit(s, set, &s->keys[i], s->vals[i], cb, arg);
			drained += s->vals[i];
		}
		if (ret == -ENOENT) {
			ret = 0;
			break;
		}
		batch_in = batch_out;
		first = 0;
	}
	sampler_clear_stacks(set->kstacks_fd);
	sampler_clear_stacks(set->ustacks_fd);

	counted = sampler_sum_counter(s, set->counted_idx, 1);
	if (!ret && counted != drained) {
		s->drain_mismatch += counted > drained ? counted - drained : drained - counted;
		log_warn("set %u: BPF counted %llu samples, drain read %llu", s->active,
			 (unsigned long long)counted, (unsigned long long)drained);
	}
	s->active ^= 1;
	s->drains++;
	s->last_drain_ns = sampler_now_ns(CLOCK_MONOTONIC) - t0;
	return ret;
}

void sampler_get_stats(struct sampler *s, struct sampler_stats *st)
{
	struct bpf_prog_info info;
	uint32_t len = sizeof(info);

	memset(st, 0, sizeof(*st));
	st->samples = sampler_sum_counter(s, PROFILE_CNT_SAMPLES, 0);
	st->idle_skipped = sampler_sum_counter(s, PROFILE_CNT_IDLE, 0);
	st->kstack_errors = sampler_sum_counter(s, PROFILE_CNT_KSTACK_ERR, 0);
	st->ustack_errors = sampler_sum_counter(s, PROFILE_CNT_USTACK_ERR, 0);
	st->stack_collisions = sampler_sum_counter(s, PROFILE_CNT_COLLISION, 0);
	st->map_full_drops = sampler_sum_counter(s, PROFILE_CNT_MAP_FULL, 0);
	st->lost = st->map_full_drops + sampler_sum_counter(s, PROFILE_CNT_COUNT_ERR, 0);
	st->drains = s->drains;
	st->drain_mismatch = s->drain_mismatch;
	st->last_drain_ns = s->last_drain_ns;
	memset(&info, 0, sizeof(info));
	if (bpf_obj_get_info_by_fd(bpf_program__fd(s->skel->progs.oncpu_sample), &info, &len) ==
	    0) {
		st->bpf_run_ns = info.run_time_ns;
		st->bpf_run_cnt = info.run_cnt;
	}
}

int64_t sampler_boot_offset_ns(void)
{
	/* Bracket the monotonic read with two realtime reads to halve the error. */
	uint64_t r0 = sampler_now_ns(CLOCK_REALTIME);
	uint64_t m = sampler_now_ns(CLOCK_MONOTONIC);
	uint64_t r1 = sampler_now_ns(CLOCK_REALTIME);

	return (int64_t)(r0 + (r1 - r0) / 2) - (int64_t)m;
}

void sampler_close(struct sampler *s)
{
	if (!s)
		return;
	for (size_t i = 0; i < s->n_links; i++)
		bpf_link__destroy(s->links[i]);
	free(s->links);
	oncpu_bpf__destroy(s->skel);
	if (s->barrier_outer_fd >= 0)
		close(s->barrier_outer_fd);
	if (s->barrier_inner_fd >= 0)
		close(s->barrier_inner_fd);
	if (s->stats_fd >= 0)
		close(s->stats_fd);
	free(s->keys);
	free(s->vals);
	free(s);
}
