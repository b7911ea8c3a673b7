/*
 * unwinder — see unwinder.h. The story of one process scan: read the executable lines of
 * /proc/PID/maps → find or build the table of each mapped object (one build per object, shared)
 * → compute each mapping's bias (ehtable_bias) → a sorted struct unw_proc → one BPF map update,
 * which replaces the whole list atomically for the BPF walk (the procs map is not preallocated,
 * so the old value is freed after readers are done) → move the table references from the old
 * list to the new one.
 *
 * A table's slots are written to BPF before any mapping list points at them, and freed only when
 * no list has pointed at them for UNWINDER_GRACE_NS, so a walk never reads a half-written or
 * reused table through a current list.
 */
#define LOG_MODULE "unwinder"
#include "agent/unwinder.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>

#include "agent/ehtable.h"
#include "agent/unwind.h"
#include "common/log.h"

#define UNWINDER_PROC_BUCKETS 1024
#define UNWINDER_VDSO_DEV UINT64_MAX		/* object key of the vDSO */
#define UNWINDER_MAPS_MAX_BYTES (16u << 20)	/* /proc/PID/maps read at most */
#define UNWINDER_INLINE_BUILD_BYTES (16u << 20) /* objects built by the event thread itself */

struct unw_obj {
	int used;
	uint64_t dev, ino;	    /* its first file; 0, 0 once merged into another object */
	uint8_t id[EHTABLE_ID_MAX]; /* GNU build-id, else {dev, ino, size, mtime}; set at build */
	uint32_t id_len;	    /* 0: not known (yet) */
	uint32_t merged_into;	    /* 1 + index of the object with its identity and a table */
	uint32_t n_alias;	    /* other files with its identity, merged into it */
	struct {
		uint64_t dev, ino;
	} alias[UNWINDER_OBJ_ALIASES];
	/* Allocated: a PATH_MAX array here made the 4096 slots 17 MiB, all of it resident once
	 * the slot scans had read every page (a third of the DWARF agent's RSS). */
	char *path;
	struct ehtable *t; /* loads only (slots freed once in BPF); NULL when the build failed */
	uint32_t base, n_slots;
	uint32_t table_flags; /* unw_table_hdr.flags, kept once the slots are in BPF */
	uint32_t refs;
	int building;	       /* a thread builds the table with the lock released */
	int pending;	       /* waits for unwinder_build_pending() */
	int cache_tried;       /* neither the cache nor another object had its table */
	uint32_t pid;	       /* a process mapping it: the file is opened through its root */
	int small;	       /* file ≤ UNWINDER_INLINE_BUILD_BYTES: built without queueing */
	uint64_t unused_since; /* monotonic ns when refs dropped to 0 */
};

struct unw_uproc {
	struct unw_uproc *next;
	uint32_t pid;
	uint32_t n_objs;
	uint64_t sig; /* hash of the executable mapping lines, to skip unchanged rescans; 0 when
		       * a table was still being built (the next rescan completes the list) */
	uint64_t unknown_next_ns;    /* unwinder_scan_unknown() skips the process until then */
	uint64_t unknown_backoff_ns; /* doubled by every such scan that found nothing new */
	uint64_t born_ns;	     /* its first scan, or its last exec (unwinder_exec()) */
	int loaded;		     /* the list has libraries (UNWINDER_SCAN_UNLOADED) */
	uint16_t objs[UNW_MAX_MAPPINGS];
};

struct unwinder {
	pthread_mutex_t lock;
	struct unwinder_opts opts;
	char proc_root[256];
	char cache_dir[PATH_MAX];
	struct unw_obj *objs; /* UNWINDER_MAX_OBJECTS; id = index + 1 */
	struct unw_uproc *procs[UNWINDER_PROC_BUCKETS];
	struct unwinder_alloc alloc;
	struct unwinder_stats st;
	int n_pending; /* objects with pending set: unwinder_build_pending() skips its scan at 0 */
	uint64_t list_gen; /* the gen of the last mapping list written (struct unw_proc) */
};

static uint64_t unwinder_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- slot allocator ------------------------------------------------------------------------ */

void unwinder_alloc_init(struct unwinder_alloc *a, uint32_t n_slots)
{
	a->n = n_slots ? 1 : 0;
	a->ext[0].start = 0;
	a->ext[0].len = n_slots;
}

int unwinder_alloc_get(struct unwinder_alloc *a, uint32_t len, uint32_t *start)
{
	for (uint32_t i = 0; i < a->n; i++) {
		if (a->ext[i].len < len)
			continue;
		*start = a->ext[i].start;
		a->ext[i].start += len;
		a->ext[i].len -= len;
		if (a->ext[i].len == 0) {
			memmove(&a->ext[i], &a->ext[i + 1], (a->n - i - 1) * sizeof(a->ext[0]));
			a->n--;
		}
		return 0;
	}
	return -ENOSPC;
}

