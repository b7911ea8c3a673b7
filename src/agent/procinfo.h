/*
 * procinfo — facts about a process from /proc, cached per (pid, start time), bounded.
 *
 * comm (the process's kernel comm = DeepFlow's app_service), start time in ms since epoch from
 * field 22 of /proc/PID/stat (parsed from the last ')' so comms with spaces or parentheses work),
 * container id from /proc/PID/cgroup (docker, containerd, cri-o, podman path patterns), and
 * whether a tid is the main thread. A process that exited keeps its cached facts until
 * procinfo_forget().
 *
 * Threading: one thread uses a procinfo cache.
 */
#ifndef EMBER_AGENT_PROCINFO_H
#define EMBER_AGENT_PROCINFO_H

#include <stddef.h>
#include <stdint.h>

struct proc_facts {
	uint32_t pid;
	char comm[16];
	int64_t start_time_ms;
	char container_id[65];
	int alive; /* 0 once /proc/PID disappeared (facts are the last known) */
};

struct procinfo;

int procinfo_open(size_t max_entries, const char *proc_root, struct procinfo **out);
void procinfo_close(struct procinfo *pi);
/* Facts for pid (reads /proc on first use or when the start time changed). Returns NULL if the
 * process never could be read. The pointer is valid until the next call. */
const struct proc_facts *procinfo_get(struct procinfo *pi, uint32_t pid);
void procinfo_forget(struct procinfo *pi, uint32_t pid);
/* How often a cached pid is re-validated against /proc (default 10 s; tests use less). */
void procinfo_set_recheck_ms(struct procinfo *pi, int64_t ms);

/* Parsers, exposed for tests. */
int procinfo_parse_stat(const char *text, char comm[16], uint64_t *start_ticks);
int procinfo_parse_cgroup(const char *text, char *container_id, size_t len);
int64_t procinfo_boot_time_ms(const char *proc_root);

#endif
