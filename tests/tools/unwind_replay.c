/*
 * unwind_replay — replays the samples of a perf.data file (user registers and stack copy, from
 * `perf record --call-graph dwarf`) through ember's unwind tables (ehtable) and plain-C walker
 * (unwind), then compares each stack frame by frame with perf's own unwinding as printed by
 * `perf script --ns --no-inline -F tid,time,ip,sym,dso` (design/dwarf-unwinding.md §3.2 (a)).
 *
 * Usage: unwind_replay -i perf.data -s script.txt [-n name] [-t min_identical_pct] [-v]
 *        unwind_replay -b OBJECT...      (table build time, rows, size, cache load time)
 *
 * Samples are matched by (tid, time). A frame matches when perf's address equals ours, as an
 * absolute pc, a file offset or an ELF va (perf prints user frames relative to their object);
 * return addresses may differ by 1. Exit status 0 when the identical share reaches -t, 1 when it
 * does not, 2 on errors. The perf.data reader handles file-mode data with one sample layout:
 * PERF_RECORD_SAMPLE with REGS_USER and STACK_USER, MMAP/MMAP2, FORK, COMM (exec).
 */
#define LOG_MODULE "replay"

#include <asm/perf_regs.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/perf_event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "agent/ehtable.h"
#include "agent/unwind.h"

#define REPLAY_MAX_OBJS 256	  /* distinct mapped objects */
#define REPLAY_MAX_PROCS 256	  /* processes followed */
#define REPLAY_MAX_RAW_MAPS 512	  /* exec mappings remembered per process for file offsets */
#define REPLAY_MAX_SAMPLES 100000 /* samples replayed */
#define REPLAY_MAX_EXAMPLES 10	  /* mismatches printed with -v */
#define REPLAY_MAX_PERF_FRAMES 1024

struct perf_file_section {
	uint64_t offset, size;
};

struct perf_file_header {
	uint64_t magic, size, attr_size;
	struct perf_file_section attrs, data, event_types;
	uint64_t adds_features[4];
};

struct obj {
	char path[PATH_MAX];
	struct ehtable *t;
	uint32_t base;
	int rc;
};

struct raw_map {
	uint64_t start, end, pgoff;
	int obj;
};

struct proc {
	uint32_t pid;
	struct unw_proc up;
	uint32_t n_raw;
	struct raw_map raw[REPLAY_MAX_RAW_MAPS];
};

/* One replayed frame: the absolute pc and the two object-relative forms perf may print. */
struct frame {
	uint64_t pc, rel, va;
};

struct result {
	uint32_t tid;
	uint64_t time;
	uint32_t reason;
	uint32_t n;
	struct frame *f;
};

struct replay {
	struct obj objs[REPLAY_MAX_OBJS];
	int n_objs;
	struct proc *procs[REPLAY_MAX_PROCS];
	int n_procs;
	struct unw_arena arena;
	struct result *res;
	size_t n_res;
	uint64_t no_regs, dropped;
	int reg_ip, reg_sp, reg_bp, n_regs; /* positions in the sampled register array */
	uint64_t sample_type;
};

struct stack_copy {
	uint64_t sp;
	const uint8_t *data;
	uint64_t size;
};

static int replay_read_stack(void *arg, uint64_t addr, uint64_t *val)
{
	const struct stack_copy *s = arg;

	if (addr < s->sp || addr - s->sp > s->size || s->size - (addr - s->sp) < 8)
		return -EFAULT;
	memcpy(val, s->data + (addr - s->sp), 8);
	return 0;
}

