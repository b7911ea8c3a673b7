#!/bin/bash
# bench/run-all.sh BUILD_DIR — runs every benchmark bench/*.sh in turn with BUILD_DIR, as
# `make bench` does. A benchmark prints its numbers and ratios; it fails only when something
# does not work. Exit status: the number of benchmarks that failed (0 = all ran).
set -u
BUILD=${1:-build}
DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
failed=0
for b in "$DIR"/*.sh; do
	# Not a benchmark of one build: this script, helpers that are sourced (not executable),
	# and unwind_ab.sh, which compares two builds (bench/unwind_ab.sh OLD NEW).
	case $(basename "$b") in run-all.sh | unwind_ab.sh) continue ;; esac
	[ -x "$b" ] || continue
	echo "=== $(basename "$b" .sh)"
	if ! bash "$b" "$BUILD"; then
		echo "=== $(basename "$b" .sh): FAILED" >&2
		failed=$((failed + 1))
	fi
done
exit "$failed"
