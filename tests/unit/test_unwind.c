/*
 * Tests of the plain-C walker (src/agent/unwind.c): every rule and every stop reason on a
 * hand-made table and stack, the mapping list, and a walk of this test's own live stack through
 * the real tables of the objects it has mapped (test binary, cmocka, libc, ld.so), which must
 * reach _start.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <gelf.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/ehtable.h"
#include "agent/unwind.h"

/* ---- a hand-made table ------------------------------------------------------------------- */

#define OBJ_START 0x10000ull /* the object is mapped at [0x10000, 0x20000), bias 0x10000 */
#define OBJ_END 0x20000ull
#define JIT_START 0x30000ull /* anonymous code, no mapping entry */
#define STACK 0x7ff000000000ull
#define STACK_WORDS 4096

enum {
	VA_A = 0x1000,
	VA_B = 0x1100,
	VA_PLT = 0x1200,
	VA_SIG = 0x1300,
	VA_STOP = 0x1400,
	VA_UNSUP = 0x1500,
	VA_NONE = 0x1600,
	VA_F = 0x1700,
	VA_G = 0x1800,
	VA_END = 0x1900,
	VA_LOOP = 0x5000
};

static const struct unw_row rows[] = {
    {VA_A, UNW_KIND_RSP, -2, 2}, /* CFA = rsp+16, rbp saved at CFA-16 */
    {VA_B, UNW_KIND_RBP, -2, 2}, /* CFA = rbp+16, rbp saved at CFA-16 */
    {VA_PLT, UNW_KIND_PLT, 0, 11},
    {VA_SIG, UNW_KIND_SIGNAL, 0, 0},
    {VA_STOP, UNW_KIND_STOP, 0, 0},
    {VA_UNSUP, UNW_KIND_UNSUP, 0, 0},
    {VA_NONE, UNW_KIND_NONE, 0, 0},
    {VA_F, UNW_KIND_RSP, UNW_RBP_UNKNOWN, 1},
    {VA_G, UNW_KIND_RBP, 0, 2},
    {VA_END, UNW_KIND_NONE, 0, 0},
    {VA_LOOP, UNW_KIND_RSP, 0, 2}, /* a frame that "returns" into itself */
    {VA_LOOP + 0x100, UNW_KIND_NONE, 0, 0},
};

struct fixture {
	struct unw_arena arena;
	struct unw_proc proc;
	uint64_t mem[STACK_WORDS];
};

/* Lays out header, 4 KiB buckets and rows as src/bpf/unwind.h describes. */
static void add_table(struct unw_arena *a, const struct unw_row *r, uint32_t n, uint32_t *base)
{
	uint32_t first_va = r[0].pc & ~4095u, nb = ((r[n - 1].pc - first_va) >> 12) + 1;
	uint64_t *img = calloc(UNW_HDR_SLOTS + nb + n, 8);
	struct unw_table_hdr *h = (struct unw_table_hdr *)img;
	struct unw_bucket *bk = (struct unw_bucket *)(img + UNW_HDR_SLOTS);

	assert_non_null(img);
	h->first_va = first_va;
	h->n_buckets = nb;
	h->n_rows = n;
	for (uint32_t b = 0; b < nb; b++) {
		uint64_t bs = first_va + (b << 12), be = bs + 4096;

		for (uint32_t i = 0; i < n; i++) {
			if (r[i].pc <= bs)
				bk[b].first = i;
			if (r[i].pc < be)
				bk[b].end = i + 1;
		}
	}
	memcpy(img + UNW_HDR_SLOTS + nb, r, n * sizeof(*r));
	assert_int_equal(unw_arena_add(a, img, UNW_HDR_SLOTS + nb + n, base), 0);
	free(img);
}

static int read_mem(void *arg, uint64_t addr, uint64_t *val)
{
	struct fixture *f = arg;

	if (addr < STACK || addr + 8 > STACK + sizeof(f->mem) || (addr & 7))
		return -EFAULT;
	*val = f->mem[(addr - STACK) / 8];
	return 0;
}