int unwinder_alloc_put(struct unwinder_alloc *a, uint32_t start, uint32_t len)
{
	uint32_t i = 0;
	int merge_prev, merge_next;

	while (i < a->n && a->ext[i].start < start)
		i++;
	merge_prev = i > 0 && a->ext[i - 1].start + a->ext[i - 1].len == start;
	merge_next = i < a->n && start + len == a->ext[i].start;
	if (merge_prev && merge_next) {
		a->ext[i - 1].len += len + a->ext[i].len;
		memmove(&a->ext[i], &a->ext[i + 1], (a->n - i - 1) * sizeof(a->ext[0]));
		a->n--;
	} else if (merge_prev) {
		a->ext[i - 1].len += len;
	} else if (merge_next) {
		a->ext[i].start = start;
		a->ext[i].len += len;
	} else {
		if (a->n == UNWINDER_MAX_EXTENTS)
			return -ENOSPC;
		memmove(&a->ext[i + 1], &a->ext[i], (a->n - i) * sizeof(a->ext[0]));
		a->ext[i].start = start;
		a->ext[i].len = len;
		a->n++;
	}
	return 0;
}

/* ---- objects ------------------------------------------------------------------------------- */

/*
 * Builds run at opts.build_nice, but never while holding the lock: a low-priority thread that
 * holds it on a busy machine would stall exec events for seconds (priority inversion).
 */
static void unwinder_nice(struct unwinder *u, int nice)
{
	if (u->opts.build_nice)
		setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), nice);
}

static void unwinder_free_obj(struct unwinder *u, struct unw_obj *o);

/* Frees the table unused for longest (not keep); -ENOENT when every table is in use. */
static int unwinder_evict_one(struct unwinder *u, const struct unw_obj *keep)
{
	struct unw_obj *oldest = NULL;

	for (int i = 0; i < UNWINDER_MAX_OBJECTS; i++) {
		struct unw_obj *o = &u->objs[i];

		if (o->used && o != keep && o->refs == 0 && !o->building && o->t &&
		    unwinder_now_ns() - o->unused_since >= UNWINDER_ID_HOLD_NS &&
		    (!oldest || o->unused_since < oldest->unused_since))
			oldest = o;
	}
	if (!oldest)
		return -ENOENT;
	unwinder_free_obj(u, oldest);
	return 0;
}

/*
 * Copies table t of o into BPF slots. Called locked; the slot range is reserved under the lock,
 * the copy (up to a million slots) runs unlocked while o is still marked building.
 */
static int unwinder_upload(struct unwinder *u, struct unw_obj *o, struct ehtable *t)
{
	LIBBPF_OPTS(bpf_map_batch_opts, bopts);
	uint32_t n = t->n_slots, base, count = n, *keys;
	int rc = 0;

	while (unwinder_alloc_get(&u->alloc, n, &base)) {
		if (unwinder_evict_one(u, o) == 0) {
			u->st.objects_evicted++;
			continue;
		}
		u->st.slots_full++;
		log_warn("no room for the %u-slot table of %s (%" PRIu64 " of %" PRIu64
			 " slots used)",
			 n, o->path, u->st.slots_used, u->st.slots_max);
		return -ENOSPC;
	}
	u->st.slots_used += n;
	pthread_mutex_unlock(&u->lock);
	keys = malloc((size_t)n * sizeof(*keys));
	if (keys) {
		for (uint32_t i = 0; i < n; i++)
			keys[i] = base + i;
		if (bpf_map_update_batch(u->opts.slots_fd, keys, t->slots, &count, &bopts))
			rc = -errno;
		free(keys);
	} else {
		rc = -ENOMEM;
	}
	pthread_mutex_lock(&u->lock);
	if (rc) {
		u->st.slots_used -= n;
		unwinder_alloc_put(&u->alloc, base, n);
		log_warn("write the table of %s into BPF: %s", o->path, strerror(-rc));
		return rc;
	}
	o->base = base;
	o->n_slots = n;
	o->table_flags = ehtable_hdr(t)->flags;
	free(t->slots);
	t->slots = NULL;
	return 0;
}

/*
 * Another object with o's identity already has a table (the same library at another path or
 * inode, as in another container): o's file becomes its alias, o keeps no table and is merged
 * (its lists move to the other object when rescanned). Called locked; 1 when merged.
 */