static int replay_obj(struct replay *r, const char *path)
{
	struct obj *o;

	for (int i = 0; i < r->n_objs; i++)
		if (strcmp(r->objs[i].path, path) == 0)
			return i;
	if (r->n_objs == REPLAY_MAX_OBJS)
		return -1;
	o = &r->objs[r->n_objs];
	snprintf(o->path, sizeof(o->path), "%s", path);
	if (strcmp(path, "[vdso]") == 0)
		o->rc = ehtable_build_vdso(&o->t);
	else if (path[0] == '/')
		o->rc = ehtable_build(path, &o->t);
	else
		o->rc = -ENOENT;
	if (o->rc == 0)
		o->rc = unw_arena_add(&r->arena, o->t->slots, o->t->n_slots, &o->base);
	return r->n_objs++;
}

static struct proc *replay_proc(struct replay *r, uint32_t pid, int create)
{
	for (int i = 0; i < r->n_procs; i++)
		if (r->procs[i]->pid == pid)
			return r->procs[i];
	if (!create || r->n_procs == REPLAY_MAX_PROCS)
		return NULL;
	struct proc *p = calloc(1, sizeof(*p));

	if (!p)
		return NULL;
	p->pid = pid;
	r->procs[r->n_procs++] = p;
	return p;
}

static void replay_mmap(struct replay *r, uint32_t pid, uint64_t start, uint64_t len,
			uint64_t pgoff, const char *name)
{
	struct proc *p = replay_proc(r, pid, 1);
	struct unw_mapping m = {.start = start, .end = start + len};
	uint64_t bias;
	int oi;

	if (!p)
		return;
	oi = replay_obj(r, name);
	if (oi >= 0 && r->objs[oi].rc == 0 &&
	    ehtable_bias(r->objs[oi].t, start, pgoff, &bias) == 0) {
		m.bias = bias;
		m.table_base = r->objs[oi].base;
	} else {
		m.flags = UNW_MAP_NO_TABLE;
	}
	if (unw_proc_insert(&p->up, &m) != 0)
		fprintf(stderr, "pid %u: mapping list full, %s not added\n", pid, name);
	if (p->n_raw < REPLAY_MAX_RAW_MAPS)
		p->raw[p->n_raw++] = (struct raw_map){start, start + len, pgoff, oi};
}

static const struct raw_map *replay_raw_find(const struct proc *p, uint64_t pc)
{
	for (uint32_t i = p->n_raw; i-- > 0;)
		if (pc >= p->raw[i].start && pc < p->raw[i].end)
			return &p->raw[i];
	return NULL;
}

static int replay_cmp_result(const void *a, const void *b)
{
	const struct result *x = a, *y = b;

	if (x->time != y->time)
		return x->time < y->time ? -1 : 1;
	return x->tid < y->tid ? -1 : x->tid > y->tid;
}

static void replay_walk(struct replay *r, uint32_t pid, uint32_t tid, uint64_t time,
			const struct unw_regs *regs, const struct stack_copy *sc)
{
	struct proc *p = replay_proc(r, pid, 0);
	static const struct unw_proc empty;
	struct unw_env env = {&r->arena, p ? &p->up : &empty, replay_read_stack, (void *)sc};
	struct unw_stack out;
	struct result *res;

	if (r->n_res == REPLAY_MAX_SAMPLES) {
		r->dropped++;
		return;
	}
	unw_walk(&env, regs, &out);
	res = &r->res[r->n_res];
	res->f = calloc(out.n, sizeof(*res->f));
	if (!res->f) {
		r->dropped++;
		return;
	}
	res->tid = tid;
	res->time = time;
	res->reason = out.reason;
	res->n = out.n;
	for (uint32_t i = 0; i < out.n; i++) {
		const struct raw_map *m = p ? replay_raw_find(p, out.ips[i]) : NULL;
		const struct unw_mapping *um = p ? unw_proc_find(&p->up, out.ips[i]) : NULL;

		res->f[i].pc = out.ips[i];
		res->f[i].rel = m ? out.ips[i] - m->start + m->pgoff : out.ips[i];
		res->f[i].va =
		    um && !(um->flags & UNW_MAP_NO_TABLE) ? out.ips[i] - um->bias : res->f[i].rel;
	}
	r->n_res++;
}

