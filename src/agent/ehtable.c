/*
 * ehtable — compact unwind tables from DWARF CFI with libdw. See ehtable.h for the contract.
 *
 * The build walks the CFI row by row: for every FDE start (read from the CFI section itself with
 * dwarf_next_cfi) it asks libdw for the frame at address a (dwarf_cfi_addrframe), classifies the
 * row, and continues at the row's end. When no FDE covers a, a NONE row marks the gap and the
 * walk jumps to the next FDE start. libdw re-runs an FDE's program for each row, which is
 * quadratic per FDE, but FDEs are short (design brief §2.1: libc in ~7 ms).
 *
 * Classification (x86-64 DWARF register numbers: 6 rbp, 7 rsp, 16 return address):
 *   CFA = rsp + off / rbp + off (DW_OP_breg7/6 or DW_OP_bregx) → RSP / RBP with cfa = off/8
 *   CFA = breg7 8; breg16 0; lit15; and; litT; ge; lit3; shl; plus  → PLT with cfa = T
 *   signal frame (CIE augmentation 'S')             → SIGNAL
 *   RA undefined                                    → STOP
 *   anything else, RA not at CFA-8, offsets that do not fit → UNSUP
 *   rbp: same value → 0, at CFA+N → N/8, any other rule → UNW_RBP_UNKNOWN.
 */
#define LOG_MODULE "ehtable"

#include "agent/ehtable.h"

#include <dirent.h>
#include <dwarf.h>
#include <elfutils/libdw.h>
#include <elfutils/libdwelf.h>
#include <errno.h>
#include <fcntl.h>
#include <gelf.h>
#include <libgen.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <inttypes.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"

#define EHTABLE_MAX_FDES (2u << 20)  /* FDE starts read from one CFI section */
#define EHTABLE_CIE_CACHE 64	     /* CIE pointer encodings remembered while scanning */
#define EHTABLE_CACHE_MAX_FILES 4096 /* files considered when trimming the cache dir */
#define EHTABLE_DEBUG_ROOT "/usr/lib/debug"
#define EHTABLE_FILE_MAGIC "EMBEHTB1"

#define REG_RBP 6
#define REG_RSP 7
#define REG_RA 16

static uint64_t ehtable_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

const char *ehtable_kind_name(unsigned kind)
{
	static const char *const names[UNW_KIND_COUNT] = {
	    "none", "rsp", "rbp", "plt", "signal", "stop", "unsup",
	};

	return kind < UNW_KIND_COUNT ? names[kind] : "?";
}

/* ---- row classification ------------------------------------------------------------------ */

/* libdw spells "offset(N)" as call_frame_cfa; plus_uconst N (N signed). */
static int ehtable_cfa_offset_rule(const Dwarf_Op *ops, size_t nops, int64_t *off)
{
	if (nops == 1 && ops[0].atom == DW_OP_call_frame_cfa) {
		*off = 0;
		return 0;
	}
	if (nops == 2 && ops[0].atom == DW_OP_call_frame_cfa && ops[1].atom == DW_OP_plus_uconst) {
		*off = (int64_t)ops[1].number;
		return 0;
	}
	return -1;
}

/* A single "register + offset": DW_OP_bregN off, or DW_OP_bregx N off (libdw's CFA form). */
static bool ehtable_breg(const Dwarf_Op *ops, size_t nops, unsigned *reg, int64_t *off)
{
	if (nops != 1)
		return false;
	if (ops[0].atom >= DW_OP_breg0 && ops[0].atom <= DW_OP_breg31) {
		*reg = ops[0].atom - DW_OP_breg0;
		*off = (int64_t)ops[0].number;
		return true;
	}
	if (ops[0].atom == DW_OP_bregx) {
		*reg = (unsigned)ops[0].number;
		*off = (int64_t)ops[0].number2;
		return true;
	}
	return false;
}

static bool ehtable_is_plt(const Dwarf_Op *ops, size_t nops, int64_t *threshold)
{
	static const uint8_t shape[9] = {
	    DW_OP_breg7, DW_OP_breg16, DW_OP_lit15, DW_OP_and,	0 /* litT */,
	    DW_OP_ge,	 DW_OP_lit3,   DW_OP_shl,   DW_OP_plus,
	};

	if (nops != 9)
		return false;
	for (size_t i = 0; i < 9; i++)
		if (i != 4 && ops[i].atom != shape[i])
			return false;
	if (ops[0].number != 8 || ops[1].number != 0)
		return false;
	if (ops[4].atom < DW_OP_lit0 || ops[4].atom > DW_OP_lit31)
		return false;
	*threshold = ops[4].atom - DW_OP_lit0;
	return true;
}

