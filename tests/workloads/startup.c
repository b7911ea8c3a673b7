/*
 * startup — a short dynamically linked process, for the start-up window of DWARF unwinding.
 *   startup EARLY_MS LATE_MS   burns in early_burn() for the first EARLY_MS ms of main, then in
 *                              late_burn() for LATE_MS ms, and exits.
 * Built without frame pointers (like Debian's programs): a stack reaches _start only through
 * libc's unwind table (__libc_start_call_main), so a sample is complete only once libc is in
 * the process's mapping list. The leaf names the phase, and the leaf is in the executable,
 * which is known from the exec on.
 */
#include <stdio.h>

#include "burn.h"

#define STARTUP_MAX_MS 60000

static inline __attribute__((always_inline)) uint64_t burn_until(uint64_t x, uint64_t end)
{
	while (burn_now_ns() < end)
		x = burn_iters(x, 2000);
	return x;
}

__attribute__((noinline)) uint64_t early_burn(uint64_t x, uint64_t end)
{
	return burn_until(x, end);
}

__attribute__((noinline)) uint64_t late_burn(uint64_t x, uint64_t end)
{
	return burn_until(x, end);
}

int main(int argc, char **argv)
{
	uint64_t t0 = burn_now_ns(), x = t0 | 1;
	long early = argc > 1 ? atol(argv[1]) : 100, late = argc > 2 ? atol(argv[2]) : 100;

	if (early < 0 || early > STARTUP_MAX_MS || late < 0 || late > STARTUP_MAX_MS) {
		fprintf(stderr, "usage: startup EARLY_MS LATE_MS (0..%d)\n", STARTUP_MAX_MS);
		return 2;
	}
	x = early_burn(x, t0 + (uint64_t)early * 1000000ull);
	x = late_burn(x, t0 + (uint64_t)(early + late) * 1000000ull);
	return x == 0;
}