static void put(struct fixture *f, uint64_t addr, uint64_t val)
{
	f->mem[(addr - STACK) / 8] = val;
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	struct unw_mapping m = {.start = OBJ_START, .end = OBJ_END, .bias = OBJ_START};

	assert_non_null(f);
	add_table(&f->arena, rows, sizeof(rows) / sizeof(rows[0]), &m.table_base);
	assert_int_equal(unw_proc_insert(&f->proc, &m), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	unw_arena_free(&f->arena);
	free(f);
	return 0;
}

static uint32_t walk(struct fixture *f, uint64_t ip, uint64_t sp, uint64_t bp, struct unw_stack *st)
{
	struct unw_env env = {&f->arena, &f->proc, read_mem, f};
	struct unw_regs regs = {ip, sp, bp};

	unw_walk(&env, &regs, st);
	return st->n;
}

/*
 * One stack through every supported rule, ending complete:
 * A (rsp) → B (rbp) → PLT → signal trampoline → F (exact pc from the sigcontext) → code
 * without CFI (frame-pointer step) → JIT code (frame-pointer step) → STOP.
 */
static void test_walk_every_rule(void **state)
{
	struct fixture *f = *state;
	struct unw_stack st;
	uint64_t S = STACK + 0x100, bp_b = S + 64, sig_sp = S + 96, f_sp = S + 0x400;
	uint64_t fp1 = S + 0x800, fp2 = S + 0x900;
	uint64_t pcs[8] = {
	    OBJ_START + VA_A + 0x10,	/* leaf in A */
	    OBJ_START + VA_B + 0x1,	/* return address right after B's first byte */
	    OBJ_START + VA_PLT + 0xc,	/* PLT: (pc & 15) = 12 >= 11 → CFA = sp + 16 */
	    OBJ_START + VA_SIG + 0x1,	/* __restore_rt */
	    OBJ_START + VA_F,		/* exact pc from the sigcontext: row F, not NONE */
	    OBJ_START + VA_NONE + 0x20, /* no CFI: frame-pointer step */
	    JIT_START + 0x44,		/* no mapping: frame-pointer step */
	    OBJ_START + VA_STOP + 0x8,	/* _start */
	};

	/* A: CFA = S+16; RA at S+8; caller's rbp at S */
	put(f, S + 8, pcs[1]);
	put(f, S, bp_b);
	/* B: CFA = bp_b+16; RA at bp_b+8; rbp at bp_b */
	put(f, bp_b + 8, pcs[2]);
	put(f, bp_b, 0x1111);
	/* PLT: sp = bp_b+16 = S+80, CFA = S+96, RA at S+88 */
	put(f, S + 88, pcs[3]);
	/* signal frame at sp = S+96: sigcontext at sp+40 */
	put(f, sig_sp + 40 + UNW_SIGCTX_RBP * 8, fp1);
	put(f, sig_sp + 40 + UNW_SIGCTX_RSP * 8, f_sp);
	put(f, sig_sp + 40 + UNW_SIGCTX_RIP * 8, pcs[4]);
	/* F: CFA = f_sp+8, RA at f_sp; its row marks rbp unknown (first walk below) */
	put(f, f_sp, pcs[5]);
	/* frame-pointer chain: fp1 → fp2 → 0 */
	put(f, fp1, fp2);
	put(f, fp1 + 8, pcs[6]);
	put(f, fp2, 0);
	put(f, fp2 + 8, pcs[7]);

	/* F's row marks rbp unknown: the frame-pointer step in the NONE region must refuse */
	assert_int_equal(walk(f, pcs[0], S, 0x2222, &st), 6);
	assert_int_equal(st.reason, UNW_REASON_NO_ROW);

	/* with F's row known-unchanged (rbp stays fp1) the walk completes */
	struct unw_row keep[sizeof(rows) / sizeof(rows[0])];
	struct unw_mapping m = {.start = OBJ_START, .end = OBJ_END, .bias = OBJ_START};

	memcpy(keep, rows, sizeof(rows));
	keep[7].rbp = 0;
	add_table(&f->arena, keep, sizeof(keep) / sizeof(keep[0]), &m.table_base);
	assert_int_equal(unw_proc_insert(&f->proc, &m), 0);
	assert_int_equal(f->proc.n, 1);

	assert_int_equal(walk(f, pcs[0], S, 0x2222, &st), 8);
	assert_int_equal(st.reason, UNW_REASON_COMPLETE);
	for (int i = 0; i < 8; i++)
		assert_int_equal(st.ips[i], pcs[i]);
}

/* A return address on the first byte of a row belongs to the row before (the call). */
static void test_return_address_minus_one(void **state)
{
	struct fixture *f = *state;
	struct unw_stack st;
	uint64_t S = STACK + 0x100;

	/* leaf at B's first byte: B's rbp rule → needs bp: bp = S+32, CFA = S+48 */
	put(f, S + 40, 0);
	assert_int_equal(walk(f, OBJ_START + VA_B, S, S + 32, &st), 1);
	assert_int_equal(st.reason, UNW_REASON_RA_ZERO);

	/* caller pc = B's first byte: A's rsp rule applies (CFA = sp+16) */
	put(f, S + 8, OBJ_START + VA_B);
	put(f, S + 16 + 8, OBJ_START + VA_UNSUP);
	put(f, S + 16, 0);
	assert_int_equal(walk(f, OBJ_START + VA_A, S, 0, &st), 3);
	assert_int_equal(st.ips[2], OBJ_START + VA_UNSUP);
	/* and the UNSUP frame's own pc is VA_UNSUP - 1 → that is STOP's range: complete */
	assert_int_equal(st.reason, UNW_REASON_COMPLETE);
}

static void test_stop_reasons(void **state)
{
	struct fixture *f = *state;
	struct unw_stack st;
	uint64_t S = STACK + 0x100;

	/* unsupported rule */
	assert_int_equal(walk(f, OBJ_START + VA_UNSUP + 4, S, 0, &st), 1);
	assert_int_equal(st.reason, UNW_REASON_UNSUPPORTED);

	/* rbp-based frame after rbp was lost */
	put(f, S, OBJ_START + VA_G + 4);
	assert_int_equal(walk(f, OBJ_START + VA_F + 2, S, S + 64, &st), 2);
	assert_int_equal(st.reason, UNW_REASON_UNSUPPORTED);

	/* stack not readable */
	assert_int_equal(walk(f, OBJ_START + VA_A, 0x1000, 0, &st), 1);
	assert_int_equal(st.reason, UNW_REASON_READ_FAIL);

	/* return address 0 */
	put(f, S + 8, 0);
	assert_int_equal(walk(f, OBJ_START + VA_A, S, 0, &st), 1);
	assert_int_equal(st.reason, UNW_REASON_RA_ZERO);

	/* unknown code and a frame pointer below sp */
	assert_int_equal(walk(f, JIT_START, S, S - 64, &st), 1);
	assert_int_equal(st.reason, UNW_REASON_NO_MAPPING);

	/* unknown code and a frame-pointer chain that does not grow: one step is taken (its RA is
	 * real), the saved rbp is dropped, and the next frame-pointer step has none to use */
	put(f, S + 32, S + 16);
	put(f, S + 40, JIT_START + 8);
	assert_int_equal(walk(f, JIT_START, S, S + 32, &st), 2);
	assert_int_equal(st.ips[1], JIT_START + 8);
	assert_int_equal(st.reason, UNW_REASON_NO_MAPPING);

	/* a frame without locals (bp == sp) still takes its frame-pointer step */
	put(f, S, 0);
	put(f, S + 8, JIT_START + 8);
	assert_int_equal(walk(f, JIT_START, S, S, &st), 2);

	/* no CFI and no usable frame pointer */
	assert_int_equal(walk(f, OBJ_START + VA_NONE, S, 0, &st), 1);
	assert_int_equal(st.reason, UNW_REASON_NO_ROW);
	/* past the end of the table */
	assert_int_equal(walk(f, OBJ_START + 0x9000, S, 0, &st), 1);
	assert_int_equal(st.reason, UNW_REASON_NO_ROW);

	/* more frames than UNW_MAX_FRAMES: each LOOP frame returns into LOOP, 16 bytes up */
	for (int i = 0; i < 200; i++)
		put(f, S + 16 * i + 8, OBJ_START + VA_LOOP + 8);
	assert_int_equal(walk(f, OBJ_START + VA_LOOP + 8, S, 0, &st), UNW_MAX_FRAMES);
	assert_int_equal(st.reason, UNW_REASON_MAX_FRAMES);
}

static void test_table_not_ready(void **state)
{
	struct fixture *f = *state;
	struct unw_stack st;
	struct unw_mapping m = {.start = 0x40000, .end = 0x50000, .flags = UNW_MAP_NO_TABLE};
	uint64_t S = STACK + 0x100;

	assert_int_equal(unw_proc_insert(&f->proc, &m), 0);
	/* frame-pointer step out of the table-less object into A */
	put(f, S + 64, 0);
	put(f, S + 72, OBJ_START + VA_A + 1);
	put(f, S + 80 + 8, 0);
	assert_int_equal(walk(f, 0x40010, S, S + 64, &st), 2);
	assert_int_equal(st.ips[1], OBJ_START + VA_A + 1);
	assert_int_equal(st.reason, UNW_REASON_RA_ZERO);
	assert_int_equal(walk(f, 0x40010, S, 0, &st), 1);
	assert_int_equal(st.reason, UNW_REASON_NO_ROW);
}

static void test_proc_list(void **state)
{
	struct unw_proc *p = calloc(1, sizeof(*p));
	struct unw_mapping m = {0};

	assert_non_null(p);
	/* 128 mappings inserted out of order, each found by binary search */
	for (uint64_t i = 0; i < UNW_MAX_MAPPINGS; i++) {
		uint64_t k = (i * 37) % UNW_MAX_MAPPINGS;

		m.start = 0x100000 + k * 0x10000;
		m.end = m.start + 0x8000;
		m.table_base = (uint32_t)k;
		assert_int_equal(unw_proc_insert(p, &m), 0);
	}
	assert_int_equal(p->n, UNW_MAX_MAPPINGS);
	for (uint64_t k = 0; k < UNW_MAX_MAPPINGS; k++) {
		const struct unw_mapping *f = unw_proc_find(p, 0x100000 + k * 0x10000 + 0x7fff);

		assert_non_null(f);
		assert_int_equal(f->table_base, k);
		assert_null(unw_proc_find(p, 0x100000 + k * 0x10000 + 0x8000));
	}
	assert_null(unw_proc_find(p, 0xfffff));
	m.start = 0x90000000;
	m.end = 0x90001000;
	assert_int_equal(unw_proc_insert(p, &m), -ENOSPC);
	/* replacing one mapping exactly keeps the count */
	m.start = 0x100000;
	m.end = 0x108000;
	m.table_base = 999;
	assert_int_equal(unw_proc_insert(p, &m), 0);
	assert_int_equal(p->n, UNW_MAX_MAPPINGS);
	assert_int_equal(unw_proc_find(p, 0x100000)->table_base, 999);

	/* a mapping over the middle of another splits it, as mmap(MAP_FIXED) does */
	memset(p, 0, sizeof(*p));
	m = (struct unw_mapping){.start = 0x1000, .end = 0x9000, .bias = 7, .table_base = 1};
	assert_int_equal(unw_proc_insert(p, &m), 0);
	m = (struct unw_mapping){.start = 0x3000, .end = 0x4000, .table_base = 2};
	assert_int_equal(unw_proc_insert(p, &m), 0);
	assert_int_equal(p->n, 3);
	assert_int_equal(unw_proc_find(p, 0x2fff)->table_base, 1);
	assert_int_equal(unw_proc_find(p, 0x3000)->table_base, 2);
	assert_int_equal(unw_proc_find(p, 0x4000)->table_base, 1);
	assert_int_equal(unw_proc_find(p, 0x4000)->bias, 7);
	assert_int_equal(p->maps[0].end, 0x3000);
	assert_int_equal(p->maps[2].start, 0x4000);
	m = (struct unw_mapping){.start = 0x5000, .end = 0x5000};
	assert_int_equal(unw_proc_insert(p, &m), -EINVAL);
	free(p);
}

/* ---- this process's own stack ------------------------------------------------------------ */

struct self {
	struct unw_arena arena;
	struct unw_proc proc;
	char paths[UNW_MAX_MAPPINGS][256];
	struct ehtable *tables[UNW_MAX_MAPPINGS];
	uint32_t bases[UNW_MAX_MAPPINGS];
	int n_tables;
	uint64_t stack_lo, stack_hi;
	uint64_t exe_start, exe_end;
	uint64_t libc_bias;
};

static int read_self(void *arg, uint64_t addr, uint64_t *val)
{
	const struct self *s = arg;

	if (addr < s->stack_lo || addr + 8 > s->stack_hi)
		return -EFAULT;
	memcpy(val, (const void *)(uintptr_t)addr, 8);
	return 0;
}

static void self_load(struct self *s)
{
	FILE *maps = fopen("/proc/self/maps", "r");
	char line[512], exe[256];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);

	assert_non_null(maps);
	assert_true(n > 0);
	exe[n] = '\0';
	while (fgets(line, sizeof(line), maps)) {
		uint64_t lo, hi, off;
		char perm[8], path[256] = "";
		struct unw_mapping m = {0};
		int i;

		if (sscanf(line, "%" SCNx64 "-%" SCNx64 " %7s %" SCNx64 " %*s %*s %255s", &lo, &hi,
			   perm, &off, path) < 4)
			continue;
		if (strcmp(path, "[stack]") == 0) {
			s->stack_lo = lo;
			s->stack_hi = hi;
		}
		if (perm[2] != 'x' || path[0] != '/')
			continue;
		for (i = 0; i < s->n_tables && strcmp(s->paths[i], path) != 0; i++)
			;
		if (i == s->n_tables) {
			assert_true(i < UNW_MAX_MAPPINGS);
			snprintf(s->paths[i], sizeof(s->paths[i]), "%s", path);
			assert_int_equal(ehtable_build(path, &s->tables[i]), 0);
			assert_int_equal(unw_arena_add(&s->arena, s->tables[i]->slots,
						       s->tables[i]->n_slots, &s->bases[i]),
					 0);
			s->n_tables++;
		}
		uint64_t bias;

		assert_int_equal(ehtable_bias(s->tables[i], lo, off, &bias), 0);
		m.start = lo;
		m.end = hi;
		m.bias = bias;
		m.table_base = s->bases[i];
		assert_int_equal(unw_proc_insert(&s->proc, &m), 0);
		if (strcmp(path, exe) == 0) {
			if (!s->exe_start)
				s->exe_start = lo;
			s->exe_end = hi;
		}
		if (strstr(path, "/libc.so.6"))
			s->libc_bias = m.bias;
	}
	fclose(maps);
	assert_true(s->stack_hi > s->stack_lo);
	assert_true(s->exe_end > s->exe_start);
}