static void ehtable_classify(Dwarf_Frame *f, bool signalp, struct unw_row *r)
{
	Dwarf_Op mem[3], *ops;
	size_t nops;
	int64_t off, plt;
	unsigned reg;

	r->kind = UNW_KIND_UNSUP;
	r->rbp = 0;
	r->cfa = 0;
	if (signalp) {
		r->kind = UNW_KIND_SIGNAL;
		return;
	}
	if (dwarf_frame_register(f, REG_RA, mem, &ops, &nops) != 0)
		return;
	if (nops == 0 && ops == mem) {
		r->kind = UNW_KIND_STOP;
		return;
	}
	if (ehtable_cfa_offset_rule(ops, nops, &off) != 0 || off != -8)
		return;

	if (dwarf_frame_cfa(f, &ops, &nops) != 0)
		return;
	if (ehtable_breg(ops, nops, &reg, &off) && (reg == REG_RSP || reg == REG_RBP)) {
		if (off % 8 != 0 || off / 8 < INT16_MIN || off / 8 > INT16_MAX)
			return;
		r->cfa = (int16_t)(off / 8);
		r->kind = reg == REG_RSP ? UNW_KIND_RSP : UNW_KIND_RBP;
	} else if (ehtable_is_plt(ops, nops, &plt)) {
		r->cfa = (int16_t)plt;
		r->kind = UNW_KIND_PLT;
	} else {
		return;
	}

	if (dwarf_frame_register(f, REG_RBP, mem, &ops, &nops) != 0) {
		r->rbp = UNW_RBP_UNKNOWN;
	} else if (nops == 0 && ops == NULL) {
		r->rbp = 0;
	} else if (ehtable_cfa_offset_rule(ops, nops, &off) == 0 && off != 0 && off % 8 == 0 &&
		   off / 8 > UNW_RBP_UNKNOWN && off / 8 <= INT8_MAX) {
		r->rbp = (int8_t)(off / 8);
	} else {
		r->rbp = UNW_RBP_UNKNOWN;
	}
}

/* ---- FDE starts -------------------------------------------------------------------------- */

struct ehtable_cie_enc {
	Dwarf_Off off;
	uint8_t enc;
};

/* Decodes a DW_EH_PE value; returns bytes consumed or -1. */
static int ehtable_read_encoded(const uint8_t *p, const uint8_t *end, uint8_t enc,
				uint64_t field_va, uint64_t *val)
{
	uint64_t v = 0;
	int len;

	switch (enc & 0x0f) {
	case DW_EH_PE_absptr:
	case DW_EH_PE_udata8:
	case DW_EH_PE_sdata8:
		len = 8;
		break;
	case DW_EH_PE_udata4:
	case DW_EH_PE_sdata4:
		len = 4;
		break;
	case DW_EH_PE_udata2:
	case DW_EH_PE_sdata2:
		len = 2;
		break;
	default:
		return -1;
	}
	if (end - p < len)
		return -1;
	if (len == 8) {
		memcpy(&v, p, 8);
	} else if (len == 4) {
		uint32_t u;

		memcpy(&u, p, 4);
		v = (enc & 0x0f) == DW_EH_PE_sdata4 ? (uint64_t)(int64_t)(int32_t)u : u;
	} else {
		uint16_t u;

		memcpy(&u, p, 2);
		v = (enc & 0x0f) == DW_EH_PE_sdata2 ? (uint64_t)(int64_t)(int16_t)u : u;
	}
	switch (enc & 0x70) {
	case DW_EH_PE_absptr:
		break;
	case DW_EH_PE_pcrel:
		v += field_va;
		break;
	default:
		return -1;
	}
	*val = v;
	return len;
}

/* The FDE pointer encoding of a CIE: its 'R' augmentation, DW_EH_PE_absptr without one. */
static int ehtable_cie_fde_encoding(const Dwarf_CIE *cie, uint8_t *enc)
{
	const char *aug = cie->augmentation;
	const uint8_t *d = cie->augmentation_data;
	size_t i = 0, size = cie->augmentation_data_size;

	*enc = DW_EH_PE_absptr;
	if (aug[0] != 'z')
		return aug[0] == '\0' ? 0 : -1;
	for (aug++; *aug; aug++) {
		switch (*aug) {
		case 'R':
			if (i >= size)
				return -1;
			*enc = d[i++];
			break;
		case 'L':
			i++;
			break;
		case 'P': {
			uint64_t dummy;
			int n;

			if (i >= size)
				return -1;
			n = ehtable_read_encoded(d + i + 1, d + size, d[i] & 0x0f, 0, &dummy);
			if (n < 0)
				return -1;
			i += 1 + (size_t)n;
			break;
		}
		case 'S':
		case 'B':
			break;
		default:
			return -1;
		}
	}
	return 0;
}

static int ehtable_cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/*
 * Collects the sorted, distinct initial locations of the FDEs of a CFI section (.eh_frame with
 * pointer encodings, or .debug_frame with absolute 8-byte addresses).
 */
