/*
 * symbolize — see symbolize.h.
 *
 * Three caches, all bounded:
 *  - kernel: /proc/kallsyms text symbols in one sorted array, read on first use and again on a
 *    miss at most once per KSYM_RELOAD_MS (modules and BPF programs come and go).
 *  - files: up to max_files ELF function tables in fixed slots, LRU by a use tick. A slot is
 *    found by build-id, or by (device, inode, size, mtime) for files without one. Mappings point
 *    at a slot by (index, serial); when the slot was evicted the serial no longer matches and the
 *    mapping resolves its file again, so eviction never leaves a dangling pointer.
 *  - processes: up to max_processes executable-mapping sets in a hash table with an LRU list,
 *    plus the process's perf map (JIT symbols).
 *
 * Address translation: a user address in a mapping (start, file offset off) sits at file offset
 * addr - start + off; the PT_LOAD segment holding that offset turns it into the ELF virtual
 * address p_vaddr + (fileoff - p_offset), which is what the symbol tables hold. That is exact for
 * executables (PIE or not) and shared objects alike, and also for separate debug files, whose
 * symbols carry the same virtual addresses (their own program headers are not used).
 *
 * Labels follow DeepFlow (DESIGN.md "Folded stacks and frame labels"). Names are demangled with
 * libiberty (C++ Itanium, Rust legacy and v0); libiberty already drops the legacy Rust
 * "::h<16 hex>" hash, and a hash left in a name that was not mangled (a perf map written by a
 * Rust JIT, a pre-demangled table) is stripped too, matching DeepFlow's newer agents. A name is
 * cut at SYM_MAX_NAME bytes, and ';' becomes ':' so it cannot split a folded stack.
 *
 * Return addresses: every frame but the leaf is a return address, the instruction after a call;
 * it is looked up at addr - 1 so that a call ending a function resolves to that function.
 */
#define LOG_MODULE "symbolize"
#include "agent/symbolize.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <libiberty/demangle.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include "bpf/unwind.h"
#include "common/log.h"

#define SYM_DEFAULT_MAX_FILES 256
#define SYM_DEFAULT_MAX_PROCESSES 4096
#define SYM_MAX_MAPS_PER_PROC 16384    /* executable mappings kept per process */
#define SYM_MAX_FILE_SYMBOLS (1 << 23) /* function symbols kept per ELF file */
#define SYM_MAX_NAME 4096	       /* bytes of one demangled name */
#define SYM_PROC_RELOAD_MS 1000	       /* first back-off step of maps re-reads on misses */
#define SYM_PROC_RELOAD_MAX_MS 60000   /* longest back-off while misses stay unresolved */
#define KSYM_RELOAD_MS 10000	       /* re-read kallsyms on a miss at most this often */
#define KSYM_MAX_GAP (1 << 20)	       /* farther than this past a kernel symbol: unknown */
#define PERF_MAP_MAX_BYTES (64 << 20)
#define PERF_MAP_MAX_ENTRIES (1 << 20)
#define PERF_MAP_CHECK_MS 1000 /* stat the perf map at most this often */
#define SYM_BAD_IP 0xccccccccccccccccULL
#define SYM_MAX_OBJECTS 4096 /* encoded-frame objects remembered, direct-mapped by id */

enum { KEY_NONE, KEY_BUILD_ID, KEY_STAT, KEY_VDSO };

struct file_key {
	uint8_t kind, len;
	uint8_t b[40];
};

struct fsym {
	uint64_t start;
	uint32_t size;
	uint32_t name; /* offset into names */
};

struct load_seg {
	uint64_t off, vaddr, filesz;
};

struct sym_file {
	uint64_t serial; /* 0: empty slot */
	uint64_t used;	 /* LRU tick */
	struct file_key bid, st;
	struct load_seg *segs;
	size_t nsegs;
	struct fsym *syms;
	size_t nsyms;
	char **clean; /* demangled labels, filled on first use */
	char *names;
	size_t names_len, names_cap;
};

enum { MAP_FILE, MAP_ANON, MAP_VDSO };
enum { FILE_UNRESOLVED, FILE_OK, FILE_FAILED };

struct sym_map {
	uint64_t start, end, off, inode;
	char *path; /* NULL for anonymous memory */
	uint8_t kind, is_so, file_state;
	uint32_t slot;
	uint64_t serial;
};

struct jit_entry {
	uint64_t start;
	uint32_t size;
	uint32_t name;
};

struct perf_map {
	char label[64]; /* "/tmp/perf-PID.map", the path inside the process's root */
	struct jit_entry *ents;
	size_t n;
	char *names;
	uint64_t lo, hi;
	int64_t checked_ms;
	struct timespec mtime;
	off_t size;
};

struct sym_proc {
	uint32_t tgid, nspid;
	struct sym_map *maps;
	size_t nmaps;
	int stale;
	int64_t read_ms;    /* last miss check (or read of /proc/PID/maps), 0 = never */
	int64_t backoff_ms; /* wait between miss checks: doubles while misses stay unresolved */
	uint64_t vm_pages;  /* /proc/PID/statm size at the last maps read: the change signature */
	struct perf_map jit;
	struct sym_proc *hnext, *prev, *next;
};

struct ksym {
	uint64_t addr;
	uint32_t name;
};

/* The file of an encoded frame's object id; valid while (dev, ino, path) stay the same. */
struct sym_obj {
	uint32_t id; /* 0: empty */
	uint64_t dev, ino;
	char *path;
	uint8_t is_so, file_state;
	uint32_t slot;
	uint64_t serial;
};

struct symbolizer {
	struct sym_opts opts;
	char *proc_root;
	struct sym_stats stats;

	struct ksym *ksyms;
	size_t nksyms;
	char *knames;
	int64_t kread_ms;

	struct sym_file *files;
	uint64_t tick, next_serial;

	struct sym_proc **buckets;
	size_t nbuckets, nprocs;
	struct sym_proc *head, *tail;

	struct sym_obj *objs; /* SYM_MAX_OBJECTS, allocated on the first encoded frame */
	struct sym_object obj_scratch;
};

struct sym_res {
	const char *name; /* resolved symbol */
	const char *path; /* known file */
	int is_so;
};

static int64_t sym_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int sym_leading_underscores(const char *s)
{
	int n = 0;

	while (s[n] == '_')
		n++;
	return n;
}

/* ---- names ------------------------------------------------------------------------------- */

static int sym_is_hex(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (!isxdigit((unsigned char)s[i]))
			return 0;
	}
	return 1;
}

char *sym_clean_name(const char *name)
{
	char *dem = NULL, *out;
	const char *src = name;
	size_t len;

	if (name[0] == '_' && (name[1] == 'Z' || name[1] == 'R')) {
		dem = cplus_demangle(name, DMGL_PARAMS | DMGL_ANSI | DMGL_AUTO);
		if (dem)
			src = dem;
	}
	len = strlen(src);
	if (len > SYM_MAX_NAME)
		len = SYM_MAX_NAME;
	/* Rust legacy hash left in a name that was not mangled: "...::h0123456789abcdef". */
	if (len > 19 && memcmp(src + len - 19, "::h", 3) == 0 && sym_is_hex(src + len - 16, 16))
		len -= 19;
	out = malloc(len + 1);
	if (out) {
		memcpy(out, src, len);
		out[len] = '\0';
		for (char *p = out; *p; p++) {
			if (*p == ';')
				*p = ':';
		}
	}
	free(dem);
	return out;
}

/* ---- kernel ------------------------------------------------------------------------------ */

