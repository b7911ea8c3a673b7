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
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/perf_event.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <malloc.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "agent/unwind.h"
#include "agent/unwinder.h"
#include "bpf/profile.h"
#include "bpf/unwind.h"
#include "common/log.h"
#include "oncpu.skel.h"

#define SAMPLER_DEFAULT_FREQUENCY 99
#define SAMPLER_MAX_FREQUENCY 1000
#define SAMPLER_DEFAULT_FLUSH_SECONDS 1.0
#define SAMPLER_MAX_CPUS 4096 /* bound of the online CPU list we parse */
#define SAMPLER_TASK_EVENTS_MAX 1024 /* only_tgid: threads with their own event, else per CPU */
#define SAMPLER_TASK_LISTINGS 8	     /* only_tgid: listings of the threads until none is new */
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
/* The counts caches of all CPUs hold at most 1/SAMPLER_CCACHE_SHARE of the counts map's keys
 * (so a small counts map still fills and overflows as asked), PROFILE_CCACHE_ENTRIES per CPU. */
#define SAMPLER_CCACHE_SHARE 4
/* DWARF unwinding: the global table array (32 MiB) and the processes with a mapping list. */
#define SAMPLER_UNW_SLOTS UNW_ARENA_MAX_SLOTS
#define SAMPLER_UNW_PROCS UNWINDER_MAX_PROCS
/*
 * The event and builder threads sleep until there is work: a wake-up costs ~40 µs of agent CPU
 * on this VM, and polling every 20 ms (both threads) was a quarter of the DWARF agent's CPU
 * (bench/overhead). Idle, they wake this often to check for work nobody announced.
 */
#define SAMPLER_UNW_IDLE_MS 1000
#define SAMPLER_UNW_RESCAN_NS 50000000ull     /* after exec, scan again once ld.so mapped libs */
/* A rescan due within this is done by any earlier wake-up (an exec event's) instead of its own. */
#define SAMPLER_UNW_RESCAN_EARLY_NS 30000000ull
#define SAMPLER_UNW_PENDING 1024	      /* delayed rescans queued */
#define SAMPLER_UNW_COLLECT_NS 5000000000ull  /* how often unused tables are collected */
/* Lists that missed a table: rescanned after a table was finished, at most this often. */
#define SAMPLER_UNW_INCOMPLETE_NS 50000000ull
#define SAMPLER_UNW_CACHE_DIR "/var/cache/ember/unwind" /* bounded by EHTABLE_CACHE_MAX_BYTES */
#define SAMPLER_UNW_NICE 10 /* table builds run at low priority (not the bookkeeping) */

struct sampler_set {
	int counts_fd;
	int kstacks_fd;
	int ustacks_fd;
	uint32_t counted_idx;
	int ccache_fd;
};

struct sampler_rescan {
	uint32_t pid;
	uint64_t due_ns;
};

