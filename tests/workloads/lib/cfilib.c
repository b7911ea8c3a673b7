/*
 * cfilib — the library of the dlopen_late workload (built as build/workloads/libcfi.so with
 * -fomit-frame-pointer): three nested functions that keep no frame pointer, so only their
 * .eh_frame CFI can walk from cfi_spin back to cfi_outer's caller. A walker without this
 * library's table loses cfi_middle and cfi_outer.
 */
#include "../burn.h"

__attribute__((noinline)) static uint64_t cfi_spin(uint64_t end, uint64_t x)
{
	volatile uint64_t pad[4] = {x, x + 1, x + 2, x + 3}; /* a frame of its own on the stack */

	while (burn_now_ns() < end)
		x = burn_iters(x + pad[x & 3], 100000);
	return x;
}

__attribute__((noinline)) static uint64_t cfi_middle(uint64_t end, uint64_t x)
{
	volatile uint64_t pad[6] = {x};

	return cfi_spin(end, x ^ pad[0]) + 1;
}

__attribute__((noinline, visibility("default"))) uint64_t cfi_outer(double seconds)
{
	volatile uint64_t pad[2] = {7, 11};

	return cfi_middle(burn_now_ns() + (uint64_t)(seconds * 1e9), pad[0] * pad[1]) + 1;
}