static void self_free(struct self *s)
{
	for (int i = 0; i < s->n_tables; i++)
		ehtable_free(s->tables[i]);
	unw_arena_free(&s->arena);
	free(s);
}

static volatile unsigned depth_sink;

__attribute__((noinline)) static void capture_walk(struct self *s, struct unw_stack *out)
{
	struct unw_env env = {&s->arena, &s->proc, read_self, s};
	struct unw_regs regs;

	/* ip and the sp/bp at that same instruction, so the CFA row matches */
	__asm__ volatile("lea 0(%%rip), %0\n\tmov %%rsp, %1\n\tmov %%rbp, %2"
			 : "=r"(regs.ip), "=r"(regs.sp), "=r"(regs.bp));
	unw_walk(&env, &regs, out);
}

__attribute__((noinline)) static unsigned recurse(struct self *s, struct unw_stack *out, int n)
{
	if (n == 0)
		capture_walk(s, out);
	else
		depth_sink += recurse(s, out, n - 1);
	return depth_sink + 1; /* not a tail call */
}

static void test_walk_own_stack(void **state)
{
	struct self *s = calloc(1, sizeof(*s));
	struct unw_stack st;
	uint64_t getpid_va = 0;
	int in_exe = 0;

	assert_non_null(s);
	self_load(s);

	/* bias check against libc's symbol table: &getpid - bias is getpid's ELF address */
	for (int i = 0; i < s->n_tables; i++) {
		if (!strstr(s->paths[i], "/libc.so.6"))
			continue;
		int fd = open(s->paths[i], O_RDONLY);
		Elf *e = elf_begin(fd, ELF_C_READ, NULL);
		Elf_Scn *scn = NULL;

		while (e && (scn = elf_nextscn(e, scn))) {
			GElf_Shdr sh;
			Elf_Data *d;

			if (!gelf_getshdr(scn, &sh) || sh.sh_type != SHT_DYNSYM)
				continue;
			d = elf_getdata(scn, NULL);
			for (size_t k = 0; d && k < sh.sh_size / sh.sh_entsize; k++) {
				GElf_Sym sym;
				const char *name;

				if (gelf_getsym(d, (int)k, &sym) &&
				    (name = elf_strptr(e, sh.sh_link, sym.st_name)) &&
				    strcmp(name, "getpid") == 0)
					getpid_va = sym.st_value;
			}
		}
		elf_end(e);
		close(fd);
	}
	assert_true(getpid_va != 0);
	assert_int_equal((uint64_t)(uintptr_t)&getpid - s->libc_bias, getpid_va);

	recurse(s, &st, 40);
	for (uint32_t i = 0; i < st.n; i++)
		in_exe += st.ips[i] >= s->exe_start && st.ips[i] < s->exe_end;
	printf("own stack: %u frames, %s\n", st.n, unw_reason_name(st.reason));
	assert_int_equal(st.reason, UNW_REASON_COMPLETE);
	/* capture_walk + 41 recurse frames + this test, cmocka, main, libc start, _start */
	assert_true(st.n >= 46);
	assert_true(in_exe >= 44);
	/* _start is in the executable */
	assert_true(st.ips[st.n - 1] >= s->exe_start && st.ips[st.n - 1] < s->exe_end);
	self_free(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_walk_every_rule, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_return_address_minus_one, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_stop_reasons, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_table_not_ready, setup, teardown),
	    cmocka_unit_test(test_proc_list),
	    cmocka_unit_test(test_walk_own_stack),
	};

	elf_version(EV_CURRENT);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
