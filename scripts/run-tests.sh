#!/usr/bin/env bash
# Runs every test: the unit test binaries (normal and ASan+UBSan builds) and every end-to-end
# script in tests/e2e/. Each test binary or script is one test; its output goes to
# $OUT/<name>.log and is shown when it fails. Ends with "N passed, N failed".
# Usage: scripts/run-tests.sh BUILD_DIR [ASAN_BUILD_DIR]   (env ONLY=regex selects tests)
set -u
build=${1:-build}
asan=${2:-}
top=$(cd "$(dirname "$0")/.." && pwd)
export EMBER_TOP=$top EMBER_BIN=$top/$build/ember EMBER_BUILD=$top/$build
OUT=${OUT:-$top/$build/test-logs}
mkdir -p "$OUT"
pass=0 fail=0 skip=0 failed=()

run_one() { # name, command...
	local name=$1; shift
	if [ -n "${ONLY:-}" ] && ! [[ $name =~ $ONLY ]]; then return; fi
	local log=$OUT/${name//\//_}.log start=$SECONDS rc
	"$@" >"$log" 2>&1
	rc=$?
	if [ $rc -eq 0 ]; then
		pass=$((pass + 1)); echo "PASS $name ($((SECONDS - start))s)"
	elif [ $rc -eq 77 ]; then
		skip=$((skip + 1)); echo "SKIP $name: $(tail -n 1 "$log")"
	else
		fail=$((fail + 1)); failed+=("$name"); echo "FAIL $name (exit $rc), last lines of $log:"
		tail -n 40 "$log" | sed 's/^/    /'
	fi
}

for t in "$top/$build"/tests/test_*; do
	[ -x "$t" ] && run_one "unit/$(basename "$t")" "$t"
done
if [ -n "$asan" ]; then
	export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
	for t in "$top/$asan"/tests/test_*; do
		[ -x "$t" ] && run_one "asan/$(basename "$t")" "$t"
	done
	unset ASAN_OPTIONS UBSAN_OPTIONS
fi
for t in "$top"/tests/e2e/test_*.sh; do
	[ -f "$t" ] && run_one "e2e/$(basename "$t" .sh)" bash "$t"
done

[ ${#failed[@]} -gt 0 ] && echo "failed: ${failed[*]}"
echo "$pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ]
