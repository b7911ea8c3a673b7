/*
 * profiler — see profiler.h.
 */
#include "cli/profiler.h"

#include <stdio.h>
#include <string.h>

int cli_profiler_open(const char *cmd, const struct sampler_opts *so, struct cli_profiler *p)
{
	struct aggregate_opts ao = {0};

	memset(p, 0, sizeof(*p));
	if (sym_open(&(struct sym_opts){0}, &p->sym) < 0 ||
	    procinfo_open(0, NULL, &p->procs) < 0) {
		fprintf(stderr, "%s: cannot read symbols or /proc\n", cmd);
		goto fail;
	}
	ao.frequency = so->frequency;
	ao.sym = p->sym;
	ao.procs = p->procs;
	if (aggregate_new(&ao, &p->agg) < 0) {
		fprintf(stderr, "%s: out of memory\n", cmd);
		goto fail;
	}
	if (sampler_open(so, &p->sampler) < 0) {
		fprintf(stderr, "%s: cannot start sampling (root, BPF and perf events needed)\n",
			cmd);
		goto fail;
	}
	return 0;
fail:
	cli_profiler_close(p);
	return -1;
}

void cli_profiler_close(struct cli_profiler *p)
{
	sampler_close(p->sampler);
	aggregate_free(p->agg);
	procinfo_close(p->procs);
	sym_close(p->sym);
	memset(p, 0, sizeof(*p));
}