static int ehtable_fde_starts(Elf *elf, Elf_Scn *scn, bool eh_frame, uint64_t **out, size_t *n_out)
{
	struct ehtable_cie_enc cies[EHTABLE_CIE_CACHE];
	size_t n_cies = 0, n = 0, cap = 0;
	uint64_t *starts = NULL;
	const unsigned char *ident = (const unsigned char *)elf_getident(elf, NULL);
	GElf_Shdr shdr;
	Elf_Data *data;
	Dwarf_Off off = 0, next;
	int rc = 0;

	if (!gelf_getshdr(scn, &shdr) || !ident)
		return -EINVAL;
	if ((shdr.sh_flags & SHF_COMPRESSED) && elf_compress(scn, 0, 0) < 0)
		return -EINVAL;
	data = elf_getdata(scn, NULL);
	if (!data || !data->d_buf)
		return -ENODATA;

	for (;;) {
		Dwarf_CFI_Entry e;
		uint64_t start;
		uint8_t enc = DW_EH_PE_absptr;
		int r;

		next = (Dwarf_Off)-1; /* left alone by errors that do not allow skipping */
		r = dwarf_next_cfi(ident, data, eh_frame, off, &next, &e);

		if (r == 1)
			break;
		if (r < 0) {
			if (next == (Dwarf_Off)-1 || next <= off)
				break;
			off = next;
			continue;
		}
		off = next;
		if (dwarf_cfi_cie_p(&e))
			continue;
		if (eh_frame) {
			size_t i;

			for (i = 0; i < n_cies && cies[i].off != e.fde.CIE_pointer; i++)
				;
			if (i < n_cies) {
				enc = cies[i].enc;
			} else {
				Dwarf_CFI_Entry ce;
				Dwarf_Off cn;

				if (dwarf_next_cfi(ident, data, true, e.fde.CIE_pointer, &cn,
						   &ce) != 0 ||
				    !dwarf_cfi_cie_p(&ce) ||
				    ehtable_cie_fde_encoding(&ce.cie, &enc) != 0)
					continue;
				if (n_cies < EHTABLE_CIE_CACHE)
					cies[n_cies++] =
					    (struct ehtable_cie_enc){e.fde.CIE_pointer, enc};
			}
		} else {
			enc = DW_EH_PE_udata8;
		}
		if (ehtable_read_encoded(e.fde.start, e.fde.end, enc,
					 shdr.sh_addr +
					     (uint64_t)(e.fde.start - (const uint8_t *)data->d_buf),
					 &start) < 0)
			continue;
		if (start == 0 && !eh_frame)
			continue; /* discarded function in .debug_frame */
		if (n == cap) {
			size_t ncap = cap ? cap * 2 : 1024;
			uint64_t *p;

			if (ncap > EHTABLE_MAX_FDES) {
				rc = -E2BIG;
				break;
			}
			p = realloc(starts, ncap * sizeof(*p));
			if (!p) {
				rc = -ENOMEM;
				break;
			}
			starts = p;
			cap = ncap;
		}
		starts[n++] = start;
	}
	if (rc) {
		free(starts);
		return rc;
	}
	qsort(starts, n, sizeof(*starts), ehtable_cmp_u64);
	size_t w = 0;
	for (size_t i = 0; i < n; i++)
		if (w == 0 || starts[w - 1] != starts[i])
			starts[w++] = starts[i];
	*out = starts;
	*n_out = w;
	return 0;
}

/* ---- rows and the slot image ------------------------------------------------------------- */

struct ehtable_rows {
	struct unw_row *r;
	size_t n, cap;
	uint32_t pushed;
};

static int ehtable_push(struct ehtable_rows *b, uint64_t pc, const struct unw_row *row)
{
	struct unw_row nr = *row;

	if (pc > UINT32_MAX)
		return -E2BIG;
	nr.pc = (uint32_t)pc;
	b->pushed++;
	if (b->n && b->r[b->n - 1].pc == nr.pc)
		b->n--; /* a row at the same pc supersedes (gap row at an FDE start) */
	if (b->n) {
		const struct unw_row *l = &b->r[b->n - 1];

		if (l->kind == nr.kind && l->cfa == nr.cfa && l->rbp == nr.rbp)
			return 0;
	}
	if (b->n == b->cap) {
		size_t ncap = b->cap ? b->cap * 2 : 4096;
		struct unw_row *p;

		if (ncap > EHTABLE_MAX_ROWS)
			ncap = EHTABLE_MAX_ROWS;
		if (b->n == ncap)
			return -E2BIG;
		p = realloc(b->r, ncap * sizeof(*p));
		if (!p)
			return -ENOMEM;
		b->r = p;
		b->cap = ncap;
	}
	b->r[b->n++] = nr;
	return 0;
}

static int ehtable_walk_cfi(Dwarf_CFI *cfi, const uint64_t *starts, size_t n_starts,
			    struct ehtable_rows *b)
{
	static const struct unw_row none = {0, UNW_KIND_NONE, 0, 0};
	size_t i = 0;
	uint64_t a;
	int rc;

	if (n_starts == 0)
		return -ENODATA;
	a = starts[0];
	for (;;) {
		Dwarf_Frame *f = NULL;
		Dwarf_Addr s, e;
		bool sig = false;
		struct unw_row row;

		if (dwarf_cfi_addrframe(cfi, a, &f) == 0 &&
		    dwarf_frame_info(f, &s, &e, &sig) >= 0 && e > a) {
			ehtable_classify(f, sig, &row);
			free(f);
			rc = ehtable_push(b, a, &row);
			if (rc)
				return rc;
			a = e;
			continue;
		}
		free(f);
		rc = ehtable_push(b, a, &none);
		if (rc)
			return rc;
		while (i < n_starts && starts[i] <= a)
			i++;
		if (i == n_starts)
			return 0;
		a = starts[i];
	}
}

