/*
 * ember agent / run / record — wired up once the agent modules land (sampler, aggregate).
 */
#include <stdio.h>

#include "cli/cli.h"

int cli_agent(int argc, char **argv)
{
	fprintf(stderr, "ember agent: not available in this build yet\n");
	return 1;
}

int cli_run(int argc, char **argv)
{
	fprintf(stderr, "ember run: not available in this build yet\n");
	return 1;
}

int cli_record(int argc, char **argv)
{
	fprintf(stderr, "ember record: not available in this build yet\n");
	return 1;
}
