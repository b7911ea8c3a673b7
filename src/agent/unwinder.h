/*
 * unwinder — the user-space half of DWARF unwinding in BPF (design/dwarf-unwinding.md §2.3, §2.7):
 * puts unwind tables (src/agent/ehtable.c) into the BPF program's one global slot ARRAY and keeps
 * each process's sorted executable mappings (struct unw_proc) in the BPF procs HASH.
 *
 * Objects are keyed by (device, inode) as /proc/PID/maps shows them; the vDSO is one object
 * built once from this process's own copy. Before a table is built, the file's identity (GNU
 * build-id, else device, inode, size and mtime) is read: when another object with the same
 * identity has a table (the same library at another path or inode: another container's copy),
 * the file becomes that object's alias (up to UNWINDER_OBJ_ALIASES) and every mapping of it
 * uses that table and object id. Identities are read only when a table is due, off the scan of
 * objects already known. A table is built at most once per object (or read
 * from the on-disk cache when a directory is given), is shared by every process that maps the
 * object, and is reference counted: its slots are freed UNWINDER_GRACE_NS after the last
 * process using it went away (so exec storms and short-lived processes reuse it), or earlier
 * when a new table needs the room. The slot allocator is first-fit over a bounded list of free
 * extents.
 *
 * Every object gets a small id (1..UNWINDER_MAX_OBJECTS), stored in the high bits of its
 * mappings' flags (UNW_MAP_OBJ_SHIFT), so the BPF walk can store frames as object id + ELF
 * address (UNW_FRAME_ENCODED), resolvable with unwinder_object_info(). An id is not given to
 * another object before UNWINDER_ID_HOLD_NS after its last process went away, so stacks
 * sampled before an exit still name the right object at the next drain.
 *
 * Threading: calls may come from several threads (the sampler's event and scan threads): state
 * is under an internal mutex, released only while one table builds, so a big object (seconds)
 * does not hold up the scan of a new process; a list that missed a table still being built is
 * completed by unwinder_rescan_incomplete(). Nothing here blocks on BPF programs.
 */
#ifndef EMBER_AGENT_UNWINDER_H
#define EMBER_AGENT_UNWINDER_H

#include <stddef.h>
#include <stdint.h>

#include "bpf/unwind.h"

#define UNWINDER_MAX_OBJECTS 4096	 /* distinct objects with a table (ids fit 16 bits) */
#define UNWINDER_MAX_PROCS 4096		 /* processes with a mapping list (BPF procs map) */
#define UNWINDER_MAX_EXTENTS 8192	 /* free-slot extents the allocator tracks */
#define UNWINDER_GRACE_NS 30000000000ull /* unused tables live on this long */
#define UNWINDER_OBJ_ALIASES 8		 /* files merged into one object by identity */
/* An object unused for less than this keeps its id even when its table's room is wanted:
 * stacks not drained yet name it (UNW_FRAME_ENCODED frames); drains come every second or so. */
#define UNWINDER_ID_HOLD_NS 10000000000ull
/* A process whose unknown-address rescans find nothing new (JIT code) is rescanned at most once
 * per backoff, doubled from MIN up to MAX by each such scan; a new mapping resets it. */
#define UNWINDER_UNKNOWN_BACKOFF_MIN_NS 200000000ull
#define UNWINDER_UNKNOWN_BACKOFF_MAX_NS 2000000000ull
/* A process is young for this long after its first scan or its exec: ld.so (and start-up
 * dlopen) map its libraries, so its first back-off is only UNWINDER_UNKNOWN_BACKOFF_YOUNG_NS.
 * BPF reports unknown addresses of a young process at most every 10 ms (oncpu.bpf.c). */
#define UNWINDER_YOUNG_NS 1000000000ull
#define UNWINDER_UNKNOWN_BACKOFF_YOUNG_NS 5000000ull

struct unwinder_opts {
	int slots_fd;	       /* BPF ARRAY, u32 → u64 */
	uint32_t max_slots;    /* its max_entries */
	int procs_fd;	       /* BPF HASH, u32 tgid → struct unw_proc */
	uint32_t max_procs;    /* its max_entries */
	const char *proc_root; /* "/proc" unless testing */
	const char *cache_dir; /* on-disk table cache, NULL for none */
	int build_nice;	       /* nice value of a thread while it builds a table (0: unchanged) */
};

struct unwinder_stats {
	uint64_t procs;	  /* processes with a mapping list now */
	uint64_t objects; /* objects with a table now */
	uint64_t slots_used, slots_max;
	uint64_t tables_built, tables_from_cache, table_failures;
	uint64_t build_ns;	   /* total wall time spent building tables */
	uint64_t scans;		   /* /proc/PID/maps reads */
	uint64_t scans_skipped;	   /* UNWINDER_SCAN_UNLOADED scans of a loaded process */
	uint64_t scan_unchanged;   /* ... whose executable mappings had not changed */
	uint64_t slots_full;	   /* tables that did not fit the slot array */
	uint64_t procs_full;	   /* processes refused by the procs map */
	uint64_t mappings_dropped; /* mappings beyond UNW_MAX_MAPPINGS */
	uint64_t objects_freed;
	uint64_t objects_evicted;  /* unused tables freed early to make room for a new one */
	uint64_t incomplete_scans; /* lists stored while a table was still being built */
	uint64_t pending;	   /* tables queued for unwinder_build_pending() now */
	uint64_t unknown_skipped;  /* unknown-address events within a process's backoff */
	uint64_t objects_shared;   /* files that took the table of another file by identity */
};