static int ksym_cmp(const void *a, const void *b)
{
	const struct ksym *x = a, *y = b;

	if (x->addr != y->addr)
		return x->addr < y->addr ? -1 : 1;
	return x->name < y->name ? -1 : x->name > y->name;
}

static int sym_kernel_load(struct symbolizer *sym)
{
	struct ksym *ks = NULL;
	struct strbuf names = STRBUF_INIT;
	size_t n = 0, cap = 0, out;
	char path[512], *line = NULL;
	size_t lcap = 0;
	ssize_t llen;
	FILE *f;

	sym->kread_ms = sym_now_ms();
	snprintf(path, sizeof(path), "%s/kallsyms", sym->proc_root);
	f = fopen(path, "re");
	if (!f) {
		log_warn("cannot open %s: %s", path, strerror(errno));
		return -errno;
	}
	while ((llen = getline(&line, &lcap, f)) > 0) {
		char *p, *name, type;
		uint64_t addr = strtoull(line, &p, 16);
		size_t nl;

		if (*p != ' ' || addr == 0)
			continue; /* kptr_restrict shows zeros: nothing usable */
		type = p[1];
		if (type != 't' && type != 'T' && type != 'w' && type != 'W')
			continue;
		name = p + 3;
		nl = strcspn(name, "\t\n");
		if (n == cap) {
			cap = cap ? cap * 2 : 65536;
			ks = realloc(ks, cap * sizeof(*ks));
			if (!ks)
				abort();
		}
		ks[n].addr = addr;
		ks[n].name = (uint32_t)names.len;
		sb_append(&names, name, nl);
		sb_putc(&names, '\0');
		n++;
	}
	free(line);
	fclose(f);
	if (!n)
		log_warn("no kernel addresses in %s (kptr_restrict?): kernel frames stay unknown",
			 path);
	qsort(ks, n, sizeof(*ks), ksym_cmp);
	/* One name per address: fewest leading underscores, then first in the file. */
	out = 0;
	for (size_t i = 0; i < n; i++) {
		if (out && ks[out - 1].addr == ks[i].addr) {
			if (sym_leading_underscores(names.buf + ks[i].name) <
			    sym_leading_underscores(names.buf + ks[out - 1].name))
				ks[out - 1] = ks[i];
			continue;
		}
		ks[out++] = ks[i];
	}
	free(sym->ksyms);
	free(sym->knames);
	sym->ksyms = ks;
	sym->nksyms = out;
	sym->knames = sb_detach(&names, NULL);
	log_debug("read %zu kernel text symbols from %s", out, path);
	return 0;
}

static const char *sym_kernel_find(struct symbolizer *sym, uint64_t addr)
{
	size_t lo = 0, hi = sym->nksyms;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (sym->ksyms[mid].addr <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == 0 || addr - sym->ksyms[lo - 1].addr > KSYM_MAX_GAP)
		return NULL;
	return sym->knames + sym->ksyms[lo - 1].name;
}

static const char *sym_kernel_lookup(struct symbolizer *sym, uint64_t addr)
{
	const char *name;

	if (!sym->kread_ms)
		sym_kernel_load(sym);
	name = sym_kernel_find(sym, addr);
	if (!name && sym_now_ms() - sym->kread_ms >= KSYM_RELOAD_MS) {
		sym_kernel_load(sym);
		name = sym_kernel_find(sym, addr);
	}
	return name;
}

/*
 * Appends kernel frames ips[first..end) labelled prefix ("[k] ", a waker's "[wk] "): outermost
 * first, as a stack is read, or innermost first (a waker drawn upside down). ips[first] is exact
 * unless all are return addresses.
 */
static int sym_append_kernel_range(struct symbolizer *sym, const uint64_t *ips, size_t first,
				   size_t end, int inner_first, int all_return, const char *prefix,
				   struct strbuf *out)
{
	int count = 0;

	for (size_t k = first; k < end; k++) {
		size_t i = inner_first ? k : end - 1 - (k - first);
		uint64_t ip = ips[i];
		const char *name;

		if (ip == 0 || ip == SYM_BAD_IP)
			continue;
		if (out->len)
			sb_putc(out, ';');
		name = sym_kernel_lookup(sym, i > first || all_return ? ip - 1 : ip);
		sym->stats.frames++;
		if (name) {
			sb_puts(out, prefix);
			sb_puts(out, name);
		} else {
			sym->stats.frames_unknown++;
			sb_printf(out, "[unknown] 0x%016llx", (unsigned long long)ip);
		}
		count++;
	}
	return count;
}

static int sym_append_kernel_from(struct symbolizer *sym, const uint64_t *ips, size_t first,
				  size_t n, int all_return, struct strbuf *out)
{
	return sym_append_kernel_range(sym, ips, first, n, 0, all_return, "[k] ", out);
}

/* The first of ips[0..n) inside the kernel function name (return addresses), or n. */
static size_t sym_kernel_index(struct symbolizer *sym, const uint64_t *ips, size_t n,
			       const char *name)
{
	for (size_t i = 0; i < n; i++) {
		const char *s = ips[i] ? sym_kernel_lookup(sym, ips[i] - 1) : NULL;

		if (s && strcmp(s, name) == 0)
			return i;
	}
	return n;
}

int sym_append_kernel(struct symbolizer *sym, const uint64_t *ips, size_t n, struct strbuf *out)
{
	return sym_append_kernel_from(sym, ips, 0, n, 0, out);
}

int sym_append_kernel_blocked(struct symbolizer *sym, const uint64_t *ips, size_t n,
			      struct strbuf *out)
{
	size_t first = sym_kernel_index(sym, ips, n, "__schedule");

	return sym_append_kernel_from(sym, ips, first < n ? first : 0, n, 1, out);
}

/* Frames of the tracing machinery itself: the tracepoint and the BPF program that took the stack. */
static int sym_is_tracing_frame(const char *name)
{
	return strncmp(name, "bpf_", 4) == 0 || strncmp(name, "__bpf_", 6) == 0 ||
	       strncmp(name, "__traceiter_", 12) == 0 || strncmp(name, "trace_", 6) == 0;
}

int sym_append_waker(struct symbolizer *sym, const char *comm, const uint64_t *ips, size_t n,
		     struct strbuf *out)
{
	const char *entry = NULL;
	size_t first = sym_kernel_index(sym, ips, n, "try_to_wake_up"), end = n;

	/* Without try_to_wake_up (a renamed clone), from the first frame that is not the tracing
	 * machinery's. */
	for (size_t i = 0; first == n && i < n; i++) {
		const char *name = ips[i] ? sym_kernel_lookup(sym, ips[i] - 1) : NULL;

		if (!name || !sym_is_tracing_frame(name))
			first = i;
	}
	/* An interrupt's or exception's entry (asm_*): the frames beyond it are whatever it found
	 * running (BPF cuts there already when it knows the entry text). */
	for (size_t i = first; i < n; i++) {
		const char *name = ips[i] ? sym_kernel_lookup(sym, ips[i] - 1) : NULL;

		if (name && strncmp(name, "asm_", 4) == 0) {
			entry = name;
			end = i + 1;
			break;
		}
	}
	if (out->len)
		sb_putc(out, ';');
	sb_puts(out, "[w] ");
	if (entry && strncmp(entry, "asm_exc_", 8) == 0 && !comm[0]) {
		sb_puts(out, "exception"); /* BPF leaves the comm out of every irqentry stub */
	} else if ((entry && strncmp(entry, "asm_exc_", 8) != 0) || !comm[0]) {
		sb_puts(out, "interrupt");
	} else {
		for (const char *c = comm; *c; c++)
			sb_putc(out, *c == ';' ? ':' : *c);
	}
	return sym_append_kernel_range(sym, ips, first, end, 1, 1, "[wk] ", out);
}

