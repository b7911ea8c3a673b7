/*
 * symbolize — addresses to DeepFlow's frame labels (DESIGN.md "Folded stacks and frame labels").
 *
 * Kernel: /proc/kallsyms → "[k] name". User: /proc/PID/maps, then the ELF symbol tables of the
 * mapped file (.symtab, else .dynsym, else the separate debug file found by build-id or
 * .gnu_debuglink under /usr/lib/debug), reached through /proc/PID/root and /proc/PID/map_files;
 * JIT code through /tmp/perf-PID.map (also inside the process's root). Labels:
 *   "[l] sym"  shared library (path contains ".so")     "sym"  executable or JIT map
 *   "[/path]"  known file, no symbol                   "[unknown] 0x%016lx"  nothing known
 *   "[unknown start_thread?]" unresolved outermost frame; ';' in a symbol becomes ':';
 *   C++ and Rust names demangled (libiberty).
 *
 * Caches: ELF symbol tables keyed by build-id (else device+inode+mtime), per-process mappings
 * keyed by (pid, start time); both bounded (LRU) by sym_opts. A process that exited keeps its
 * last mappings until sym_process_forget() so its drained samples still symbolize.
 *
 * Threading: one thread uses a symbolizer; no locking inside.
 */
#ifndef EMBER_AGENT_SYMBOLIZE_H
#define EMBER_AGENT_SYMBOLIZE_H

#include <stddef.h>
#include <stdint.h>

#include "common/strbuf.h"

struct sym_opts {
	size_t max_files;     /* ELF symbol tables kept, default 256 */
	size_t max_processes; /* process mapping sets kept, default 4096 */
	const char *proc_root; /* "/proc" unless testing */
};

struct sym_stats {
	uint64_t files_loaded, file_cache_hits, file_evictions;
	uint64_t procs_loaded, proc_evictions;
	uint64_t frames, frames_unknown;
};

struct symbolizer;

int sym_open(const struct sym_opts *opts, struct symbolizer **out);
void sym_close(struct symbolizer *sym);

/*
 * Appends the labels of a user stack to out, outermost first, separated by ';' (and a leading
 * ';' when out is non-empty). ips are leaf first, raw virtual addresses of process tgid.
 * Returns the number of frames appended.
 */
int sym_append_user(struct symbolizer *sym, uint32_t tgid, const uint64_t *ips, size_t n,
		    struct strbuf *out);
/*
 * Where an encoded frame's object lives, as the DWARF unwinder knows it (unwinder_object_info):
 * the file is opened through /proc/TGID/root, /proc/PID/root or the plain path and used only
 * when its device and inode match; else through the process's own mappings (map_files) while
 * it lives. dev is major << 32 | minor as /proc/PID/maps shows it; the vDSO is path "[vdso]".
 */
#define SYM_OBJECT_PATH_MAX 4096
struct sym_object {
	char path[SYM_OBJECT_PATH_MAX];
	uint64_t dev, ino;
	uint32_t pid; /* a process that mapped it, 0 if none known */
};
/* Fills obj for obj_id; 0, or -ENOENT when the id names nothing. */
typedef int (*sym_object_fn)(void *arg, uint32_t obj_id, struct sym_object *obj);

/*
 * sym_append_user() for frames of a DWARF walk (sample_rec.uframes_encoded): a frame with
 * UNW_FRAME_ENCODED (src/bpf/unwind.h) is an object id and ELF virtual address, resolved by
 * the object's file alone, so stacks of processes that already exited keep their names; other
 * frames are raw addresses of tgid (JIT, anonymous code). Same labels and pc - 1 rule.
 */
int sym_append_user_encoded(struct symbolizer *sym, uint32_t tgid, const uint64_t *frames,
			    size_t n, sym_object_fn resolve, void *arg, struct strbuf *out);
/* Same for kernel addresses, innermost first in ips, appended outermost first as "[k] name". */
int sym_append_kernel(struct symbolizer *sym, const uint64_t *ips, size_t n, struct strbuf *out);
/*
 * sym_append_kernel() for the kernel stack of a thread that blocked, taken at the sched_switch
 * tracepoint: the frames inside the scheduler's __schedule (the tracepoint and the BPF program)
 * are left out, and every frame is a return address. Without a __schedule frame all are kept.
 */
int sym_append_kernel_blocked(struct symbolizer *sym, const uint64_t *ips, size_t n,
			      struct strbuf *out);
/*
 * The waker of a block (--off-cpu-wakers), appended above the blocked thread's frames as
 * "[w] comm" and then the waker's kernel frames as "[wk] name", innermost first, from
 * try_to_wake_up outwards (flame graphs draw the waker upside down on top of the wait it
 * ended, as bcc's offwaketime does; "[wk]", not "[k]", so that kernel depth clipping and
 * function totals keep to the blocked thread's frames); the frames of the tracepoint and the
 * BPF program are left out. A wake-up from an interrupt (a timer, a device: an asm_* entry
 * frame that is not asm_exc_*, or an empty comm) is "[w] interrupt", its frames ending at the
 * entry: what lies beyond belongs to whichever task the interrupt found. One from an exception
 * (a page fault) keeps the comm, or is "[w] exception" when BPF left it out (it does for every
 * interrupt and exception entry), and also ends at its entry. ';' in comm becomes ':'. Returns
 * the frames appended.
 */
int sym_append_waker(struct symbolizer *sym, const char *comm, const uint64_t *ips, size_t n,
		     struct strbuf *out);

/* The process's mappings changed (exec, dlopen) or it is new: re-read /proc/PID/maps lazily. */
void sym_process_invalidate(struct symbolizer *sym, uint32_t tgid);
/* The process exited and its samples were drained: drop what was kept for it. */
void sym_process_forget(struct symbolizer *sym, uint32_t tgid);
void sym_get_stats(struct symbolizer *sym, struct sym_stats *st);

/* Label helpers, exposed for tests: a demangled, ';'-free copy of name (caller frees). */
char *sym_clean_name(const char *name);

#endif