static int unwinder_merge(struct unwinder *u, struct unw_obj *o)
{
	for (int i = 0; i < UNWINDER_MAX_OBJECTS; i++) {
		struct unw_obj *m = &u->objs[i];

		if (m == o || !m->used || m->merged_into || !m->t || m->id_len != o->id_len ||
		    memcmp(m->id, o->id, o->id_len) != 0)
			continue;
		if (m->n_alias == UNWINDER_OBJ_ALIASES)
			return 0; /* o keeps a table of its own */
		m->alias[m->n_alias].dev = o->dev;
		m->alias[m->n_alias].ino = o->ino;
		m->n_alias++;
		log_debug("%s shares the table of %s (same identity)", o->path, m->path);
		o->dev = o->ino = 0;
		o->merged_into = (uint32_t)i + 1;
		u->st.objects_shared++;
		return 1;
	}
	return 0;
}

/* How unwinder_build() gets a table. */
enum unwinder_build_mode {
	UNWINDER_BUILD_INLINE,	   /* cache or libdw, at the caller's priority */
	UNWINDER_BUILD_BACKGROUND, /* cache or libdw, at opts.build_nice */
	UNWINDER_BUILD_CACHED,	   /* another object's table or the cache only: a file read */
};

/*
 * Builds (or loads from the cache) the table of o with the lock released (a big object takes
 * seconds; other scans go on meanwhile), then uploads it. o->t stays NULL when there is none.
 * UNWINDER_BUILD_CACHED leaves o pending (cache_tried) when a libdw build would be needed.
 */
static void unwinder_build(struct unwinder *u, struct unw_obj *o, enum unwinder_build_mode mode)
{
	int background = mode == UNWINDER_BUILD_BACKGROUND;
	char open_path[PATH_MAX + 300];
	uint64_t t0 = unwinder_now_ns();
	struct ehtable *t = NULL;
	int rc = -ENOENT, cached = 0;

	/* Through the process's root (containers); the plain path once that process is gone. */
	snprintf(open_path, sizeof(open_path), "%s/%u/root%s", u->proc_root, o->pid, o->path);
	if (access(open_path, R_OK))
		snprintf(open_path, sizeof(open_path), "%s", o->path);
	o->building = 1;
	if (o->pending)
		u->n_pending--;
	o->pending = 0;
	if (o->dev != UNWINDER_VDSO_DEV && o->id_len && unwinder_merge(u, o)) {
		o->building = 0; /* identified by an earlier try; another object has a table now */
		return;
	}
	pthread_mutex_unlock(&u->lock);
	if (o->dev != UNWINDER_VDSO_DEV && !o->id_len) {
		uint8_t id[EHTABLE_ID_MAX];
		uint32_t id_len;
		int is_bid, have_id = ehtable_identify(open_path, id, &id_len, &is_bid) == 0;

		pthread_mutex_lock(&u->lock);
		if (have_id) {
			memcpy(o->id, id, id_len);
			o->id_len = id_len;
			if (unwinder_merge(u, o)) {
				o->building = 0;
				return;
			}
		}
		pthread_mutex_unlock(&u->lock);
	}
	if (o->dev != UNWINDER_VDSO_DEV && u->cache_dir[0] && o->id_len &&
	    ehtable_cache_get(u->cache_dir, o->id, o->id_len, &t) == 0)
		cached = 1;
	if (mode == UNWINDER_BUILD_CACHED && !cached) {
		pthread_mutex_lock(&u->lock);
		o->building = 0;
		o->pending = 1;
		o->cache_tried = 1;
		u->n_pending++;
		return;
	}
	if (background)
		unwinder_nice(u, u->opts.build_nice);
	if (o->dev == UNWINDER_VDSO_DEV) {
		rc = ehtable_build_vdso(&t);
	} else {
		rc = cached ? 0 : ehtable_build(open_path, &t);
		if (!cached && rc == 0 && u->cache_dir[0])
			ehtable_cache_put(u->cache_dir, t, EHTABLE_CACHE_MAX_BYTES);
		/* Go: frame pointers, the leaf by its row (a table without rows if no CFI). */
		if (ehtable_is_go(open_path) == 1) {
			if (rc == 0)
				ehtable_use_frame_pointers(t);
			else
				rc = ehtable_build_fp_only(open_path, &t);
		}
	}
	if (background)
		unwinder_nice(u, 0);
	pthread_mutex_lock(&u->lock);
	u->st.build_ns += unwinder_now_ns() - t0;
	if (rc) {
		o->building = 0;
		u->st.table_failures++;
		log_debug("no unwind table for %s: %s", o->path, strerror(-rc));
		return;
	}
	if (cached)
		u->st.tables_from_cache++;
	else
		u->st.tables_built++;
	log_debug("table of %s: %u slots in %.1f ms%s", o->path, t->n_slots,
		  (double)(unwinder_now_ns() - t0) / 1e6, background ? " (background)" : "");
	if (unwinder_upload(u, o, t) == 0)
		o->t = t;
	else
		ehtable_free(t);
	o->building = 0;
}

