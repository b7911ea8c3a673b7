/*
 * test_unwinder — the slot allocator (first fit, merging, full), and scans of this process into
 * real BPF maps (root only, else skipped): the mapping list BPF reads holds our executable
 * mappings sorted, with tables whose headers sit at their table_base; a second scan of an
 * unchanged process is skipped; object ids resolve to paths; dropping the process removes the
 * list; a slot array too small
 * for every table counts the misses instead of failing; two copies of one library (another
 * inode, same build-id) share one table and object id; unknown-address rescans that find
 * nothing new back off (briefly in a young process); cached tables are taken without builds.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cmocka.h>

#include <bpf/bpf.h>

#include "agent/ehtable.h"
#include "agent/unwinder.h"

static void test_alloc_first_fit_and_merge(void **state)
{
	static struct unwinder_alloc a;
	uint32_t x, y, z, w;

	unwinder_alloc_init(&a, 100);
	assert_int_equal(unwinder_alloc_get(&a, 30, &x), 0);
	assert_int_equal(unwinder_alloc_get(&a, 30, &y), 0);
	assert_int_equal(unwinder_alloc_get(&a, 30, &z), 0);
	assert_int_equal(x, 0);
	assert_int_equal(y, 30);
	assert_int_equal(z, 60);
	assert_int_equal(unwinder_alloc_get(&a, 11, &w), -ENOSPC);
	/* Free the middle, then the first: one extent of 60 at 0 (merged), plus 10 at the end. */
	assert_int_equal(unwinder_alloc_put(&a, y, 30), 0);
	assert_int_equal(unwinder_alloc_put(&a, x, 30), 0);
	assert_int_equal(a.n, 2);
	assert_int_equal(unwinder_alloc_get(&a, 50, &w), 0);
	assert_int_equal(w, 0);
	/* Free the last block: merges with the 10 left at 50 and the tail: 50 at 50. */
	assert_int_equal(unwinder_alloc_put(&a, z, 30), 0);
	assert_int_equal(a.n, 1);
	assert_int_equal(unwinder_alloc_get(&a, 51, &w), -ENOSPC);
	assert_int_equal(unwinder_alloc_get(&a, 50, &w), 0);
	assert_int_equal(w, 50);
	assert_int_equal(a.n, 0);
	assert_int_equal(unwinder_alloc_put(&a, 50, 50), 0);
	assert_int_equal(unwinder_alloc_put(&a, 0, 50), 0);
	assert_int_equal(a.n, 1);
	assert_int_equal(a.ext[0].len, 100);
}

struct maps {
	int slots, procs;
};

static int open_maps(struct maps *m, uint32_t n_slots)
{
	LIBBPF_OPTS(bpf_map_create_opts, hopts, .map_flags = BPF_F_NO_PREALLOC);

	if (geteuid() != 0)
		return -EPERM;
	m->slots = bpf_map_create(BPF_MAP_TYPE_ARRAY, "t_unw_slots", 4, 8, n_slots, NULL);
	m->procs = bpf_map_create(BPF_MAP_TYPE_HASH, "t_unw_procs", 4, sizeof(struct unw_proc),
				  16, &hopts);
	if (m->slots < 0 || m->procs < 0)
		return -errno;
	return 0;
}

/*
 * An unwinder over the maps of m (n_slots as open_maps was given); proc_root NULL = /proc,
 * cache_dir NULL = no on-disk table cache.
 */
static struct unwinder *open_unwinder(const struct maps *m, uint32_t n_slots, const char *proc_root,
				      const char *cache_dir)
{
	struct unwinder *u = NULL;

	assert_int_equal(unwinder_open(&(struct unwinder_opts){.slots_fd = m->slots,
							       .max_slots = n_slots,
							       .procs_fd = m->procs,
							       .max_procs = 16,
							       .proc_root = proc_root,
							       .cache_dir = cache_dir},
				       &u),
			 0);
	return u;
}