/* ---- ELF files --------------------------------------------------------------------------- */

static void sym_file_clear(struct sym_file *f)
{
	if (f->clean) {
		for (size_t i = 0; i < f->nsyms; i++)
			free(f->clean[i]);
	}
	free(f->clean);
	free(f->syms);
	free(f->names);
	free(f->segs);
	memset(f, 0, sizeof(*f));
}

/* A symbol while a table is read: rank decides between names of one address. */
struct fsym_tmp {
	uint64_t start;
	uint32_t size, name;
	int rank;
};

static int fsym_tmp_cmp(const void *a, const void *b)
{
	const struct fsym_tmp *x = a, *y = b;

	if (x->start != y->start)
		return x->start < y->start ? -1 : 1;
	if (x->rank != y->rank)
		return x->rank > y->rank ? -1 : 1;
	return x->name < y->name ? -1 : x->name > y->name;
}

/* Higher is a better name for an address that has several: GLOBAL, then WEAK, then readable. */
static int sym_name_rank(const char *name, int bind)
{
	int r = bind == STB_GLOBAL ? 2000 : bind == STB_WEAK ? 1000 : 0;

	return r - 10 * sym_leading_underscores(name);
}

static int sym_file_add_names(struct sym_file *f, Elf *elf, Elf_Scn *scn, const GElf_Shdr *sh)
{
	Elf_Data *data = elf_getdata(scn, NULL);
	struct fsym_tmp *tmp = NULL;
	size_t cnt, n = 0, cap = 0, out = 0;
	Elf_Scn *strscn;
	GElf_Shdr strsh;

	if (!data || !sh->sh_entsize)
		return -EINVAL;
	cnt = sh->sh_size / sh->sh_entsize;
	/* The names are a subset of the string table: room for all of them at once, trimmed
	 * below (growing by realloc copied the buffer log2(size) times: 16 % of the DWARF agent's
	 * CPU in bench/overhead). Untouched pages of the over-allocation cost no memory. */
	strscn = elf_getscn(elf, sh->sh_link);
	if (strscn && gelf_getshdr(strscn, &strsh) && f->names_len + strsh.sh_size > f->names_cap) {
		char *nn = realloc(f->names, f->names_len + strsh.sh_size);

		if (nn) {
			f->names = nn;
			f->names_cap = f->names_len + strsh.sh_size;
		}
	}
	for (size_t i = 0; i < cnt && n < SYM_MAX_FILE_SYMBOLS; i++) {
		GElf_Sym s;
		const char *name;
		size_t nl;
		int type;

		if (!gelf_getsym(data, (int)i, &s))
			break;
		type = GELF_ST_TYPE(s.st_info);
		if ((type != STT_FUNC && type != STT_GNU_IFUNC) || s.st_shndx == SHN_UNDEF ||
		    s.st_value == 0)
			continue;
		name = elf_strptr(elf, sh->sh_link, s.st_name);
		if (!name || !*name)
			continue;
		if (n == cap) {
			/* The section's symbol count bounds the functions: usually one allocation. */
			cap = cap ? cap * 2 : cnt < SYM_MAX_FILE_SYMBOLS ? cnt : SYM_MAX_FILE_SYMBOLS;
			tmp = realloc(tmp, cap * sizeof(*tmp));
			if (!tmp)
				abort();
		}
		/* "name@@VER" / "name@VER": .symtab keeps the version of a versioned export
		 * (glibc's __libc_start_main@@GLIBC_2.34); the label is the plain name. */
		nl = strcspn(name + 1, "@") + 2;
		if (f->names_len + nl > f->names_cap) {
			while (f->names_len + nl > f->names_cap)
				f->names_cap = f->names_cap ? f->names_cap * 2 : 65536;
			f->names = realloc(f->names, f->names_cap);
			if (!f->names)
				abort();
		}
		memcpy(f->names + f->names_len, name, nl - 1);
		f->names[f->names_len + nl - 1] = '\0';
		tmp[n].start = s.st_value;
		tmp[n].size = s.st_size > UINT32_MAX ? UINT32_MAX : (uint32_t)s.st_size;
		tmp[n].name = (uint32_t)f->names_len;
		tmp[n].rank = sym_name_rank(name, GELF_ST_BIND(s.st_info));
		f->names_len += nl;
		n++;
	}
	if (f->names_cap > f->names_len) {
		char *nn = realloc(f->names, f->names_len ? f->names_len : 1);

		if (nn) {
			f->names = nn;
			f->names_cap = f->names_len ? f->names_len : 1;
		}
	}
	if (!n) {
		free(tmp);
		return 0;
	}
	qsort(tmp, n, sizeof(*tmp), fsym_tmp_cmp);
	f->syms = malloc(n * sizeof(*f->syms));
	if (!f->syms)
		abort();
	/* Aliases share an address: keep the best-ranked name and the largest size. */
	for (size_t i = 0; i < n; i++) {
		if (out && f->syms[out - 1].start == tmp[i].start) {
			if (tmp[i].size > f->syms[out - 1].size)
				f->syms[out - 1].size = tmp[i].size;
			continue;
		}
		f->syms[out].start = tmp[i].start;
		f->syms[out].size = tmp[i].size;
		f->syms[out].name = tmp[i].name;
		out++;
	}
	free(tmp);
	/* Size 0 (hand-written assembly): the symbol runs to the next one. */
	for (size_t i = 0; i + 1 < out; i++) {
		if (f->syms[i].size == 0) {
			uint64_t gap = f->syms[i + 1].start - f->syms[i].start;

			f->syms[i].size = gap > UINT32_MAX ? UINT32_MAX : (uint32_t)gap;
		}
	}
	f->nsyms = out;
	return 0;
}

static Elf_Scn *sym_find_section(Elf *elf, uint32_t type, const char *name, GElf_Shdr *sh)
{
	size_t shstrndx;
	Elf_Scn *scn = NULL;

	if (elf_getshdrstrndx(elf, &shstrndx))
		return NULL;
	while ((scn = elf_nextscn(elf, scn))) {
		const char *n;

		if (!gelf_getshdr(scn, sh))
			continue;
		if (type && sh->sh_type != type)
			continue;
		if (name) {
			n = elf_strptr(elf, shstrndx, sh->sh_name);
			if (!n || strcmp(n, name))
				continue;
		}
		return scn;
	}
	return NULL;
}

static int sym_elf_build_id(Elf *elf, struct file_key *key)
{
	Elf_Scn *scn = NULL;
	GElf_Shdr sh;

	key->kind = KEY_NONE;
	while ((scn = elf_nextscn(elf, scn))) {
		Elf_Data *data;
		GElf_Nhdr nh;
		size_t off = 0, noff, doff;

		if (!gelf_getshdr(scn, &sh) || sh.sh_type != SHT_NOTE)
			continue;
		data = elf_getdata(scn, NULL);
		if (!data)
			continue;
		while ((off = gelf_getnote(data, off, &nh, &noff, &doff)) > 0) {
			if (nh.n_type == NT_GNU_BUILD_ID && nh.n_namesz == 4 &&
			    memcmp((char *)data->d_buf + noff, "GNU", 4) == 0 && nh.n_descsz > 0 &&
			    nh.n_descsz <= sizeof(key->b)) {
				key->kind = KEY_BUILD_ID;
				key->len = (uint8_t)nh.n_descsz;
				memcpy(key->b, (char *)data->d_buf + doff, nh.n_descsz);
				return 0;
			}
		}
	}
	return -ENOENT;
}

