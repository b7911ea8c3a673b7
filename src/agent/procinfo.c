/*
 * procinfo — see procinfo.h.
 *
 * Facts live in a hash table keyed by pid with an LRU list; when the table holds max_entries
 * the least recently used entry is dropped. A cached entry is re-validated against
 * /proc/PID/stat at most once per recheck interval (PROCINFO_RECHECK_MS by default): a
 * different start time means the pid was reused, so comm and container id are read again; a
 * missing /proc/PID only clears `alive`, and the last known facts stay until procinfo_forget().
 *
 * Boot time: the start time in /proc/PID/stat counts clock ticks since boot. The wall-clock boot
 * time comes from "btime" in /proc/stat (whole seconds), read once per cache and kept for the
 * whole run. We prefer it to CLOCK_REALTIME - CLOCK_BOOTTIME, which has ms precision but moves
 * with every NTP adjustment: btime gives the same process_start_time for the same process across
 * agent restarts, which matters more for a tag that identifies a process than sub-second
 * accuracy (the ticks themselves are only 10 ms). The clock difference is the fallback when
 * /proc/stat cannot be read.
 */
#define LOG_MODULE "procinfo"
#include "agent/procinfo.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"

#define PROCINFO_DEFAULT_MAX_ENTRIES 4096
/* Pid reuse within 10 s needs the whole pid space (pid_max, 4 Mi here) to wrap; re-reading
 * /proc/PID/stat every second for every sampled process cost 7.6 % of the agent's CPU. Exits
 * are handled apart: the aggregator forgets a process once its samples are drained. */
#define PROCINFO_RECHECK_MS 10000

/* /proc/PID/stat is ~300 bytes; /proc/PID/cgroup is one line on v2, a dozen on v1. */
#define PROCINFO_STAT_MAX 4096
#define PROCINFO_CGROUP_MAX 16384
#define CONTAINER_ID_LEN 64

struct pi_entry {
	struct proc_facts facts;
	uint64_t start_ticks;
	int64_t checked_ms; /* CLOCK_MONOTONIC ms of the last look at /proc */
	struct pi_entry *hnext;
	struct pi_entry *prev, *next; /* LRU: head is most recent */
};

struct procinfo {
	char *proc_root;
	size_t max_entries, count;
	size_t nbuckets;
	struct pi_entry **buckets;
	struct pi_entry *head, *tail;
	int64_t boot_ms;
	long clk_tck;
	int64_t recheck_ms;
};

