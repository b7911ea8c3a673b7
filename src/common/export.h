/*
 * export — folded stacks to the formats other tools read (docs/exports.md):
 *
 *	folded      "root;...;leaf VALUE\n" per stack, as given (flamegraph.pl, inferno, speedscope)
 *	svg         a self-contained interactive flame graph (click to zoom, search), any browser
 *	speedscope  speedscope's JSON file format, one "sampled" profile (speedscope.app)
 *	pprof       gzip-compressed perftools.profiles.Profile protobuf (go tool pprof, Pyroscope,
 *	            Parca, Grafana)
 *
 * Input: n stacks; stacks[i][0..lens[i]) is one folded stack (frames root first, joined by ';',
 * not NUL-terminated, may hold any other byte) and values[i] >= 0 its value in o->unit.
 * Identical stacks may repeat: svg merges them, speedscope and pprof write one sample each,
 * folded writes them as given. Frames are split as in the flame tree: "a;;b" has an empty middle
 * frame. The arrays are only read and need to live only during the call.
 *
 * Bounds: EXPORT_MAX_DEPTH frames per stack, and for speedscope and pprof at most o->max_frames
 * (0: EXPORT_DEFAULT_MAX_FRAMES) distinct frame names; beyond either the call fails with -E2BIG.
 * Memory is about the size of the output for pprof, one index per stack for svg, and the frame
 * table otherwise. The SVG (EXPORT_SVG_WIDTH px wide, siblings in byte order of their names, as
 * flamegraph.pl) leaves out frames narrower than EXPORT_SVG_MIN_PX and says how many in a note.
 *
 * Errors: 0, -EINVAL (negative value, unknown unit, or a stack folded text cannot carry), -E2BIG,
 * -ENOMEM, -EIO (writing to out failed, or zlib). Output may be partial after an error.
 * Stateless and thread-safe; out is used by one call at a time.
 */
#ifndef EMBER_COMMON_EXPORT_H
#define EMBER_COMMON_EXPORT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define EXPORT_DEFAULT_MAX_FRAMES (1u << 20)
#define EXPORT_MAX_DEPTH 4096
#define EXPORT_SVG_WIDTH 1200
#define EXPORT_SVG_MIN_PX 0.1

enum export_format { EXPORT_FOLDED, EXPORT_SVG, EXPORT_SPEEDSCOPE, EXPORT_PPROF };

/* "folded", "svg", "speedscope", "pprof"; -EINVAL for anything else. */
int export_parse_format(const char *name, enum export_format *out);
/* The inverse: the name above, or "?" for an unknown value. */
const char *export_format_name(enum export_format fmt);

struct export_opts {
	const char *title; /* svg title, speedscope profile name, a pprof comment; NULL: "ember" */
	/*
	 * What values count: "samples" (NULL means this), "microseconds" or "bytes".
	 * pprof sample types: samples → samples/count (plus cpu/microseconds = count * period when
	 * period > 0); microseconds → cpu/microseconds; bytes → space/bytes.
	 * speedscope units: none, microseconds, bytes.
	 */
	const char *unit;
	/* pprof's sample type of a microseconds or bytes profile, what was measured ("off-cpu");
	 * NULL: "cpu" for microseconds, "space" for bytes. */
	const char *sample_type;
	int64_t period;	   /* µs per sample (10101 at 99 Hz); 0: unknown. pprof only */
	/*
	 * SVG only, a differential flame graph: before[i] >= 0 is stack i's value in a baseline
	 * (scaled to the same total by the caller when shares are to be compared: fractions
	 * kept). Widths stay the values; each frame is coloured by its change (value - before):
	 * red grew, blue shrank, the deeper the more, relative to the largest change of any frame;
	 * near white unchanged. Its title gives both values. Stacks only in the baseline have
	 * value 0 and no width; the note under the graph counts their frames. NULL: a plain
	 * flame graph.
	 */
	const double *before;
	size_t max_frames; /* speedscope, pprof; 0: EXPORT_DEFAULT_MAX_FRAMES */
};

/* Writes all stacks to out in format fmt. o may be NULL (all defaults). See the top comment. */
int export_write(enum export_format fmt, const struct export_opts *o, const char *const *stacks,
		 const size_t *lens, const int64_t *values, size_t n, FILE *out);

/*
 * Same from folded text buf[0..len) (common/folded.h syntax), what `ember record` and
 * `ember query --format folded` produce. Bad lines are skipped and counted in *n_bad (may be
 * NULL); the stacks point into buf, which is not copied.
 */
int export_write_folded_text(enum export_format fmt, const struct export_opts *o, const char *buf,
			     size_t len, FILE *out, size_t *n_bad);

#endif