static int ehtable_make_image(struct ehtable *t, const struct ehtable_rows *b)
{
	const struct unw_row *rows = b->r;
	uint64_t first_va, n_buckets;
	struct unw_table_hdr *hdr;
	struct unw_bucket *bk;
	size_t j = 0, k = 0;

	if (b->n == 0)
		return -ENODATA;
	first_va = rows[0].pc & ~((1ull << UNW_BUCKET_SHIFT) - 1);
	n_buckets = ((rows[b->n - 1].pc - first_va) >> UNW_BUCKET_SHIFT) + 1;
	if (UNW_HDR_SLOTS + n_buckets + b->n > UINT32_MAX)
		return -E2BIG;
	t->n_slots = (uint32_t)(UNW_HDR_SLOTS + n_buckets + b->n);
	t->slots = calloc(t->n_slots, sizeof(uint64_t));
	if (!t->slots)
		return -ENOMEM;
	hdr = (struct unw_table_hdr *)t->slots;
	hdr->first_va = (uint32_t)first_va;
	hdr->n_buckets = (uint32_t)n_buckets;
	hdr->n_rows = (uint32_t)b->n;
	bk = (struct unw_bucket *)(t->slots + UNW_HDR_SLOTS);
	for (uint64_t i = 0; i < n_buckets; i++) {
		uint64_t bs = first_va + (i << UNW_BUCKET_SHIFT);
		uint64_t be = bs + (1ull << UNW_BUCKET_SHIFT);

		while (j + 1 < b->n && rows[j + 1].pc <= bs)
			j++;
		while (k < b->n && rows[k].pc < be)
			k++;
		bk[i].first = (uint32_t)j;
		bk[i].end = (uint32_t)k;
	}
	memcpy(t->slots + UNW_HDR_SLOTS + n_buckets, rows, b->n * sizeof(*rows));
	for (size_t i = 0; i < b->n; i++)
		t->kind_rows[rows[i].kind < UNW_KIND_COUNT ? rows[i].kind : UNW_KIND_UNSUP]++;
	t->cfi_rows = b->pushed;
	return 0;
}

const struct unw_row *ehtable_lookup(const struct ehtable *t, uint64_t va)
{
	const struct unw_table_hdr *hdr = ehtable_hdr(t);
	const struct unw_bucket *bk;
	const struct unw_row *rows = ehtable_rows(t);
	uint64_t idx;
	uint32_t lo, hi;

	if (va < hdr->first_va)
		return NULL;
	idx = (va - hdr->first_va) >> UNW_BUCKET_SHIFT;
	if (idx >= hdr->n_buckets)
		return NULL;
	bk = &ehtable_buckets(t)[idx];
	lo = bk->first;
	hi = bk->end;
	if (lo >= hi || rows[lo].pc > va)
		return NULL;
	while (lo + 1 < hi) {
		uint32_t mid = lo + (hi - lo) / 2;

		if (rows[mid].pc <= va)
			lo = mid;
		else
			hi = mid;
	}
	return &rows[lo];
}

/* ---- identity and debug files ------------------------------------------------------------ */

static int ehtable_elf_identity(Elf *elf, int fd, uint8_t *id, uint32_t *len, int *is_bid)
{
	const void *bid;
	ssize_t n = dwelf_elf_gnu_build_id(elf, &bid);
	struct stat st;

	if (n > 0 && n <= EHTABLE_ID_MAX) {
		memcpy(id, bid, (size_t)n);
		*len = (uint32_t)n;
		*is_bid = 1;
		return 0;
	}
	if (fstat(fd, &st) != 0)
		return -errno;
	uint64_t facts[4] = {st.st_dev, st.st_ino, (uint64_t)st.st_size,
			     (uint64_t)st.st_mtim.tv_sec * 1000000000ull + st.st_mtim.tv_nsec};
	memcpy(id, facts, sizeof(facts));
	*len = sizeof(facts);
	*is_bid = 0;
	return 0;
}

static Elf_Scn *ehtable_find_section(Elf *elf, const char *name)
{
	size_t shstrndx;
	Elf_Scn *scn = NULL;

	if (elf_getshdrstrndx(elf, &shstrndx) != 0)
		return NULL;
	while ((scn = elf_nextscn(elf, scn))) {
		GElf_Shdr sh;
		const char *n;

		if (!gelf_getshdr(scn, &sh) || sh.sh_type == SHT_NOBITS)
			continue;
		n = elf_strptr(elf, shstrndx, sh.sh_name);
		if (n && strcmp(n, name) == 0)
			return scn;
	}
	return NULL;
}

/* Opens the separate debug file of elf: by build-id, then by .gnu_debuglink. */
static int ehtable_open_debug(Elf *elf, const uint8_t *bid, uint32_t bid_len, int is_bid,
			      const char *path)
{
	char buf[PATH_MAX];
	GElf_Word crc;
	const char *link;
	int fd;

	if (is_bid && bid_len >= 2) {
		int o =
		    snprintf(buf, sizeof(buf), "%s/.build-id/%02x/", EHTABLE_DEBUG_ROOT, bid[0]);

		for (uint32_t i = 1; i < bid_len && o + 3 < (int)sizeof(buf); i++)
			o += snprintf(buf + o, sizeof(buf) - (size_t)o, "%02x", bid[i]);
		snprintf(buf + o, sizeof(buf) - (size_t)o, ".debug");
		fd = open(buf, O_RDONLY | O_CLOEXEC);
		if (fd >= 0)
			return fd;
	}
	link = dwelf_elf_gnu_debuglink(elf, &crc);
	if (!link || !path)
		return -ENOENT;
	char dir[PATH_MAX], real[PATH_MAX];

	if (!realpath(path, real))
		snprintf(real, sizeof(real), "%s", path);
	snprintf(dir, sizeof(dir), "%s", real);
	const char *d = dirname(dir);
	const char *fmts[3] = {"%s/%s", "%s/.debug/%s", EHTABLE_DEBUG_ROOT "%s/%s"};

	for (int i = 0; i < 3; i++) {
		snprintf(buf, sizeof(buf), fmts[i], d, link);
		if (strcmp(buf, real) == 0)
			continue;
		fd = open(buf, O_RDONLY | O_CLOEXEC);
		if (fd >= 0)
			return fd;
	}
	return -ENOENT;
}

