/*
 * offcpu — four threads that spend nearly all of argv[1] seconds (default 5) of wall time
 * blocked, each in its own place, for off-CPU profiling tests:
 *   main              pace() → nanosleep 10 ms, then a byte into a pipe, until the time is up
 *   "napper" thread   nap() → nanosleep 3 ms, over and over
 *   "waiter" thread   wait_pipe() → read() of that pipe, one byte per pace of main
 *   "vforker" thread  spawn() → vfork() of a child that runs 1 ms and exits (the parent waits
 *                     uninterruptibly, "D"), then nanosleep 4 ms ("S"); the child never blocks
 * Each should show about argv[1] seconds of blocked time under its function, less on a loaded
 * host, where a woken thread also waits for a CPU, which is not blocked time. So each thread
 * measures its own: elapsed time minus the CPU time and run-queue wait the kernel reports in
 * /proc/thread-self/schedstat, printed at the end as
 * "blocked_ms main=… napper=… waiter=… vforker=…".
 */
#define _GNU_SOURCE /* pthread_setname_np */
#include <pthread.h>
#include <stdio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "burn.h"

static int pipe_fds[2];
static uint64_t end_ns;

/* The calling thread's running + run-queue-waiting time so far, in ns (0 if unreadable). */
static uint64_t busy_ns(void)
{
	unsigned long long run = 0, wait = 0;
	FILE *f = fopen("/proc/thread-self/schedstat", "r");

	if (!f)
		return 0;
	if (fscanf(f, "%llu %llu", &run, &wait) != 2)
		run = wait = 0;
	fclose(f);
	return run + wait;
}

/* What the calling thread spent blocked since t0 (when its busy time was busy0), in ms. */
static double blocked_ms(uint64_t t0, uint64_t busy0)
{
	return (double)(burn_now_ns() - t0 - (busy_ns() - busy0)) / 1e6;
}

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

__attribute__((noinline)) void spawn(void)
{
	while (burn_now_ns() < end_ns) {
		pid_t child = vfork();

		if (child == 0) {
			uint64_t until = burn_now_ns() + 1000000;

			while (burn_now_ns() < until)
				;
			_exit(0);
		}
		if (child > 0)
			waitpid(child, NULL, 0);
		sleep_ns(4000000);
	}
}

static void *vforker(void *arg)
{
	uint64_t t0 = burn_now_ns(), b0 = busy_ns();

	spawn();
	*(double *)arg = blocked_ms(t0, b0);
	return NULL;
}

static void *napper(void *arg)
{
	uint64_t t0 = burn_now_ns(), b0 = busy_ns();

	nap();
	*(double *)arg = blocked_ms(t0, b0);
	return NULL;
}

static void *waiter(void *arg)
{
	uint64_t t0 = burn_now_ns(), b0 = busy_ns();

	wait_pipe();
	*(double *)arg = blocked_ms(t0, b0);
	return NULL;
}

int main(int argc, char **argv)
{
	double nap_ms = 0, wait_ms = 0, vfork_ms = 0, pace_ms;
	uint64_t t0, b0;
	pthread_t a, b, v;

	end_ns = burn_now_ns() + (uint64_t)(burn_seconds_arg(argc, argv) * 1e9);
	if (pipe(pipe_fds) < 0)
		return 1;
	if (pthread_create(&a, NULL, napper, &nap_ms) || pthread_create(&b, NULL, waiter, &wait_ms) ||
	    pthread_create(&v, NULL, vforker, &vfork_ms))
		return 1;
	pthread_setname_np(a, "napper");
	pthread_setname_np(b, "waiter");
	pthread_setname_np(v, "vforker");
	t0 = burn_now_ns();
	b0 = busy_ns();
	pace();
	pace_ms = blocked_ms(t0, b0);
	pthread_join(a, NULL);
	pthread_join(b, NULL);
	pthread_join(v, NULL);
	printf("blocked_ms main=%.0f napper=%.0f waiter=%.0f vforker=%.0f\n", pace_ms, nap_ms,
	       wait_ms, vfork_ms);
	return 0;
}
