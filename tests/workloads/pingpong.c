/*
 * pingpong — two threads of one process bouncing one byte over a pair of pipes argv[1] times
 * (default 100000): every read blocks until the other side writes, so each round trip is two
 * blocks and two wake-ups, a context-switch-heavy load for off-CPU profiling's cost
 * (bench/offcpu.sh). One process, so a profiler attached with -p PID sees both sides. Prints
 * "round_trips=N seconds=S per_second=R" on stdout.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "burn.h"

static int to_b[2], to_a[2];
static long rounds;

__attribute__((noinline)) static int bounce(int in, int out, int first)
{
	char c = 'x';

	for (long i = 0; i < rounds; i++) {
		if (first && write(out, &c, 1) != 1)
			return -1;
		if (read(in, &c, 1) != 1)
			return -1;
		if (!first && write(out, &c, 1) != 1)
			return -1;
	}
	return 0;
}

static void *side_b(void *arg)
{
	*(int *)arg = bounce(to_b[0], to_a[1], 0);
	return NULL;
}

int main(int argc, char **argv)
{
	int b_ret = -1, a_ret;
	pthread_t b;
	uint64_t t0;
	double s;

	rounds = argc > 1 ? atol(argv[1]) : 100000;
	if (rounds <= 0 || pipe(to_b) || pipe(to_a))
		return 1;
	if (pthread_create(&b, NULL, side_b, &b_ret))
		return 1;
	t0 = burn_now_ns();
	a_ret = bounce(to_a[0], to_b[1], 1);
	s = (double)(burn_now_ns() - t0) / 1e9;
	pthread_join(b, NULL);
	printf("round_trips=%ld seconds=%.3f per_second=%.0f\n", rounds, s, (double)rounds / s);
	return a_ret || b_ret;
}