static int sym_key_eq(const struct file_key *a, const struct file_key *b)
{
	return a->kind != KEY_NONE && a->kind == b->kind && a->len == b->len &&
	       memcmp(a->b, b->b, a->len) == 0;
}

static void sym_stat_key(const struct stat *st, struct file_key *key)
{
	uint64_t v[4] = {st->st_dev, st->st_ino, (uint64_t)st->st_size,
			 (uint64_t)st->st_mtim.tv_sec * 1000000000ULL +
			     (uint64_t)st->st_mtim.tv_nsec};

	key->kind = KEY_STAT;
	key->len = sizeof(v);
	memcpy(key->b, v, sizeof(v));
}

/* Opens a separate debug file with a real .symtab matching bid; returns its fd or -1. */
static int sym_open_debug(struct symbolizer *sym, uint32_t tgid, const char *path, Elf *elf,
			  const struct file_key *bid, Elf **dbg_out)
{
	char cand[4][PATH_MAX], hex[2 * sizeof(bid->b) + 1];
	int ncand = 0;
	Elf_Scn *scn;
	GElf_Shdr sh;

	if (bid->kind == KEY_BUILD_ID && bid->len > 1) {
		for (int i = 0; i < bid->len; i++)
			sprintf(hex + 2 * i, "%02x", bid->b[i]);
		snprintf(cand[ncand++], PATH_MAX, "/usr/lib/debug/.build-id/%.2s/%s.debug", hex,
			 hex + 2);
	}
	scn = sym_find_section(elf, SHT_PROGBITS, ".gnu_debuglink", &sh);
	if (scn && path && path[0] == '/') {
		Elf_Data *d = elf_getdata(scn, NULL);
		const char *slash = strrchr(path, '/');
		int dirlen = (int)(slash - path);

		if (d && d->d_size > 1 && memchr(d->d_buf, '\0', d->d_size)) {
			const char *link = d->d_buf;

			snprintf(cand[ncand++], PATH_MAX, "%.*s/%s", dirlen, path, link);
			snprintf(cand[ncand++], PATH_MAX, "%.*s/.debug/%s", dirlen, path, link);
			snprintf(cand[ncand++], PATH_MAX, "/usr/lib/debug%.*s/%s", dirlen, path,
				 link);
		}
	}
	for (int i = 0; i < ncand; i++) {
		for (int inroot = 0; inroot < 2; inroot++) {
			char full[PATH_MAX + 64];
			struct file_key dbid;
			Elf *dbg;
			int fd;

			if (inroot)
				snprintf(full, sizeof(full), "%s/%u/root%s", sym->proc_root, tgid,
					 cand[i]);
			else
				snprintf(full, sizeof(full), "%s", cand[i]);
			if (path && strcmp(full, path) == 0)
				continue;
			fd = open(full, O_RDONLY | O_CLOEXEC);
			if (fd < 0)
				continue;
			dbg = elf_begin(fd, ELF_C_READ_MMAP, NULL);
			if (dbg && elf_kind(dbg) == ELF_K_ELF &&
			    sym_find_section(dbg, SHT_SYMTAB, NULL, &sh) &&
			    (bid->kind != KEY_BUILD_ID ||
			     (sym_elf_build_id(dbg, &dbid) == 0 && sym_key_eq(&dbid, bid)))) {
				*dbg_out = dbg;
				return fd;
			}
			if (dbg)
				elf_end(dbg);
			close(fd);
		}
	}
	return -1;
}

/* Fills f from elf (symbols from .symtab, a debug file's .symtab, else .dynsym). */
static int sym_file_fill(struct symbolizer *sym, struct sym_file *f, Elf *elf, uint32_t tgid,
			 const char *path)
{
	size_t nph;
	GElf_Shdr sh;
	Elf_Scn *scn;

	if (elf_kind(elf) != ELF_K_ELF || elf_getphdrnum(elf, &nph))
		return -ENOEXEC;
	f->segs = calloc(nph ? nph : 1, sizeof(*f->segs));
	if (!f->segs)
		return -ENOMEM;
	for (size_t i = 0; i < nph; i++) {
		GElf_Phdr ph;

		if (!gelf_getphdr(elf, (int)i, &ph) || ph.p_type != PT_LOAD)
			continue;
		f->segs[f->nsegs].off = ph.p_offset;
		f->segs[f->nsegs].vaddr = ph.p_vaddr;
		f->segs[f->nsegs].filesz = ph.p_filesz;
		f->nsegs++;
	}
	scn = sym_find_section(elf, SHT_SYMTAB, NULL, &sh);
	if (scn) {
		sym_file_add_names(f, elf, scn, &sh);
	} else {
		Elf *dbg = NULL;
		int fd = sym_open_debug(sym, tgid, path, elf, &f->bid, &dbg);

		if (fd >= 0) {
			scn = sym_find_section(dbg, SHT_SYMTAB, NULL, &sh);
			sym_file_add_names(f, dbg, scn, &sh);
			elf_end(dbg);
			close(fd);
		}
		if (!f->nsyms) {
			scn = sym_find_section(elf, SHT_DYNSYM, NULL, &sh);
			if (scn)
				sym_file_add_names(f, elf, scn, &sh);
		}
	}
	if (f->nsyms) {
		f->clean = calloc(f->nsyms, sizeof(*f->clean));
		if (!f->clean)
			return -ENOMEM;
	}
	return 0;
}

static struct sym_file *sym_file_by_key(struct symbolizer *sym, const struct file_key *key)
{
	for (size_t i = 0; i < sym->opts.max_files; i++) {
		struct sym_file *f = &sym->files[i];

		if (f->serial && (sym_key_eq(&f->bid, key) || sym_key_eq(&f->st, key)))
			return f;
	}
	return NULL;
}

static struct sym_file *sym_file_slot(struct symbolizer *sym)
{
	struct sym_file *victim = &sym->files[0];

	for (size_t i = 0; i < sym->opts.max_files; i++) {
		struct sym_file *f = &sym->files[i];

		if (!f->serial)
			return f;
		if (f->used < victim->used)
			victim = f;
	}
	sym_file_clear(victim);
	sym->stats.file_evictions++;
	return victim;
}

/* The image of the vDSO is the kernel's and the same in every process: read our own. */
static Elf *sym_vdso_elf(struct symbolizer *sym)
{
	unsigned long base = getauxval(AT_SYSINFO_EHDR);
	char line[512];
	FILE *f;
	Elf *elf = NULL;

	if (!base)
		return NULL;
	f = fopen("/proc/self/maps", "re");
	if (!f)
		return NULL;
	while (fgets(line, sizeof(line), f)) {
		unsigned long s, e;

		if (sscanf(line, "%lx-%lx", &s, &e) == 2 && s == base && strstr(line, "[vdso]")) {
			elf = elf_memory((char *)base, e - s);
			break;
		}
	}
	fclose(f);
	return elf;
}

/*
 * map_files reaches exactly the mapped file (deleted, replaced, or in another mount namespace).
 * The paths are fallbacks (no CAP_SYS_ADMIN, or the process exited) and may name a different
 * file by now: they are accepted only when the inode matches the one in /proc/PID/maps.
 */
