/*
 * forkstorm — for argv[1] seconds (default 5) forks short-lived children, at most
 * MAX_CHILDREN at a time; each renames itself "storm-child", burns ~CHILD_MS ms in child_burn
 * and exits. Exercises processes that are gone before the agent drains their samples.
 */
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "burn.h"

#define MAX_CHILDREN 4
#define CHILD_MS 5

__attribute__((noinline)) uint64_t child_burn(uint64_t x)
{
	uint64_t end = burn_now_ns() + CHILD_MS * 1000000ull;

	while (burn_now_ns() < end)
		x = burn_iters(x, 10000);
	return x;
}

int main(int argc, char **argv)
{
	uint64_t end = burn_now_ns() + (uint64_t)(burn_seconds_arg(argc, argv) * 1e9);
	long spawned = 0;
	int running = 0;

	while (burn_now_ns() < end) {
		pid_t pid;

		if (running == MAX_CHILDREN) {
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
			prctl(PR_SET_NAME, "storm-child");
			_exit((int)(child_burn((uint64_t)getpid()) & 1));
		}
		running++;
		spawned++;
	}
	while (running > 0 && wait(NULL) > 0)
		running--;
	printf("%ld\n", spawned);
	return 0;
}
