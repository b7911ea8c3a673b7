/*
 * profiler — see profiler.h.
 */
#include "cli/profiler.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

int cli_profiler_open(const char *cmd, const struct sampler_opts *so, struct cli_profiler *p)
{
	struct aggregate_opts ao = {0};
	int rc;

	memset(p, 0, sizeof(*p));
	rc = sym_open(&(struct sym_opts){0}, &p->sym);
	if (rc < 0) {
		fprintf(stderr, "%s: cannot start the symbolizer: %s\n", cmd, strerror(-rc));
		goto fail;
	}
	rc = procinfo_open(0, NULL, &p->procs);
	if (rc < 0) {
		fprintf(stderr, "%s: cannot read /proc: %s\n", cmd, strerror(-rc));
		goto fail;
	}
	ao.frequency = so->frequency;
	ao.sym = p->sym;
	ao.procs = p->procs;
	rc = aggregate_new(&ao, &p->agg);
	if (rc < 0) {
		fprintf(stderr, "%s: cannot start the aggregator: %s\n", cmd, strerror(-rc));
		goto fail;
	}
	rc = sampler_open(so, &p->sampler);
	if (rc < 0) {
		fprintf(stderr, "%s: cannot start sampling (root, BPF and perf events needed): %s\n",
			cmd, strerror(-rc));
		goto fail;
	}
	return 0;
fail:
	cli_profiler_close(p);
	return rc;
}

int64_t cli_profiler_tgid(const char *cmd, int64_t pid)
{
	char path[64], line[128];
	long long tgid = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%lld/status", (long long)pid);
	f = fopen(path, "r");
	if (f) {
		while (fgets(line, sizeof(line), f))
			if (sscanf(line, "Tgid: %lld", &tgid) == 1)
				break;
		fclose(f);
	}
	if (tgid <= 0) {
		fprintf(stderr, "%s: no process %lld\n", cmd, (long long)pid);
		return -ESRCH;
	}
	if (tgid != pid)
		fprintf(stderr, "%s: %lld is a thread of process %lld: profiling the process\n", cmd,
			(long long)pid, tgid);
	return tgid;
}

void cli_profiler_close(struct cli_profiler *p)
{
	sampler_close(p->sampler);
	aggregate_free(p->agg);
	procinfo_close(p->procs);
	sym_close(p->sym);
	memset(p, 0, sizeof(*p));
}