static int sym_map_open(struct symbolizer *sym, struct sym_proc *p, const struct sym_map *m)
{
	char path[PATH_MAX + 64];
	struct stat st;
	int fd;

	snprintf(path, sizeof(path), "%s/%u/map_files/%llx-%llx", sym->proc_root, p->tgid,
		 (unsigned long long)m->start, (unsigned long long)m->end);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd >= 0)
		return fd;
	for (int host = 0; host < 2; host++) {
		if (host)
			snprintf(path, sizeof(path), "%s", m->path);
		else
			snprintf(path, sizeof(path), "%s/%u/root%s", sym->proc_root, p->tgid,
				 m->path);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		if (fstat(fd, &st) == 0 && (uint64_t)st.st_ino == m->inode)
			return fd;
		close(fd);
	}
	return -ENOENT;
}

/*
 * The symbol table of the file open at fd (the vDSO when vdso), from the cache or loaded now;
 * NULL when it is not a usable ELF file. tgid and path find a separate debug file.
 */
static struct sym_file *sym_file_get(struct symbolizer *sym, int fd, int vdso, uint32_t tgid,
				     const char *path)
{
	struct file_key stkey = {0}, bid = {0};
	struct sym_file *f = NULL;
	struct stat st;
	Elf *elf = NULL;
	int err;

	if (vdso) {
		stkey.kind = KEY_VDSO;
		stkey.len = 1;
	} else {
		if (fstat(fd, &st))
			return NULL;
		sym_stat_key(&st, &stkey);
	}
	f = sym_file_by_key(sym, &stkey);
	if (!f) {
		elf = vdso ? sym_vdso_elf(sym) : elf_begin(fd, ELF_C_READ_MMAP, NULL);
		if (!elf || elf_kind(elf) != ELF_K_ELF)
			goto out;
		sym_elf_build_id(elf, &bid);
		f = sym_file_by_key(sym, &bid);
	}
	if (f) {
		sym->stats.file_cache_hits++;
	} else {
		f = sym_file_slot(sym);
		f->bid = bid;
		f->st = stkey;
		err = sym_file_fill(sym, f, elf, tgid, path);
		if (err) {
			log_debug("pid %u: %s is not usable: %s", tgid, path, strerror(-err));
			sym_file_clear(f);
			f = NULL;
			goto out;
		}
		f->serial = ++sym->next_serial;
		sym->stats.files_loaded++;
		log_debug("pid %u: %zu symbols for %s", tgid, f->nsyms, path);
	}
	f->used = ++sym->tick;
out:
	if (elf)
		elf_end(elf);
	return f;
}

/*
 * The symbol table a mapping or an object already resolved to, if its slot still holds it
 * (marked used); NULL otherwise. An evicted slot sets *state back to FILE_UNRESOLVED so the
 * caller loads the file again; FILE_FAILED stays (the caller gives up).
 */
static struct sym_file *sym_file_cached(struct symbolizer *sym, uint8_t *state, uint32_t slot,
					uint64_t serial)
{
	struct sym_file *f;

	if (*state != FILE_OK)
		return NULL;
	f = &sym->files[slot];
	if (f->serial == serial) {
		f->used = ++sym->tick;
		return f;
	}
	*state = FILE_UNRESOLVED; /* evicted: resolve again */
	return NULL;
}

/* Finds or loads the symbol table of m's file; sets m->slot/serial or marks it failed. */
static struct sym_file *sym_map_file(struct symbolizer *sym, struct sym_proc *p, struct sym_map *m)
{
	struct sym_file *f = NULL;
	int fd = -1;

	if (m->file_state != FILE_UNRESOLVED) {
		f = sym_file_cached(sym, &m->file_state, m->slot, m->serial);
		if (f || m->file_state == FILE_FAILED)
			return f;
	}
	m->file_state = FILE_FAILED;

	if (m->kind != MAP_VDSO) {
		fd = sym_map_open(sym, p, m);
		if (fd < 0) {
			log_debug("pid %u: cannot open %s: %s", p->tgid, m->path, strerror(-fd));
			return NULL;
		}
	}
	f = sym_file_get(sym, fd, m->kind == MAP_VDSO, p->tgid, m->path);
	if (fd >= 0)
		close(fd);
	if (!f)
		return NULL;
	m->slot = (uint32_t)(f - sym->files);
	m->serial = f->serial;
	m->file_state = FILE_OK;
	return f;
}

/* The function at ELF virtual address vaddr, or NULL. */
static const char *sym_file_lookup_va(struct sym_file *f, uint64_t vaddr)
{
	size_t lo = 0, hi = f->nsyms, i;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (f->syms[mid].start <= vaddr)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == 0)
		return NULL;
	i = lo - 1;
	if (vaddr - f->syms[i].start >= f->syms[i].size)
		return NULL;
	if (!f->clean[i])
		f->clean[i] = sym_clean_name(f->names + f->syms[i].name);
	return f->clean[i];
}

static const char *sym_file_lookup(struct sym_file *f, const struct sym_map *m, uint64_t addr)
{
	uint64_t fileoff = addr - m->start + m->off, vaddr = 0;
	size_t i;
	int found = 0;

	for (i = 0; i < f->nsegs; i++) {
		const struct load_seg *s = &f->segs[i];

		if (fileoff >= s->off && fileoff < s->off + s->filesz) {
			vaddr = s->vaddr + (fileoff - s->off);
			found = 1;
			break;
		}
	}
	if (!found)
		return NULL;
	return sym_file_lookup_va(f, vaddr);
}

/* ---- perf maps (JIT) --------------------------------------------------------------------- */

static void sym_jit_clear(struct perf_map *j)
{
	free(j->ents);
	free(j->names);
	memset(j, 0, sizeof(*j));
}

static int jit_cmp(const void *a, const void *b)
{
	const struct jit_entry *x = a, *y = b;

	if (x->start != y->start)
		return x->start < y->start ? -1 : 1;
	/* Same start: the later line (larger name offset) replaced the earlier code. */
	return x->name < y->name ? -1 : x->name > y->name;
}

static void sym_jit_read(struct perf_map *j, FILE *f, const char *label)
{
	struct strbuf names = STRBUF_INIT;
	struct jit_entry *ents = NULL;
	size_t n = 0, cap = 0, bytes = 0, out = 0, lcap = 0;
	char *line = NULL;
	ssize_t len;

	while ((len = getline(&line, &lcap, f)) > 0 && n < PERF_MAP_MAX_ENTRIES) {
		uint64_t start, size;
		char *p, *name, *clean;

		bytes += (size_t)len;
		if (bytes > PERF_MAP_MAX_BYTES)
			break;
		start = strtoull(line, &p, 16);
		if (*p != ' ')
			continue;
		size = strtoull(p + 1, &p, 16);
		if (*p != ' ' || size == 0 || start + size < start)
			continue;
		name = p + 1;
		name[strcspn(name, "\n")] = '\0';
		clean = sym_clean_name(name);
		if (!clean)
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 256;
			ents = realloc(ents, cap * sizeof(*ents));
			if (!ents)
				abort();
		}
		ents[n].start = start;
		ents[n].size = size > UINT32_MAX ? UINT32_MAX : (uint32_t)size;
		ents[n].name = (uint32_t)names.len;
		sb_puts(&names, clean);
		sb_putc(&names, '\0');
		free(clean);
		n++;
	}
	free(line);
	qsort(ents, n, sizeof(*ents), jit_cmp);
	for (size_t i = 0; i < n; i++) {
		if (out && ents[out - 1].start == ents[i].start)
			out--;
		ents[out++] = ents[i];
	}
	free(j->ents);
	free(j->names);
	j->ents = ents;
	j->n = out;
	j->names = sb_detach(&names, NULL);
	j->lo = out ? ents[0].start : 0;
	j->hi = 0;
	for (size_t i = 0; i < out; i++) {
		if (ents[i].start + ents[i].size > j->hi)
			j->hi = ents[i].start + ents[i].size;
	}
	snprintf(j->label, sizeof(j->label), "%s", label);
}