static void test_scan_self(void **state)
{
	struct maps m;
	struct unwinder *u;
	struct unwinder_stats st;
	struct unw_proc p;
	uint32_t pid = (uint32_t)getpid();
	uintptr_t here = (uintptr_t)&test_scan_self;
	char obj_path[4096], exe[4096] = {0};
	int found = 0;

	if (open_maps(&m, 1u << 20))
		skip();
	u = open_unwinder(&m, 1u << 20, NULL, NULL);
	assert_int_equal(unwinder_scan_process(u, pid, UNWINDER_SCAN_BUILD), 0);
	assert_int_equal(bpf_map_lookup_elem(m.procs, &pid, &p), 0);
	assert_true(p.n >= 3); /* this test, libc, ld.so (and the vDSO) */
	for (uint32_t i = 0; i < p.n; i++) {
		const struct unw_mapping *mp = &p.maps[i];

		if (i)
			assert_true(mp->start >= p.maps[i - 1].end);
		if (here >= mp->start && here < mp->end) {
			uint64_t hdr[2];
			uint32_t k0 = mp->table_base, k1 = k0 + 1;

			found = 1;
			assert_false(mp->flags & UNW_MAP_NO_TABLE);
			assert_true(mp->flags >> UNW_MAP_OBJ_SHIFT);
			/* the object id names our executable */
			assert_int_equal(unwinder_object_path(u, mp->flags >> UNW_MAP_OBJ_SHIFT,
							      obj_path, sizeof(obj_path)),
					 0);
			assert_int_equal(readlink("/proc/self/exe", exe, sizeof(exe) - 1) > 0, 1);
			assert_string_equal(obj_path, exe);
			assert_int_equal(bpf_map_lookup_elem(m.slots, &k0, &hdr[0]), 0);
			assert_int_equal(bpf_map_lookup_elem(m.slots, &k1, &hdr[1]), 0);
			/* first_va ≤ our va < first_va + n_buckets * 4 KiB, and rows exist */
			assert_true((uint32_t)hdr[0] <= here - mp->bias);
			assert_true(here - mp->bias <
				    (uint32_t)hdr[0] + ((hdr[0] >> 32) << UNW_BUCKET_SHIFT));
			assert_true((uint32_t)hdr[1] > 0);
		}
	}
	assert_true(found);
	unwinder_get_stats(u, &st);
	assert_int_equal(st.procs, 1);
	assert_true(st.objects >= 3 && st.slots_used > 0 && st.tables_built >= 3);

	/* Unchanged: skipped; forced: stored again. */
	assert_int_equal(unwinder_scan_process(u, pid, 0), 0);
	unwinder_get_stats(u, &st);
	assert_int_equal(st.scan_unchanged, 1);
	assert_int_equal(unwinder_scan_process(u, pid, UNWINDER_SCAN_FORCE), 0);
	unwinder_get_stats(u, &st);
	assert_int_equal(st.scan_unchanged, 1);

	unwinder_drop_process(u, pid);
	assert_int_equal(bpf_map_lookup_elem(m.procs, &pid, &p), -ENOENT);
	unwinder_get_stats(u, &st);
	assert_int_equal(st.procs, 0);
	assert_int_equal(unwinder_scan_process(u, 0x7ffffff0u, 0), -ENOENT);
	unwinder_close(u);
	close(m.slots);
	close(m.procs);
}

/* A slot array that holds only small tables: big ones are counted as full, lists still stored. */
static void test_slots_full(void **state)
{
	struct maps m;
	struct unwinder *u;
	struct unwinder_stats st;
	struct unw_proc p;
	uint32_t pid = (uint32_t)getpid(), no_table = 0;

	if (open_maps(&m, 4096))
		skip();
	u = open_unwinder(&m, 4096, NULL, NULL);
	assert_int_equal(unwinder_scan_process(u, pid, UNWINDER_SCAN_BUILD), 0);
	unwinder_get_stats(u, &st);
	assert_true(st.slots_full >= 1); /* libc alone needs ~28 k slots */
	assert_true(st.slots_used <= 4096);
	assert_int_equal(bpf_map_lookup_elem(m.procs, &pid, &p), 0);
	for (uint32_t i = 0; i < p.n; i++)
		no_table += !!(p.maps[i].flags & UNW_MAP_NO_TABLE);
	assert_true(no_table >= 1);
	unwinder_close(u);
	close(m.slots);
	close(m.procs);
}

/* Unknown-address events of a process whose mappings did not change: one scan, then back-off. */
static void test_unknown_backoff(void **state)
{
	struct maps m;
	struct unwinder *u;
	struct unwinder_stats st;
	uint32_t pid = (uint32_t)getpid();

	if (open_maps(&m, 1u << 20))
		skip();
	u = open_unwinder(&m, 1u << 20, NULL, NULL);
	assert_int_equal(unwinder_scan_process(u, pid, UNWINDER_SCAN_BUILD), 0);
	assert_int_equal(unwinder_scan_unknown(u, pid), 0); /* stored again, found unchanged */
	unwinder_get_stats(u, &st);
	assert_int_equal(st.scans, 2);
	assert_int_equal(st.unknown_skipped, 0);
	assert_int_equal(unwinder_scan_unknown(u, pid), 0); /* within UNKNOWN_BACKOFF_MIN_NS */
	unwinder_get_stats(u, &st);
	assert_int_equal(st.scans, 2);
	assert_int_equal(st.unknown_skipped, 1);
	unwinder_close(u);
	close(m.slots);
	close(m.procs);
}