#define TAKE(dst, n)                                                                               \
	do {                                                                                       \
		if ((uint64_t)(end - d) < (uint64_t)(n))                                           \
			return;                                                                    \
		memcpy((dst), d, (n));                                                             \
		d += (n);                                                                          \
	} while (0)

static void replay_sample(struct replay *r, const uint8_t *d, const uint8_t *end)
{
	uint64_t st = r->sample_type, regs[64], abi = 0, size = 0, dyn = 0, skip;
	uint32_t pid = 0, tid = 0;
	uint64_t time = 0;
	struct stack_copy sc;
	struct unw_regs ur;

	if (st & PERF_SAMPLE_IDENTIFIER)
		TAKE(&skip, 8);
	if (st & PERF_SAMPLE_IP)
		TAKE(&skip, 8);
	if (st & PERF_SAMPLE_TID) {
		TAKE(&pid, 4);
		TAKE(&tid, 4);
	}
	if (st & PERF_SAMPLE_TIME)
		TAKE(&time, 8);
	if (st & PERF_SAMPLE_ADDR)
		TAKE(&skip, 8);
	if (st & PERF_SAMPLE_ID)
		TAKE(&skip, 8);
	if (st & PERF_SAMPLE_STREAM_ID)
		TAKE(&skip, 8);
	if (st & PERF_SAMPLE_CPU)
		TAKE(&skip, 8);
	if (st & PERF_SAMPLE_PERIOD)
		TAKE(&skip, 8);
	if (st & PERF_SAMPLE_CALLCHAIN) {
		uint64_t nr;

		TAKE(&nr, 8);
		if (nr > (uint64_t)(end - d) / 8)
			return;
		d += nr * 8;
	}
	if (st & PERF_SAMPLE_RAW) {
		uint32_t sz;

		TAKE(&sz, 4);
		if (sz > (uint64_t)(end - d))
			return;
		d += sz;
	}
	TAKE(&abi, 8);
	if (abi == PERF_SAMPLE_REGS_ABI_NONE) {
		r->no_regs++;
		return;
	}
	TAKE(regs, (size_t)r->n_regs * 8);
	TAKE(&size, 8);
	if (size > (uint64_t)(end - d))
		return;
	sc.data = d;
	d += size;
	if (size)
		TAKE(&dyn, 8);
	ur.ip = regs[r->reg_ip];
	ur.sp = regs[r->reg_sp];
	ur.bp = regs[r->reg_bp];
	sc.sp = ur.sp;
	sc.size = dyn < size ? dyn : size;
	replay_walk(r, pid, tid, time, &ur, &sc);
}

static void replay_record(struct replay *r, const struct perf_event_header *h)
{
	const uint8_t *d = (const uint8_t *)(h + 1), *end = (const uint8_t *)h + h->size;
	uint32_t pid, tid, ppid;
	uint64_t start, len, pgoff;

	switch (h->type) {
	case PERF_RECORD_SAMPLE:
		replay_sample(r, d, end);
		break;
	case PERF_RECORD_MMAP:
		if (h->misc & PERF_RECORD_MISC_MMAP_DATA)
			break;
		TAKE(&pid, 4);
		TAKE(&tid, 4);
		TAKE(&start, 8);
		TAKE(&len, 8);
		TAKE(&pgoff, 8);
		if (memchr(d, 0, end - d))
			replay_mmap(r, pid, start, len, pgoff, (const char *)d);
		break;
	case PERF_RECORD_MMAP2: {
		uint32_t prot, flags;

		TAKE(&pid, 4);
		TAKE(&tid, 4);
		TAKE(&start, 8);
		TAKE(&len, 8);
		TAKE(&pgoff, 8);
		d += 24; /* maj, min, ino, ino_generation or the build-id form: same size */
		TAKE(&prot, 4);
		TAKE(&flags, 4);
		if ((prot & PROT_EXEC) && memchr(d, 0, end - d))
			replay_mmap(r, pid, start, len, pgoff, (const char *)d);
		break;
	}
	case PERF_RECORD_FORK: {
		struct proc *parent, *child;

		TAKE(&pid, 4);
		TAKE(&ppid, 4);
		if (pid == ppid)
			break; /* a new thread shares the process's mappings */
		parent = replay_proc(r, ppid, 0);
		child = replay_proc(r, pid, 1);
		if (parent && child) {
			uint32_t keep = child->pid;

			memcpy(child, parent, sizeof(*child));
			child->pid = keep;
		}
		break;
	}
	case PERF_RECORD_COMM:
		if (h->misc & PERF_RECORD_MISC_COMM_EXEC) {
			struct proc *p;

			TAKE(&pid, 4);
			p = replay_proc(r, pid, 0);
			if (p) {
				p->up.n = 0;
				p->n_raw = 0;
			}
		}
		break;
	default:
		break;
	}
}
#undef TAKE