static void ehtable_read_loads(Elf *elf, struct ehtable *t)
{
	size_t n = 0;

	if (elf_getphdrnum(elf, &n) != 0)
		return;
	for (size_t i = 0; i < n && t->n_loads < EHTABLE_MAX_LOADS; i++) {
		GElf_Phdr ph;

		if (!gelf_getphdr(elf, (int)i, &ph) || ph.p_type != PT_LOAD)
			continue;
		t->loads[t->n_loads++] = (struct ehtable_load){
		    .offset = ph.p_offset,
		    .vaddr = ph.p_vaddr,
		    .filesz = ph.p_filesz,
		    .flags = ph.p_flags,
		};
	}
}

int ehtable_bias(const struct ehtable *t, uint64_t map_start, uint64_t pgoff, uint64_t *bias)
{
	for (uint32_t i = 0; i < t->n_loads && i < EHTABLE_MAX_LOADS; i++) {
		const struct ehtable_load *l = &t->loads[i];
		uint64_t page_off = l->offset & ~4095ull;

		/* file offset o is at va o - offset + vaddr, and at map_start + o - pgoff */
		if (pgoff >= page_off && pgoff < l->offset + l->filesz) {
			*bias = map_start - pgoff + l->offset - l->vaddr;
			return 0;
		}
	}
	return -ENOENT;
}

/* ---- build ------------------------------------------------------------------------------- */

static int ehtable_from_cfi(Elf *elf, Dwarf_CFI *cfi, bool eh_frame, struct ehtable *t)
{
	struct ehtable_rows b = {0};
	uint64_t *starts = NULL;
	size_t n_starts = 0;
	Elf_Scn *scn = ehtable_find_section(elf, eh_frame ? ".eh_frame" : ".debug_frame");
	int rc;

	if (!scn)
		return -ENODATA;
	rc = ehtable_fde_starts(elf, scn, eh_frame, &starts, &n_starts);
	if (rc == 0)
		rc = ehtable_walk_cfi(cfi, starts, n_starts, &b);
	if (rc == 0)
		rc = ehtable_make_image(t, &b);
	free(starts);
	free(b.r);
	return rc;
}

static int ehtable_from_debug_frame(Elf *elf, struct ehtable *t)
{
	Dwarf *dw;
	Dwarf_CFI *cfi;
	int rc = -ENODATA;

	if (!ehtable_find_section(elf, ".debug_frame"))
		return rc;
	dw = dwarf_begin_elf(elf, DWARF_C_READ, NULL);
	if (!dw)
		return rc;
	cfi = dwarf_getcfi(dw);
	if (cfi)
		rc = ehtable_from_cfi(elf, cfi, false, t);
	dwarf_end(dw);
	return rc;
}

int ehtable_build_fd(int fd, const char *path, struct ehtable **out)
{
	uint64_t t0 = ehtable_now_ns();
	struct ehtable *t;
	Elf *elf;
	GElf_Ehdr eh;
	int rc;

	*out = NULL;
	elf_version(EV_CURRENT);
	elf = elf_begin(fd, ELF_C_READ_MMAP, NULL);
	if (!elf)
		return -EINVAL;
	t = calloc(1, sizeof(*t));
	if (!t) {
		elf_end(elf);
		return -ENOMEM;
	}
	if (elf_kind(elf) != ELF_K_ELF || !gelf_getehdr(elf, &eh) ||
	    eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_machine != EM_X86_64) {
		rc = -ENOTSUP;
		goto out;
	}
	rc = ehtable_elf_identity(elf, fd, t->id, &t->id_len, &t->id_is_build_id);
	if (rc)
		goto out;
	ehtable_read_loads(elf, t);

	rc = -ENODATA;
	Dwarf_CFI *cfi = ehtable_find_section(elf, ".eh_frame") ? dwarf_getcfi_elf(elf) : NULL;

	if (cfi) {
		t->source = EHTABLE_SRC_EH_FRAME;
		rc = ehtable_from_cfi(elf, cfi, true, t);
		dwarf_cfi_end(cfi);
	} else {
		/* no .eh_frame: .debug_frame of the object itself, else of its debug file */
		t->source = EHTABLE_SRC_DEBUG_FRAME;
		rc = ehtable_from_debug_frame(elf, t);
		int dfd =
		    rc ? ehtable_open_debug(elf, t->id, t->id_len, t->id_is_build_id, path) : -1;

		if (dfd >= 0) {
			Elf *delf = elf_begin(dfd, ELF_C_READ_MMAP, NULL);

			if (delf) {
				rc = ehtable_from_debug_frame(delf, t);
				elf_end(delf);
			}
			close(dfd);
		}
	}
out:
	elf_end(elf);
	if (rc) {
		log_debug("%s: no unwind table: %s", path ? path : "(fd)", strerror(-rc));
		ehtable_free(t);
		return rc;
	}
	t->build_ns = ehtable_now_ns() - t0;
	*out = t;
	return 0;
}

int ehtable_build(const char *path, struct ehtable **out)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	int rc;

	*out = NULL;
	if (fd < 0)
		return -errno;
	rc = ehtable_build_fd(fd, path, out);
	close(fd);
	return rc;
}

void ehtable_free(struct ehtable *t)
{
	if (!t)
		return;
	free(t->slots);
	free(t);
}

/* ---- frame-pointer objects (Go) ---------------------------------------------------------- */