#define TEST_LIB "/usr/lib/x86_64-linux-gnu/libz.so.1"

static void copy_file(const char *from, const char *to)
{
	char buf[65536];
	FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
	size_t n;

	assert_non_null(in);
	assert_non_null(out);
	while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
		assert_int_equal(fwrite(buf, 1, n, out), n);
	fclose(in);
	assert_int_equal(fclose(out), 0);
}

/* dir/proc/PID/maps with one executable mapping of lib, and dir/proc/PID/root → "/". */
static void fake_proc(const char *dir, uint32_t pid, const char *lib, uint64_t pgoff)
{
	char p[512];
	struct stat sb;
	FILE *f;

	assert_int_equal(stat(lib, &sb), 0);
	snprintf(p, sizeof(p), "%s/proc/%u", dir, pid);
	assert_int_equal(mkdir(p, 0755), 0);
	snprintf(p, sizeof(p), "%s/proc/%u/root", dir, pid);
	assert_int_equal(symlink("/", p), 0);
	snprintf(p, sizeof(p), "%s/proc/%u/maps", dir, pid);
	f = fopen(p, "w");
	assert_non_null(f);
	fprintf(f, "7f0000%u00000-7f0000%u80000 r-xp %08llx %02x:%02x %llu %s\n", pid, pid,
		(unsigned long long)pgoff, major(sb.st_dev), minor(sb.st_dev),
		(unsigned long long)sb.st_ino, lib);
	assert_int_equal(fclose(f), 0);
}

/* Two copies of one library (other inodes, same build-id), as two containers have them. */
static void test_shared_by_identity(void **state)
{
	char dir[] = "/tmp/test_unwinder.XXXXXX", a[256], b[256], p[300];
	struct ehtable *t;
	struct maps m;
	struct unwinder *u;
	struct unwinder_stats st;
	struct unw_proc pa, pb, pb2;
	uint32_t pid_a = 1, pid_b = 2;
	uint64_t pgoff = UINT64_MAX;

	if (access(TEST_LIB, R_OK) || open_maps(&m, 1u << 20))
		skip();
	assert_non_null(mkdtemp(dir));
	snprintf(a, sizeof(a), "%s/a.so", dir);
	snprintf(b, sizeof(b), "%s/b.so", dir);
	copy_file(TEST_LIB, a);
	copy_file(TEST_LIB, b);
	assert_int_equal(ehtable_build(a, &t), 0);
	assert_true(t->id_is_build_id);
	for (uint32_t i = 0; i < t->n_loads && pgoff == UINT64_MAX; i++)
		if (t->loads[i].flags & 1) /* PF_X */
			pgoff = t->loads[i].offset & ~4095ull;
	ehtable_free(t);
	assert_true(pgoff != UINT64_MAX);
	snprintf(p, sizeof(p), "%s/proc", dir);
	assert_int_equal(mkdir(p, 0755), 0);
	fake_proc(dir, pid_a, a, pgoff);
	fake_proc(dir, pid_b, b, pgoff);

	u = open_unwinder(&m, 1u << 20, p, NULL);
	assert_int_equal(unwinder_scan_process(u, pid_a, UNWINDER_SCAN_BUILD), 0);
	assert_int_equal(unwinder_scan_process(u, pid_b, UNWINDER_SCAN_BUILD), 0);
	unwinder_get_stats(u, &st);
	assert_int_equal(st.tables_built, 1); /* b's object merged into a's, without a table */
	assert_int_equal(st.objects_shared, 1);
	assert_int_equal(bpf_map_lookup_elem(m.procs, &pid_a, &pa), 0);
	assert_int_equal(bpf_map_lookup_elem(m.procs, &pid_b, &pb), 0);
	assert_int_equal(pa.n, 1);
	assert_int_equal(pb.n, 1);
	assert_false(pa.maps[0].flags & UNW_MAP_NO_TABLE);
	assert_false(pb.maps[0].flags & UNW_MAP_NO_TABLE);
	assert_int_equal(pa.maps[0].table_base, pb.maps[0].table_base);
	assert_int_equal(pa.maps[0].flags, pb.maps[0].flags); /* the same object id */
	/* A rescan of b finds its file among the object's aliases: no second identity lookup. */
	assert_int_equal(unwinder_scan_process(u, pid_b, UNWINDER_SCAN_FORCE), 0);
	unwinder_get_stats(u, &st);
	assert_int_equal(st.objects_shared, 1);
	/* Every list written has a gen of its own, never 0: BPF's rule cache is keyed by it. */
	assert_int_equal(bpf_map_lookup_elem(m.procs, &pid_b, &pb2), 0);
	assert_true(pa.gen && pb.gen && pb2.gen);
	assert_true(pa.gen != pb.gen && pb2.gen != pa.gen && pb2.gen != pb.gen);
	unwinder_close(u);
	close(m.slots);
	close(m.procs);
	for (uint32_t pid = 1; pid <= 2; pid++) {
		snprintf(p, sizeof(p), "%s/proc/%u/maps", dir, pid);
		unlink(p);
		snprintf(p, sizeof(p), "%s/proc/%u/root", dir, pid);
		unlink(p);
		snprintf(p, sizeof(p), "%s/proc/%u", dir, pid);
		rmdir(p);
	}
	snprintf(p, sizeof(p), "%s/proc", dir);
	rmdir(p);
	unlink(a);
	unlink(b);
	rmdir(dir);
}

