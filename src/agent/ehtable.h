/*
 * ehtable — the compact DWARF unwind table of one ELF object (design brief §2.1-2.2).
 *
 * Built with elfutils libdw from .eh_frame (dwarf_getcfi_elf); an object without .eh_frame uses
 * its own .debug_frame, else that of its separate debug file (build-id path or .gnu_debuglink,
 * under /usr/lib/debug). Every CFI row is classified into the 8-byte struct unw_row of
 * src/bpf/unwind.h, gaps between FDEs become NONE rows, equal neighbours are merged, and a 4 KiB
 * bucket index is put in front: the result is one contiguous slot image that BPF and the plain-C
 * walker read as is. Tables are immutable once built and keyed by GNU build-id (else dev, inode,
 * size, mtime), so one table serves every process that maps the object.
 *
 * Cache: ehtable_save/ehtable_load write and read one table file (checked by magic, version,
 * length and checksum); ehtable_cache_get/put keep them in a directory by identity, one
 * subdirectory per file format version, bounded by a byte budget over all versions (oldest files
 * removed first).
 *
 * Threading: a table is read-only after build and may be shared between threads; building
 * takes no locks and uses no globals. The caller frees with ehtable_free.
 */
#ifndef EMBER_AGENT_EHTABLE_H
#define EMBER_AGENT_EHTABLE_H

#include <stddef.h>
#include <stdint.h>

#include "bpf/unwind.h"

#define EHTABLE_MAX_ROWS (4u << 20)	    /* rows per object; libLLVM needs ~0.95 M */
#define EHTABLE_ID_MAX 40		    /* identity bytes: build-id (≤ 40) or file facts */
#define EHTABLE_CACHE_MAX_BYTES (64u << 20) /* default on-disk cache budget */
/* Bump with any change of the file or slot layout: each version has its own cache subdirectory
 * ("v2"), so agents of two versions on one host never read or remove each other's files (before
 * the subdirectories they did: every start rebuilt 100+ tables, docs/benchmarks.md). */
#define EHTABLE_FILE_VERSION 2u

#define EHTABLE_MAX_LOADS 8 /* PT_LOAD segments remembered for load-bias lookups */

enum ehtable_source { EHTABLE_SRC_EH_FRAME, EHTABLE_SRC_DEBUG_FRAME };

struct ehtable_load {
	uint64_t offset, vaddr, filesz; /* p_offset, p_vaddr, p_filesz */
	uint32_t flags;			/* p_flags (PF_X ...) */
	uint32_t reserved;
};

struct ehtable {
	uint8_t id[EHTABLE_ID_MAX]; /* build-id, or {dev, ino, size, mtime} when id_is_build_id=0 */
	uint32_t id_len;
	int id_is_build_id;
	enum ehtable_source source;
	uint64_t *slots; /* header, index, rows: the image BPF reads */
	uint32_t n_slots;
	uint32_t kind_rows[UNW_KIND_COUNT]; /* merged rows per enum unw_kind */
	uint32_t cfi_rows;		    /* rows before merging (CFI rows plus gap rows) */
	uint64_t build_ns;		    /* monotonic wall time the build took */
	uint32_t n_loads;
	struct ehtable_load loads[EHTABLE_MAX_LOADS];
};

/* Builds the table of the ELF object at path (or open fd, when path is NULL; fd is not closed). */
int ehtable_build(const char *path, struct ehtable **out);
int ehtable_build_fd(int fd, const char *path_for_debuglink, struct ehtable **out);
/* The table of the vDSO, from this process's own mapping (AT_SYSINFO_EHDR); the vDSO is one
 * image per boot, so it serves every process. 0, -ENOENT (no vDSO found) or another -errno. */
int ehtable_build_vdso(struct ehtable **out);
void ehtable_free(struct ehtable *t);

static inline const struct unw_table_hdr *ehtable_hdr(const struct ehtable *t)
{
	return (const struct unw_table_hdr *)t->slots;
}
static inline const struct unw_bucket *ehtable_buckets(const struct ehtable *t)
{
	return (const struct unw_bucket *)(t->slots + UNW_HDR_SLOTS);
}
static inline const struct unw_row *ehtable_rows(const struct ehtable *t)
{
	return (const struct unw_row *)(t->slots + UNW_HDR_SLOTS + ehtable_hdr(t)->n_buckets);
}
static inline size_t ehtable_size_bytes(const struct ehtable *t)
{
	return (size_t)t->n_slots * sizeof(uint64_t);
}

/* The row that applies at va (last row with pc <= va), or NULL when va is outside the table. */
const struct unw_row *ehtable_lookup(const struct ehtable *t, uint64_t va);

/*
 * The load bias of a mapping of this object at map_start with file offset pgoff (from the
 * PT_LOAD segment holding pgoff): va = pc - bias. -ENOENT when no segment holds pgoff.
 */
int ehtable_bias(const struct ehtable *t, uint64_t map_start, uint64_t pgoff, uint64_t *bias);

/*
 * Go objects keep frame pointers (design brief §2.3): ehtable_is_go tells them by their
 * .go.buildinfo section or Go build-id note (1, 0, or -errno). ehtable_use_frame_pointers marks
 * a built table UNW_TABLE_FP and gives its frames Go's rbp rule (the caller's rbp sits at
 * CFA-16 in every frame larger than the return address), so the walk takes frame-pointer steps
 * after the leaf's row. ehtable_build_fp_only makes the table of a Go object without CFI: no
 * rows, its loads (for the bias) and UNW_TABLE_FP. Tables are cached as built, without the mark.
 */
int ehtable_is_go(const char *path);
void ehtable_use_frame_pointers(struct ehtable *t);
int ehtable_build_fp_only(const char *path, struct ehtable **out);

/* Reads the identity of an object without building its table (for cache lookups). */
int ehtable_identify(const char *path, uint8_t id[EHTABLE_ID_MAX], uint32_t *id_len,
		     int *is_build_id);
/* Lower-case hex of the identity, for file names and logs; buf needs 2*EHTABLE_ID_MAX+1. */
void ehtable_id_hex(const struct ehtable *t, char *buf, size_t size);
const char *ehtable_kind_name(unsigned kind);

int ehtable_save(const struct ehtable *t, const char *path);
int ehtable_load(const char *path, struct ehtable **out);
/* Looks up dir/v<file version>/<hex id>.ehtab; -ENOENT when absent or unusable. */
int ehtable_cache_get(const char *dir, const uint8_t *id, uint32_t id_len, struct ehtable **out);
/* Stores t in dir/v<file version>, then removes the least recently used files (of any version,
 * and those of agents from before the version subdirectories at dir's top) until dir holds
 * ≤ max_bytes. */
int ehtable_cache_put(const char *dir, const struct ehtable *t, uint64_t max_bytes);

#endif