/* Re-reads the perf map when it changed, at most once per PERF_MAP_CHECK_MS. */
static void sym_jit_refresh(struct symbolizer *sym, struct sym_proc *p)
{
	struct perf_map *j = &p->jit;
	char host[64], inroot[PATH_MAX], name[64];
	const char *path = host;
	int64_t now = sym_now_ms();
	struct stat st;
	FILE *f;

	if (j->checked_ms && now - j->checked_ms < PERF_MAP_CHECK_MS)
		return;
	j->checked_ms = now;
	snprintf(host, sizeof(host), "/tmp/perf-%u.map", p->tgid);
	snprintf(name, sizeof(name), "/tmp/perf-%u.map", p->nspid ? p->nspid : p->tgid);
	if (stat(host, &st)) {
		snprintf(inroot, sizeof(inroot), "%s/%u/root%s", sym->proc_root, p->tgid, name);
		path = inroot;
		if (stat(inroot, &st))
			return; /* gone: keep what was read */
	} else {
		snprintf(name, sizeof(name), "%s", host);
	}
	if (st.st_size == j->size && st.st_mtim.tv_sec == j->mtime.tv_sec &&
	    st.st_mtim.tv_nsec == j->mtime.tv_nsec)
		return;
	f = fopen(path, "re");
	if (!f)
		return;
	j->size = st.st_size;
	j->mtime = st.st_mtim;
	sym_jit_read(j, f, name);
	fclose(f);
	log_debug("pid %u: %zu perf map entries from %s", p->tgid, j->n, path);
}

/* 1: name set, 0: inside the perf map's range without an entry, -1: not the perf map's. */
static int sym_jit_lookup(struct symbolizer *sym, struct sym_proc *p, uint64_t addr, int anon,
			  struct sym_res *res)
{
	struct perf_map *j = &p->jit;
	size_t lo = 0, hi;

	sym_jit_refresh(sym, p);
	if (!j->n)
		return -1;
	hi = j->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (j->ents[mid].start <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo && addr - j->ents[lo - 1].start < j->ents[lo - 1].size) {
		res->name = j->names + j->ents[lo - 1].name;
		return 1;
	}
	if (anon || (addr >= j->lo && addr < j->hi)) {
		res->path = j->label;
		return 0;
	}
	return -1;
}

/* ---- processes --------------------------------------------------------------------------- */

static void sym_proc_free_maps(struct sym_proc *p)
{
	for (size_t i = 0; i < p->nmaps; i++)
		free(p->maps[i].path);
	free(p->maps);
	p->maps = NULL;
	p->nmaps = 0;
}

static int map_cmp(const void *a, const void *b)
{
	const struct sym_map *x = a, *y = b;

	return x->start < y->start ? -1 : x->start > y->start;
}

static uint32_t sym_read_nspid(struct symbolizer *sym, uint32_t tgid)
{
	char path[128], line[256];
	uint32_t nspid = 0;
	FILE *f;

	snprintf(path, sizeof(path), "%s/%u/status", sym->proc_root, tgid);
	f = fopen(path, "re");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		if (strncmp(line, "NSpid:", 6) == 0) {
			char *p = line + 6, *end;

			/* The last number is the pid in the innermost namespace. */
			for (;;) {
				unsigned long v = strtoul(p, &end, 10);

				if (end == p)
					break;
				nspid = (uint32_t)v;
				p = end;
			}
			break;
		}
	}
	fclose(f);
	return nspid;
}

/* Mappings that did not change keep their resolved file, so a re-read opens nothing again. */
static void sym_proc_keep_files(const struct sym_proc *p, struct sym_map *maps, size_t n)
{
	size_t j = 0;

	for (size_t i = 0; i < n; i++) {
		const struct sym_map *old;

		while (j < p->nmaps && p->maps[j].start < maps[i].start)
			j++;
		if (j == p->nmaps)
			break;
		old = &p->maps[j];
		if (old->start == maps[i].start && old->end == maps[i].end &&
		    old->off == maps[i].off && old->inode == maps[i].inode &&
		    old->kind == maps[i].kind && old->file_state == FILE_OK &&
		    (!old->path || !maps[i].path || strcmp(old->path, maps[i].path) == 0)) {
			maps[i].file_state = FILE_OK;
			maps[i].slot = old->slot;
			maps[i].serial = old->serial;
		}
	}
}

/*
 * The process's total mapped size in pages, the first field of /proc/PID/statm: a cheap
 * signature of its mappings (one line the kernel fills from counters, where maps walks and
 * formats every VMA). Any mmap, munmap or brk changes it; 0 when it cannot be read.
 */
static uint64_t sym_proc_vm_pages(struct symbolizer *sym, uint32_t tgid)
{
	char path[128], buf[64];
	unsigned long long pages = 0;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "%s/%u/statm", sym->proc_root, tgid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	if (sscanf(buf, "%llu", &pages) != 1)
		return 0;
	return pages;
}

/* Re-reads /proc/PID/maps; on failure (the process exited) the old mappings stay. */
static int sym_proc_read_maps(struct symbolizer *sym, struct sym_proc *p)
{
	struct sym_map *maps = NULL;
	size_t n = 0, cap = 0, lcap = 0;
	char path[128], *line = NULL;
	ssize_t len;
	FILE *f;

	p->read_ms = sym_now_ms();
	p->stale = 0;
	/* Read before the maps: a mapping added in between changes it again and is seen later. */
	p->vm_pages = sym_proc_vm_pages(sym, p->tgid);
	snprintf(path, sizeof(path), "%s/%u/maps", sym->proc_root, p->tgid);
	f = fopen(path, "re");
	if (!f)
		return -errno;
	while ((len = getline(&line, &lcap, f)) > 0 && n < SYM_MAX_MAPS_PER_PROC) {
		unsigned long long start, end, off, ino;
		char perms[8], *name;
		int pos = 0;
		size_t nl;

		if (sscanf(line, "%llx-%llx %7s %llx %*x:%*x %llu %n", &start, &end, perms, &off,
			   &ino, &pos) < 5 ||
		    !pos || !strchr(perms, 'x'))
			continue;
		name = line + pos;
		nl = strcspn(name, "\n");
		name[nl] = '\0';
		if (nl > 10 && strcmp(name + nl - 10, " (deleted)") == 0)
			name[nl - 10] = '\0';
		if (n == cap) {
			cap = cap ? cap * 2 : 64;
			maps = realloc(maps, cap * sizeof(*maps));
			if (!maps)
				abort();
		}
		memset(&maps[n], 0, sizeof(maps[n]));
		maps[n].start = start;
		maps[n].end = end;
		maps[n].off = off;
		maps[n].inode = ino;
		if (name[0] == '/') {
			maps[n].kind = MAP_FILE;
			maps[n].path = strdup(name);
			if (!maps[n].path)
				abort();
			maps[n].is_so = strstr(name, ".so") != NULL;
		} else if (strcmp(name, "[vdso]") == 0) {
			maps[n].kind = MAP_VDSO;
			maps[n].path = strdup(name);
			if (!maps[n].path)
				abort();
		} else {
			maps[n].kind = MAP_ANON;
		}
		n++;
	}
	free(line);
	fclose(f);
	if (!n) {
		free(maps);
		return -ENOENT; /* a zombie's maps are empty: keep the last ones */
	}
	qsort(maps, n, sizeof(*maps), map_cmp);
	sym_proc_keep_files(p, maps, n);
	sym_proc_free_maps(p);
	p->maps = maps;
	p->nmaps = n;
	p->nspid = sym_read_nspid(sym, p->tgid);
	sym->stats.procs_loaded++;
	return 0;
}

