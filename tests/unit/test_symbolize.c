/*
 * symbolize, against real processes and files: functions of this test binary, libc (through
 * its separate debug file or .dynsym), libz, the kernel's kallsyms, a perf map written for this
 * process, a child that exits before its addresses are resolved, a deleted executable reached
 * through map_files, and a file cache smaller than the set of files in use.
 *
 * Run with "--sleeper" the binary prints the address of ember_test_leaf_fn and waits: the
 * deleted-binary test runs a copy of itself that way.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <gelf.h>
#include <libelf.h>
#include <sys/auxv.h>

#include "agent/symbolize.h"
#include "bpf/unwind.h"

#include <sys/sysmacros.h>

static volatile uint64_t recorded_ra;
static volatile int sink;

__attribute__((noinline)) void ember_test_leaf_fn(void)
{
	recorded_ra = (uint64_t)__builtin_return_address(0);
	sink++;
}

__attribute__((noinline)) void ember_test_caller_fn(void)
{
	ember_test_leaf_fn();
	sink++;
}

static uint64_t fn_addr(void (*fn)(void))
{
	return (uint64_t)(uintptr_t)fn;
}

/* Labels of one user stack (ips leaf first) from a fresh string. */
static char *user_labels(struct symbolizer *sym, uint32_t pid, const uint64_t *ips, size_t n,
			 int *count)
{
	struct strbuf sb = STRBUF_INIT;
	int c = sym_append_user(sym, pid, ips, n, &sb);

	if (count)
		*count = c;
	return sb_detach(&sb, NULL);
}

static struct symbolizer *open_sym(size_t max_files)
{
	struct sym_opts o = {.max_files = max_files, .max_processes = 16, .proc_root = "/proc"};
	struct symbolizer *sym = NULL;

	assert_int_equal(sym_open(&o, &sym), 0);
	return sym;
}

static void test_own_functions(void **state)
{
	struct symbolizer *sym = open_sym(0);
	uint64_t ips[2];
	char *s;
	int n;

	ember_test_caller_fn();
	ips[0] = fn_addr(ember_test_leaf_fn) + 1;
	ips[1] = recorded_ra; /* a return address inside the caller */
	s = user_labels(sym, (uint32_t)getpid(), ips, 2, &n);
	assert_int_equal(n, 2);
	assert_string_equal(s, "ember_test_caller_fn;ember_test_leaf_fn");
	free(s);

	/* Appending to a non-empty buffer adds one ';' first. */
	{
		struct strbuf sb = STRBUF_INIT;

		sb_puts(&sb, "[p] test");
		assert_int_equal(sym_append_user(sym, (uint32_t)getpid(), ips, 1, &sb), 1);
		assert_string_equal(sb.buf, "[p] test;ember_test_leaf_fn");
		sb_free(&sb);
	}
	sym_close(sym);
}

static void test_libc(void **state)
{
	struct symbolizer *sym = open_sym(0);
	void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
	uint64_t ips[1];
	char *s;

	assert_non_null(libc);
	ips[0] = (uint64_t)(uintptr_t)dlsym(libc, "getpid");
	s = user_labels(sym, (uint32_t)getpid(), ips, 1, NULL);
	assert_true(strncmp(s, "[l] ", 4) == 0);
	assert_non_null(strstr(s, "getpid"));
	free(s);

	/* strlen is an IFUNC: dlsym hands out the chosen implementation, e.g. __strlen_avx2. */
	ips[0] = (uint64_t)(uintptr_t)dlsym(libc, "strlen") + 2;
	s = user_labels(sym, (uint32_t)getpid(), ips, 1, NULL);
	assert_true(strcmp(s, "[l] strlen") == 0 || strncmp(s, "[l] __strlen_", 13) == 0);
	free(s);
	dlclose(libc);
	sym_close(sym);
}

/*
 * Versioned names in .symtab ("ember_v@@EMBER_2", "ember_v@EMBER_1", as glibc's
 * "__libc_start_main@@GLIBC_2.34") are labelled without the version, as perf shows them.
 */
