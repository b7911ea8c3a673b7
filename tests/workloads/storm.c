/*
 * storm — short-lived processes in bulk, next to which a profiler must keep working: processes
 * gone before the agent drains their samples (test_agent), exec and fork storms under one
 * record (test_unwind_adversarial).
 *   storm fork N   forks N children in all (at most MAX_RUNNING at a time); each renames
 *                  itself "short-child", burns ~CHILD_MS ms in short_burn and exits.
 *   storm exec N   forks N children in all; each exec's this program HOPS times in a row
 *                  (storm hop K → storm hop K-1 ...), and the last image burns ~CHILD_MS ms in
 *                  hop_burn and exits: every child is an exec storm of its own.
 * Prints how many children it started.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "burn.h"

#define MAX_RUNNING 4
#define CHILD_MS 3
#define HOPS 3
#define MAX_CHILDREN 100000

/* Inlined, so short_burn and hop_burn are the leaf frames (no tail call hides them). */
static inline __attribute__((always_inline)) uint64_t burn_ms(uint64_t x, int ms)
{
	uint64_t end = burn_now_ns() + (uint64_t)ms * 1000000ull;

	while (burn_now_ns() < end)
		x = burn_iters(x, 10000);
	return x;
}

__attribute__((noinline)) uint64_t short_burn(uint64_t x)
{
	return burn_ms(x, CHILD_MS);
}

__attribute__((noinline)) uint64_t hop_burn(uint64_t x)
{
	return burn_ms(x, CHILD_MS);
}

/* Exec's this program's file by its own path, so every image keeps the comm "storm". */
static int hop(int k)
{
	char self[PATH_MAX], arg[16];
	ssize_t n;

	if (k <= 0)
		return (int)(hop_burn((uint64_t)getpid()) & 1);
	n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n < 0) {
		perror("/proc/self/exe");
		return 1;
	}
	self[n] = '\0';
	snprintf(arg, sizeof(arg), "%d", k - 1);
	execl(self, self, "hop", arg, (char *)NULL);
	perror("exec");
	return 1;
}

int main(int argc, char **argv)
{
	long n = argc > 2 ? atol(argv[2]) : 0, started = 0;
	int exec_mode, running = 0;

	if (argc > 2 && strcmp(argv[1], "hop") == 0)
		return hop(atoi(argv[2]));
	if (argc < 3 || (strcmp(argv[1], "fork") && strcmp(argv[1], "exec")) || n <= 0 ||
	    n > MAX_CHILDREN) {
		fprintf(stderr, "usage: storm fork|exec N (1..%d)\n", MAX_CHILDREN);
		return 2;
	}
	exec_mode = strcmp(argv[1], "exec") == 0;
	while (started < n) {
		pid_t pid;

		if (running == MAX_RUNNING) {
			if (wait(NULL) > 0)
				running--;
			continue;
		}
		pid = fork();
		if (pid < 0) {
			perror("fork");
			break;
		}
		if (pid == 0) {
			if (exec_mode)
				_exit(hop(HOPS));
			prctl(PR_SET_NAME, "short-child");
			_exit((int)(short_burn((uint64_t)getpid()) & 1));
		}
		running++;
		started++;
	}
	while (running > 0 && wait(NULL) > 0)
		running--;
	printf("%ld\n", started);
	return 0;
}