static struct sym_proc **sym_proc_slot(struct symbolizer *sym, uint32_t tgid)
{
	struct sym_proc **pp = &sym->buckets[(tgid * 2654435761u) & (sym->nbuckets - 1)];

	while (*pp && (*pp)->tgid != tgid)
		pp = &(*pp)->hnext;
	return pp;
}

static void sym_lru_unlink(struct symbolizer *sym, struct sym_proc *p)
{
	if (p->prev)
		p->prev->next = p->next;
	else
		sym->head = p->next;
	if (p->next)
		p->next->prev = p->prev;
	else
		sym->tail = p->prev;
	p->prev = p->next = NULL;
}

static void sym_lru_push(struct symbolizer *sym, struct sym_proc *p)
{
	p->next = sym->head;
	if (sym->head)
		sym->head->prev = p;
	sym->head = p;
	if (!sym->tail)
		sym->tail = p;
}

static void sym_proc_remove(struct symbolizer *sym, struct sym_proc *p)
{
	struct sym_proc **pp = sym_proc_slot(sym, p->tgid);

	*pp = p->hnext;
	sym_lru_unlink(sym, p);
	sym->nprocs--;
	sym_proc_free_maps(p);
	sym_jit_clear(&p->jit);
	free(p);
}

static struct sym_proc *sym_proc_get(struct symbolizer *sym, uint32_t tgid)
{
	struct sym_proc **pp = sym_proc_slot(sym, tgid);
	struct sym_proc *p = *pp;

	if (p) {
		sym_lru_unlink(sym, p);
		sym_lru_push(sym, p);
	} else {
		p = calloc(1, sizeof(*p));
		if (!p)
			return NULL;
		if (sym->nprocs >= sym->opts.max_processes) {
			sym_proc_remove(sym, sym->tail);
			sym->stats.proc_evictions++;
			pp = sym_proc_slot(sym, tgid);
		}
		p->tgid = tgid;
		p->stale = 1;
		p->hnext = *pp;
		*pp = p;
		sym_lru_push(sym, p);
		sym->nprocs++;
	}
	if (p->stale)
		sym_proc_read_maps(sym, p);
	return p;
}

static struct sym_map *sym_proc_find_map(struct sym_proc *p, uint64_t addr)
{
	size_t lo = 0, hi = p->nmaps;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (p->maps[mid].start <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo && addr < p->maps[lo - 1].end)
		return &p->maps[lo - 1];
	return NULL;
}

/*
 * An address outside every known mapping: a dlopen or a JIT region mapped since the last read,
 * or a garbage return address from a walk through code without frame pointers. Checked at most
 * once per back-off interval; the maps are re-read only when the statm signature changed. While
 * misses stay unresolved the interval doubles (1 s, 2 s, ... 60 s); a miss that a re-read
 * resolves, or an exec (sym_process_invalidate), resets it.
 */
static struct sym_map *sym_proc_recheck(struct symbolizer *sym, struct sym_proc *p,
					uint64_t addr)
{
	int64_t now = sym_now_ms();
	struct sym_map *m = NULL;
	uint64_t pages;

	if (p->backoff_ms < SYM_PROC_RELOAD_MS)
		p->backoff_ms = SYM_PROC_RELOAD_MS;
	if (now - p->read_ms < p->backoff_ms)
		return NULL;
	pages = sym_proc_vm_pages(sym, p->tgid);
	if (pages && pages != p->vm_pages) {
		sym_proc_read_maps(sym, p);
		m = sym_proc_find_map(p, addr);
	}
	p->read_ms = now;
	if (m)
		p->backoff_ms = SYM_PROC_RELOAD_MS;
	else if (p->backoff_ms < SYM_PROC_RELOAD_MAX_MS)
		p->backoff_ms = p->backoff_ms * 2 < SYM_PROC_RELOAD_MAX_MS ? p->backoff_ms * 2
									    : SYM_PROC_RELOAD_MAX_MS;
	return m;
}

static void sym_resolve_user(struct symbolizer *sym, struct sym_proc *p, uint64_t addr,
			     struct sym_res *res)
{
	struct sym_map *m = sym_proc_find_map(p, addr);
	struct sym_file *f;

	memset(res, 0, sizeof(*res));
	if (!m)
		m = sym_proc_recheck(sym, p, addr);
	if (!m || m->kind == MAP_ANON) {
		sym_jit_lookup(sym, p, addr, m != NULL, res);
		return;
	}
	f = sym_map_file(sym, p, m);
	if (f) {
		res->name = sym_file_lookup(f, m, addr);
		res->is_so = m->is_so;
	} else if (sym_jit_lookup(sym, p, addr, 0, res) == 1) {
		return; /* a non-ELF file (memfd) that a JIT describes in its perf map */
	}
	if (!res->name)
		res->path = m->path;
}

/* Appends one frame's label: ';', then the symbol, "[path]" or unknown (see symbolize.h). */
static void sym_put_label(struct symbolizer *sym, const struct sym_res *res, int outermost,
			  uint64_t ip, struct strbuf *out)
{
	if (out->len)
		sb_putc(out, ';');
	sym->stats.frames++;
	if (res->name) {
		if (res->is_so)
			sb_puts(out, "[l] ");
		sb_puts(out, res->name);
	} else if (res->path) {
		sb_putc(out, '[');
		sb_puts(out, res->path);
		sb_putc(out, ']');
	} else {
		sym->stats.frames_unknown++;
		if (outermost)
			sb_puts(out, "[unknown start_thread?]");
		else
			sb_printf(out, "[unknown] 0x%016llx", (unsigned long long)ip);
	}
}

int sym_append_user(struct symbolizer *sym, uint32_t tgid, const uint64_t *ips, size_t n,
		    struct strbuf *out)
{
	struct sym_proc *p = sym_proc_get(sym, tgid);
	size_t outer = n;
	int count = 0;

	if (!p)
		return -ENOMEM;
	for (size_t i = n; i-- > 0;) {
		if (ips[i] != 0 && ips[i] != SYM_BAD_IP) {
			outer = i;
			break;
		}
	}
	for (size_t i = n; i-- > 0;) {
		uint64_t ip = ips[i];
		struct sym_res res;

		if (ip == 0 || ip == SYM_BAD_IP)
			continue;
		sym_resolve_user(sym, p, i ? ip - 1 : ip, &res);
		sym_put_label(sym, &res, i == outer, ip, out);
		count++;
	}
	return count;
}

/*
 * Opens the object's file by path (through the sampled process's root, the root of a process
 * that mapped it, then the host) and keeps it only when (device, inode) match; -ENOENT if none.
 */