static int64_t pi_mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Reads at most cap-1 bytes of a small /proc file into buf, NUL-terminated. */
static int pi_read_file(const char *path, char *buf, size_t cap)
{
	size_t len = 0;
	ssize_t n;
	int fd;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	while (len + 1 < cap) {
		n = read(fd, buf + len, cap - 1 - len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			n = -errno;
			close(fd);
			return (int)n;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	close(fd);
	buf[len] = '\0';
	return (int)len;
}

int procinfo_parse_stat(const char *text, char comm[16], uint64_t *start_ticks)
{
	const char *open = strchr(text, '(');
	const char *close = strrchr(text, ')');
	const char *p;
	size_t len;
	char *end;
	int field;

	if (!open || !close || close < open)
		return -EINVAL;
	len = (size_t)(close - open - 1);
	if (len > 15)
		len = 15;
	memcpy(comm, open + 1, len);
	comm[len] = '\0';

	/* After ") " comes field 3 (state); start time is field 22. */
	p = close + 1;
	for (field = 3; field < 22; field++) {
		while (*p == ' ')
			p++;
		if (!*p)
			return -EINVAL;
		while (*p && *p != ' ')
			p++;
	}
	while (*p == ' ')
		p++;
	if (!isdigit((unsigned char)*p))
		return -EINVAL;
	errno = 0;
	*start_ticks = strtoull(p, &end, 10);
	if (errno || (*end && *end != ' ' && *end != '\n'))
		return -EINVAL;
	return 0;
}

static int pi_is_hex64(const char *s, size_t len)
{
	if (len != CONTAINER_ID_LEN)
		return 0;
	for (size_t i = 0; i < len; i++) {
		if (!isxdigit((unsigned char)s[i]) || isupper((unsigned char)s[i]))
			return 0;
	}
	return 1;
}

/*
 * One path component: "<64hex>" (docker v1 "/docker/<id>", kubepods v1 ".../pod<uid>/<id>"),
 * or "<prefix><64hex>[.scope]" with the systemd-driver prefixes of docker, containerd (CRI),
 * cri-o and podman. "crio-conmon-<id>" is cri-o's monitor, not the container: no match.
 */
static int pi_component_id(const char *s, size_t len, char *out)
{
	static const char *const prefixes[] = {"docker-", "cri-containerd-", "crio-", "libpod-"};
	static const char scope[] = ".scope";

	if (len > sizeof(scope) - 1 &&
	    memcmp(s + len - (sizeof(scope) - 1), scope, sizeof(scope) - 1) == 0) {
		len -= sizeof(scope) - 1;
		for (size_t i = 0; i < sizeof(prefixes) / sizeof(prefixes[0]); i++) {
			size_t pl = strlen(prefixes[i]);

			if (len > pl && memcmp(s, prefixes[i], pl) == 0) {
				s += pl;
				len -= pl;
				break;
			}
		}
	}
	if (!pi_is_hex64(s, len))
		return 0;
	memcpy(out, s, CONTAINER_ID_LEN);
	out[CONTAINER_ID_LEN] = '\0';
	return 1;
}

int procinfo_parse_cgroup(const char *text, char *container_id, size_t len)
{
	const char *line = text;
	int found = 0;

	if (len < CONTAINER_ID_LEN + 1)
		return -EINVAL;
	container_id[0] = '\0';
	while (*line) {
		const char *eol = strchr(line, '\n');
		const char *path, *p;

		if (!eol)
			eol = line + strlen(line);
		/* "hierarchy-id:controllers:path"; the path may itself contain ':'. */
		path = memchr(line, ':', (size_t)(eol - line));
		if (path)
			path = memchr(path + 1, ':', (size_t)(eol - path - 1));
		if (path) {
			/* The innermost matching component wins (podman nests ".../container"). */
			for (p = path + 1; p < eol;) {
				const char *slash = memchr(p, '/', (size_t)(eol - p));
				const char *cend = slash ? slash : eol;

				if (pi_component_id(p, (size_t)(cend - p), container_id))
					found = 1;
				p = cend + 1;
			}
		}
		if (found)
			return 0;
		line = *eol ? eol + 1 : eol;
	}
	return -ENOENT;
}

int64_t procinfo_boot_time_ms(const char *proc_root)
{
	char path[512], buf[8192];
	struct timespec rt, bt;
	const char *p;

	snprintf(path, sizeof(path), "%s/stat", proc_root ? proc_root : "/proc");
	if (pi_read_file(path, buf, sizeof(buf)) > 0) {
		p = strstr(buf, "\nbtime ");
		if (p)
			return strtoll(p + 7, NULL, 10) * 1000;
	}
	log_warn("no btime in %s, using CLOCK_REALTIME - CLOCK_BOOTTIME", path);
	clock_gettime(CLOCK_REALTIME, &rt);
	clock_gettime(CLOCK_BOOTTIME, &bt);
	return ((int64_t)rt.tv_sec - bt.tv_sec) * 1000 +
	       ((int64_t)rt.tv_nsec - bt.tv_nsec) / 1000000;
}

int procinfo_open(size_t max_entries, const char *proc_root, struct procinfo **out)
{
	struct procinfo *pi = calloc(1, sizeof(*pi));

	if (!pi)
		return -ENOMEM;
	pi->max_entries = max_entries ? max_entries : PROCINFO_DEFAULT_MAX_ENTRIES;
	pi->nbuckets = 64;
	while (pi->nbuckets < pi->max_entries)
		pi->nbuckets <<= 1;
	pi->buckets = calloc(pi->nbuckets, sizeof(*pi->buckets));
	pi->proc_root = strdup(proc_root ? proc_root : "/proc");
	if (!pi->buckets || !pi->proc_root) {
		procinfo_close(pi);
		return -ENOMEM;
	}
	pi->boot_ms = procinfo_boot_time_ms(pi->proc_root);
	pi->clk_tck = sysconf(_SC_CLK_TCK);
	pi->recheck_ms = PROCINFO_RECHECK_MS;
	if (pi->clk_tck <= 0)
		pi->clk_tck = 100;
	*out = pi;
	return 0;
}

void procinfo_close(struct procinfo *pi)
{
	struct pi_entry *e, *next;

	if (!pi)
		return;
	for (e = pi->head; e; e = next) {
		next = e->next;
		free(e);
	}
	free(pi->buckets);
	free(pi->proc_root);
	free(pi);
}

static struct pi_entry **pi_slot(struct procinfo *pi, uint32_t pid)
{
	struct pi_entry **pp = &pi->buckets[(pid * 2654435761u) & (pi->nbuckets - 1)];

	while (*pp && (*pp)->facts.pid != pid)
		pp = &(*pp)->hnext;
	return pp;
}

static void pi_lru_unlink(struct procinfo *pi, struct pi_entry *e)
{
	if (e->prev)
		e->prev->next = e->next;
	else
		pi->head = e->next;
	if (e->next)
		e->next->prev = e->prev;
	else
		pi->tail = e->prev;
	e->prev = e->next = NULL;
}

static void pi_lru_push(struct procinfo *pi, struct pi_entry *e)
{
	e->next = pi->head;
	e->prev = NULL;
	if (pi->head)
		pi->head->prev = e;
	pi->head = e;
	if (!pi->tail)
		pi->tail = e;
}

static void pi_remove(struct procinfo *pi, struct pi_entry *e)
{
	struct pi_entry **pp = pi_slot(pi, e->facts.pid);

	*pp = e->hnext;
	pi_lru_unlink(pi, e);
	pi->count--;
	free(e);
}

/* Reads stat (and, for a new or reused pid, the cgroup). 0, or -errno if /proc/PID is gone. */
static int pi_refresh(struct procinfo *pi, struct pi_entry *e, int known)
{
	char path[512], buf[PROCINFO_STAT_MAX];
	char *cg;
	uint64_t ticks;
	char comm[16];
	int err;

	snprintf(path, sizeof(path), "%s/%u/stat", pi->proc_root, e->facts.pid);
	err = pi_read_file(path, buf, sizeof(buf));
	if (err < 0)
		return err;
	err = procinfo_parse_stat(buf, comm, &ticks);
	if (err) {
		log_warn("pid %u: cannot parse %s", e->facts.pid, path);
		return err;
	}
	memcpy(e->facts.comm, comm, sizeof(comm));
	if (known && ticks == e->start_ticks)
		return 0;

	e->start_ticks = ticks;
	e->facts.start_time_ms = pi->boot_ms + (int64_t)(ticks * 1000 / (uint64_t)pi->clk_tck);
	e->facts.container_id[0] = '\0';
	snprintf(path, sizeof(path), "%s/%u/cgroup", pi->proc_root, e->facts.pid);
	cg = malloc(PROCINFO_CGROUP_MAX);
	if (!cg)
		return -ENOMEM;
	if (pi_read_file(path, cg, PROCINFO_CGROUP_MAX) >= 0)
		procinfo_parse_cgroup(cg, e->facts.container_id, sizeof(e->facts.container_id));
	free(cg);
	return 0;
}

const struct proc_facts *procinfo_get(struct procinfo *pi, uint32_t pid)
{
	struct pi_entry **pp = pi_slot(pi, pid);
	struct pi_entry *e = *pp;
	int64_t now = pi_mono_ms();

	if (e) {
		pi_lru_unlink(pi, e);
		pi_lru_push(pi, e);
		if (e->facts.alive && now - e->checked_ms >= pi->recheck_ms) {
			e->checked_ms = now;
			if (pi_refresh(pi, e, 1) < 0)
				e->facts.alive = 0;
		}
		return &e->facts;
	}

	e = calloc(1, sizeof(*e));
	if (!e)
		return NULL;
	e->facts.pid = pid;
	if (pi_refresh(pi, e, 0) < 0) {
		free(e);
		return NULL;
	}
	e->facts.alive = 1;
	e->checked_ms = now;
	if (pi->count >= pi->max_entries)
		pi_remove(pi, pi->tail);
	pp = pi_slot(pi, pid);
	e->hnext = *pp;
	*pp = e;
	pi_lru_push(pi, e);
	pi->count++;
	return &e->facts;
}

void procinfo_forget(struct procinfo *pi, uint32_t pid)
{
	struct pi_entry *e = *pi_slot(pi, pid);

	if (e)
		pi_remove(pi, e);
}

void procinfo_set_recheck_ms(struct procinfo *pi, int64_t ms)
{
	pi->recheck_ms = ms > 0 ? ms : PROCINFO_RECHECK_MS;
}