static void unwinder_free_obj(struct unwinder *u, struct unw_obj *o)
{
	if (o->t) {
		if (unwinder_alloc_put(&u->alloc, o->base, o->n_slots) == 0)
			u->st.slots_used -= o->n_slots;
		ehtable_free(o->t);
	}
	if (o->pending)
		u->n_pending--;
	free(o->path);
	memset(o, 0, sizeof(*o));
	u->st.objects--;
	u->st.objects_freed++;
}

/* o's first file, or one merged into it; a merged object matches no file. */
static int unwinder_is_file(const struct unw_obj *o, uint64_t dev, uint64_t ino)
{
	if (o->merged_into)
		return 0;
	if (o->dev == dev && o->ino == ino)
		return 1;
	for (uint32_t a = 0; a < o->n_alias; a++)
		if (o->alias[a].dev == dev && o->alias[a].ino == ino)
			return 1;
	return 0;
}

/* Small objects (most executables and libraries) take a few ms: build them at once. */
static int unwinder_is_small(struct unwinder *u, uint32_t pid, const char *path)
{
	char p[PATH_MAX + 300];
	struct stat st;

	if (strcmp(path, "[vdso]") == 0)
		return 1;
	snprintf(p, sizeof(p), "%s/%u/root%s", u->proc_root, pid, path);
	return stat(p, &st) == 0 && st.st_size <= UNWINDER_INLINE_BUILD_BYTES;
}

/*
 * What a scan does with an object that has no table yet: build it (BUILD, or SMALL for a small
 * one), else take another object's table or the cached one if there is one (a file read), else
 * queue it for unwinder_build_pending().
 */
static void unwinder_obj_prepare(struct unwinder *u, struct unw_obj *o, int flags)
{
	if (!o->pending || o->building)
		return;
	if (flags & UNWINDER_SCAN_BUILD)
		unwinder_build(u, o, UNWINDER_BUILD_BACKGROUND);
	else if ((flags & UNWINDER_SCAN_SMALL) && o->small)
		unwinder_build(u, o, UNWINDER_BUILD_INLINE);
	else if (!o->cache_tried)
		unwinder_build(u, o, UNWINDER_BUILD_CACHED);
}

/* The object of a mapping, prepared by unwinder_obj_prepare(); -1 when there is no room. */
static int unwinder_obj(struct unwinder *u, uint64_t dev, uint64_t ino, const char *path,
			uint32_t pid, int flags)
{
	int free_i = -1, oldest = -1;
	uint64_t now;

	for (int i = 0; i < UNWINDER_MAX_OBJECTS; i++) {
		struct unw_obj *o = &u->objs[i];

		if (!o->used) {
			if (free_i < 0)
				free_i = i;
			continue;
		}
		if (unwinder_is_file(o, dev, ino)) {
			unwinder_obj_prepare(u, o, flags);
			return o->merged_into ? (int)o->merged_into - 1 : i;
		}
	}
	if (free_i < 0) {
		/* Every slot used: the one unused for longest goes (a clock read per scan line and
		 * object was 3-4 % of the event thread's time in an exec storm). */
		now = unwinder_now_ns();
		for (int i = 0; i < UNWINDER_MAX_OBJECTS; i++) {
			struct unw_obj *o = &u->objs[i];

			if (o->refs == 0 && !o->building &&
			    now - o->unused_since >= UNWINDER_ID_HOLD_NS &&
			    (oldest < 0 || o->unused_since < u->objs[oldest].unused_since))
				oldest = i;
		}
		if (oldest < 0)
			return -1;
		unwinder_free_obj(u, &u->objs[oldest]);
		free_i = oldest;
	}
	struct unw_obj *o = &u->objs[free_i];

	o->path = strdup(path);
	if (!o->path)
		return -1;
	o->used = 1;
	o->dev = dev;
	o->ino = ino;
	o->unused_since = unwinder_now_ns();
	o->pid = pid;
	o->pending = 1;
	u->n_pending++;
	o->small = unwinder_is_small(u, pid, path);
	u->st.objects++;
	unwinder_obj_prepare(u, o, flags);
	return o->merged_into ? (int)o->merged_into - 1 : free_i;
}

/* ---- processes ----------------------------------------------------------------------------- */

static struct unw_uproc **unwinder_proc_slot(struct unwinder *u, uint32_t pid)
{
	struct unw_uproc **pp = &u->procs[pid % UNWINDER_PROC_BUCKETS];

	while (*pp && (*pp)->pid != pid)
		pp = &(*pp)->next;
	return pp;
}

