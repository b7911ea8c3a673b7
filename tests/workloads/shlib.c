/*
 * shlib — burns argv[1] seconds (default 5) inside hot_lib_spin of libhot.so, loaded with
 * dlopen from the directory of this executable (the Makefile builds both into build/workloads).
 */
#include <dlfcn.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "burn.h"

typedef uint64_t (*spin_fn)(double seconds);

__attribute__((noinline)) uint64_t call_lib(spin_fn spin, double seconds)
{
	return spin(seconds) + 1;
}

int main(int argc, char **argv)
{
	char exe[PATH_MAX], lib[PATH_MAX + 16];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	void *h;
	spin_fn spin;

	if (n < 0) {
		perror("/proc/self/exe");
		return 1;
	}
	exe[n] = '\0';
	snprintf(lib, sizeof(lib), "%s/libhot.so", dirname(exe));
	h = dlopen(lib, RTLD_NOW);
	if (!h) {
		fprintf(stderr, "dlopen %s: %s\n", lib, dlerror());
		return 1;
	}
	spin = (spin_fn)dlsym(h, "hot_lib_spin");
	if (!spin) {
		fprintf(stderr, "dlsym hot_lib_spin: %s\n", dlerror());
		return 1;
	}
	printf("%llu\n", (unsigned long long)(call_lib(spin, burn_seconds_arg(argc, argv)) & 1));
	return 0;
}
