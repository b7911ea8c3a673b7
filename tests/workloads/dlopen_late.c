/*
 * dlopen_late — burns argv[1] seconds (default 5) in its own code (early_burn), then dlopens
 * libcfi.so from the directory of this executable and burns argv[2] seconds (default 2) in its
 * cfi_outer → cfi_middle → cfi_spin. Built without frame pointers, like the library: the
 * library's frames are walked completely only after the agent saw the new mapping (the
 * unknown-address event of the first samples inside it triggers a rescan).
 */
#include <dlfcn.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <unistd.h>

#include "burn.h"

typedef uint64_t (*outer_fn)(double seconds);

__attribute__((noinline)) uint64_t early_burn(double seconds)
{
	uint64_t end = burn_now_ns() + (uint64_t)(seconds * 1e9), x = 3;

	while (burn_now_ns() < end)
		x = burn_iters(x, 100000);
	return x;
}

__attribute__((noinline)) uint64_t call_late(outer_fn outer, double seconds)
{
	return outer(seconds) + 1;
}

int main(int argc, char **argv)
{
	char exe[PATH_MAX], lib[PATH_MAX + 16];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	double late = argc > 2 ? atof(argv[2]) : 2.0;
	uint64_t x;
	void *h;
	outer_fn outer;

	if (n < 0) {
		perror("/proc/self/exe");
		return 1;
	}
	exe[n] = '\0';
	x = early_burn(burn_seconds_arg(argc, argv));
	snprintf(lib, sizeof(lib), "%s/libcfi.so", dirname(exe));
	h = dlopen(lib, RTLD_NOW);
	if (!h) {
		fprintf(stderr, "dlopen %s: %s\n", lib, dlerror());
		return 1;
	}
	outer = (outer_fn)dlsym(h, "cfi_outer");
	if (!outer) {
		fprintf(stderr, "dlsym cfi_outer: %s\n", dlerror());
		return 1;
	}
	x += call_late(outer, late > 0 && late < WORKLOAD_MAX_SECONDS ? late : 2.0);
	printf("%llu\n", (unsigned long long)(x & 1));
	return 0;
}