struct unwinder;

int unwinder_open(const struct unwinder_opts *opts, struct unwinder **out);
void unwinder_close(struct unwinder *u);

/*
 * (Re)reads /proc/PID/maps and stores the mapping list in BPF. Tables not built yet are built
 * now with UNWINDER_SCAN_BUILD (at opts.build_nice), small ones (most libraries, a few ms) with
 * UNWINDER_SCAN_SMALL (at the caller's priority): the list with every table that already exists
 * is stored first, then again after those builds. Any scan takes a table at once from another
 * object with the same identity or from the on-disk cache (a file read, whatever the size); the
 * others are queued for unwinder_build_pending() and the list is completed by
 * unwinder_rescan_incomplete() once they exist. An unchanged list is not stored again unless
 * UNWINDER_SCAN_FORCE. UNWINDER_SCAN_UNLOADED leaves a process alone, without reading its maps,
 * when its list (since its exec) already has libraries besides the executable, its interpreter
 * and the vDSO: ld.so has mapped them (the rescan after exec).
 */
#define UNWINDER_SCAN_BUILD 1
#define UNWINDER_SCAN_FORCE 2
#define UNWINDER_SCAN_SMALL 4
#define UNWINDER_SCAN_SMALL_IF_KNOWN 8 /* SMALL for a process scanned before (dlopen) */
#define UNWINDER_SCAN_UNLOADED 16
int unwinder_scan_process(struct unwinder *u, uint32_t pid, int flags);
/*
 * A sample of pid walked through a pc outside its mapping list (UNW_EVENT_UNKNOWN): rescans it
 * (dlopen) unless it is within its backoff (UNWINDER_UNKNOWN_BACKOFF_*_NS, JIT code; shorter
 * while the process is young).
 */
int unwinder_scan_unknown(struct unwinder *u, uint32_t pid);
/* Every process under proc_root; after each one, a nonzero stop(arg) ends the scan early
 * (stop may be NULL). Returns how many were scanned. */
int unwinder_scan_all(struct unwinder *u, int (*stop)(void *arg), void *arg);
/* Scans again (up to 64) processes whose list missed a table being built; returns how many. */
int unwinder_rescan_incomplete(struct unwinder *u);
/* Builds one queued table; returns 1 when it built one, 0 when none was queued. */
int unwinder_build_pending(struct unwinder *u);
/* The process exited: drop its mapping list and its table references. */
void unwinder_drop_process(struct unwinder *u, uint32_t pid);
/*
 * The process exec'ed a new image: it is young again (UNWINDER_YOUNG_NS), and its next scan,
 * whatever starts it, stores the new image's list (small tables inline, as for any process
 * known before), which replaces the old image's.
 */
void unwinder_exec(struct unwinder *u, uint32_t pid);
/* Frees tables unused for UNWINDER_GRACE_NS; call now and then. */
void unwinder_collect(struct unwinder *u);

/* Path of object id (1-based, from unw_mapping.flags >> UNW_MAP_OBJ_SHIFT); -ENOENT if none. */
int unwinder_object_path(struct unwinder *u, uint32_t obj_id, char *buf, size_t size);
/*
 * What an encoded frame's object id names: its path, its (device, inode) as /proc/PID/maps
 * shows them (device = major << 32 | minor; the vDSO is UINT64_MAX, UINT64_MAX, "[vdso]") and
 * a process that mapped it (its root reaches the file from a container). 0 or -ENOENT.
 */
int unwinder_object_info(struct unwinder *u, uint32_t obj_id, char *path, size_t size,
			 uint64_t *dev, uint64_t *ino, uint32_t *pid);
void unwinder_get_stats(struct unwinder *u, struct unwinder_stats *st);

/* Free-extent allocator, exposed for tests: first fit, merging on free. */
struct unwinder_alloc {
	uint32_t n;
	struct {
		uint32_t start, len;
	} ext[UNWINDER_MAX_EXTENTS];
};
void unwinder_alloc_init(struct unwinder_alloc *a, uint32_t n_slots);
/* Returns 0 and the first slot in *start, or -ENOSPC. */
int unwinder_alloc_get(struct unwinder_alloc *a, uint32_t len, uint32_t *start);
/* Returns 0, or -ENOSPC when the free list is full (the slots leak, counted by the caller). */
int unwinder_alloc_put(struct unwinder_alloc *a, uint32_t start, uint32_t len);

#endif