struct sampler {
	struct oncpu_bpf *skel;
	struct unwinder *unw;	       /* DWARF only */
	struct ring_buffer *events;    /* DWARF only: exec/exit/unknown events */
	struct ring_buffer *overflow;  /* samples whose counts map was full */
	struct bpf_link *unw_links[2]; /* exec and exit tracepoints */
	struct bpf_link *follow_links[2]; /* follow_children: fork and exit tracepoints */
	struct bpf_link *switch_link;	  /* off-CPU: the sched_switch tracepoint */
	struct bpf_link *waking_link;	  /* off-CPU wakers: the sched_waking tracepoint */
	pthread_t unw_thread;	       /* events: exec, exit, unknown addresses */
	pthread_t scan_thread;	       /* the first scan of every process */
	int unw_thread_started, scan_thread_started;
	int unw_stop;
	int unw_epoll_fd;	       /* the event thread sleeps here: events or unw_wake_fd */
	int unw_wake_fd;	       /* eventfd: stop, or a table was finished */
	pthread_mutex_t build_lock;    /* build_kick and build_cond */
	pthread_cond_t build_cond;     /* the builder thread waits here for queued tables */
	int build_kick;		       /* a scan may have queued a table since the builder looked */
	int build_sync_init;	       /* build_lock and build_cond initialized */
	uint64_t scan_tables_done;     /* builder thread: tables finished at its last look */
	struct sampler_rescan pending[SAMPLER_UNW_PENDING];
	uint32_t n_pending;
	sampler_cb drain_cb; /* set during sampler_drain, for overflow records */
	void *drain_arg;
	struct sampler_opts opts;
	struct bpf_link **links;
	size_t n_links;
	int per_task; /* links are per-thread events of only_tgid, else one per CPU */
	int n_possible_cpus;
	int barrier_outer_fd; /* ARRAY_OF_MAPS updated only to wait for an RCU grace period */
	int barrier_inner_fd;
	int stats_fd; /* keeps BPF_STATS_RUN_TIME enabled while open; -1 if refused */
	struct sampler_set sets[2];
	uint32_t active;
	uint32_t counts_max;
	uint32_t kstacks_max;
	uint32_t ustacks_max;
	uint32_t ccache_entries; /* per CPU and set; 0: no counts cache */
	struct profile_key *keys; /* drain buffers, counts_max entries each */
	uint64_t *vals;
	struct profile_ccache *ccache; /* drain buffer: one cache per possible CPU */
	/* Stack-map entries the drained counts keys referenced, deleted by key after the drain. */
	uint32_t *used_kids;   /* distinct kernel stack ids, kstacks_max at most */
	uint8_t *used_kbits;   /* kstacks_max bits: id already in used_kids */
	uint64_t *used_uhash;  /* user stack hashes, used_uhash_max at most */
	uint32_t used_uhash_max; /* counts_max + the keys all counts caches hold */
	uint32_t n_used_kids, n_used_uhash;
	uint64_t unkeyed_seen; /* samples that may have left unreferenced stacks, at the last drain */
	int full_clears;       /* drains left that must clear their stack maps by a full scan */
	uint64_t kframes[PROFILE_MAX_STACK_DEPTH];
	uint64_t wframes[PROFILE_MAX_STACK_DEPTH]; /* a waker's frames, then its comm */
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

/* Attaches the sampling program to a new cpu-clock event of (pid, cpu); 0 or negative errno. */
static int sampler_attach_event(struct sampler *s, struct perf_event_attr *attr, int pid, int cpu)
{
	struct bpf_link *link;
	int pfd, ret;

	pfd = (int)syscall(__NR_perf_event_open, attr, pid, cpu, -1, PERF_FLAG_FD_CLOEXEC);
	if (pfd < 0)
		return -errno;
	link = bpf_program__attach_perf_event(s->skel->progs.oncpu_sample, pfd);
	if (!link) {
		ret = -errno;
		close(pfd);
		log_error("attach to perf event of pid %d cpu %d: %s", pid, cpu, strerror(-ret));
		return ret;
	}
	/* The link owns pfd from here: bpf_link__destroy() closes it. */
	s->links[s->n_links++] = link;
	return 0;
}

static void sampler_detach_all(struct sampler *s)
{
	for (size_t i = 0; i < s->n_links; i++)
		bpf_link__destroy(s->links[i]);
	free(s->links);
	s->links = NULL;
	s->n_links = 0;
}

/* 1 if tid already has an event among the first n task events (tids[]), else 0. */
static int sampler_has_tid(const int *tids, size_t n, int tid)
{
	for (size_t i = 0; i < n; i++)
		if (tids[i] == tid)
			return 1;
	return 0;
}

/*
 * only_tgid: one cpu-clock event per thread of the process (pid = tid, cpu = -1), inherited by
 * the threads and processes it creates from then on. The program then runs for this process's
 * samples only; with per-CPU events it runs for every sample of every CPU and drops all others
 * in the tgid filter, and those runs are most of its BPF time on a busy host (~1 µs each on the
 * development VM, docs/benchmarks.md "bench/unwind"). The BPF tgid filter stays: inherited events
 * also reach the children of -p PID, which are not followed. The threads are listed again
 * until a listing finds none without an event (one created by a thread that had no event yet).
 * Returns 0, -E2BIG beyond SAMPLER_TASK_EVENTS_MAX threads, or a negative errno.
 */
static int sampler_attach_tasks(struct sampler *s, struct perf_event_attr *attr)
{
	int tids[SAMPLER_TASK_EVENTS_MAX];
	char path[64];
	int ret = 0;

	s->links = calloc(SAMPLER_TASK_EVENTS_MAX, sizeof(*s->links));
	if (!s->links)
		return -ENOMEM;
	attr->inherit = 1;
	snprintf(path, sizeof(path), "/proc/%u/task", s->opts.only_tgid);
	for (int pass = 0; pass < SAMPLER_TASK_LISTINGS; pass++) {
		size_t before = s->n_links;
		struct dirent *de;
		DIR *d = opendir(path);

		if (!d)
			return -errno;
		while ((de = readdir(d))) {
			int tid = atoi(de->d_name);

			if (tid <= 0 || sampler_has_tid(tids, s->n_links, tid))
				continue;
			if (s->n_links == SAMPLER_TASK_EVENTS_MAX) {
				ret = -E2BIG;
				break;
			}
			ret = sampler_attach_event(s, attr, tid, -1);
			if (ret == -ESRCH) { /* the thread exited since the listing */
				ret = 0;
				continue;
			}
			if (ret)
				break;
			tids[s->n_links - 1] = tid;
		}
		closedir(d);
		if (ret || s->n_links == before)
			break;
	}
	attr->inherit = 0;
	if (!ret && s->n_links == 0)
		ret = -ESRCH;
	return ret;
}

static int sampler_attach_events(struct sampler *s)
{
	unsigned char online[SAMPLER_MAX_CPUS];
	struct perf_event_attr attr;
	int n, ret;

	n = sampler_read_online(online, sizeof(online));
	if (n < 0)
		return n;

	memset(&attr, 0, sizeof(attr));
	attr.type = PERF_TYPE_SOFTWARE;
	attr.size = sizeof(attr);
	attr.config = PERF_COUNT_SW_CPU_CLOCK;
	attr.freq = 1;
	attr.sample_freq = (uint64_t)s->opts.frequency;

	if (s->opts.only_tgid) {
		ret = sampler_attach_tasks(s, &attr);
		if (!ret) {
			s->per_task = 1;
			return 0;
		}
		log_warn("per-thread cpu-clock events for pid %u: %s; sampling every CPU instead",
			 s->opts.only_tgid, strerror(-ret));
		sampler_detach_all(s);
	}
	s->links = calloc((size_t)n, sizeof(*s->links));
	if (!s->links)
		return -ENOMEM;
	for (int cpu = 0; cpu < SAMPLER_MAX_CPUS; cpu++) {
		if (!online[cpu])
			continue;
		ret = sampler_attach_event(s, &attr, -1, cpu);
		/* A CPU that went offline since we read the list. */
		if (ret == -ENODEV)
			continue;
		if (ret) {
			log_error("perf_event_open cpu-clock on cpu %d at %d Hz: %s", cpu,
				  s->opts.frequency, strerror(-ret));
			return ret;
		}
	}
	if (s->n_links == 0) {
		log_error("no online CPU accepted a cpu-clock perf event");
		return -ENODEV;
	}
	return 0;
}

/*
 * The kernel's entry text and, inside it, the interrupt and exception entries' (irqentry), where
 * waker stacks are cut and their comm left out (oncpu.bpf.c): [r[0], r[1]) and [r[2], r[3]),
 * 0s for a range kallsyms does not give.
 */
static void sampler_entry_text(uint64_t r[4])
{
	static const char *const names[4] = {"__entry_text_start", "__entry_text_end",
					     "__irqentry_text_start", "__irqentry_text_end"};
	char line[256], name[128], type;
	unsigned long long addr;
	FILE *f = fopen("/proc/kallsyms", "r");
	int found = 0;

	memset(r, 0, 4 * sizeof(*r));
	if (!f)
		return;
	while (found < 4 && fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%llx %c %127s", &addr, &type, name) != 3)
			continue;
		for (int i = 0; i < 4; i++)
			if (!r[i] && strcmp(name, names[i]) == 0) {
				r[i] = addr;
				found++;
			}
	}
	fclose(f);
	for (int i = 0; i < 4; i += 2)
		if (!r[i] || r[i + 1] <= r[i])
			r[i] = r[i + 1] = 0;
}

static void sampler_size_maps(struct sampler *s, int ncpu)
{
	int on = !!(s->opts.events & SAMPLER_EVENT_ON_CPU), off = !!(s->opts.events &
								     SAMPLER_EVENT_OFF_CPU);
	double per_window = on ? (double)ncpu * s->opts.frequency * s->opts.flush_seconds : 0;
	/* Off-CPU: the captures of a drain period at most, each a key and up to three stacks
	 * (user, kernel, waker) in ustacks — reused captures store nothing new. */
	double off_window = off ? (double)ncpu * s->opts.off_cpu_captures * s->opts.flush_seconds : 0;
	int off_stacks = s->opts.off_cpu_wakers ? 3 : 2;

	s->kstacks_max = sampler_pow2_clamp(per_window * SAMPLER_KSTACK_FACTOR, SAMPLER_STACK_MIN,
					    SAMPLER_STACK_MAX);
	s->ustacks_max = sampler_pow2_clamp(per_window * SAMPLER_USTACK_FACTOR +
						off_window * off_stacks,
					    SAMPLER_STACK_MIN, SAMPLER_STACK_MAX);
	if (s->opts.counts_entries)
		s->counts_max = s->opts.counts_entries;
	else
		s->counts_max = sampler_pow2_clamp(per_window * SAMPLER_COUNTS_FACTOR + off_window,
						   SAMPLER_COUNTS_MIN, SAMPLER_COUNTS_MAX);
	bpf_map__set_max_entries(s->skel->maps.kstacks_a, s->kstacks_max);
	bpf_map__set_max_entries(s->skel->maps.kstacks_b, s->kstacks_max);
	bpf_map__set_max_entries(s->skel->maps.ustacks_a, s->ustacks_max);
	bpf_map__set_max_entries(s->skel->maps.ustacks_b, s->ustacks_max);
	bpf_map__set_max_entries(s->skel->maps.counts_a, s->counts_max);
	bpf_map__set_max_entries(s->skel->maps.counts_b, s->counts_max);
	s->ccache_entries = s->opts.caches_off & SAMPLER_CACHE_COUNTS ? 0 : PROFILE_CCACHE_ENTRIES;
	while (s->ccache_entries &&
	       (uint64_t)s->ccache_entries * s->n_possible_cpus * SAMPLER_CCACHE_SHARE > s->counts_max)
		s->ccache_entries /= 2;
	s->skel->rodata->ccache_entries = s->ccache_entries;
	/* Hashes per key: one on-CPU (user frames); off-CPU also the kernel and waker frames. */
	s->used_uhash_max = (uint32_t)(off ? off_stacks : 1) *
			    (s->counts_max + s->ccache_entries * (uint32_t)s->n_possible_cpus);
	if (s->opts.unwind == SAMPLER_UNWIND_DWARF) {
		bpf_map__set_max_entries(s->skel->maps.unw_slots, SAMPLER_UNW_SLOTS);
		bpf_map__set_max_entries(s->skel->maps.unw_procs, SAMPLER_UNW_PROCS);
	}
}

static uint64_t sampler_now_ns(clockid_t clk);
static int sampler_on_overflow(void *ctx, void *data, size_t size);

/* A rescan of pid at due (one per pid: a later exec keeps the earlier, nearer rescan). */
static void sampler_queue_rescan(struct sampler *s, uint32_t pid, uint64_t due)
{
	for (uint32_t i = 0; i < s->n_pending; i++)
		if (s->pending[i].pid == pid)
			return;
	if (s->n_pending < SAMPLER_UNW_PENDING)
		s->pending[s->n_pending++] = (struct sampler_rescan){pid, due};
}

/* The process exited: its queued rescan would only fail to open its maps. */
static void sampler_unqueue_rescan(struct sampler *s, uint32_t pid)
{
	for (uint32_t i = 0; i < s->n_pending; i++) {
		if (s->pending[i].pid == pid) {
			s->pending[i] = s->pending[--s->n_pending];
			return;
		}
	}
}

static void sampler_wake_builder(struct sampler *s)
{
	pthread_mutex_lock(&s->build_lock);
	s->build_kick = 1;
	pthread_cond_signal(&s->build_cond);
	pthread_mutex_unlock(&s->build_lock);
}

/* A scan may have queued tables: wake the builder thread if it did (a wake-up costs ~40 µs). */
static void sampler_kick_builder(struct sampler *s)
{
	struct unwinder_stats us;

	unwinder_get_stats(s->unw, &us);
	if (us.pending)
		sampler_wake_builder(s);
}

/* An exec, exit or unknown-address event from BPF (on the event thread). */
static int sampler_on_event(void *ctx, void *data, size_t size)
{
	struct sampler *s = ctx;
	const struct unw_event *ev = data;

	if (size < sizeof(*ev))
		return 0;
	switch (ev->type) {
	case UNW_EVENT_EXEC:
		/* A new process: its list at once, small tables inline, big ones queued. */
		unwinder_exec(s->unw, ev->pid);
		unwinder_scan_process(s->unw, ev->pid, UNWINDER_SCAN_SMALL);
		/* ld.so maps the libraries after exec: look again shortly, unless a sample's
		 * unknown-address event has brought them by then. */
		sampler_queue_rescan(s, ev->pid,
				     sampler_now_ns(CLOCK_MONOTONIC) + SAMPLER_UNW_RESCAN_NS);
		sampler_kick_builder(s);
		break;
	case UNW_EVENT_UNKNOWN:
		log_debug("pid %u: pc 0x%llx outside its mappings; rescanning", ev->pid,
			  (unsigned long long)ev->pc);
		unwinder_scan_unknown(s->unw, ev->pid);
		sampler_kick_builder(s);
		break;
	case UNW_EVENT_EXIT:
		unwinder_drop_process(s->unw, ev->pid);
		sampler_unqueue_rescan(s, ev->pid);
		break;
	}
	return 0;
}

static int sampler_unw_stopping(void *arg)
{
	struct sampler *s = arg;

	return __atomic_load_n(&s->unw_stop, __ATOMIC_ACQUIRE);
}

static void sampler_wake_events(struct sampler *s);
static uint64_t sampler_tables_done(struct sampler *s);

/*
 * Between two processes of the first scan: tables that new processes wait for come first, and
 * the event thread hears of finished tables (lists of new processes may have missed them).
 */
static int sampler_scan_between(void *arg)
{
	struct sampler *s = arg;
	uint64_t done;

	while (!sampler_unw_stopping(s) && unwinder_build_pending(s->unw))
		;
	done = sampler_tables_done(s);
	if (done != s->scan_tables_done) {
		s->scan_tables_done = done;
		sampler_wake_events(s);
	}
	return sampler_unw_stopping(s);
}

/* Sleeps until a scan may have queued a table, SAMPLER_UNW_IDLE_MS at most, or the stop. */
static void sampler_wait_kick(struct sampler *s)
{
	struct timespec until;

	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += SAMPLER_UNW_IDLE_MS / 1000;
	until.tv_nsec += (long)(SAMPLER_UNW_IDLE_MS % 1000) * 1000000;
	if (until.tv_nsec >= 1000000000) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&s->build_lock);
	while (!s->build_kick && !sampler_unw_stopping(s))
		if (pthread_cond_timedwait(&s->build_cond, &s->build_lock, &until) == ETIMEDOUT)
			break;
	s->build_kick = 0;
	pthread_mutex_unlock(&s->build_lock);
}

