/*
 * procinfo: /proc/PID/stat parsing with hostile comms, cgroup paths of the four container
 * runtimes, boot time, and the facts of real processes (this one and a renamed child).
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "agent/procinfo.h"

#define ID64 "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define ID64B "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"

static void test_parse_stat_plain(void **state)
{
	const char *stat = "1234 (bash) S 1 1234 1234 34816 1234 4194560 1 2 3 4 5 6 7 8 20 0 1 0 "
			   "987654 1000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1\n";
	char comm[16];
	uint64_t ticks = 0;

	assert_int_equal(procinfo_parse_stat(stat, comm, &ticks), 0);
	assert_string_equal(comm, "bash");
	assert_int_equal(ticks, 987654);
}

static void test_parse_stat_hostile_comm(void **state)
{
	/* A comm of "a) (b c" must not end the comm at its first ')' or split at its spaces. */
	const char *stat = "77 (a) (b c) R 1 77 77 0 -1 4194304 5 0 0 0 1 2 0 0 20 0 1 0 "
			   "4242 1000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1\n";
	const char *stat2 = "78 ()) ) Z 1 77 77 0 -1 4194304 5 0 0 0 1 2 0 0 20 0 1 0 "
			    "99 0 0\n";
	char comm[16];
	uint64_t ticks = 0;

	assert_int_equal(procinfo_parse_stat(stat, comm, &ticks), 0);
	assert_string_equal(comm, "a) (b c");
	assert_int_equal(ticks, 4242);
	assert_int_equal(procinfo_parse_stat(stat2, comm, &ticks), 0);
	assert_string_equal(comm, ")) ");
	assert_int_equal(ticks, 99);
}

static void test_parse_stat_malformed(void **state)
{
	char comm[16];
	uint64_t ticks;

	assert_int_equal(procinfo_parse_stat("", comm, &ticks), -EINVAL);
	assert_int_equal(procinfo_parse_stat("12 (x S 1 2", comm, &ticks), -EINVAL);
	assert_int_equal(procinfo_parse_stat("12 (x) S 1 2 3", comm, &ticks), -EINVAL);
	assert_int_equal(
	    procinfo_parse_stat("1 (x) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 12ab 0\n", comm,
				&ticks),
	    -EINVAL);
}

static void expect_cgroup(const char *text, const char *id)
{
	char out[65];
	int err = procinfo_parse_cgroup(text, out, sizeof(out));

	if (id) {
		assert_int_equal(err, 0);
		assert_string_equal(out, id);
	} else {
		assert_int_equal(err, -ENOENT);
		assert_string_equal(out, "");
	}
}

static void test_cgroup_runtimes(void **state)
{
	/* docker, cgroup v1 (cgroupfs driver) and v2 (systemd driver). */
	expect_cgroup("12:pids:/docker/" ID64 "\n11:memory:/docker/" ID64 "\n0::/\n", ID64);
	expect_cgroup("0::/system.slice/docker-" ID64 ".scope\n", ID64);
	/* containerd via CRI, systemd driver and cgroupfs driver (kubepods v1). */
	expect_cgroup("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b_3c"
		      ".slice/cri-containerd-" ID64 ".scope\n",
		      ID64);
	expect_cgroup(
	    "4:cpu,cpuacct:/kubepods/besteffort/pod0f1e2d3c-aaaa-bbbb-cccc-000000000000/" ID64 "\n",
	    ID64);
	/* cri-o: the container, not its conmon monitor. */
	expect_cgroup("0::/kubepods.slice/kubepods-pod1.slice/crio-" ID64 ".scope\n", ID64);
	expect_cgroup("0::/kubepods.slice/kubepods-pod1.slice/crio-conmon-" ID64 ".scope\n", NULL);
	/* podman, root and rootless (v2 nests the payload in ".../container"). */
	expect_cgroup("0::/machine.slice/libpod-" ID64B ".scope\n", ID64B);
	expect_cgroup("0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-" ID64B
		      ".scope/container\n",
		      ID64B);
}

