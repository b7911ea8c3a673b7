/*
 * hotlib — the shared library of the shlib workload (built as build/workloads/libhot.so):
 * hot_lib_spin burns CPU until a deadline, so its frames carry the "[l]" label.
 */
#include "../burn.h"

__attribute__((noinline, visibility("default"))) uint64_t hot_lib_spin(double seconds)
{
	uint64_t end = burn_now_ns() + (uint64_t)(seconds * 1e9), x = 42;

	while (burn_now_ns() < end)
		x = burn_iters(x, 100000);
	return x;
}