/* Opens path as an x86-64 ELF object; 0 and *fd, *elf, or -errno. */
static int ehtable_open_elf(const char *path, int *fd, Elf **elf)
{
	GElf_Ehdr eh;

	*fd = open(path, O_RDONLY | O_CLOEXEC);
	if (*fd < 0)
		return -errno;
	elf_version(EV_CURRENT);
	*elf = elf_begin(*fd, ELF_C_READ_MMAP, NULL);
	if (*elf && elf_kind(*elf) == ELF_K_ELF && gelf_getehdr(*elf, &eh) &&
	    eh.e_ident[EI_CLASS] == ELFCLASS64 && eh.e_machine == EM_X86_64)
		return 0;
	if (*elf)
		elf_end(*elf);
	close(*fd);
	return -ENOTSUP;
}

int ehtable_is_go(const char *path)
{
	Elf *elf;
	int fd, rc = ehtable_open_elf(path, &fd, &elf);

	if (rc)
		return rc;
	rc = ehtable_find_section(elf, ".go.buildinfo") ||
	     ehtable_find_section(elf, ".note.go.buildid");
	elf_end(elf);
	close(fd);
	return rc;
}

/* It is wrong only at the one instruction between a prologue's sub and its store of rbp. */
void ehtable_use_frame_pointers(struct ehtable *t)
{
	struct unw_table_hdr *hdr = (struct unw_table_hdr *)t->slots;
	struct unw_row *rows = (struct unw_row *)ehtable_rows(t);

	for (uint32_t i = 0; i < hdr->n_rows; i++)
		if (rows[i].kind == UNW_KIND_RSP && rows[i].cfa > 1 && rows[i].rbp == 0)
			rows[i].rbp = -2;
	hdr->flags |= UNW_TABLE_FP;
}

int ehtable_build_fp_only(const char *path, struct ehtable **out)
{
	struct ehtable *t;
	Elf *elf;
	int fd, rc = ehtable_open_elf(path, &fd, &elf);

	*out = NULL;
	if (rc)
		return rc;
	t = calloc(1, sizeof(*t));
	rc = t ? ehtable_elf_identity(elf, fd, t->id, &t->id_len, &t->id_is_build_id) : -ENOMEM;
	if (rc == 0) {
		ehtable_read_loads(elf, t);
		t->n_slots = UNW_HDR_SLOTS;
		t->slots = calloc(t->n_slots, sizeof(uint64_t));
		rc = t->slots ? 0 : -ENOMEM;
	}
	elf_end(elf);
	close(fd);
	if (rc) {
		ehtable_free(t);
		return rc;
	}
	((struct unw_table_hdr *)t->slots)->flags = UNW_TABLE_FP;
	*out = t;
	return 0;
}

int ehtable_identify(const char *path, uint8_t id[EHTABLE_ID_MAX], uint32_t *id_len,
		     int *is_build_id)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	Elf *elf;
	int rc;

	if (fd < 0)
		return -errno;
	elf_version(EV_CURRENT);
	elf = elf_begin(fd, ELF_C_READ_MMAP, NULL);
	rc = elf ? ehtable_elf_identity(elf, fd, id, id_len, is_build_id) : -EINVAL;
	if (elf)
		elf_end(elf);
	close(fd);
	return rc;
}

static void ehtable_hex(const uint8_t *id, uint32_t len, char *buf, size_t size)
{
	size_t o = 0;

	if (size)
		buf[0] = '\0';
	for (uint32_t i = 0; i < len && o + 3 <= size; i++, o += 2)
		snprintf(buf + o, size - o, "%02x", id[i]);
}

void ehtable_id_hex(const struct ehtable *t, char *buf, size_t size)
{
	ehtable_hex(t->id, t->id_len, buf, size);
}

/* ---- files and the cache ----------------------------------------------------------------- */

struct ehtable_file_hdr {
	char magic[8];
	uint32_t version;
	uint32_t id_len;
	uint8_t id[EHTABLE_ID_MAX];
	uint32_t id_is_build_id;
	uint32_t source;
	uint32_t kind_rows[UNW_KIND_COUNT];
	uint32_t cfi_rows;
	uint32_t n_slots;
	uint32_t reserved;
	uint64_t build_ns;
	uint32_t n_loads;
	uint32_t reserved2;
	struct ehtable_load loads[EHTABLE_MAX_LOADS];
	uint64_t checksum; /* ehtable_fnv over this header (checksum 0) and the slots */
};

/* FNV-1a over 8-byte words (n is a multiple of 8 for every caller): fast on MiB tables. */
static uint64_t ehtable_fnv(uint64_t h, const void *p, size_t n)
{
	const uint8_t *b = p;

	for (size_t i = 0; i + 8 <= n; i += 8) {
		uint64_t w;

		memcpy(&w, b + i, 8);
		h ^= w;
		h *= 0x100000001b3ull;
		h ^= h >> 29;
	}
	return h;
}

static uint64_t ehtable_checksum(const struct ehtable_file_hdr *fh, const uint64_t *slots)
{
	struct ehtable_file_hdr c = *fh;
	uint64_t h = 0xcbf29ce484222325ull;

	c.checksum = 0;
	h = ehtable_fnv(h, &c, sizeof(c));
	return ehtable_fnv(h, slots, (size_t)fh->n_slots * sizeof(uint64_t));
}