struct rec_ref {
	uint64_t time, seq;
	const struct perf_event_header *h;
};

static int replay_cmp_rec(const void *a, const void *b)
{
	const struct rec_ref *x = a, *y = b;

	if (x->time != y->time)
		return x->time < y->time ? -1 : 1;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* The time of a record: a sample's TIME field, or the TIME of the sample_id trailer. */
static uint64_t replay_record_time(const struct replay *r, const struct perf_event_header *h,
				   int sample_id_all)
{
	uint64_t st = r->sample_type, t = 0;
	const uint8_t *p = (const uint8_t *)(h + 1), *end = (const uint8_t *)h + h->size;
	size_t back = 8;

	if (!(st & PERF_SAMPLE_TIME))
		return 0;
	if (h->type == PERF_RECORD_SAMPLE) {
		p += 8 * !!(st & PERF_SAMPLE_IDENTIFIER) + 8 * !!(st & PERF_SAMPLE_IP) +
		     8 * !!(st & PERF_SAMPLE_TID);
		if (end - p >= 8)
			memcpy(&t, p, 8);
		return t;
	}
	if (!sample_id_all || h->type >= PERF_RECORD_MAX)
		return 0;
	back += 8 * (!!(st & PERF_SAMPLE_ID) + !!(st & PERF_SAMPLE_STREAM_ID) +
		     !!(st & PERF_SAMPLE_CPU) + !!(st & PERF_SAMPLE_IDENTIFIER));
	if ((size_t)(end - p) >= back)
		memcpy(&t, end - back, 8);
	return t;
}

/*
 * perf writes each CPU's buffer in rounds, so the file is not in time order: an exec's mmaps
 * can follow samples taken after them. Replay like perf does, sorted by time.
 */
static int replay_records_in_time_order(struct replay *r, const uint8_t *data, uint64_t size,
					int sample_id_all)
{
	struct rec_ref *refs = NULL;
	size_t n = 0, cap = 0;
	uint64_t off;

	for (off = 0; off + sizeof(struct perf_event_header) <= size;) {
		const struct perf_event_header *h = (const void *)(data + off);

		if (h->size < sizeof(*h) || off + h->size > size)
			break;
		off += h->size;
		if (h->type != PERF_RECORD_SAMPLE && h->type != PERF_RECORD_MMAP &&
		    h->type != PERF_RECORD_MMAP2 && h->type != PERF_RECORD_FORK &&
		    h->type != PERF_RECORD_COMM)
			continue;
		if (n == cap) {
			size_t ncap = cap ? cap * 2 : 4096;
			struct rec_ref *p = realloc(refs, ncap * sizeof(*p));

			if (!p) {
				free(refs);
				return -1;
			}
			refs = p;
			cap = ncap;
		}
		refs[n] = (struct rec_ref){replay_record_time(r, h, sample_id_all), n, h};
		n++;
	}
	qsort(refs, n, sizeof(*refs), replay_cmp_rec);
	for (size_t i = 0; i < n; i++)
		replay_record(r, refs[i].h);
	free(refs);
	return 0;
}

static int replay_perf_data(struct replay *r, const char *path)
{
	const struct perf_file_header *fh;
	const struct perf_event_attr *attr;
	struct stat st;
	uint8_t *map;
	uint64_t off, mask = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC), n, rc, sample_id_all = 1;

	if (fd < 0 || fstat(fd, &st) != 0) {
		fprintf(stderr, "%s: %s\n", path, strerror(errno));
		return -1;
	}
	map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (map == MAP_FAILED)
		return -1;
	fh = (const void *)map;
	if ((uint64_t)st.st_size < sizeof(*fh) || memcmp(&fh->magic, "PERFILE2", 8) != 0 ||
	    fh->attr_size < sizeof(struct perf_file_section) + PERF_ATTR_SIZE_VER3 ||
	    fh->attrs.offset + fh->attrs.size > (uint64_t)st.st_size ||
	    fh->data.offset + fh->data.size > (uint64_t)st.st_size ||
	    fh->attrs.size < fh->attr_size) {
		fprintf(stderr, "%s: not a file-mode perf.data\n", path);
		return -1;
	}
	/* All events must share one sample layout (perf record -e cpu-clock gives one). */
	for (off = 0; off + fh->attr_size <= fh->attrs.size; off += fh->attr_size) {
		attr = (const void *)(map + fh->attrs.offset + off);
		sample_id_all &= attr->sample_id_all;
		if (off == 0) {
			r->sample_type = attr->sample_type;
			mask = attr->sample_regs_user;
		} else if (attr->sample_type != r->sample_type || attr->sample_regs_user != mask) {
			fprintf(stderr, "%s: events with different sample layouts\n", path);
			return -1;
		}
	}
	if (!(r->sample_type & PERF_SAMPLE_REGS_USER) ||
	    !(r->sample_type & PERF_SAMPLE_STACK_USER) ||
	    (r->sample_type & (PERF_SAMPLE_READ | PERF_SAMPLE_BRANCH_STACK)) ||
	    !(mask & (1ull << PERF_REG_X86_IP)) || !(mask & (1ull << PERF_REG_X86_SP)) ||
	    !(mask & (1ull << PERF_REG_X86_BP))) {
		fprintf(stderr, "%s: record with --call-graph dwarf (user regs and stack)\n", path);
		return -1;
	}
	n = 0;
	for (int i = 0; i < 64; i++) {
		if (!(mask & (1ull << i)))
			continue;
		if (i == PERF_REG_X86_IP)
			r->reg_ip = n;
		if (i == PERF_REG_X86_SP)
			r->reg_sp = n;
		if (i == PERF_REG_X86_BP)
			r->reg_bp = n;
		n++;
	}
	r->n_regs = n;
	rc = replay_records_in_time_order(r, map + fh->data.offset, fh->data.size, sample_id_all);
	munmap(map, (size_t)st.st_size);
	return rc;
}

