/*
 * offcpu — three threads that spend nearly all of argv[1] seconds (default 5) of wall time
 * blocked, each in its own place, for off-CPU profiling tests:
 *   main             pace() → nanosleep 10 ms, then a byte into a pipe, until the time is up
 *   "napper" thread  nap() → nanosleep 3 ms, over and over
 *   "waiter" thread  wait_pipe() → read() of that pipe, one byte per pace of main
 * Each should show about argv[1] seconds of blocked time under its function (less on a loaded
 * host, where a woken thread also waits for a CPU, which is not blocked time).
 */
#define _GNU_SOURCE /* pthread_setname_np */
#include <pthread.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include "burn.h"

static int pipe_fds[2];
static uint64_t end_ns;

static void sleep_ns(long ns)
{
	struct timespec ts = {0, ns};

	nanosleep(&ts, NULL);
}

__attribute__((noinline)) void nap(void)
{
	while (burn_now_ns() < end_ns)
		sleep_ns(3000000);
}

__attribute__((noinline)) long wait_pipe(void)
{
	char c;
	long n = 0;

	while (read(pipe_fds[0], &c, 1) == 1 && c == 'x')
		n++;
	return n;
}

__attribute__((noinline)) void pace(void)
{
	while (burn_now_ns() < end_ns) {
		sleep_ns(10000000);
		if (write(pipe_fds[1], "x", 1) != 1)
			break;
	}
	if (write(pipe_fds[1], "q", 1) != 1)
		close(pipe_fds[1]);
}

static void *napper(void *arg)
{
	nap();
	return arg;
}

static void *waiter(void *arg)
{
	*(long *)arg = wait_pipe();
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_t a, b;
	long reads = 0;

	end_ns = burn_now_ns() + (uint64_t)(burn_seconds_arg(argc, argv) * 1e9);
	if (pipe(pipe_fds) < 0)
		return 1;
	if (pthread_create(&a, NULL, napper, NULL) || pthread_create(&b, NULL, waiter, &reads))
		return 1;
	pthread_setname_np(a, "napper");
	pthread_setname_np(b, "waiter");
	pace();
	pthread_join(a, NULL);
	pthread_join(b, NULL);
	printf("%ld\n", reads);
	return 0;
}
