/*
 * syscalls — spends argv[1] seconds (default 5) mostly in the kernel: do_syscalls writes to
 * /dev/null and calls getppid in a loop, so samples carry kernel stacks under a user stack
 * main → do_syscalls.
 */
#include <fcntl.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "burn.h"

__attribute__((noinline)) long do_syscalls(double seconds)
{
	static const char buf[4096];
	uint64_t end = burn_now_ns() + (uint64_t)(seconds * 1e9);
	long n = 0;
	int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);

	if (fd < 0) {
		perror("/dev/null");
		return -1;
	}
	while (burn_now_ns() < end) {
		for (int i = 0; i < 100; i++) {
			n += write(fd, buf, sizeof(buf)) > 0;
			n += syscall(SYS_getppid) > 0;
		}
	}
	close(fd);
	return n;
}

int main(int argc, char **argv)
{
	long n = do_syscalls(burn_seconds_arg(argc, argv));

	printf("%ld\n", n);
	return n < 0;
}