static void test_cgroup_not_container(void **state)
{
	char small[10];

	expect_cgroup("0::/user.slice/user-0.slice/session-1.scope\n", NULL);
	expect_cgroup("0::/\n", NULL);
	expect_cgroup("", NULL);
	/* 63 hex digits, upper-case hex and a 65-digit run are not ids. */
	expect_cgroup("0::/docker/"
		      "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde"
		      "\n",
		      NULL);
	expect_cgroup("0::/docker/"
		      "0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef"
		      "\n",
		      NULL);
	expect_cgroup("0::/docker/" ID64 "0\n", NULL);
	assert_int_equal(procinfo_parse_cgroup("0::/docker/" ID64, small, sizeof(small)), -EINVAL);
}

static void test_boot_time_and_self(void **state)
{
	struct procinfo *pi;
	const struct proc_facts *f;
	int64_t boot = procinfo_boot_time_ms("/proc");
	struct timespec now;
	int64_t now_ms;

	clock_gettime(CLOCK_REALTIME, &now);
	now_ms = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
	assert_true(boot > 1000000000000LL); /* after 2001 */
	assert_true(boot < now_ms);

	assert_int_equal(procinfo_open(8, "/proc", &pi), 0);
	f = procinfo_get(pi, (uint32_t)getpid());
	assert_non_null(f);
	assert_int_equal(f->pid, getpid());
	assert_int_equal(f->alive, 1);
	/* This process started moments ago; the bound is generous, not a timing assertion. */
	assert_true(f->start_time_ms > now_ms - 60000);
	assert_true(f->start_time_ms < now_ms + 60000);
	assert_true(strlen(f->comm) > 0);
	assert_null(procinfo_get(pi, 0x7ffffff0u)); /* beyond pid_max */
	procinfo_close(pi);
}

static void test_renamed_child(void **state)
{
	struct procinfo *pi;
	const struct proc_facts *f;
	int64_t start;
	int pfd[2];
	char c;
	pid_t child;

	assert_int_equal(pipe(pfd), 0);
	child = fork();
	assert_true(child >= 0);
	if (child == 0) {
		prctl(PR_SET_NAME, "x y)z", 0, 0, 0);
		close(pfd[0]);
		if (write(pfd[1], "r", 1) != 1)
			_exit(1);
		pause();
		_exit(0);
	}
	close(pfd[1]);
	assert_int_equal(read(pfd[0], &c, 1), 1);
	close(pfd[0]);

	assert_int_equal(procinfo_open(2, "/proc", &pi), 0);
	procinfo_set_recheck_ms(pi, 1000);
	f = procinfo_get(pi, (uint32_t)child);
	assert_non_null(f);
	assert_string_equal(f->comm, "x y)z");
	assert_int_equal(f->alive, 1);
	start = f->start_time_ms;
	assert_true(start > 0);
	/* Same answer from the cache. */
	f = procinfo_get(pi, (uint32_t)child);
	assert_string_equal(f->comm, "x y)z");
	assert_int_equal(f->start_time_ms, start);

	/* Two other pids fill the 2-entry cache; the child's entry is evicted, then re-read. */
	assert_non_null(procinfo_get(pi, (uint32_t)getpid()));
	assert_non_null(procinfo_get(pi, 1));
	f = procinfo_get(pi, (uint32_t)child);
	assert_non_null(f);
	assert_int_equal(f->start_time_ms, start);

	kill(child, SIGKILL);
	assert_int_equal(waitpid(child, NULL, 0), child);
	/* Cached facts outlive the process until forgotten. */
	f = procinfo_get(pi, (uint32_t)child);
	assert_non_null(f);
	assert_string_equal(f->comm, "x y)z");
	/* After the re-check interval the entry notices the process is gone but keeps its facts. */
	usleep(1200 * 1000);
	f = procinfo_get(pi, (uint32_t)child);
	assert_non_null(f);
	assert_int_equal(f->alive, 0);
	assert_string_equal(f->comm, "x y)z");
	assert_int_equal(f->start_time_ms, start);
	procinfo_forget(pi, (uint32_t)child);
	assert_null(procinfo_get(pi, (uint32_t)child));
	procinfo_close(pi);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_parse_stat_plain),
	    cmocka_unit_test(test_parse_stat_hostile_comm),
	    cmocka_unit_test(test_parse_stat_malformed),
	    cmocka_unit_test(test_cgroup_runtimes),
	    cmocka_unit_test(test_cgroup_not_container),
	    cmocka_unit_test(test_boot_time_and_self),
	    cmocka_unit_test(test_renamed_child),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