/* Where this function is in pid's stored list: 1 with a table, 0 without, -1 not listed. */
static int self_mapping_has_table(const struct maps *m, uint32_t pid)
{
	uintptr_t here = (uintptr_t)&self_mapping_has_table;
	struct unw_proc p;

	if (bpf_map_lookup_elem(m->procs, &pid, &p))
		return -1;
	for (uint32_t i = 0; i < p.n; i++)
		if (here >= p.maps[i].start && here < p.maps[i].end)
			return !(p.maps[i].flags & UNW_MAP_NO_TABLE);
	return -1;
}

/*
 * A scan without builds (an unknown-address event of a process not scanned before) takes the
 * tables in the on-disk cache at once, whatever their size, and queues only what needs libdw;
 * a process seen exec'ing is young again, so a rescan that finds nothing new backs off briefly.
 */
static void test_cached_tables_inline(void **state)
{
	char dir[] = "/tmp/ember-unwcache-XXXXXX", cmd[64];
	uint32_t pid = (uint32_t)getpid();
	struct unwinder_stats st;
	struct unwinder *u;
	struct maps m;

	if (open_maps(&m, 1u << 20))
		skip();
	assert_non_null(mkdtemp(dir));
	/* Fill the cache: every table built once. */
	u = open_unwinder(&m, 1u << 20, NULL, dir);
	assert_int_equal(unwinder_scan_process(u, pid, UNWINDER_SCAN_BUILD), 0);
	unwinder_close(u);
	close(m.slots);
	close(m.procs);

	/* A fresh unwinder: flags 0 used to queue every table for the builder thread. */
	assert_int_equal(open_maps(&m, 1u << 20), 0);
	u = open_unwinder(&m, 1u << 20, NULL, dir);
	assert_int_equal(unwinder_scan_process(u, pid, 0), 0);
	unwinder_get_stats(u, &st);
	assert_true(st.tables_from_cache >= 3); /* this test, libc, ld.so ... */
	assert_int_equal(st.tables_built, 0);
	assert_true(st.pending <= 1); /* the vDSO is never cached */
	assert_int_equal(self_mapping_has_table(&m, pid), 1);

	/* Young after an exec: the first back-off is UNWINDER_UNKNOWN_BACKOFF_YOUNG_NS. The vDSO's
	 * table first, so that the list is complete (an incomplete one is never "unchanged"). */
	while (unwinder_build_pending(u))
		;
	unwinder_exec(u, pid);
	assert_int_equal(unwinder_scan_process(u, pid, 0), 0);
	assert_int_equal(unwinder_scan_unknown(u, pid), 0); /* unchanged: backs off */
	assert_int_equal(unwinder_scan_unknown(u, pid), 0); /* within the back-off: skipped */
	unwinder_get_stats(u, &st);
	assert_int_equal(st.unknown_skipped, 1);
	usleep(2 * UNWINDER_UNKNOWN_BACKOFF_YOUNG_NS / 1000);
	assert_int_equal(unwinder_scan_unknown(u, pid), 0); /* 5 ms later: rescanned, not 200 */
	unwinder_get_stats(u, &st);
	assert_int_equal(st.unknown_skipped, 1);

	unwinder_close(u);
	close(m.slots);
	close(m.procs);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_alloc_first_fit_and_merge),
	    cmocka_unit_test(test_scan_self),
	    cmocka_unit_test(test_slots_full),
	    cmocka_unit_test(test_unknown_backoff),
	    cmocka_unit_test(test_shared_by_identity),
	    cmocka_unit_test(test_cached_tables_inline),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