/* A loaded image is trusted by BPF later: every index must stay inside the table. */
static int ehtable_validate(const struct ehtable *t)
{
	const struct unw_table_hdr *hdr = ehtable_hdr(t);
	const struct unw_bucket *bk;

	if (t->n_slots < UNW_HDR_SLOTS ||
	    (uint64_t)UNW_HDR_SLOTS + hdr->n_buckets + hdr->n_rows != t->n_slots ||
	    hdr->n_rows == 0 || hdr->n_rows > EHTABLE_MAX_ROWS)
		return -EINVAL;
	bk = ehtable_buckets(t);
	for (uint32_t i = 0; i < hdr->n_buckets; i++)
		if (bk[i].first > bk[i].end || bk[i].end > hdr->n_rows)
			return -EINVAL;
	return 0;
}

int ehtable_save(const struct ehtable *t, const char *path)
{
	struct ehtable_file_hdr fh = {.version = EHTABLE_FILE_VERSION};
	FILE *f;
	int rc = 0;

	memcpy(fh.magic, EHTABLE_FILE_MAGIC, sizeof(fh.magic));
	fh.id_len = t->id_len;
	memcpy(fh.id, t->id, sizeof(fh.id));
	fh.id_is_build_id = (uint32_t)t->id_is_build_id;
	fh.source = t->source;
	memcpy(fh.kind_rows, t->kind_rows, sizeof(fh.kind_rows));
	fh.cfi_rows = t->cfi_rows;
	fh.n_slots = t->n_slots;
	fh.build_ns = t->build_ns;
	fh.n_loads = t->n_loads;
	memcpy(fh.loads, t->loads, sizeof(fh.loads));
	fh.checksum = ehtable_checksum(&fh, t->slots);
	f = fopen(path, "wbe");
	if (!f)
		return -errno;
	if (fwrite(&fh, sizeof(fh), 1, f) != 1 ||
	    fwrite(t->slots, sizeof(uint64_t), t->n_slots, f) != t->n_slots)
		rc = -EIO;
	if (fclose(f) != 0 && rc == 0)
		rc = -EIO;
	return rc;
}

int ehtable_load(const char *path, struct ehtable **out)
{
	struct ehtable_file_hdr fh;
	struct ehtable *t = NULL;
	struct stat st;
	FILE *f;
	int rc = -EINVAL;

	*out = NULL;
	f = fopen(path, "rbe");
	if (!f)
		return -errno;
	if (fstat(fileno(f), &st) != 0 || fread(&fh, sizeof(fh), 1, f) != 1 ||
	    memcmp(fh.magic, EHTABLE_FILE_MAGIC, sizeof(fh.magic)) != 0 ||
	    fh.version != EHTABLE_FILE_VERSION || fh.id_len > EHTABLE_ID_MAX ||
	    fh.n_slots > UNW_HDR_SLOTS + (uint64_t)EHTABLE_MAX_ROWS * 2 ||
	    (uint64_t)st.st_size != sizeof(fh) + (uint64_t)fh.n_slots * sizeof(uint64_t))
		goto out;
	t = calloc(1, sizeof(*t));
	if (!t || !(t->slots = malloc((size_t)fh.n_slots * sizeof(uint64_t)))) {
		rc = -ENOMEM;
		goto out;
	}
	if (fread(t->slots, sizeof(uint64_t), fh.n_slots, f) != fh.n_slots ||
	    ehtable_checksum(&fh, t->slots) != fh.checksum)
		goto out;
	t->n_slots = fh.n_slots;
	t->id_len = fh.id_len;
	memcpy(t->id, fh.id, sizeof(t->id));
	t->id_is_build_id = (int)fh.id_is_build_id;
	t->source = (enum ehtable_source)fh.source;
	memcpy(t->kind_rows, fh.kind_rows, sizeof(t->kind_rows));
	t->cfi_rows = fh.cfi_rows;
	t->build_ns = fh.build_ns;
	t->n_loads = fh.n_loads < EHTABLE_MAX_LOADS ? fh.n_loads : EHTABLE_MAX_LOADS;
	memcpy(t->loads, fh.loads, sizeof(t->loads));
	rc = ehtable_validate(t);
out:
	fclose(f);
	if (rc) {
		ehtable_free(t);
		return rc;
	}
	*out = t;
	return 0;
}

static int ehtable_cache_path(const char *dir, const uint8_t *id, uint32_t id_len, char *buf,
			      size_t size)
{
	char hex[2 * EHTABLE_ID_MAX + 1];

	if (id_len == 0 || id_len > EHTABLE_ID_MAX)
		return -EINVAL;
	ehtable_hex(id, id_len, hex, sizeof(hex));
	if ((size_t)snprintf(buf, size, "%s/v%u/%s.ehtab", dir, EHTABLE_FILE_VERSION, hex) >= size)
		return -ENAMETOOLONG;
	return 0;
}

int ehtable_cache_get(const char *dir, const uint8_t *id, uint32_t id_len, struct ehtable **out)
{
	char path[PATH_MAX];
	int rc = ehtable_cache_path(dir, id, id_len, path, sizeof(path));

	*out = NULL;
	if (rc)
		return rc;
	rc = ehtable_load(path, out);
	if (rc == 0 && ((*out)->id_len != id_len || memcmp((*out)->id, id, id_len) != 0)) {
		ehtable_free(*out);
		*out = NULL;
		rc = -EINVAL;
	}
	if (rc) {
		if (rc != -ENOENT) {
			log_warn("cache file %s unusable (%s), removing it", path, strerror(-rc));
			unlink(path);
		}
		return -ENOENT;
	}
	utimensat(AT_FDCWD, path, NULL, 0); /* recently used: trimmed last */
	return 0;
}

struct ehtable_cache_file {
	char name[2 * EHTABLE_ID_MAX + 32]; /* relative to the cache dir: "vN/<hex>.ehtab" */
	uint64_t bytes;
	struct timespec mtime;
};

