/*
 * threads — two named threads ("worker-a", "worker-b") burning CPU in distinct functions
 * (burn_a, burn_b) for argv[1] seconds (default 5) while the main thread waits in
 * pthread_join. Thread names must merge per name and show as "[t] worker-a".
 */
#define _GNU_SOURCE /* pthread_setname_np */
#include <pthread.h>
#include <stdio.h>

#include "burn.h"

static double seconds;

__attribute__((noinline)) uint64_t burn_a(uint64_t x)
{
	uint64_t end = burn_now_ns() + (uint64_t)(seconds * 1e9);

	while (burn_now_ns() < end)
		x = burn_iters(x, 100000);
	return x;
}

__attribute__((noinline)) uint64_t burn_b(uint64_t x)
{
	uint64_t end = burn_now_ns() + (uint64_t)(seconds * 1e9);

	while (burn_now_ns() < end)
		x = burn_iters(x ^ 0x5555, 100000);
	return x;
}

static void *thread_a(void *arg)
{
	*(uint64_t *)arg = burn_a(*(uint64_t *)arg);
	return NULL;
}

static void *thread_b(void *arg)
{
	*(uint64_t *)arg = burn_b(*(uint64_t *)arg);
	return NULL;
}

int main(int argc, char **argv)
{
	uint64_t xa = 1, xb = 2;
	pthread_t a, b;

	seconds = burn_seconds_arg(argc, argv);
	if (pthread_create(&a, NULL, thread_a, &xa) || pthread_create(&b, NULL, thread_b, &xb)) {
		perror("pthread_create");
		return 1;
	}
	pthread_setname_np(a, "worker-a");
	pthread_setname_np(b, "worker-b");
	pthread_join(a, NULL);
	pthread_join(b, NULL);
	printf("%llu\n", (unsigned long long)((xa ^ xb) & 1));
	return 0;
}
