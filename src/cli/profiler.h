/*
 * profiler — the local profiler of `ember record` and `ember top`: symbolizer, process facts,
 * aggregator and sampler, opened together from the sampler's options and closed together.
 */
#ifndef EMBER_CLI_PROFILER_H
#define EMBER_CLI_PROFILER_H

#include "agent/aggregate.h"
#include "agent/procinfo.h"
#include "agent/sampler.h"
#include "agent/symbolize.h"

struct cli_profiler {
	struct symbolizer *sym;
	struct procinfo *procs;
	struct aggregate *agg;
	struct sampler *sampler;
};

/*
 * Opens the four (the aggregator at so->frequency). 0, or the failing call's negative errno with
 * "CMD: ..." printed and whatever was opened closed again.
 */
int cli_profiler_open(const char *cmd, const struct sampler_opts *so, struct cli_profiler *p);
/* Closes what is open; p may be zeroed or half open. */
void cli_profiler_close(struct cli_profiler *p);

/*
 * The process -p PID names: PID itself, or the process a thread id belongs to (the sampler
 * follows processes), said on stderr as "CMD: ...". -ESRCH, said, when there is no such task.
 */
int64_t cli_profiler_tgid(const char *cmd, int64_t pid);

#endif
