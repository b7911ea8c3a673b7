/*
 * burn.h — shared helpers of the test workloads: a CPU burner the compiler cannot remove
 * (xorshift with an asm barrier, always inlined so the CALLER is the leaf frame), a monotonic
 * clock and the process's CPU clock in ns, and argv[1] as a bounded duration in seconds.
 */
#ifndef EMBER_WORKLOAD_BURN_H
#define EMBER_WORKLOAD_BURN_H

#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#define WORKLOAD_DEFAULT_SECONDS 5.0
#define WORKLOAD_MAX_SECONDS 600.0

static inline __attribute__((always_inline)) uint64_t burn_iters(uint64_t x, long iters)
{
	for (long i = 0; i < iters; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		__asm__ volatile("" : "+r"(x));
	}
	return x;
}

static inline uint64_t burn_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/*
 * CPU time of the whole process in ns. A workload that runs for a span of it is sampled about
 * span x frequency times on a quiet and on a loaded host alike, where a span of wall time gives
 * a loaded host's checks a fraction of the samples.
 */
static inline uint64_t burn_cpu_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline double burn_seconds_arg(int argc, char **argv)
{
	double s = argc > 1 ? atof(argv[1]) : WORKLOAD_DEFAULT_SECONDS;

	if (!(s > 0))
		s = WORKLOAD_DEFAULT_SECONDS;
	return s > WORKLOAD_MAX_SECONDS ? WORKLOAD_MAX_SECONDS : s;
}

#endif