static void test_versioned_names(void **state)
{
	struct symbolizer *sym = open_sym(0);
	char exe[PATH_MAX], lib[PATH_MAX + 32], *s;
	ssize_t len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	uint64_t ips[1];
	void *h;

	assert_true(len > 0);
	exe[len] = '\0';
	snprintf(lib, sizeof(lib), "%s/libversioned.so", dirname(exe));
	h = dlopen(lib, RTLD_NOW);
	assert_non_null(h);
	ips[0] = (uint64_t)(uintptr_t)dlsym(h, "ember_v");
	s = user_labels(sym, (uint32_t)getpid(), ips, 1, NULL);
	assert_string_equal(s, "[l] ember_v");
	free(s);
	ips[0] = (uint64_t)(uintptr_t)dlvsym(h, "ember_v", "EMBER_1");
	assert_true(ips[0] != 0);
	s = user_labels(sym, (uint32_t)getpid(), ips, 1, NULL);
	assert_string_equal(s, "[l] ember_v");
	free(s);
	dlclose(h);
	sym_close(sym);
}

/* Address of a text symbol from /proc/kallsyms, or 0 (kptr_restrict). */
static uint64_t kallsyms_addr(const char *want)
{
	char line[512], name[256], type;
	unsigned long long addr;
	uint64_t found = 0;
	FILE *f = fopen("/proc/kallsyms", "r");

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%llx %c %255s", &addr, &type, name) == 3 &&
		    (type == 'T' || type == 't') && strcmp(name, want) == 0) {
			found = addr;
			break;
		}
	}
	fclose(f);
	return found;
}

static void test_kernel(void **state)
{
	struct symbolizer *sym = open_sym(0);
	struct strbuf sb = STRBUF_INIT;
	uint64_t sched = kallsyms_addr("schedule");
	uint64_t nsleep = kallsyms_addr("do_nanosleep");
	uint64_t ips[4];

	if (!sched || !nsleep) {
		sym_close(sym);
		skip();
	}
	/* Innermost first; 0 is skipped; the leaf is looked up as is, callers at addr - 1. */
	ips[0] = sched + 0x10;
	ips[1] = 0;
	ips[2] = nsleep + 0x20;
	assert_int_equal(sym_append_kernel(sym, ips, 3, &sb), 2);
	assert_string_equal(sb.buf, "[k] do_nanosleep;[k] schedule");
	sb_reset(&sb);

	ips[0] = 0x1000; /* below the first kernel symbol */
	assert_int_equal(sym_append_kernel(sym, ips, 1, &sb), 1);
	assert_string_equal(sb.buf, "[unknown] 0x0000000000001000");
	sb_free(&sb);
	sym_close(sym);
}

/*
 * A waker's frames (innermost first, as bpf_get_stack gives them): the frames before
 * try_to_wake_up are dropped, the rest follow "[w] comm" innermost first as "[wk] name"; from an
 * interrupt (an asm_ entry that is not an exception's, or an empty comm: BPF saw interrupt
 * context) the label is "interrupt" and the frames stop at the entry; from an exception (a page
 * fault) the comm stays.
 */