static int replay_frame_match(const struct frame *f, uint64_t ip, int leaf)
{
	uint64_t c[3] = {f->pc, f->rel, f->va};

	for (int i = 0; i < 3; i++)
		if (ip == c[i] || (!leaf && (ip + 1 == c[i] || ip == c[i] + 1)))
			return 1;
	return 0;
}

struct tally {
	uint64_t compared, identical, complete, unmatched, perf_no_user;
	uint64_t reasons[UNW_REASON_COUNT];
	int examples;
};

static void replay_compare(struct replay *r, uint32_t tid, uint64_t time, const uint64_t *ips,
			   const char (*syms)[96], uint32_t n, struct tally *t, int verbose)
{
	struct result key = {.tid = tid, .time = time};
	const struct result *res =
	    bsearch(&key, r->res, r->n_res, sizeof(*r->res), replay_cmp_result);
	uint32_t cmp_n;
	int same;

	if (!res) {
		t->unmatched++;
		return;
	}
	if (n == 0) {
		t->perf_no_user++; /* perf printed no user frame (exec in progress): nothing to
				      compare */
		return;
	}
	t->compared++;
	t->reasons[res->reason]++;
	if (res->reason == UNW_REASON_COMPLETE)
		t->complete++;
	cmp_n = res->n;
	same = res->n == n;
	if (res->reason == UNW_REASON_MAX_FRAMES && n > res->n)
		same = 1; /* perf went deeper than our frame limit: compare the shared prefix */
	for (uint32_t i = 0; same && i < cmp_n; i++)
		same = replay_frame_match(&res->f[i], ips[i], i == 0);
	if (same) {
		t->identical++;
		return;
	}
	if (!verbose || t->examples >= REPLAY_MAX_EXAMPLES)
		return;
	t->examples++;
	printf("  mismatch tid %u time %" PRIu64 " (ours %u frames, %s; perf %u):\n", tid, time,
	       res->n, unw_reason_name(res->reason), n);
	for (uint32_t i = 0; i < (res->n > n ? res->n : n) && i < 40; i++)
		printf("    %2u ours %12" PRIx64 "/%-10" PRIx64 " perf %12" PRIx64 " %s\n", i,
		       i < res->n ? res->f[i].pc : 0, i < res->n ? res->f[i].va : 0,
		       i < n ? ips[i] : 0, i < n ? syms[i] : "");
}