static void unwinder_unref(struct unwinder *u, const uint16_t *objs, uint32_t n)
{
	uint64_t now = unwinder_now_ns();

	for (uint32_t i = 0; i < n; i++) {
		struct unw_obj *o = &u->objs[objs[i]];

		if (o->refs && --o->refs == 0)
			o->unused_since = now;
	}
}

static uint64_t unwinder_sig(uint64_t h, const char *s)
{
	while (*s)
		h = (h ^ (uint8_t)*s++) * 0x100000001b3ull;
	return h;
}

/*
 * Adds one executable mapping line to list; objs collects the referenced objects. *incomplete
 * is set when the object's table is being built by another thread.
 */
static void unwinder_add_mapping(struct unwinder *u, uint32_t pid, const char *line, int flags,
				 struct unw_proc *list, uint16_t *objs, uint32_t *n_objs,
				 int *incomplete)
{
	uint64_t start, end, pgoff, ino, bias;
	unsigned int major, minor;
	char perms[5];
	struct unw_mapping m;
	const char *path;
	int pos = 0, oi;

	if (sscanf(line, "%" SCNx64 "-%" SCNx64 " %4s %" SCNx64 " %x:%x %" SCNu64 " %n", &start,
		   &end, perms, &pgoff, &major, &minor, &ino, &pos) < 7 ||
	    perms[2] != 'x')
		return;
	path = line + pos;
	if (strcmp(path, "[vdso]") == 0)
		oi = unwinder_obj(u, UNWINDER_VDSO_DEV, UNWINDER_VDSO_DEV, path, pid, flags);
	else if (path[0] == '/' && ino && !strstr(path, " (deleted)"))
		oi = unwinder_obj(u, ((uint64_t)major << 32) | minor, ino, path, pid, flags);
	else
		return; /* anonymous code (JIT), deleted files: frame-pointer steps */

	memset(&m, 0, sizeof(m));
	m.start = start;
	m.end = end;
	if (oi < 0) {
		m.flags = UNW_MAP_NO_TABLE;
	} else {
		struct unw_obj *o = &u->objs[oi];

		m.flags = (uint32_t)(oi + 1) << UNW_MAP_OBJ_SHIFT;
		if (o->building || o->pending)
			*incomplete = 1;
		if (o->t && ehtable_bias(o->t, start, pgoff, &bias) == 0) {
			m.bias = bias;
			m.table_base = o->base;
			if (o->table_flags & UNW_TABLE_FP)
				m.flags |= UNW_MAP_FP;
		} else {
			m.flags |= UNW_MAP_NO_TABLE;
		}
	}
	if (unw_proc_insert(list, &m)) {
		u->st.mappings_dropped++;
		return;
	}
	if (oi >= 0 && *n_objs < UNW_MAX_MAPPINGS) {
		u->objs[oi].refs++;
		objs[(*n_objs)++] = (uint16_t)oi;
	}
}