/* A table was finished: the event thread completes the lists that missed it. */
static void sampler_wake_events(struct sampler *s)
{
	uint64_t one = 1;

	if (write(s->unw_wake_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		log_debug("wake the event thread: %s", strerror(errno));
}

/*
 * The table builder, at low priority: scans every process once at start (unless one process is
 * profiled), then builds the tables that events queued. The event thread never builds, so a new
 * process gets its mapping list within milliseconds and its tables as soon as they are built.
 */
static void *sampler_scan_main(void *arg)
{
	struct sampler *s = arg;
	uint64_t t0 = sampler_now_ns(CLOCK_MONOTONIC);
	struct unwinder_stats us;
	int n, built = 0;

	if (!s->opts.only_tgid) {
		/* Our own libraries (libc, ld.so, libcrypto ...) are the common ones: first. */
		unwinder_scan_process(s->unw, (uint32_t)getpid(), UNWINDER_SCAN_BUILD);
		n = unwinder_scan_all(s->unw, sampler_scan_between, s);
		unwinder_get_stats(s->unw, &us);
		log_info("unwind tables: %d processes, %" PRIu64 " objects, %.1f MiB in %.0f ms", n,
			 us.objects, (double)us.slots_used * 8 / (1 << 20),
			 (double)(sampler_now_ns(CLOCK_MONOTONIC) - t0) / 1e6);
		sampler_wake_events(s);
		malloc_trim(0);
	}
	/* Then the tables that exec and unknown-address events queued, one at a time. */
	while (!sampler_unw_stopping(s)) {
		if (unwinder_build_pending(s->unw)) {
			built = 1;
			sampler_wake_events(s);
			continue;
		}
		/* A build's transient buffers (ELF data, rows, the upload's copy: tens of MiB for a
		 * big object) stay in malloc's heap once freed: give them back after a burst. */
		if (built)
			malloc_trim(0);
		built = 0;
		sampler_wait_kick(s);
	}
	return NULL;
}

/* Tables finished (built, read from the cache or failed) so far. */
static uint64_t sampler_tables_done(struct sampler *s)
{
	struct unwinder_stats us;

	unwinder_get_stats(s->unw, &us);
	return us.tables_built + us.tables_from_cache + us.table_failures;
}

/*
 * Milliseconds the event thread may sleep: until the first queued rescan, the next look at
 * incomplete lists when a table was finished, or the next collection; SAMPLER_UNW_IDLE_MS at
 * most.
 */
static int sampler_unw_timeout_ms(const struct sampler *s, uint64_t now, uint64_t next_collect,
				  uint64_t next_incomplete, int tables_changed)
{
	uint64_t next = next_collect;

	if (tables_changed && next_incomplete < next)
		next = next_incomplete;
	for (uint32_t i = 0; i < s->n_pending; i++)
		if (s->pending[i].due_ns < next)
			next = s->pending[i].due_ns;
	if (next <= now)
		return 0;
	if (next - now >= (uint64_t)SAMPLER_UNW_IDLE_MS * 1000000)
		return SAMPLER_UNW_IDLE_MS;
	return (int)((next - now + 999999) / 1000000);
}

/*
 * Follows process lifecycle events, off the sampling and draining path. It sleeps in
 * unw_epoll_fd (the events ring buffer and unw_wake_fd) until an event, a finished table or a
 * due rescan. Lists that missed a table being built are scanned again only after a table was
 * finished, SAMPLER_UNW_INCOMPLETE_NS apart at most.
 */
static void *sampler_unw_main(void *arg)
{
	struct sampler *s = arg;
	uint64_t now = sampler_now_ns(CLOCK_MONOTONIC);
	uint64_t next_collect = now + SAMPLER_UNW_COLLECT_NS;
	uint64_t next_incomplete = now, done_seen = 0;
	int tables_changed = 0;

	/* Not niced: reading maps is cheap, and a new process needs its list within ms. */
	while (!sampler_unw_stopping(s)) {
		struct epoll_event ev[2];
		uint64_t done, wakes;
		uint32_t keep = 0;
		int scanned = 0, n;

		n = epoll_wait(s->unw_epoll_fd, ev, 2,
			       sampler_unw_timeout_ms(s, now, next_collect, next_incomplete,
						      tables_changed));
		for (int i = 0; i < n; i++)
			if (ev[i].data.fd == s->unw_wake_fd &&
			    read(s->unw_wake_fd, &wakes, sizeof(wakes)) < 0 && errno != EAGAIN)
				log_debug("read the wake-up eventfd: %s", strerror(errno));
		ring_buffer__consume(s->events);
		now = sampler_now_ns(CLOCK_MONOTONIC);
		for (uint32_t i = 0; i < s->n_pending; i++) {
			if (s->pending[i].due_ns <= now + SAMPLER_UNW_RESCAN_EARLY_NS) {
				unwinder_scan_process(s->unw, s->pending[i].pid,
						      UNWINDER_SCAN_SMALL | UNWINDER_SCAN_UNLOADED);
				scanned = 1;
			} else {
				s->pending[keep++] = s->pending[i];
			}
		}
		s->n_pending = keep;
		if (scanned)
			sampler_kick_builder(s);
		done = sampler_tables_done(s);
		if (done != done_seen) {
			tables_changed = 1;
			done_seen = done;
		}
		if (tables_changed && now >= next_incomplete) {
			if (unwinder_rescan_incomplete(s->unw) > 0)
				sampler_kick_builder(s);
			tables_changed = 0;
			next_incomplete = now + SAMPLER_UNW_INCOMPLETE_NS;
		}
		if (now >= next_collect) {
			unwinder_collect(s->unw);
			next_collect = now + SAMPLER_UNW_COLLECT_NS;
		}
	}
	return NULL;
}

/* The on-disk table cache (by build-id), created if missing; NULL when it cannot be. */
static const char *sampler_cache_dir(void)
{
	const char *env = getenv("EMBER_UNWIND_CACHE");
	const char *dir = env ? env : SAMPLER_UNW_CACHE_DIR;
	char path[PATH_MAX];

	if (!*dir)
		return NULL; /* EMBER_UNWIND_CACHE="" turns the cache off */
	snprintf(path, sizeof(path), "%s", dir);
	for (char *p = path + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		mkdir(path, 0700);
		*p = '/';
	}
	if (mkdir(path, 0700) && errno != EEXIST) {
		log_warn("unwind table cache %s: %s; tables are built at every start", dir,
			 strerror(errno));
		return NULL;
	}
	return dir;
}

/* The event thread's epoll set (events ring buffer + wake-up eventfd), the builder's condvar. */
static int sampler_open_wakeups(struct sampler *s)
{
	struct epoll_event ev = {.events = EPOLLIN};
	int ret;

	ret = pthread_mutex_init(&s->build_lock, NULL);
	if (ret)
		return -ret;
	ret = pthread_cond_init(&s->build_cond, NULL);
	if (ret) {
		pthread_mutex_destroy(&s->build_lock);
		return -ret;
	}
	s->build_sync_init = 1;
	s->unw_wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	s->unw_epoll_fd = epoll_create1(EPOLL_CLOEXEC);
	if (s->unw_wake_fd < 0 || s->unw_epoll_fd < 0)
		goto fail;
	ev.data.fd = ring_buffer__epoll_fd(s->events);
	if (epoll_ctl(s->unw_epoll_fd, EPOLL_CTL_ADD, ev.data.fd, &ev))
		goto fail;
	ev.data.fd = s->unw_wake_fd;
	if (epoll_ctl(s->unw_epoll_fd, EPOLL_CTL_ADD, ev.data.fd, &ev))
		goto fail;
	return 0;
fail:
	ret = -errno;
	log_error("event thread wake-ups (eventfd, epoll): %s", strerror(-ret));
	return ret;
}

/* Tables for the processes to profile, then the exec/exit programs and the event thread. */
static int sampler_start_unwinder(struct sampler *s)
{
	struct unwinder_opts uo = {
	    .slots_fd = bpf_map__fd(s->skel->maps.unw_slots),
	    .max_slots = SAMPLER_UNW_SLOTS,
	    .procs_fd = bpf_map__fd(s->skel->maps.unw_procs),
	    .max_procs = SAMPLER_UNW_PROCS,
	    .build_nice = SAMPLER_UNW_NICE,
	    .cache_dir = sampler_cache_dir(),
	};
	int ret;

	ret = unwinder_open(&uo, &s->unw);
	if (ret)
		return ret;
	s->events =
	    ring_buffer__new(bpf_map__fd(s->skel->maps.unw_events), sampler_on_event, s, NULL);
	if (!s->events)
		return -errno;
	ret = sampler_open_wakeups(s);
	if (ret)
		return ret;
	/* Events first, so a process exec'ed during the scan is not missed. */
	s->unw_links[0] = bpf_program__attach(s->skel->progs.oncpu_exec);
	s->unw_links[1] = s->unw_links[0] ? bpf_program__attach(s->skel->progs.oncpu_exit) : NULL;
	if (!s->unw_links[1]) {
		ret = -errno;
		log_error("attach sched_process_exec/exit tracepoints: %s", strerror(-ret));
		return ret;
	}
	/* ember record: the target (still a copy of us before its exec) before sampling starts;
	 * the whole host is scanned by the event thread, so sampling starts at once. */
	if (s->opts.only_tgid)
		unwinder_scan_process(s->unw, s->opts.only_tgid, UNWINDER_SCAN_BUILD);
	ret = pthread_create(&s->unw_thread, NULL, sampler_unw_main, s);
	if (ret)
		return -ret;
	pthread_setname_np(s->unw_thread, "ember-unw-event");
	s->unw_thread_started = 1;
	ret = pthread_create(&s->scan_thread, NULL, sampler_scan_main, s);
	if (ret)
		return -ret;
	pthread_setname_np(s->scan_thread, "ember-unw-build");
	s->scan_thread_started = 1;
	return 0;
}

int sampler_open(const struct sampler_opts *opts, struct sampler **out)
{
	unsigned char online[SAMPLER_MAX_CPUS];
	struct sampler *s;
	int ncpu, ret;

	*out = NULL;
	if ((opts->unwind != SAMPLER_UNWIND_FP && opts->unwind != SAMPLER_UNWIND_DWARF) ||
	    opts->frequency < 0 || opts->frequency > SAMPLER_MAX_FREQUENCY ||
	    opts->flush_seconds < 0 || opts->counts_entries > SAMPLER_COUNTS_MAX ||
	    (opts->events & ~(unsigned)(SAMPLER_EVENT_ON_CPU | SAMPLER_EVENT_OFF_CPU))) {
		log_error("bad options: frequency %d Hz (1..%d), flush %.3f s, counts %u (max %u), "
			  "events %#x",
			  opts->frequency, SAMPLER_MAX_FREQUENCY, opts->flush_seconds,
			  opts->counts_entries, SAMPLER_COUNTS_MAX, opts->events);
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
	if (!s->opts.events)
		s->opts.events = SAMPLER_EVENT_ON_CPU;
	if (!s->opts.off_cpu_min_us)
		s->opts.off_cpu_min_us = SAMPLER_OFF_CPU_MIN_US;
	if (!s->opts.off_cpu_captures)
		s->opts.off_cpu_captures = SAMPLER_OFF_CPU_CAPTURES;
	s->barrier_inner_fd = s->barrier_outer_fd = s->stats_fd = -1;
	s->unw_epoll_fd = s->unw_wake_fd = -1;

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
	s->opts.follow_children = s->opts.follow_children && s->opts.only_tgid;
	s->skel->rodata->follow_children = s->opts.follow_children;
	if (!s->opts.follow_children) {
		bpf_program__set_autoload(s->skel->progs.oncpu_fork, false);
		bpf_program__set_autoload(s->skel->progs.oncpu_follow_exit, false);
	}
	s->skel->rodata->unwind_dwarf = s->opts.unwind == SAMPLER_UNWIND_DWARF;
	s->skel->rodata->rcache_on = !(s->opts.caches_off & SAMPLER_CACHE_RULES);
	if (s->opts.unwind != SAMPLER_UNWIND_DWARF) {
		bpf_program__set_autoload(s->skel->progs.oncpu_exec, false);
		bpf_program__set_autoload(s->skel->progs.oncpu_exit, false);
	}
	s->skel->rodata->offcpu_min_ns = (uint64_t)s->opts.off_cpu_min_us * 1000;
	s->skel->rodata->offcpu_captures_per_sec = s->opts.off_cpu_captures;
	if (!(s->opts.events & SAMPLER_EVENT_OFF_CPU))
		bpf_program__set_autoload(s->skel->progs.oncpu_switch, false);
	s->opts.off_cpu_wakers = s->opts.off_cpu_wakers && (s->opts.events & SAMPLER_EVENT_OFF_CPU);
	s->skel->rodata->offcpu_wakers_on = s->opts.off_cpu_wakers;
	if (!s->opts.off_cpu_wakers)
		bpf_program__set_autoload(s->skel->progs.oncpu_waking, false);
	else {
		uint64_t r[4];

		sampler_entry_text(r);
		s->skel->rodata->entry_text_start = r[0];
		s->skel->rodata->entry_text_end = r[1];
		s->skel->rodata->irqentry_text_start = r[2];
		s->skel->rodata->irqentry_text_end = r[3];
	}
	sampler_size_maps(s, ncpu);

	ret = oncpu_bpf__load(s->skel);
	if (ret) {
		log_error("load BPF program (kernel/user stacks %u/%u, counts %u entries): %s",
			  s->kstacks_max, s->ustacks_max, s->counts_max, strerror(-ret));
		goto cleanup;
	}
	s->sets[0] = (struct sampler_set){
	    bpf_map__fd(s->skel->maps.counts_a), bpf_map__fd(s->skel->maps.kstacks_a),
	    bpf_map__fd(s->skel->maps.ustacks_a), PROFILE_CNT_COUNTED_A,
	    bpf_map__fd(s->skel->maps.ccache_a)};
	s->sets[1] = (struct sampler_set){
	    bpf_map__fd(s->skel->maps.counts_b), bpf_map__fd(s->skel->maps.kstacks_b),
	    bpf_map__fd(s->skel->maps.ustacks_b), PROFILE_CNT_COUNTED_B,
	    bpf_map__fd(s->skel->maps.ccache_b)};

	ret = sampler_open_barrier(s);
	if (ret) {
		log_error("create the map-in-map used as drain barrier: %s", strerror(-ret));
		goto cleanup;
	}
	s->overflow =
	    ring_buffer__new(bpf_map__fd(s->skel->maps.overflow), sampler_on_overflow, s, NULL);
	if (!s->overflow) {
		ret = -errno;
		log_error("overflow ring buffer: %s", strerror(-ret));
		goto cleanup;
	}
	if (s->opts.unwind == SAMPLER_UNWIND_DWARF) {
		ret = sampler_start_unwinder(s);
		if (ret) {
			log_error("start DWARF unwinding: %s", strerror(-ret));
			goto cleanup;
		}
	}
	s->keys = calloc(s->counts_max, sizeof(*s->keys));
	s->vals = calloc(s->counts_max, sizeof(*s->vals));
	s->used_kids = calloc(s->kstacks_max, sizeof(*s->used_kids));
	s->used_kbits = calloc(s->kstacks_max / 8 + 1, 1);
	s->used_uhash = calloc(s->used_uhash_max, sizeof(*s->used_uhash));
	s->ccache = calloc((size_t)s->n_possible_cpus, sizeof(*s->ccache));
	if (!s->keys || !s->vals || !s->used_kids || !s->used_kbits || !s->used_uhash ||
	    !s->ccache) {
		ret = -ENOMEM;
		goto cleanup;
	}

	/* Run-time statistics are optional telemetry: a refusal is logged, not fatal. */
	s->stats_fd = bpf_enable_stats(BPF_STATS_RUN_TIME);
	if (s->stats_fd < 0)
		log_warn("bpf_enable_stats(RUN_TIME): %s; BPF run time will read 0",
			 strerror(errno));

	if (s->opts.follow_children) {
		s->follow_links[0] = bpf_program__attach(s->skel->progs.oncpu_fork);
		s->follow_links[1] = s->follow_links[0]
					 ? bpf_program__attach(s->skel->progs.oncpu_follow_exit)
					 : NULL;
		if (!s->follow_links[1]) {
			ret = -errno;
			log_error("attach sched_process_fork/exit tracepoints: %s", strerror(-ret));
			goto cleanup;
		}
	}
	if (s->opts.events & SAMPLER_EVENT_OFF_CPU) {
		s->switch_link = bpf_program__attach(s->skel->progs.oncpu_switch);
		if (!s->switch_link) {
			ret = -errno;
			log_error("attach the sched_switch tracepoint (off-CPU): %s",
				  strerror(-ret));
			goto cleanup;
		}
		if (s->opts.off_cpu_wakers) {
			s->waking_link = bpf_program__attach(s->skel->progs.oncpu_waking);
			if (!s->waking_link) {
				ret = -errno;
				log_error("attach the sched_waking tracepoint (wakers): %s",
					  strerror(-ret));
				goto cleanup;
			}
		}
		log_info("off-CPU: blocks of %u µs or more, stacks of at most %u blocks per second "
			 "per CPU%s",
			 s->opts.off_cpu_min_us, s->opts.off_cpu_captures,
			 s->opts.off_cpu_wakers ? ", with their wakers" : "");
	}
	if (!(s->opts.events & SAMPLER_EVENT_ON_CPU)) {
		log_info("off-CPU only%s, %s unwinding; user stacks %u, counts %u entries",
			 !s->opts.only_tgid	   ? ""
			 : s->opts.follow_children ? " (one process and its children)"
						   : " (one process)",
			 s->opts.unwind == SAMPLER_UNWIND_DWARF ? "DWARF" : "frame-pointer",
			 s->ustacks_max, s->counts_max);
		*out = s;
		return 0;
	}
	ret = sampler_attach_events(s);
	if (ret)
		goto cleanup;
	log_info("sampling %zu %s at %d Hz%s, %s unwinding; kernel/user stacks %u/%u, counts %u "
		 "entries, counts cache %u per CPU",
		 s->n_links, s->per_task ? "threads" : "CPUs", s->opts.frequency,
		 !s->opts.only_tgid		? ""
		 : s->opts.follow_children	? " (one process and its children)"
						: " (one process)",
		 s->opts.unwind == SAMPLER_UNWIND_DWARF ? "DWARF" : "frame-pointer", s->kstacks_max,
		 s->ustacks_max, s->counts_max, s->ccache_entries);
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

/* sym_object_fn over the unwinder: what an encoded frame's object id names. */
static int sampler_resolve_object(void *arg, uint32_t obj_id, struct sym_object *obj)
{
	struct sampler *s = arg;

	if (!s->unw)
		return -ENOENT;
	return unwinder_object_info(s->unw, obj_id, obj->path, sizeof(obj->path), &obj->dev,
				    &obj->ino, &obj->pid);
}

/* The frames stored under hash in the set's ustacks map, into buf: 0, or -ENOENT. */
static int sampler_stack_by_hash(const struct sampler_set *set, uint64_t hash, uint64_t *buf,
				 uint32_t *n, const uint64_t **frames)
{
	if (bpf_map_lookup_elem(set->ustacks_fd, &hash, buf))
		return -ENOENT;
	*n = sampler_count_frames(buf);
	*frames = buf;
	return 0;
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
	rec.event = ((key->ustack_kind >> PROFILE_EVENT_SHIFT) & PROFILE_EVENT_MASK) ==
			    PROFILE_EVENT_OFF_CPU
			? SAMPLE_OFF_CPU
			: SAMPLE_ON_CPU;
	rec.uninterruptible =
	    rec.event == SAMPLE_OFF_CPU && (key->ustack_kind & PROFILE_OFFCPU_D_BIT);

	if (key->kstack_id >= 0) {
		uint32_t id = (uint32_t)key->kstack_id;

		if (bpf_map_lookup_elem(set->kstacks_fd, &id, s->kframes) == 0) {
			rec.n_kframes = sampler_count_frames(s->kframes);
			rec.kframes = s->kframes;
		} else {
			rec.kstack_error = -ENOENT;
		}
	} else if (key->kstack_id == PROFILE_KSTACK_HASHED) {
		rec.kstack_error = sampler_stack_by_hash(set, key->kstack, s->kframes, &rec.n_kframes,
							 &rec.kframes);
	} else if (key->kstack_id == PROFILE_KSTACK_NOT_CAPTURED) {
		rec.stacks_skipped = 1;
	} else if (key->kstack_id != -EFAULT) {
		rec.kstack_error = key->kstack_id;
	}
	if (key->waker && bpf_map_lookup_elem(set->ustacks_fd, &key->waker, s->wframes) == 0) {
		rec.n_wframes = sampler_count_frames(s->wframes);
		if (rec.n_wframes > PROFILE_WAKER_COMM_SLOT)
			rec.n_wframes = PROFILE_WAKER_COMM_SLOT;
		rec.wframes = s->wframes;
		memcpy(rec.waker_comm, &s->wframes[PROFILE_WAKER_COMM_SLOT],
		       sizeof(rec.waker_comm) - 1);
	}

	switch (key->ustack_kind & PROFILE_USTACK_KIND_MASK) {
	case PROFILE_USTACK_DWARF_HASH:
		rec.ustack_reason = ((key->ustack_kind >> PROFILE_USTACK_REASON_SHIFT) &
				     PROFILE_USTACK_REASON_MASK) +
				    1;
		rec.uframes_encoded = 1;
		rec.resolve_object = sampler_resolve_object;
		rec.resolve_arg = s;
		/* the frames are stored the same way */
		__attribute__((fallthrough));
	case PROFILE_USTACK_FP_HASH:
		rec.ustack_error = sampler_stack_by_hash(set, key->ustack, s->uframes, &rec.n_uframes,
							 &rec.uframes);
		break;
	case PROFILE_USTACK_ERROR:
		rec.ustack_error = -(int)key->ustack;
		break;
	case PROFILE_USTACK_NONE:
		break;
	default:
		rec.ustack_error = -EPROTO;
		break;
	}
	cb(arg, &rec);
}

/* One sample whose counts map was full: delivered as a count of 1 by the running drain. */
static int sampler_on_overflow(void *ctx, void *data, size_t size)
{
	struct sampler *s = ctx;
	const struct profile_overflow *o = data;

	if (size < sizeof(*o) || !s->drain_cb)
		return 0;
	sampler_emit(s, &s->sets[o->set & 1], &o->key, o->count ? o->count : 1, s->drain_cb,
		     s->drain_arg);
	return 0;
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

/* Deletes every entry of a stack map (u32 or u64 keys) that no program writes to any more. */
static void sampler_clear_stacks_scan(int fd)
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

/* Remembers the stack-map entries a drained counts key references. */
static void sampler_note_used(struct sampler *s, const struct profile_key *key)
{
	uint32_t kind = key->ustack_kind & PROFILE_USTACK_KIND_MASK;

	if (key->kstack_id >= 0 && (uint32_t)key->kstack_id < s->kstacks_max) {
		uint32_t id = (uint32_t)key->kstack_id;

		if (!(s->used_kbits[id / 8] & (1u << (id % 8)))) {
			s->used_kbits[id / 8] |= (uint8_t)(1u << (id % 8));
			s->used_kids[s->n_used_kids++] = id;
		}
	} else if (key->kstack_id >= 0) {
		s->full_clears = 2; /* an id out of range: never expected, clear by scanning */
	}
	if (kind == PROFILE_USTACK_FP_HASH || kind == PROFILE_USTACK_DWARF_HASH) {
		if (s->n_used_uhash < s->used_uhash_max)
			s->used_uhash[s->n_used_uhash++] = key->ustack;
		else
			s->full_clears = 2;
	}
	if (key->kstack_id == PROFILE_KSTACK_HASHED) {
		if (s->n_used_uhash < s->used_uhash_max)
			s->used_uhash[s->n_used_uhash++] = key->kstack;
		else
			s->full_clears = 2;
	}
	if (key->waker) {
		if (s->n_used_uhash < s->used_uhash_max)
			s->used_uhash[s->n_used_uhash++] = key->waker;
		else
			s->full_clears = 2;
	}
}

static int sampler_u64_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/*
 * Clears the stack maps of a set no program writes to any more. Normally only the entries the
 * drained counts keys referenced exist: kernel stacks are deleted by id (a STACK_TRACE map has
 * no batch delete), user stacks in one BPF_MAP_DELETE_BATCH — no get_next_key walk over the
 * maps. A sample that reached no counts key of this set (delivered through the overflow ring,
 * or lost) may have stored stacks nobody references, so after one the next two drains (one per
 * set) clear by a full scan instead.
 */
static void sampler_clear_stacks(struct sampler *s, const struct sampler_set *set)
{
	uint64_t unkeyed = sampler_sum_counter(s, PROFILE_CNT_OVERFLOW, 0) +
			   sampler_sum_counter(s, PROFILE_CNT_MAP_FULL, 0) +
			   sampler_sum_counter(s, PROFILE_CNT_COUNT_ERR, 0);
	uint32_t n = 0;

	if (unkeyed != s->unkeyed_seen) {
		s->unkeyed_seen = unkeyed;
		s->full_clears = 2;
	}
	if (s->full_clears) {
		s->full_clears--;
		sampler_clear_stacks_scan(set->kstacks_fd);
		sampler_clear_stacks_scan(set->ustacks_fd);
		goto reset;
	}
	for (uint32_t i = 0; i < s->n_used_kids; i++)
		bpf_map_delete_elem(set->kstacks_fd, &s->used_kids[i]);
	qsort(s->used_uhash, s->n_used_uhash, sizeof(*s->used_uhash), sampler_u64_cmp);
	for (uint32_t i = 0; i < s->n_used_uhash; i++)
		if (!n || s->used_uhash[n - 1] != s->used_uhash[i])
			s->used_uhash[n++] = s->used_uhash[i];
	if (n) {
		uint32_t count = n;

		if (bpf_map_delete_batch(set->ustacks_fd, s->used_uhash, &count, NULL) < 0) {
			log_warn("delete %u user stacks in a batch: %s (deleted %u); scanning", n,
				 strerror(errno), count);
			sampler_clear_stacks_scan(set->ustacks_fd);
		}
	}
reset:
	for (uint32_t i = 0; i < s->n_used_kids; i++)
		s->used_kbits[s->used_kids[i] / 8] = 0;
	s->n_used_kids = 0;
	s->n_used_uhash = 0;
}

/*
 * Delivers and zeroes the counts caches of a set no program writes to any more (after the
 * barrier, like its maps): every CPU's entries, one callback each. Returns the samples delivered
 * (added to *drained) as 0, or a negative errno when the cache could not be read or zeroed.
 */
static int sampler_drain_ccache(struct sampler *s, const struct sampler_set *set, sampler_cb cb,
				void *arg, uint64_t *drained)
{
	size_t bytes = (size_t)s->n_possible_cpus * sizeof(*s->ccache);
	uint32_t zero = 0;

	if (!s->ccache_entries)
		return 0;
	if (bpf_map_lookup_elem(set->ccache_fd, &zero, s->ccache))
		return -errno;
	for (int cpu = 0; cpu < s->n_possible_cpus; cpu++) {
		for (uint32_t i = 0; i < s->ccache_entries; i++) {
			const struct profile_ccache_entry *e = &s->ccache[cpu].e[i];

			if (!e->count)
				continue;
			sampler_emit(s, set, &e->key, e->count, cb, arg);
			sampler_note_used(s, &e->key);
			*drained += e->count;
		}
	}
	memset(s->ccache, 0, bytes);
	if (bpf_map_update_elem(set->ccache_fd, &zero, s->ccache, BPF_ANY))
		return -errno;
	return 0;
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
			sampler_note_used(s, &s->keys[i]);
			drained += s->vals[i];
		}
		if (ret == -ENOENT) {
			ret = 0;
			break;
		}
		batch_in = batch_out;
		first = 0;
	}
	if (!ret) {
		ret = sampler_drain_ccache(s, set, cb, arg, &drained);
		if (ret)
			log_error("drain counts cache of set %u: %s", s->active, strerror(-ret));
	}
	/* Overflowed samples of both sets (the other set's stacks are not cleared yet). */
	s->drain_cb = cb;
	s->drain_arg = arg;
	ring_buffer__consume(s->overflow);
	s->drain_cb = NULL;
	if (ret)
		s->full_clears = 2; /* keys not read: their stacks are not noted */
	sampler_clear_stacks(s, set);

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
	st->overflow_samples = sampler_sum_counter(s, PROFILE_CNT_OVERFLOW, 0);
	st->overflow_lost = sampler_sum_counter(s, PROFILE_CNT_OVERFLOW_LOST, 0);
	st->lost = st->overflow_lost + sampler_sum_counter(s, PROFILE_CNT_COUNT_ERR, 0);
	for (uint32_t r = 0; r < SAMPLER_UNW_REASONS && r < UNW_REASON_COUNT; r++)
		st->unwind_reasons[r] = sampler_sum_counter(s, PROFILE_CNT_UNW_REASON + r, 0);
	st->unwind_events = sampler_sum_counter(s, PROFILE_CNT_UNW_EVENTS, 0);
	st->unwind_events_lost = sampler_sum_counter(s, PROFILE_CNT_UNW_EVENT_LOST, 0);
	st->offcpu_blocks = sampler_sum_counter(s, PROFILE_CNT_OFFCPU_BLOCKS, 0);
	st->offcpu_skipped = sampler_sum_counter(s, PROFILE_CNT_OFFCPU_SKIPPED, 0);
	st->offcpu_nostore = sampler_sum_counter(s, PROFILE_CNT_OFFCPU_NOSTORE, 0);
	st->offcpu_wakers = sampler_sum_counter(s, PROFILE_CNT_WAKERS, 0);
	st->offcpu_wakers_skipped = sampler_sum_counter(s, PROFILE_CNT_WAKERS_SKIPPED, 0);
	if (s->unw) {
		struct unwinder_stats us;

		unwinder_get_stats(s->unw, &us);
		st->unwind_procs = us.procs;
		st->unwind_objects = us.objects;
		st->unwind_slots_used = us.slots_used;
		st->unwind_slots_max = us.slots_max;
		st->unwind_tables_built = us.tables_built;
		st->unwind_table_failures = us.table_failures;
		st->unwind_build_ns = us.build_ns;
		st->unwind_scans = us.scans;
		st->unwind_slots_full = us.slots_full;
		st->unwind_procs_full = us.procs_full;
	}
	st->drains = s->drains;
	st->drain_mismatch = s->drain_mismatch;
	st->last_drain_ns = s->last_drain_ns;
	memset(&info, 0, sizeof(info));
	if (bpf_obj_get_info_by_fd(bpf_program__fd(s->skel->progs.oncpu_sample), &info, &len) ==
	    0) {
		st->bpf_run_ns = info.run_time_ns;
		st->bpf_run_cnt = info.run_cnt;
	}
	memset(&info, 0, sizeof(info));
	len = sizeof(info);
	if (s->switch_link && bpf_obj_get_info_by_fd(bpf_program__fd(s->skel->progs.oncpu_switch),
						     &info, &len) == 0) {
		st->offcpu_bpf_run_ns = info.run_time_ns;
		st->offcpu_bpf_run_cnt = info.run_cnt;
	}
	memset(&info, 0, sizeof(info));
	len = sizeof(info);
	/* the wake-up program's time is off-CPU profiling's too, counted per context switch */
	if (s->waking_link && bpf_obj_get_info_by_fd(bpf_program__fd(s->skel->progs.oncpu_waking),
						     &info, &len) == 0)
		st->offcpu_bpf_run_ns += info.run_time_ns;
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
	sampler_detach_all(s);
	bpf_link__destroy(s->waking_link);
	bpf_link__destroy(s->switch_link);
	__atomic_store_n(&s->unw_stop, 1, __ATOMIC_RELEASE);
	if (s->unw_thread_started) {
		sampler_wake_events(s);
		pthread_join(s->unw_thread, NULL);
	}
	if (s->scan_thread_started) {
		sampler_wake_builder(s);
		pthread_join(s->scan_thread, NULL);
	}
	if (s->unw_epoll_fd >= 0)
		close(s->unw_epoll_fd);
	if (s->unw_wake_fd >= 0)
		close(s->unw_wake_fd);
	if (s->build_sync_init) {
		pthread_cond_destroy(&s->build_cond);
		pthread_mutex_destroy(&s->build_lock);
	}
	bpf_link__destroy(s->unw_links[0]);
	bpf_link__destroy(s->unw_links[1]);
	bpf_link__destroy(s->follow_links[0]);
	bpf_link__destroy(s->follow_links[1]);
	ring_buffer__free(s->events);
	ring_buffer__free(s->overflow);
	unwinder_close(s->unw);
	oncpu_bpf__destroy(s->skel);
	if (s->barrier_outer_fd >= 0)
		close(s->barrier_outer_fd);
	if (s->barrier_inner_fd >= 0)
		close(s->barrier_inner_fd);
	if (s->stats_fd >= 0)
		close(s->stats_fd);
	free(s->keys);
	free(s->vals);
	free(s->used_kids);
	free(s->used_kbits);
	free(s->used_uhash);
	free(s->ccache);
	free(s);
}
