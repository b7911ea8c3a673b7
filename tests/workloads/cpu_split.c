/*
 * cpu_split — main → work → hot_a / hot_b, burning argv[1] seconds (default 5) of CPU time, not
 * of wall time, so that a profiler takes about seconds x frequency samples of it however loaded
 * the host is (proportion checks need the samples; a loaded host only makes it last longer).
 * hot_a does 70 % of the work and hot_b 30 %: both run the same loop, hot_a 7 rounds for every
 * 3 of hot_b, so the split holds whatever the CPU speed.
 */
#include <stdio.h>

#include "burn.h"

#define ROUND_ITERS 200000

__attribute__((noinline)) uint64_t hot_a(uint64_t x)
{
	return burn_iters(x, 7 * ROUND_ITERS);
}

__attribute__((noinline)) uint64_t hot_b(uint64_t x)
{
	return burn_iters(x ^ 0x9e3779b97f4a7c15ull, 3 * ROUND_ITERS);
}

__attribute__((noinline)) uint64_t work(double seconds)
{
	uint64_t end = burn_cpu_ns() + (uint64_t)(seconds * 1e9), x = 88172645463325252ull;

	while (burn_cpu_ns() < end) {
		x = hot_a(x);
		x = hot_b(x);
	}
	return x;
}

int main(int argc, char **argv)
{
	uint64_t x = work(burn_seconds_arg(argc, argv));

	/* Printing the result keeps every round observable to the compiler. */
	printf("%llu\n", (unsigned long long)(x & 1));
	return 0;
}