static void test_waker(void **state)
{
	static const char *const names[] = {"schedule", "try_to_wake_up", "hrtimer_wakeup",
					    "asm_sysvec_apic_timer_interrupt", "do_nanosleep",
					    "asm_exc_page_fault", "do_syscall_64"};
	struct symbolizer *sym = open_sym(0);
	struct strbuf sb = STRBUF_INIT;
	uint64_t a[7], ips[4];

	for (int i = 0; i < 7; i++) {
		a[i] = kallsyms_addr(names[i]);
		if (!a[i]) {
			sym_close(sym);
			skip();
		}
		a[i] += 8; /* a return address inside the function */
	}
	ips[0] = a[0], ips[1] = a[1], ips[2] = a[6];
	assert_int_equal(sym_append_waker(sym, "wr;iter", ips, 3, &sb), 2);
	assert_string_equal(sb.buf, "[w] wr:iter;[wk] try_to_wake_up;[wk] do_syscall_64");
	sb_reset(&sb);

	ips[0] = a[1], ips[1] = a[2], ips[2] = a[3], ips[3] = a[4];
	assert_int_equal(sym_append_waker(sym, "swapper/1", ips, 4, &sb), 3);
	assert_string_equal(sb.buf, "[w] interrupt;[wk] try_to_wake_up;[wk] hrtimer_wakeup;"
				    "[wk] asm_sysvec_apic_timer_interrupt");
	sb_reset(&sb);

	ips[2] = a[5];
	assert_int_equal(sym_append_waker(sym, "app", ips, 4, &sb), 3);
	assert_string_equal(sb.buf, "[w] app;[wk] try_to_wake_up;[wk] hrtimer_wakeup;"
				    "[wk] asm_exc_page_fault");
	sb_reset(&sb);

	/* the comm left out by BPF (an irqentry stub): an interrupt, or an exception */
	assert_int_equal(sym_append_waker(sym, "", ips, 2, &sb), 2);
	assert_string_equal(sb.buf, "[w] interrupt;[wk] try_to_wake_up;[wk] hrtimer_wakeup");
	sb_reset(&sb);
	assert_int_equal(sym_append_waker(sym, "", ips, 3, &sb), 3);
	assert_string_equal(sb.buf, "[w] exception;[wk] try_to_wake_up;[wk] hrtimer_wakeup;"
				    "[wk] asm_exc_page_fault");
	sb_free(&sb);
	sym_close(sym);
}