static int ehtable_cmp_mtime(const void *a, const void *b)
{
	const struct ehtable_cache_file *x = a, *y = b;

	if (x->mtime.tv_sec != y->mtime.tv_sec)
		return x->mtime.tv_sec < y->mtime.tv_sec ? -1 : 1;
	return x->mtime.tv_nsec < y->mtime.tv_nsec ? -1 : x->mtime.tv_nsec > y->mtime.tv_nsec;
}

/* Adds the .ehtab files of dir/sub (sub "" for dir itself) to files[*n]; their bytes to *total. */
static void ehtable_cache_list(int dir_fd, const char *sub, struct ehtable_cache_file *files,
			       size_t *n, uint64_t *total)
{
	int fd = openat(dir_fd, sub[0] ? sub : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	struct dirent *de;
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;

	if (!d) {
		if (fd >= 0)
			close(fd);
		return;
	}
	while (*n < EHTABLE_CACHE_MAX_FILES && (de = readdir(d))) {
		size_t len = strlen(de->d_name);
		struct ehtable_cache_file *f = &files[*n];
		struct stat st;

		if (len < 7 || strcmp(de->d_name + len - 6, ".ehtab") ||
		    (size_t)snprintf(f->name, sizeof(f->name), "%s%s%s", sub, sub[0] ? "/" : "",
				     de->d_name) >= sizeof(f->name) ||
		    fstatat(dir_fd, f->name, &st, 0) != 0)
			continue;
		f->bytes = (uint64_t)st.st_size;
		f->mtime = st.st_mtim;
		*total += f->bytes;
		(*n)++;
	}
	closedir(d);
}

/*
 * Keeps dir (every version's subdirectory, and the files of agents from before them at its
 * top) within max_bytes: the least recently used files go first, whatever their version; an
 * emptied subdirectory of another version is removed.
 */
static void ehtable_cache_trim(const char *dir, uint64_t max_bytes)
{
	char cur[16];
	struct ehtable_cache_file *files;
	size_t n = 0;
	uint64_t total = 0;
	struct dirent *de;
	DIR *d = opendir(dir);

	if (!d)
		return;
	snprintf(cur, sizeof(cur), "v%u", EHTABLE_FILE_VERSION);
	files = calloc(EHTABLE_CACHE_MAX_FILES, sizeof(*files));
	if (files) {
		ehtable_cache_list(dirfd(d), "", files, &n, &total);
		while ((de = readdir(d)))
			if (de->d_name[0] == 'v' && strspn(de->d_name + 1, "0123456789") > 0 &&
			    de->d_name[1 + strspn(de->d_name + 1, "0123456789")] == '\0')
				ehtable_cache_list(dirfd(d), de->d_name, files, &n, &total);
	}
	if (files && total > max_bytes) {
		qsort(files, n, sizeof(*files), ehtable_cmp_mtime);
		for (size_t i = 0; i < n && total > max_bytes; i++) {
			char *slash = strchr(files[i].name, '/');

			if (unlinkat(dirfd(d), files[i].name, 0) != 0)
				continue;
			total -= files[i].bytes;
			if (slash) {
				*slash = '\0';
				/* another version's subdirectory goes once empty */
				if (strcmp(files[i].name, cur) != 0)
					unlinkat(dirfd(d), files[i].name, AT_REMOVEDIR);
			}
		}
	}
	free(files);
	closedir(d);
}

int ehtable_cache_put(const char *dir, const struct ehtable *t, uint64_t max_bytes)
{
	char path[PATH_MAX], tmp[PATH_MAX + 32];
	int rc = ehtable_cache_path(dir, t->id, t->id_len, path, sizeof(path));

	if (rc)
		return rc;
	if (mkdir(dir, 0700) != 0 && errno != EEXIST)
		return -errno;
	snprintf(tmp, sizeof(tmp), "%s/v%u", dir, EHTABLE_FILE_VERSION);
	if (mkdir(tmp, 0700) != 0 && errno != EEXIST)
		return -errno;
	snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid());
	rc = ehtable_save(t, tmp);
	if (rc == 0 && rename(tmp, path) != 0)
		rc = -errno;
	if (rc) {
		unlink(tmp);
		log_warn("cannot store %s: %s", path, strerror(-rc));
		return rc;
	}
	ehtable_cache_trim(dir, max_bytes);
	return 0;
}

/* The vDSO is the same image in every process of a boot: build its table from our own copy. */
int ehtable_build_vdso(struct ehtable **out)
{
	unsigned long base = getauxval(AT_SYSINFO_EHDR);
	FILE *maps = fopen("/proc/self/maps", "re");
	char line[512];
	uint64_t lo = 0, hi = 0;
	int fd, rc;

	if (!base || !maps) {
		if (maps)
			fclose(maps);
		return -ENOENT;
	}
	while (fgets(line, sizeof(line), maps))
		if (strstr(line, "[vdso]") && sscanf(line, "%" SCNx64 "-%" SCNx64, &lo, &hi) == 2)
			break;
	fclose(maps);
	if (lo != base || hi <= lo)
		return -ENOENT;
	fd = memfd_create("ember-vdso", MFD_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (write(fd, (const void *)lo, hi - lo) != (ssize_t)(hi - lo)) {
		close(fd);
		return -EIO;
	}
	rc = ehtable_build_fd(fd, NULL, out);
	close(fd);
	return rc;
}