/* Reads /proc/PID/maps whole, unlocked; the caller frees *buf. */
static int unwinder_read_maps(struct unwinder *u, uint32_t pid, char **buf, size_t *len)
{
	char path[300];
	size_t cap = 16384, n = 0;
	char *b = NULL;
	ssize_t r;
	int fd, rc = 0;

	snprintf(path, sizeof(path), "%s/%u/maps", u->proc_root, pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	for (;;) {
		if (!b || n == cap) {
			char *nb;

			if (b)
				cap *= 2;
			if (cap > UNWINDER_MAPS_MAX_BYTES) {
				rc = -E2BIG;
				break;
			}
			nb = realloc(b, cap);
			if (!nb) {
				rc = -ENOMEM;
				break;
			}
			b = nb;
		}
		r = read(fd, b + n, cap - n);
		if (r < 0) {
			rc = -errno;
			break;
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	close(fd);
	if (rc) {
		free(b);
		return rc;
	}
	*buf = b;
	*len = n;
	return 0;
}

/*
 * One scan of maps (pid's /proc/PID/maps). *unchanged is set when its executable lines had not
 * changed, *incomplete when a table it maps was still missing (pending or being built).
 */
static int unwinder_scan_locked(struct unwinder *u, uint32_t pid, int flags, char *maps,
				size_t maps_len, int *unchanged, int *incomplete_out)
{
	char line[PATH_MAX + 128];
	uint16_t objs[UNW_MAX_MAPPINGS];
	struct unw_uproc **pp, *p;
	struct unw_proc *list;
	uint32_t n_objs = 0;
	uint64_t sig = 0xcbf29ce484222325ull;
	int rc, incomplete = 0;
	FILE *f;

	*incomplete_out = 0;
	f = fmemopen(maps, maps_len, "r");
	if (!f)
		return -errno;
	u->st.scans++;
	pp = unwinder_proc_slot(u, pid);
	/* First pass: the signature of the executable lines, to skip unchanged processes. */
	while (fgets(line, sizeof(line), f)) {
		char *sp = strchr(line, ' ');

		if (sp && sp[3] == 'x')
			sig = unwinder_sig(sig, line);
	}
	*unchanged = *pp && (*pp)->sig == sig;
	if (*unchanged && !(flags & UNWINDER_SCAN_FORCE)) {
		fclose(f);
		u->st.scan_unchanged++;
		return 0;
	}
	if ((flags & UNWINDER_SCAN_SMALL_IF_KNOWN) && *pp)
		flags |= UNWINDER_SCAN_SMALL; /* a known process that mapped more: dlopen */
	list = calloc(1, sizeof(*list));
	if (!list) {
		fclose(f);
		return -ENOMEM;
	}
	rewind(f);
	while (fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = '\0';
		/* May release the lock while a table builds: pp is looked up again below. */
		unwinder_add_mapping(u, pid, line, flags, list, objs, &n_objs, &incomplete);
	}
	fclose(f);
	if (list->n == 0) {
		unwinder_unref(u, objs, n_objs);
		free(list);
		return -ENOENT; /* a kernel thread, or the process is gone */
	}

	pp = unwinder_proc_slot(u, pid);
	p = *pp;
	if (!p) {
		if (u->st.procs >= u->opts.max_procs) {
			u->st.procs_full++;
			unwinder_unref(u, objs, n_objs);
			free(list);
			return -ENOSPC;
		}
		p = calloc(1, sizeof(*p));
		if (!p) {
			unwinder_unref(u, objs, n_objs);
			free(list);
			return -ENOMEM;
		}
		p->pid = pid;
		p->born_ns = unwinder_now_ns();
		*pp = p;
		u->st.procs++;
	}
	list->gen = ++u->list_gen;
	rc = bpf_map_update_elem(u->opts.procs_fd, &pid, list, BPF_ANY) ? -errno : 0;
	free(list);
	if (rc) {
		u->st.procs_full++;
		log_debug("pid %u: store mapping list: %s", pid, strerror(-rc));
	}
	/* References move from the old list to the new one (new first: shared objects stay). */
	unwinder_unref(u, p->objs, p->n_objs);
	memcpy(p->objs, objs, n_objs * sizeof(objs[0]));
	p->n_objs = n_objs;
	p->sig = rc || incomplete ? 0 : sig;
	/* More than the executable, its interpreter and the vDSO: ld.so has mapped libraries. */
	p->loaded = rc == 0 && !incomplete && n_objs > 3;
	*incomplete_out = incomplete;
	return rc;
}

/* unwinder_scan_process(); *unchanged is set when the executable mappings had not changed. */
static int unwinder_scan(struct unwinder *u, uint32_t pid, int flags, int *unchanged)
{
	uint64_t t0 = unwinder_now_ns();
	char *maps = NULL;
	size_t len = 0;
	int rc;

	*unchanged = 0;
	if (flags & UNWINDER_SCAN_UNLOADED) {
		pthread_mutex_lock(&u->lock);
		rc = *unwinder_proc_slot(u, pid) && (*unwinder_proc_slot(u, pid))->loaded;
		if (rc)
			u->st.scans_skipped++;
		pthread_mutex_unlock(&u->lock);
		if (rc)
			return 0;
	}
	rc = unwinder_read_maps(u, pid, &maps, &len);
	if (rc == 0 && len) {
		int small = flags & (UNWINDER_SCAN_SMALL | UNWINDER_SCAN_SMALL_IF_KNOWN);
		int incomplete = 0;

		pthread_mutex_lock(&u->lock);
		/* With inline builds: first the list with every table that exists or is cached
		 * (a file read), stored at once; then the builds, and the list again. */
		if (small && !(flags & UNWINDER_SCAN_BUILD))
			rc = unwinder_scan_locked(u, pid, flags & ~small, maps, len, unchanged,
						  &incomplete);
		if (!small || (flags & UNWINDER_SCAN_BUILD) || (rc == 0 && incomplete))
			rc = unwinder_scan_locked(u, pid, flags | (small ? UNWINDER_SCAN_FORCE : 0),
						  maps, len, unchanged, &incomplete);
		if (incomplete)
			u->st.incomplete_scans++;
		pthread_mutex_unlock(&u->lock);
	} else if (rc == 0) {
		rc = -ENOENT; /* a kernel thread, or gone */
	}
	free(maps);
	log_debug("pid %u: scanned in %.1f ms: %s", pid, (double)(unwinder_now_ns() - t0) / 1e6,
		  rc ? strerror(-rc) : "ok");
	return rc;
}

int unwinder_scan_process(struct unwinder *u, uint32_t pid, int flags)
{
	int unchanged;

	return unwinder_scan(u, pid, flags, &unchanged);
}

int unwinder_scan_unknown(struct unwinder *u, uint32_t pid)
{
	uint64_t now = unwinder_now_ns();
	struct unw_uproc *p;
	int rc, unchanged;

	pthread_mutex_lock(&u->lock);
	p = *unwinder_proc_slot(u, pid);
	if (p && now < p->unknown_next_ns) {
		u->st.unknown_skipped++;
		pthread_mutex_unlock(&u->lock);
		return 0;
	}
	pthread_mutex_unlock(&u->lock);
	/* dlopen in a known process: small tables inline. A process the first scan has not
	 * reached yet: its builds are queued (they would hold up exec events). The list is
	 * stored again even when unchanged: BPF found a pc outside the list it holds. */
	rc = unwinder_scan(u, pid, UNWINDER_SCAN_FORCE | UNWINDER_SCAN_SMALL_IF_KNOWN, &unchanged);
	pthread_mutex_lock(&u->lock);
	p = *unwinder_proc_slot(u, pid);
	if (p && unchanged) {
		/* Nothing new was mapped: the pc is JIT or anonymous code, or, in a young
		 * process, a library ld.so is about to map (a short first back-off). */
		int young = unwinder_now_ns() - p->born_ns < UNWINDER_YOUNG_NS;

		p->unknown_backoff_ns = p->unknown_backoff_ns ? p->unknown_backoff_ns * 2
				      : young ? UNWINDER_UNKNOWN_BACKOFF_YOUNG_NS
					      : UNWINDER_UNKNOWN_BACKOFF_MIN_NS;
		if (p->unknown_backoff_ns > UNWINDER_UNKNOWN_BACKOFF_MAX_NS)
			p->unknown_backoff_ns = UNWINDER_UNKNOWN_BACKOFF_MAX_NS;
		p->unknown_next_ns = unwinder_now_ns() + p->unknown_backoff_ns;
	} else if (p) {
		p->unknown_backoff_ns = 0;
		p->unknown_next_ns = 0;
	}
	pthread_mutex_unlock(&u->lock);
	return rc;
}

int unwinder_scan_all(struct unwinder *u, int (*stop)(void *arg), void *arg)
{
	DIR *d = opendir(u->proc_root);
	struct dirent *de;
	int n = 0;

	if (!d)
		return -errno;
	while ((de = readdir(d))) {
		char *end;
		unsigned long pid = strtoul(de->d_name, &end, 10);

		if (*end || pid == 0 || pid > UINT32_MAX)
			continue;
		if (unwinder_scan_process(u, (uint32_t)pid, UNWINDER_SCAN_BUILD) == 0)
			n++;
		if (stop && stop(arg))
			break;
	}
	closedir(d);
	return n;
}

int unwinder_rescan_incomplete(struct unwinder *u)
{
	uint32_t pids[64], n = 0;

	pthread_mutex_lock(&u->lock);
	for (int b = 0; b < UNWINDER_PROC_BUCKETS && n < 64; b++)
		for (struct unw_uproc *p = u->procs[b]; p && n < 64; p = p->next)
			if (p->sig == 0)
				pids[n++] = p->pid;
	pthread_mutex_unlock(&u->lock);
	for (uint32_t i = 0; i < n; i++)
		unwinder_scan_process(u, pids[i], 0);
	return (int)n;
}

int unwinder_build_pending(struct unwinder *u)
{
	int built = 0;

	pthread_mutex_lock(&u->lock);
	/* Called every few ms by the builder thread: walking 4096 slots each time when nothing
	 * waits was a quarter of the agent's CPU (bench/overhead). */
	for (int i = 0; i < UNWINDER_MAX_OBJECTS && !built && u->n_pending > 0; i++) {
		struct unw_obj *o = &u->objs[i];

		if (o->used && o->pending && !o->building) {
			unwinder_build(u, o, UNWINDER_BUILD_BACKGROUND);
			built = 1;
		}
	}
	pthread_mutex_unlock(&u->lock);
	return built;
}

void unwinder_exec(struct unwinder *u, uint32_t pid)
{
	struct unw_uproc **pp, *p;

	pthread_mutex_lock(&u->lock);
	pp = unwinder_proc_slot(u, pid);
	p = *pp;
	if (!p && u->st.procs < u->opts.max_procs && (p = calloc(1, sizeof(*p)))) {
		p->pid = pid;
		*pp = p;
		u->st.procs++;
	}
	if (p) {
		/* The old list stays until the new one replaces it (deleting it here or in
		 * oncpu_exec, and scanning after the batch of events, left test_agent's
		 * cpu_split with 4-9 % one-frame stacks, 0-2 % before). */
		p->sig = 0;
		p->loaded = 0;
		p->born_ns = unwinder_now_ns();
		p->unknown_backoff_ns = 0;
		p->unknown_next_ns = 0;
	}
	pthread_mutex_unlock(&u->lock);
}

void unwinder_drop_process(struct unwinder *u, uint32_t pid)
{
	struct unw_uproc **pp, *p;

	pthread_mutex_lock(&u->lock);
	pp = unwinder_proc_slot(u, pid);
	p = *pp;
	if (p) {
		*pp = p->next;
		bpf_map_delete_elem(u->opts.procs_fd, &pid);
		unwinder_unref(u, p->objs, p->n_objs);
		free(p);
		u->st.procs--;
	}
	pthread_mutex_unlock(&u->lock);
}

void unwinder_collect(struct unwinder *u)
{
	uint64_t now = unwinder_now_ns();

	pthread_mutex_lock(&u->lock);
	for (int i = 0; i < UNWINDER_MAX_OBJECTS; i++) {
		struct unw_obj *o = &u->objs[i];

		if (o->used && o->refs == 0 && now - o->unused_since >= UNWINDER_GRACE_NS)
			unwinder_free_obj(u, o);
	}
	pthread_mutex_unlock(&u->lock);
}

int unwinder_object_path(struct unwinder *u, uint32_t obj_id, char *buf, size_t size)
{
	int rc = -ENOENT;

	pthread_mutex_lock(&u->lock);
	if (obj_id >= 1 && obj_id <= UNWINDER_MAX_OBJECTS && u->objs[obj_id - 1].used) {
		snprintf(buf, size, "%s", u->objs[obj_id - 1].path);
		rc = 0;
	}
	pthread_mutex_unlock(&u->lock);
	return rc;
}

int unwinder_object_info(struct unwinder *u, uint32_t obj_id, char *path, size_t size,
			 uint64_t *dev, uint64_t *ino, uint32_t *pid)
{
	int rc = -ENOENT;

	pthread_mutex_lock(&u->lock);
	if (obj_id >= 1 && obj_id <= UNWINDER_MAX_OBJECTS && u->objs[obj_id - 1].used) {
		const struct unw_obj *o = &u->objs[obj_id - 1];

		snprintf(path, size, "%s", o->path);
		*dev = o->dev;
		*ino = o->ino;
		*pid = o->pid;
		rc = 0;
	}
	pthread_mutex_unlock(&u->lock);
	return rc;
}

void unwinder_get_stats(struct unwinder *u, struct unwinder_stats *st)
{
	pthread_mutex_lock(&u->lock);
	*st = u->st;
	st->pending = (uint64_t)u->n_pending;
	pthread_mutex_unlock(&u->lock);
}

int unwinder_open(const struct unwinder_opts *opts, struct unwinder **out)
{
	struct unwinder *u;

	*out = NULL;
	if (opts->slots_fd < 0 || opts->procs_fd < 0 || !opts->max_slots)
		return -EINVAL;
	u = calloc(1, sizeof(*u));
	if (!u)
		return -ENOMEM;
	u->objs = calloc(UNWINDER_MAX_OBJECTS, sizeof(*u->objs));
	if (!u->objs) {
		free(u);
		return -ENOMEM;
	}
	pthread_mutex_init(&u->lock, NULL);
	u->opts = *opts;
	if (!u->opts.max_procs || u->opts.max_procs > UNWINDER_MAX_PROCS)
		u->opts.max_procs = UNWINDER_MAX_PROCS;
	snprintf(u->proc_root, sizeof(u->proc_root), "%s",
		 opts->proc_root ? opts->proc_root : "/proc");
	if (opts->cache_dir)
		snprintf(u->cache_dir, sizeof(u->cache_dir), "%s", opts->cache_dir);
	unwinder_alloc_init(&u->alloc, opts->max_slots);
	u->st.slots_max = opts->max_slots;
	*out = u;
	return 0;
}

void unwinder_close(struct unwinder *u)
{
	if (!u)
		return;
	for (int b = 0; b < UNWINDER_PROC_BUCKETS; b++) {
		while (u->procs[b]) {
			struct unw_uproc *p = u->procs[b];

			u->procs[b] = p->next;
			free(p);
		}
	}
	for (int i = 0; i < UNWINDER_MAX_OBJECTS; i++) {
		if (u->objs[i].used)
			ehtable_free(u->objs[i].t);
		free(u->objs[i].path);
	}
	pthread_mutex_destroy(&u->lock);
	free(u->objs);
	free(u);
}