/* Reads perf script output: "TID SEC.NSEC:" headers, then "\tIP SYM (DSO)" frame lines. */
static int replay_script(struct replay *r, const char *path, struct tally *t, int verbose)
{
	static uint64_t ips[REPLAY_MAX_PERF_FRAMES];
	static char syms[REPLAY_MAX_PERF_FRAMES][96];
	FILE *f = fopen(path, "re");
	char line[4096];
	uint32_t tid = 0, n = 0;
	uint64_t time = 0;
	int in_sample = 0;

	if (!f) {
		fprintf(stderr, "%s: %s\n", path, strerror(errno));
		return -1;
	}
	qsort(r->res, r->n_res, sizeof(*r->res), replay_cmp_result);
	for (;;) {
		char *got = fgets(line, sizeof(line), f);
		uint64_t sec, nsec, ip;
		unsigned utid;

		if (!got || line[0] != '\t') {
			if (in_sample)
				replay_compare(r, tid, time, ips, syms, n, t, verbose);
			in_sample = 0;
			if (!got)
				break;
			if (sscanf(line, " %u %" SCNu64 ".%" SCNu64 ":", &utid, &sec, &nsec) == 3) {
				tid = utid;
				time = sec * 1000000000ull + nsec;
				n = 0;
				in_sample = 1;
			}
			continue;
		}
		if (!in_sample || sscanf(line, " %" SCNx64, &ip) != 1)
			continue;
		/* kernel frames come first; only user frames are compared */
		if (ip >= 0xffff800000000000ull || strstr(line, "([kernel.kallsyms])"))
			continue;
		if (n < REPLAY_MAX_PERF_FRAMES) {
			char *sym = strchr(line + 1, ' ');

			snprintf(syms[n], sizeof(syms[n]), "%s", sym ? sym + 1 : "");
			syms[n][strcspn(syms[n], "\n")] = '\0';
			ips[n++] = ip;
		}
	}
	fclose(f);
	return 0;
}

