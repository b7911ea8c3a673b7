/*
 * ember diff — what changed between two profiles: folded stacks of a baseline and of a new run
 * (`ember record`, `ember query --format folded`, flamegraph.pl's input) compared stack by stack.
 *
 * Without -o it prints the leaf frames whose share changed most, as `perf diff` does; -o x.svg
 * writes a differential flame graph (widths the new profile, red grew, blue shrank); -o
 * x.folded (or --format folded) writes "stack BEFORE AFTER" lines, the input of flamegraph.pl's
 * differential mode. The baseline is scaled to the new profile's total unless --raw: two runs
 * of different lengths compare by shares.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "common/diff.h"
#include "common/export.h"

#define DIFF_MAX_INPUT (1ull << 30)
#define DIFF_TOP_DEFAULT 20
#define DIFF_TOP_MAX 1000000

enum diff_out { DIFF_TABLE, DIFF_FOLDED, DIFF_SVG };

static void diff_usage(FILE *f)
{
	fprintf(f,
		"usage: ember diff [-o FILE] [--format table|folded|svg] [--raw] [--top N]\n"
		"                  [--unit samples|microseconds|bytes] [--title TEXT] BEFORE AFTER\n"
		"Compares two folded profiles (ember record's output, flamegraph.pl's input; '-' is\n"
		"stdin). By default prints the --top N (20) leaf frames whose share changed most;\n"
		"-o x.svg writes a differential flame graph (the new profile, red grew, blue shrank),\n"
		"-o x.folded 'stack BEFORE AFTER' lines. The table compares shares of each total;\n"
		"the graph and the lines scale BEFORE to AFTER's total so that runs of different\n"
		"lengths compare, unless --raw (the values as recorded).\n");
}

static int diff_out_from_name(const char *name, enum diff_out *out)
{
	static const char *const names[] = {"table", "folded", "svg"};

	for (int i = 0; i < 3; i++) {
		if (strcmp(name, names[i]) == 0) {
			*out = (enum diff_out)i;
			return 0;
		}
	}
	return -EINVAL;
}

static enum diff_out diff_out_from_path(const char *path)
{
	size_t n = strlen(path);

	if (n > 4 && strcmp(path + n - 4, ".svg") == 0)
		return DIFF_SVG;
	if (n > 7 && strcmp(path + n - 7, ".folded") == 0)
		return DIFF_FOLDED;
	return DIFF_TABLE;
}

int cli_diff(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"output", required_argument, NULL, 'o'}, {"format", required_argument, NULL, 'f'},
		{"raw", no_argument, NULL, 'r'},	  {"top", required_argument, NULL, 't'},
		{"unit", required_argument, NULL, 'u'},	  {"title", required_argument, NULL, 'T'},
		{"help", no_argument, NULL, 'h'},	  {NULL, 0, NULL, 0},
	};
	const char *output = NULL, *unit = "samples", *title = NULL;
	char *buf[2] = {NULL, NULL}, deftitle[512];
	size_t len[2], bad[2];
	struct diff_set d = {0};
	enum diff_out fmt = DIFF_TABLE;
	int opt, fmt_given = 0, raw = 0, ret = 1, rc;
	int64_t top = DIFF_TOP_DEFAULT;
	FILE *out = stdout;

	while ((opt = getopt_long(argc, argv, "o:h", longopts, NULL)) != -1) {
		switch (opt) {
		case 'o': output = optarg; break;
		case 'f':
			if (diff_out_from_name(optarg, &fmt) < 0) {
				fprintf(stderr, "ember diff: --format wants table, folded or svg\n");
				return 2;
			}
			fmt_given = 1;
			break;
		case 'r': raw = 1; break;
		case 't':
			if (cli_parse_int(optarg, 1, DIFF_TOP_MAX, &top) < 0) {
				fprintf(stderr, "ember diff: --top wants 1..%d\n", DIFF_TOP_MAX);
				return 2;
			}
			break;
		case 'u':
			if (strcmp(optarg, "samples") && strcmp(optarg, "microseconds") &&
			    strcmp(optarg, "bytes")) {
				fprintf(stderr,
					"ember diff: --unit wants samples, microseconds or bytes\n");
				return 2;
			}
			unit = optarg;
			break;
		case 'T': title = optarg; break;
		case 'h': diff_usage(stdout); return 0;
		default: diff_usage(stderr); return 2;
		}
	}
	if (argc - optind != 2) {
		fprintf(stderr, "ember diff: give two folded files, BEFORE and AFTER\n");
		diff_usage(stderr);
		return 2;
	}
	if (strcmp(argv[optind], "-") == 0 && strcmp(argv[optind + 1], "-") == 0) {
		fprintf(stderr, "ember diff: only one of BEFORE and AFTER can be '-' (stdin)\n");
		return 2;
	}
	if (!fmt_given && output)
		fmt = diff_out_from_path(output);
	for (int i = 0; i < 2; i++) {
		rc = cli_read_file("ember diff", argv[optind + i], DIFF_MAX_INPUT, &buf[i], &len[i]);
		if (rc < 0)
			goto out;
	}
	rc = diff_merge(buf[0], len[0], buf[1], len[1], &d, &bad[0], &bad[1]);
	if (rc == -E2BIG) {
		fprintf(stderr, "ember diff: more than %u lines in the two files (DIFF_MAX_STACKS)\n",
			DIFF_MAX_STACKS);
		goto out;
	}
	if (rc < 0) {
		fprintf(stderr, "ember diff: %s\n", strerror(-rc));
		goto out;
	}
	for (int i = 0; i < 2; i++)
		if (bad[i])
			fprintf(stderr, "ember diff: %s: %zu line(s) are not 'stack value', skipped\n",
				argv[optind + i], bad[i]);
	if (d.total_before == 0 || d.total_after == 0) {
		fprintf(stderr, "ember diff: %s has no stacks with a value\n",
			argv[optind + (d.total_before == 0 ? 0 : 1)]);
		goto out;
	}
	if (diff_scale(&d, raw) < 0) {
		fprintf(stderr, "ember diff: out of memory\n");
		goto out;
	}
	fprintf(stderr, "ember diff: %zu stacks; before %" PRId64 " %s, after %" PRId64 " %s%s\n",
		d.n, d.total_before, unit, d.total_after, unit,
		raw || fmt == DIFF_TABLE ? "" : "; the baseline drawn scaled to after's total");
	if (output && !(out = fopen(output, "w"))) {
		fprintf(stderr, "ember diff: cannot write %s: %s\n", output, strerror(errno));
		out = stdout;
		goto out;
	}
	if (fmt == DIFF_SVG) {
		struct export_opts eo = {.title = title, .unit = unit, .before = d.scaled};

		if (!title) {
			snprintf(deftitle, sizeof(deftitle), "%s → %s (%sred grew, blue shrank)",
				 argv[optind], argv[optind + 1],
				 raw ? "" : "baseline scaled to this total; ");
			eo.title = deftitle;
		}
		rc = export_write(EXPORT_SVG, &eo, d.stacks, d.lens, d.after, d.n, out);
	} else if (fmt == DIFF_FOLDED) {
		rc = diff_write_folded(&d, out);
	} else {
		rc = diff_write_table(&d, (size_t)top, unit, out);
	}
	if (rc < 0) {
		fprintf(stderr, "ember diff: writing %s failed: %s\n", output ? output : "stdout",
			strerror(-rc));
		goto out;
	}
	ret = 0;
out:
	if (out != stdout && fclose(out) != 0 && ret == 0) {
		fprintf(stderr, "ember diff: writing %s failed: %s\n", output, strerror(errno));
		ret = 1;
	}
	diff_free(&d);
	free(buf[0]);
	free(buf[1]);
	return ret;
}