static int sym_obj_open(struct symbolizer *sym, uint32_t tgid, const struct sym_object *o)
{
	char path[PATH_MAX + 64];
	struct stat st;
	int fd;

	for (int i = 0; i < 3; i++) {
		if (i == 0)
			snprintf(path, sizeof(path), "%s/%u/root%s", sym->proc_root, tgid, o->path);
		else if (i == 1 && o->pid && o->pid != tgid)
			snprintf(path, sizeof(path), "%s/%u/root%s", sym->proc_root, o->pid,
				 o->path);
		else if (i == 2)
			snprintf(path, sizeof(path), "%s", o->path);
		else
			continue;
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		if (fstat(fd, &st) == 0 && (uint64_t)st.st_ino == o->ino &&
		    (((uint64_t)major(st.st_dev) << 32) | minor(st.st_dev)) == o->dev)
			return fd;
		close(fd);
	}
	return -ENOENT;
}

/* The file of an object while its process lives: its mapping of the same inode (map_files). */
static struct sym_file *sym_obj_by_process(struct symbolizer *sym, uint32_t tgid,
					   const struct sym_object *o)
{
	struct sym_proc *p = sym_proc_get(sym, tgid);

	if (!p)
		return NULL;
	for (size_t i = 0; i < p->nmaps; i++) {
		struct sym_map *m = &p->maps[i];

		if (m->kind == MAP_FILE && m->inode == o->ino && m->path &&
		    strcmp(m->path, o->path) == 0)
			return sym_map_file(sym, p, m);
	}
	return NULL;
}

/* The symbol table of object id (cached per id, checked against what resolve says now). */
static struct sym_file *sym_obj_file(struct symbolizer *sym, uint32_t tgid, uint32_t id,
				     sym_object_fn resolve, void *arg, struct sym_obj **out)
{
	struct sym_object *o = &sym->obj_scratch;
	struct sym_obj *so;
	struct sym_file *f;
	int fd = -1, vdso;

	*out = NULL;
	if (!sym->objs) {
		sym->objs = calloc(SYM_MAX_OBJECTS, sizeof(*sym->objs));
		if (!sym->objs)
			return NULL;
	}
	if (!resolve || resolve(arg, id, o))
		return NULL;
	so = &sym->objs[id % SYM_MAX_OBJECTS];
	if (so->id != id || so->dev != o->dev || so->ino != o->ino || !so->path ||
	    strcmp(so->path, o->path) != 0) {
		free(so->path);
		memset(so, 0, sizeof(*so));
		so->path = strdup(o->path);
		if (!so->path)
			return NULL;
		so->id = id;
		so->dev = o->dev;
		so->ino = o->ino;
		so->is_so = strstr(o->path, ".so") != NULL;
	}
	*out = so;
	if (so->file_state != FILE_UNRESOLVED) {
		f = sym_file_cached(sym, &so->file_state, so->slot, so->serial);
		if (f || so->file_state == FILE_FAILED)
			return f;
	}
	so->file_state = FILE_FAILED;
	vdso = strcmp(o->path, "[vdso]") == 0;
	if (!vdso)
		fd = sym_obj_open(sym, tgid, o);
	f = vdso || fd >= 0 ? sym_file_get(sym, fd, vdso, tgid, o->path) : NULL;
	if (fd >= 0)
		close(fd);
	if (!f)
		f = sym_obj_by_process(sym, tgid, o);
	if (!f) {
		log_debug("pid %u: object %u (%s) cannot be opened", tgid, id, o->path);
		return NULL;
	}
	so->slot = (uint32_t)(f - sym->files);
	so->serial = f->serial;
	so->file_state = FILE_OK;
	return f;
}

int sym_append_user_encoded(struct symbolizer *sym, uint32_t tgid, const uint64_t *frames,
			    size_t n, sym_object_fn resolve, void *arg, struct strbuf *out)
{
	struct sym_proc *p = NULL;
	size_t outer = n;
	int count = 0;

	for (size_t i = n; i-- > 0;) {
		if (frames[i] != 0 && frames[i] != SYM_BAD_IP) {
			outer = i;
			break;
		}
	}
	for (size_t i = n; i-- > 0;) {
		uint64_t fr = frames[i], adj = i ? 1 : 0;
		struct sym_res res;

		if (fr == 0 || fr == SYM_BAD_IP)
			continue;
		if (fr & UNW_FRAME_ENCODED) {
			uint32_t id = (uint32_t)((fr >> UNW_FRAME_OBJ_SHIFT) & UNW_FRAME_OBJ_MASK);
			uint64_t va = fr & UNW_FRAME_VA_MASK;
			struct sym_obj *so;
			struct sym_file *f = sym_obj_file(sym, tgid, id, resolve, arg, &so);

			memset(&res, 0, sizeof(res));
			if (f)
				res.name = sym_file_lookup_va(f, va - adj);
			if (res.name)
				res.is_so = so->is_so;
			else if (so)
				res.path = so->path;
		} else {
			/* Raw (JIT, anonymous code): the process's mappings and perf map. */
			if (!p)
				p = sym_proc_get(sym, tgid);
			if (!p)
				return -ENOMEM;
			sym_resolve_user(sym, p, fr - adj, &res);
		}
		sym_put_label(sym, &res, i == outer, fr, out);
		count++;
	}
	return count;
}

void sym_process_invalidate(struct symbolizer *sym, uint32_t tgid)
{
	struct sym_proc *p = *sym_proc_slot(sym, tgid);

	if (!p)
		return;
	p->stale = 1;
	p->backoff_ms = SYM_PROC_RELOAD_MS;
	p->jit.checked_ms = 0;
	p->jit.size = -1; /* force a re-read of the perf map too */
}

void sym_process_forget(struct symbolizer *sym, uint32_t tgid)
{
	struct sym_proc *p = *sym_proc_slot(sym, tgid);

	if (p)
		sym_proc_remove(sym, p);
}

void sym_get_stats(struct symbolizer *sym, struct sym_stats *st)
{
	*st = sym->stats;
}

int sym_open(const struct sym_opts *opts, struct symbolizer **out)
{
	struct symbolizer *sym;

	if (elf_version(EV_CURRENT) == EV_NONE)
		return -ENOTSUP;
	sym = calloc(1, sizeof(*sym));
	if (!sym)
		return -ENOMEM;
	if (opts)
		sym->opts = *opts;
	if (!sym->opts.max_files)
		sym->opts.max_files = SYM_DEFAULT_MAX_FILES;
	if (!sym->opts.max_processes)
		sym->opts.max_processes = SYM_DEFAULT_MAX_PROCESSES;
	sym->proc_root = strdup(sym->opts.proc_root ? sym->opts.proc_root : "/proc");
	sym->opts.proc_root = sym->proc_root;
	sym->files = calloc(sym->opts.max_files, sizeof(*sym->files));
	sym->nbuckets = 64;
	while (sym->nbuckets < sym->opts.max_processes)
		sym->nbuckets <<= 1;
	sym->buckets = calloc(sym->nbuckets, sizeof(*sym->buckets));
	if (!sym->proc_root || !sym->files || !sym->buckets) {
		sym_close(sym);
		return -ENOMEM;
	}
	*out = sym;
	return 0;
}

void sym_close(struct symbolizer *sym)
{
	if (!sym)
		return;
	while (sym->head)
		sym_proc_remove(sym, sym->head);
	if (sym->files) {
		for (size_t i = 0; i < sym->opts.max_files; i++)
			sym_file_clear(&sym->files[i]);
	}
	if (sym->objs) {
		for (size_t i = 0; i < SYM_MAX_OBJECTS; i++)
			free(sym->objs[i].path);
	}
	free(sym->objs);
	free(sym->files);
	free(sym->buckets);
	free(sym->ksyms);
	free(sym->knames);
	free(sym->proc_root);
	free(sym);
}