static uint64_t replay_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Build time and size per object, and the time to load the same table from a cache file. */
static int replay_bench(int argc, char **argv)
{
	char tmp[] = "/tmp/ember-bench-XXXXXX";
	int fd = mkstemp(tmp);

	if (fd < 0)
		return 2;
	close(fd);
	printf("%-48s %9s %9s %10s %9s %9s  %s\n", "object", "rows", "cfi rows", "size KiB",
	       "build ms", "save+load", "rows per kind");
	for (int i = 0; i < argc; i++) {
		struct ehtable *t, *u = NULL;
		uint64_t t0;
		int rc = ehtable_build(argv[i], &t);

		if (rc) {
			printf("%-48s error %s\n", argv[i], strerror(-rc));
			continue;
		}
		t0 = replay_now_ns();
		if (ehtable_save(t, tmp) != 0 || ehtable_load(tmp, &u) != 0)
			printf("%-48s cache round trip failed\n", argv[i]);
		t0 = replay_now_ns() - t0;
		ehtable_free(u);
		printf("%-48s %9u %9u %10.1f %9.1f %9.1f ", argv[i], ehtable_hdr(t)->n_rows,
		       t->cfi_rows, ehtable_size_bytes(t) / 1024.0, t->build_ns / 1e6, t0 / 1e6);
		for (unsigned k = 0; k < UNW_KIND_COUNT; k++)
			printf(" %s=%u", ehtable_kind_name(k), t->kind_rows[k]);
		printf("\n");
		ehtable_free(t);
	}
	unlink(tmp);
	return 0;
}

int main(int argc, char **argv)
{
	const char *data = NULL, *script = NULL, *name = "replay";
	double min_pct = 0;
	int verbose = 0, opt, rc = 2;
	struct replay *r;
	struct tally t = {0};

	while ((opt = getopt(argc, argv, "i:s:n:t:vb")) != -1) {
		switch (opt) {
		case 'i':
			data = optarg;
			break;
		case 's':
			script = optarg;
			break;
		case 'n':
			name = optarg;
			break;
		case 't':
			min_pct = atof(optarg);
			break;
		case 'v':
			verbose = 1;
			break;
		case 'b':
			return replay_bench(argc - optind, argv + optind);
		default:
			goto usage;
		}
	}
	if (!data || !script)
		goto usage;
	r = calloc(1, sizeof(*r));
	if (!r || !(r->res = calloc(REPLAY_MAX_SAMPLES, sizeof(*r->res))))
		return 2;
	if (replay_perf_data(r, data) == 0 && replay_script(r, script, &t, verbose) == 0) {
		double ident = t.compared ? 100.0 * t.identical / t.compared : 0;

		printf("%s: samples %" PRIu64 ", identical %.2f %%, complete %.2f %%", name,
		       t.compared, ident, t.compared ? 100.0 * t.complete / t.compared : 0);
		printf(" (not in perf script %" PRIu64 ", no user regs %" PRIu64
		       ", no user frame in perf %" PRIu64 ", dropped %" PRIu64 "); ends:",
		       t.unmatched, r->no_regs, t.perf_no_user, r->dropped);
		for (unsigned k = 0; k < UNW_REASON_COUNT; k++)
			if (t.reasons[k])
				printf(" %s %" PRIu64, unw_reason_name(k), t.reasons[k]);
		printf("\n");
		if (verbose)
			for (int i = 0; i < r->n_objs; i++)
				printf("  object %s: %s\n", r->objs[i].path,
				       r->objs[i].rc ? strerror(-r->objs[i].rc) : "table");
		rc = t.compared > 0 && ident >= min_pct ? 0 : 1;
	}
	for (size_t i = 0; i < r->n_res; i++)
		free(r->res[i].f);
	free(r->res);
	for (int i = 0; i < r->n_objs; i++)
		ehtable_free(r->objs[i].t);
	for (int i = 0; i < r->n_procs; i++)
		free(r->procs[i]);
	unw_arena_free(&r->arena);
	free(r);
	return rc;
usage:
	fprintf(stderr,
		"usage: %s -i perf.data -s script.txt [-n name] [-t min_pct] [-v]\n"
		"       %s -b OBJECT...\n",
		argv[0], argv[0]);
	return 2;
}
