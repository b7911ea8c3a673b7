/*
 * cpu_split — main → work → hot_a / hot_b, burning argv[1] seconds (default 5) of CPU time, not
 * of wall time, so that a profiler takes about seconds x frequency samples of it however loaded
 * the host is (proportion checks need the samples; a loaded host only makes it last longer).
 * hot_a does 70 % of the work and hot_b 30 %: both run the same loop, hot_a 7 rounds for every
 * 3 of hot_b, so the split holds whatever the CPU speed. argv[2], when given, is hot_a's percent
 * (1..99) instead of 70: `ember diff`'s test records two splits.
 *
 * A round's length varies pseudo-randomly (0.5–1.5 × ROUND_ITERS, the same for hot_a and hot_b
 * within one pass), so that work() has no period: with a fixed one (2.0 ms on one development
 * machine, a fifth of the 10.1 ms between two samples at 99 Hz) every sample of a run can land
 * at the same phase of the loop, and test_sampler once saw 96 samples in hot_a and 106 in hot_b.
 */
#include <stdio.h>
#include <stdlib.h>

#include "burn.h"

#define ROUND_ITERS 200000

static long a_percent = 70;

__attribute__((noinline)) uint64_t hot_a(uint64_t x, long round)
{
	return burn_iters(x, a_percent * round / 10);
}

__attribute__((noinline)) uint64_t hot_b(uint64_t x, long round)
{
	return burn_iters(x ^ 0x9e3779b97f4a7c15ull, (100 - a_percent) * round / 10);
}

__attribute__((noinline)) uint64_t work(double seconds)
{
	uint64_t end = burn_cpu_ns() + (uint64_t)(seconds * 1e9), x = 88172645463325252ull;
	uint64_t r = 0x2545f4914f6cdd1dull;

	while (burn_cpu_ns() < end) {
		long round;

		r ^= r << 13;
		r ^= r >> 7;
		r ^= r << 17;
		round = ROUND_ITERS / 2 + (long)(r % ROUND_ITERS);
		x = hot_a(x, round);
		x = hot_b(x, round);
	}
	return x;
}

int main(int argc, char **argv)
{
	uint64_t x;

	if (argc > 2) {
		a_percent = atol(argv[2]);
		if (a_percent < 1 || a_percent > 99) {
			fprintf(stderr, "cpu_split: hot_a's percent must be 1..99\n");
			return 2;
		}
	}
	x = work(burn_seconds_arg(argc, argv));

	/* Printing the result keeps every round observable to the compiler. */
	printf("%llu\n", (unsigned long long)(x & 1));
	return 0;
}