static void test_perf_map(void **state)
{
	struct symbolizer *sym;
	char path[64], want[80], *s;
	uint64_t base, ips[3];
	struct sym_stats st;
	FILE *f;
	void *mem;

	mem = mmap(NULL, 3 * 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(mem != MAP_FAILED);
	base = (uint64_t)(uintptr_t)mem;
	snprintf(path, sizeof(path), "/tmp/perf-%d.map", getpid());
	f = fopen(path, "w");
	assert_non_null(f);
	fprintf(f, "%llx 100 jit_fn_one\n", (unsigned long long)base);
	fprintf(f, "%llx 100 Lcom/foo/Bar;::run\n", (unsigned long long)base + 0x200);
	fprintf(f, "%llx 80 LazyCompile:~handler app.js:12\n", (unsigned long long)base + 0x1000);
	fprintf(f, "garbage line\n");
	fclose(f);

	sym = open_sym(0);
	ips[0] = base + 0x10;
	ips[1] = base + 0x1010;
	ips[2] = base + 0x211; /* outermost, a return address */
	s = user_labels(sym, (uint32_t)getpid(), ips, 3, NULL);
	assert_string_equal(s, "Lcom/foo/Bar:::run;LazyCompile:~handler app.js:12;jit_fn_one");
	free(s);

	/* Inside the JIT region but not described by any entry. */
	ips[0] = base + 0x150;
	s = user_labels(sym, (uint32_t)getpid(), ips, 1, NULL);
	snprintf(want, sizeof(want), "[/tmp/perf-%d.map]", getpid());
	assert_string_equal(s, want);
	free(s);
	sym_get_stats(sym, &st);
	assert_int_equal(st.frames_unknown, 0);

	unlink(path);
	munmap(mem, 3 * 4096);
	sym_close(sym);
}

static void test_unknown_and_outermost(void **state)
{
	struct symbolizer *sym = open_sym(0);
	uint64_t leaf = fn_addr(ember_test_leaf_fn);
	uint64_t ips[4];
	struct sym_stats st;
	char *s;
	int n;

	ips[0] = leaf;
	ips[1] = 0x10; /* nothing is mapped at 16 */
	ips[2] = 0x20;
	s = user_labels(sym, (uint32_t)getpid(), ips, 3, &n);
	assert_int_equal(n, 3);
	assert_string_equal(s, "[unknown start_thread?];[unknown] 0x0000000000000010;"
			       "ember_test_leaf_fn");
	free(s);

	/* Zeros and the 0xcc.. sentinel are skipped, also when they sit outermost. */
	ips[0] = leaf;
	ips[1] = 0;
	ips[2] = 0xccccccccccccccccULL;
	ips[3] = 0x30;
	s = user_labels(sym, (uint32_t)getpid(), ips, 4, &n);
	assert_int_equal(n, 2);
	assert_string_equal(s, "[unknown start_thread?];ember_test_leaf_fn");
	free(s);
	/* An unknown leaf under a known caller keeps its address. */
	ips[0] = 0x40;
	ips[1] = fn_addr(ember_test_caller_fn) + 1;
	s = user_labels(sym, (uint32_t)getpid(), ips, 2, &n);
	assert_int_equal(n, 2);
	assert_string_equal(s, "ember_test_caller_fn;[unknown] 0x0000000000000040");
	free(s);

	sym_get_stats(sym, &st);
	assert_int_equal(st.frames, 7);
	assert_int_equal(st.frames_unknown, 4);
	sym_close(sym);
}

/* Address of a function in this process's vDSO, read from the vDSO image itself. */
static uint64_t vdso_addr(const char *want)
{
	uintptr_t base = getauxval(AT_SYSINFO_EHDR);
	uint64_t found = 0, first_vaddr = UINT64_MAX;
	unsigned long long s, e, size = 0;
	Elf_Scn *scn = NULL;
	char line[256];
	size_t nph;
	Elf *elf;
	FILE *f;

	if (!base || elf_version(EV_CURRENT) == EV_NONE)
		return 0;
	f = fopen("/proc/self/maps", "r");
	while (f && fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%llx-%llx", &s, &e) == 2 && s == base)
			size = e - s;
	}
	if (f)
		fclose(f);
	elf = size ? elf_memory((char *)base, size) : NULL;
	if (!elf || elf_getphdrnum(elf, &nph))
		return 0;
	for (size_t i = 0; i < nph; i++) {
		GElf_Phdr ph;

		if (gelf_getphdr(elf, (int)i, &ph) && ph.p_type == PT_LOAD &&
		    ph.p_vaddr < first_vaddr)
			first_vaddr = ph.p_vaddr;
	}
	while ((scn = elf_nextscn(elf, scn)) && !found) {
		GElf_Shdr sh;
		Elf_Data *d;

		if (!gelf_getshdr(scn, &sh) || sh.sh_type != SHT_DYNSYM ||
		    !(d = elf_getdata(scn, 0)))
			continue;
		for (size_t i = 0; i < sh.sh_size / sh.sh_entsize; i++) {
			GElf_Sym sym;
			const char *n;

			if (gelf_getsym(d, (int)i, &sym) &&
			    (n = elf_strptr(elf, sh.sh_link, sym.st_name)) &&
			    strcmp(n, want) == 0) {
				found = base + sym.st_value - first_vaddr;
				break;
			}
		}
	}
	elf_end(elf);
	return found;
}

static void test_vdso(void **state)
{
	struct symbolizer *sym;
	uint64_t ip = vdso_addr("__vdso_clock_gettime");
	char *s;

	if (!ip)
		skip();
	sym = open_sym(0);
	ip += 4;
	s = user_labels(sym, (uint32_t)getpid(), &ip, 1, NULL);
	/* Aliases share the address; either name is the function. */
	assert_true(strcmp(s, "__vdso_clock_gettime") == 0 || strcmp(s, "clock_gettime") == 0);
	free(s);
	sym_close(sym);
}

static void expect_clean(const char *in, const char *want)
{
	char *s = sym_clean_name(in);

	assert_non_null(s);
	assert_string_equal(s, want);
	free(s);
}

static void test_clean_name(void **state)
{
	expect_clean("_ZN3foo3barEv", "foo::bar()");
	expect_clean("_ZNSt6vectorIiSaIiEE9push_backERKi",
		     "std::vector<int, std::allocator<int> >::push_back(int const&)");
	expect_clean("_ZN4core3fmt5write17h0123456789abcdefE", "core::fmt::write");
	expect_clean("_ZN3std2rt10lang_start28_$u7b$$u7b$closure$u7d$$u7d$17h1a2b3c4d5e6f7a8bE",
		     "std::rt::lang_start::{{closure}}");
	expect_clean("_RNvCs1234_7mycrate3foo", "mycrate::foo");
	expect_clean("std::rt::lang_start::h0123456789abcdef", "std::rt::lang_start");
	expect_clean("Lio/netty/NioEventLoop;::run", "Lio/netty/NioEventLoop:::run");
	expect_clean("_Zfoo;bar", "_Zfoo:bar"); /* not mangled after all */
	expect_clean("main", "main");
}

static pid_t start_child(int *rfd)
{
	int pfd[2];
	pid_t child;
	char c;

	assert_int_equal(pipe(pfd), 0);
	child = fork();
	assert_true(child >= 0);
	if (child == 0) {
		close(pfd[0]);
		if (write(pfd[1], "r", 1) != 1)
			_exit(1);
		pause();
		_exit(0);
	}
	close(pfd[1]);
	assert_int_equal(read(pfd[0], &c, 1), 1);
	if (rfd)
		*rfd = pfd[0];
	else
		close(pfd[0]);
	return child;
}

static void test_exited_child(void **state)
{
	struct symbolizer *sym = open_sym(0);
	void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
	uint64_t ips[1];
	struct sym_stats st;
	pid_t child;
	char *s;

	assert_non_null(libc);
	child = start_child(NULL);
	/* The first lookup reads the child's maps (and libc's symbols only). */
	ips[0] = (uint64_t)(uintptr_t)dlsym(libc, "getpid");
	s = user_labels(sym, (uint32_t)child, ips, 1, NULL);
	assert_non_null(strstr(s, "getpid"));
	free(s);
	kill(child, SIGKILL);
	assert_int_equal(waitpid(child, NULL, 0), child);

	/* Gone: its last mappings still place the address in the executable, read by path. */
	ips[0] = fn_addr(ember_test_leaf_fn);
	s = user_labels(sym, (uint32_t)child, ips, 1, NULL);
	assert_string_equal(s, "ember_test_leaf_fn");
	free(s);
	sym_get_stats(sym, &st);
	assert_int_equal(st.procs_loaded, 1);
	assert_int_equal(st.files_loaded, 2);

	/* Forgotten: nothing is known any more. */
	sym_process_forget(sym, (uint32_t)child);
	s = user_labels(sym, (uint32_t)child, ips, 1, NULL);
	assert_string_equal(s, "[unknown start_thread?]");
	free(s);
	dlclose(libc);
	sym_close(sym);
}

/* Objects of encoded frames, as the unwinder would name them (ids 1..TEST_OBJS). */
#define TEST_OBJS 3
struct test_objs {
	struct sym_object o[TEST_OBJS + 1];
	int calls;
};

static int test_resolve(void *arg, uint32_t id, struct sym_object *obj)
{
	struct test_objs *t = arg;

	t->calls++;
	if (id < 1 || id > TEST_OBJS || !t->o[id].path[0])
		return -ENOENT;
	*obj = t->o[id];
	return 0;
}

static void test_obj_from_file(struct sym_object *o, const char *path)
{
	struct stat st;

	assert_int_equal(stat(path, &st), 0);
	snprintf(o->path, sizeof(o->path), "%s", path);
	o->dev = ((uint64_t)major(st.st_dev) << 32) | minor(st.st_dev);
	o->ino = (uint64_t)st.st_ino;
}

static uint64_t test_exe_bias(void)
{
	Dl_info info;

	assert_true(dladdr((void *)ember_test_leaf_fn, &info) != 0);
	return (uint64_t)(uintptr_t)info.dli_fbase;
}

static uint64_t test_encode(uint32_t id, uint64_t va)
{
	return UNW_FRAME_ENCODED | (uint64_t)id << UNW_FRAME_OBJ_SHIFT | va;
}

/*
 * Encoded frames (object id + ELF address) name functions from the object's file alone: the
 * process that took them has exited and was never seen by the symbolizer. The pc - 1 rule
 * holds for non-leaf frames, ".so" objects get "[l] ", an address without a symbol "[path]",
 * a file whose inode is not the object's is refused, and raw frames still go the process way.
 */
static void test_encoded_frames(void **state)
{
	struct symbolizer *sym = open_sym(0);
	void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
	struct test_objs t = {0};
	struct strbuf sb = STRBUF_INIT;
	uint64_t bias = test_exe_bias(), fr[4];
	char exe[PATH_MAX];
	Dl_info li;
	ssize_t len;
	pid_t child;

	assert_non_null(libc);
	len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	assert_true(len > 0);
	exe[len] = '\0';
	test_obj_from_file(&t.o[1], exe);
	assert_true(dladdr(dlsym(libc, "getpid"), &li) != 0);
	test_obj_from_file(&t.o[2], li.dli_fname);
	t.o[3] = t.o[1];
	t.o[3].ino ^= 1; /* names the executable's path, but another file */

	child = start_child(NULL);
	kill(child, SIGKILL);
	assert_int_equal(waitpid(child, NULL, 0), child);

	ember_test_caller_fn();
	fr[0] = test_encode(2, (uint64_t)(uintptr_t)dlsym(libc, "getpid") -
				   (uint64_t)(uintptr_t)li.dli_fbase);
	fr[1] = test_encode(1, fn_addr(ember_test_leaf_fn) - bias);	/* call ends the fn */
	fr[2] = test_encode(1, recorded_ra - bias);
	fr[3] = test_encode(1, 0); /* the ELF header: no symbol */
	assert_int_equal(
	    sym_append_user_encoded(sym, (uint32_t)child, fr, 4, test_resolve, &t, &sb), 4);
	{
		char want[PATH_MAX + 64];

		/* fr[1] - 1 is the byte before ember_test_leaf_fn: not the leaf function. */
		snprintf(want, sizeof(want), "[%s];ember_test_caller_fn;", exe);
		assert_true(strncmp(sb.buf, want, strlen(want)) == 0);
		assert_null(strstr(sb.buf, "ember_test_leaf_fn"));
		assert_non_null(strstr(sb.buf + strlen(want), ";[l] "));
		assert_non_null(strstr(sb.buf, "getpid"));
	}
	sb_reset(&sb);

	/* The leaf rule: a leaf frame at a function's first byte is that function. */
	fr[0] = test_encode(1, fn_addr(ember_test_leaf_fn) - bias);
	assert_int_equal(
	    sym_append_user_encoded(sym, (uint32_t)child, fr, 1, test_resolve, &t, &sb), 1);
	assert_string_equal(sb.buf, "ember_test_leaf_fn");
	sb_reset(&sb);

	/* Wrong inode: the file is not opened, the label is the path only. Unknown id: unknown. */
	fr[0] = test_encode(3, fn_addr(ember_test_leaf_fn) - bias);
	fr[1] = test_encode(7, 0x1234);
	assert_int_equal(
	    sym_append_user_encoded(sym, (uint32_t)child, fr, 2, test_resolve, &t, &sb), 2);
	{
		char want[PATH_MAX + 64];

		snprintf(want, sizeof(want), "[unknown start_thread?];[%s]", exe);
		assert_string_equal(sb.buf, want);
	}
	sb_reset(&sb);

	/* Raw frames of a live process (JIT or anonymous code) resolve through its mappings. */
	fr[0] = fn_addr(ember_test_leaf_fn);
	fr[1] = test_encode(1, recorded_ra - bias);
	assert_int_equal(
	    sym_append_user_encoded(sym, (uint32_t)getpid(), fr, 2, test_resolve, &t, &sb), 2);
	assert_string_equal(sb.buf, "ember_test_caller_fn;ember_test_leaf_fn");
	assert_true(t.calls > 0);
	sb_free(&sb);
	dlclose(libc);
	sym_close(sym);
}

static void test_deleted_binary(void **state)
{
	char tmpl[] = "/tmp/ember-symtest-XXXXXX", buf[64];
	struct symbolizer *sym;
	int in, out, pfd[2];
	uint64_t ips[1];
	ssize_t n, len = 0;
	pid_t child;
	char *s;

	/* A private copy of this binary, run and then deleted. */
	out = mkstemp(tmpl);
	assert_true(out >= 0);
	in = open("/proc/self/exe", O_RDONLY);
	assert_true(in >= 0);
	while ((n = read(in, buf, sizeof(buf))) > 0)
		assert_int_equal(write(out, buf, (size_t)n), n);
	close(in);
	assert_int_equal(fchmod(out, 0755), 0);
	close(out);

	assert_int_equal(pipe(pfd), 0);
	child = fork();
	assert_true(child >= 0);
	if (child == 0) {
		dup2(pfd[1], 1);
		close(pfd[0]);
		execl(tmpl, tmpl, "--sleeper", (char *)NULL);
		_exit(127);
	}
	close(pfd[1]);
	while (len < (ssize_t)sizeof(buf) - 1 && (n = read(pfd[0], buf + len, 1)) == 1 &&
	       buf[len] != '\n')
		len++;
	buf[len] = '\0';
	close(pfd[0]);
	assert_int_equal(unlink(tmpl), 0);
	ips[0] = strtoull(buf, NULL, 16);
	assert_true(ips[0] != 0);

	sym = open_sym(0);
	s = user_labels(sym, (uint32_t)child, ips, 1, NULL);
	assert_string_equal(s, "ember_test_leaf_fn");
	free(s);
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	sym_close(sym);
}

static void test_bounded_files(void **state)
{
	void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
	void *libz = dlopen("libz.so.1", RTLD_NOW);
	struct symbolizer *sym;
	struct sym_stats st;
	uint64_t ips[3];
	char *s;

	assert_non_null(libc);
	assert_non_null(libz);
	sym = open_sym(2);
	ips[0] = (uint64_t)(uintptr_t)dlsym(libz, "zlibVersion");
	ips[1] = (uint64_t)(uintptr_t)dlsym(libc, "getpid") + 1;
	ips[2] = fn_addr(ember_test_caller_fn) + 1;
	for (int round = 0; round < 3; round++) {
		s = user_labels(sym, (uint32_t)getpid(), ips, 3, NULL);
		assert_true(strncmp(s, "ember_test_caller_fn;[l] ", 25) == 0);
		assert_non_null(strstr(s, "getpid;[l] zlibVersion"));
		free(s);
	}
	sym_get_stats(sym, &st);
	/* Three files through two slots: every resolution after the first two evicts one. */
	assert_true(st.file_evictions >= 7);
	assert_int_equal(st.files_loaded, st.file_evictions + 2);
	dlclose(libz);
	dlclose(libc);
	sym_close(sym);
}

static void test_dlopen_after_first_read(void **state)
{
	struct symbolizer *sym = open_sym(0);
	uint64_t ips[2] = {0, fn_addr(ember_test_caller_fn) + 1};
	struct sym_stats before, after;
	void *lib;
	char *s;

	s = user_labels(sym, (uint32_t)getpid(), &ips[1], 1, NULL);
	assert_string_equal(s, "ember_test_caller_fn");
	free(s);
	lib = dlopen("libuuid.so.1", RTLD_NOW);
	if (!lib) {
		sym_close(sym);
		skip();
	}
	ips[0] = (uint64_t)(uintptr_t)dlsym(lib, "uuid_generate");
	assert_true(ips[0] != 0);
	/* Maps are re-read on a miss at most once a second; wait that out. */
	usleep(1100 * 1000);
	sym_get_stats(sym, &before);
	s = user_labels(sym, (uint32_t)getpid(), ips, 2, NULL);
	assert_string_equal(s, "ember_test_caller_fn;[l] uuid_generate");
	free(s);
	sym_get_stats(sym, &after);
	assert_int_equal(after.procs_loaded, before.procs_loaded + 1);
	/* The executable's mapping did not change: its file is neither reloaded nor re-found. */
	assert_int_equal(after.files_loaded, before.files_loaded + 1);
	assert_int_equal(after.file_cache_hits, before.file_cache_hits);
	dlclose(lib);
	sym_close(sym);
}

/* A miss at an address no mapping holds, with mappings unchanged, re-reads nothing. */
static void test_miss_without_change(void **state)
{
	struct symbolizer *sym = open_sym(0);
	uint64_t ips[2] = {0x10, fn_addr(ember_test_caller_fn) + 1};
	struct sym_stats before, after;
	char *s;

	s = user_labels(sym, (uint32_t)getpid(), &ips[1], 1, NULL);
	assert_string_equal(s, "ember_test_caller_fn");
	free(s);
	usleep(1100 * 1000);
	sym_get_stats(sym, &before);
	for (int i = 0; i < 3; i++) {
		s = user_labels(sym, (uint32_t)getpid(), ips, 2, NULL);
		assert_non_null(strstr(s, "ember_test_caller_fn;[unknown"));
		free(s);
	}
	sym_get_stats(sym, &after);
	assert_int_equal(after.procs_loaded, before.procs_loaded);
	/* An exec resets the process: its maps are read again on the next stack. */
	sym_process_invalidate(sym, (uint32_t)getpid());
	free(user_labels(sym, (uint32_t)getpid(), &ips[1], 1, NULL));
	sym_get_stats(sym, &after);
	assert_int_equal(after.procs_loaded, before.procs_loaded + 1);
	sym_close(sym);
}

static void test_bounded_processes(void **state)
{
	struct sym_opts o = {.max_files = 4, .max_processes = 2, .proc_root = "/proc"};
	uint64_t ips[1] = {fn_addr(ember_test_leaf_fn)};
	struct symbolizer *sym;
	struct sym_stats st;
	pid_t kids[3];

	assert_int_equal(sym_open(&o, &sym), 0);
	for (int i = 0; i < 3; i++) {
		char *s;

		kids[i] = start_child(NULL);
		s = user_labels(sym, (uint32_t)kids[i], ips, 1, NULL);
		assert_string_equal(s, "ember_test_leaf_fn");
		free(s);
	}
	sym_get_stats(sym, &st);
	assert_int_equal(st.procs_loaded, 3);
	assert_int_equal(st.proc_evictions, 1);
	/* The file is shared by build-id: loaded once, hit by the other two. */
	assert_int_equal(st.files_loaded, 1);
	assert_int_equal(st.file_cache_hits, 2);
	for (int i = 0; i < 3; i++) {
		kill(kids[i], SIGKILL);
		waitpid(kids[i], NULL, 0);
	}
	sym_close(sym);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_own_functions),
	    cmocka_unit_test(test_libc),
	    cmocka_unit_test(test_versioned_names),
	    cmocka_unit_test(test_kernel),
	    cmocka_unit_test(test_waker),
	    cmocka_unit_test(test_perf_map),
	    cmocka_unit_test(test_unknown_and_outermost),
	    cmocka_unit_test(test_vdso),
	    cmocka_unit_test(test_clean_name),
	    cmocka_unit_test(test_exited_child),
	    cmocka_unit_test(test_encoded_frames),
	    cmocka_unit_test(test_deleted_binary),
	    cmocka_unit_test(test_bounded_files),
	    cmocka_unit_test(test_dlopen_after_first_read),
	    cmocka_unit_test(test_miss_without_change),
	    cmocka_unit_test(test_bounded_processes),
	};

	if (argc > 1 && strcmp(argv[1], "--sleeper") == 0) {
		printf("%llx\n", (unsigned long long)fn_addr(ember_test_leaf_fn));
		fflush(stdout);
		pause();
		return 0;
	}
	return cmocka_run_group_tests(tests, NULL, NULL);
}
