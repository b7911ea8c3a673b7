#!/usr/bin/env bash
# bench/unwind — the cost of DWARF unwinding in BPF, per workload, beside frame pointers and
# `perf record --call-graph dwarf` on the same workload in the same run.
#
#   bench/unwind.sh BUILD_DIR        (root; needs BUILD_DIR/bench/unwind_run; HZ=99 by default)
#
# Per workload: samples, user frames per sample, complete share; BPF time per run, per sample
# and per frame (bpf_stats, the program's own counters); the floor — an empty perf_event program
# on its own cpu-clock event of the same command in the same run (the kernel's dispatch and
# bpf_stats' clock reads) — and ember's time per sample minus that floor, next to the raw time;
# tables (objects, MiB, build ms, cold: EMBER_UNWIND_CACHE="" so every table is built); the CPU
# of the sampling process (table builds, events, drains); and perf's CPU and bytes written for
# the same command.
#
# AB=MASK: then PAIRS (default 2) same-run A/B pairs per workload of the BPF caches in MASK
# (1 counts cache, 2 rule cache, 3 both; unwind_run -A and -B: a twin sampler without them on
# the same command): their effect on BPF µs per sample is the mean of (with − without) over both
# orders, which cancels the bias of running second.
set -u
B=${1:?usage: bench/unwind.sh BUILD_DIR}
HZ=${HZ:-99}
RUN=$(cd "$B" && pwd)/bench/unwind_run
[ -x "$RUN" ] || { echo "build $RUN first (make BUILD=$B $RUN)"; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "needs root"; exit 1; }
T=$(mktemp -d /tmp/ember-bench-unwind.XXXXXX)
trap 'rm -rf "$T"' EXIT

. "$(dirname "${BASH_SOURCE[0]}")/unwind_workloads.sh"
val() { sed -n "s/.*[ :]$1=\([^ ]*\).*/\1/p" "$2"; }

echo "# bench/unwind at $HZ Hz, $(nproc) CPUs, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '| workload | unwind | samples | frames/sample | complete | BPF ns/run | BPF µs/sample | floor ns/run | BPF − floor µs/sample | BPF ns/frame | tables | table MiB | build ms | sampler CPU ms | perf dwarf CPU ms | perf.data MiB |\n'
printf '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n'
for w in $ORDER; do
	for u in dwarf fp; do
		(cd "$T" && EMBER_UNWIND_CACHE= eval "\"$RUN\" -F $HZ -u $u -- ${CMD[$w]}" >/dev/null 2>"$T/$w.$u")
		grep -q 'unwind_run: samples=' "$T/$w.$u" || { echo "| $w | $u | failed |"; continue; }
		pc=- pb=-
		if [ $u = dwarf ] && command -v perf >/dev/null; then
			(cd "$T" && eval "/usr/bin/time -f '%U %S' -o \"$T/$w.time\" perf record -q -F $HZ --call-graph dwarf -o \"$T/$w.data\" -- ${CMD[$w]}" >/dev/null 2>&1)
			pc=$(awk '{printf "%.0f", ($1 + $2) * 1000}' "$T/$w.time" 2>/dev/null)
			pb=$(stat -c %s "$T/$w.data" 2>/dev/null | awk '{printf "%.1f", $1 / 1048576}')
			rm -f "$T/$w.data"
		fi
		f=$T/$w.$u
		printf '| %s | %s | %s | %s | %s %% | %s | %.1f | %s | %.1f | %s | %s | %s | %s | %s | %s | %s |\n' \
			"$w" "$u" "$(val samples "$f")" "$(val frames_per_sample "$f")" \
			"$(val complete_pct "$f")" "$(val bpf_ns_per_run "$f")" \
			"$(val bpf_ns_per_sample "$f" | awk '{print $1 / 1000}')" "$(val floor_ns_per_run "$f")" \
			"$(val net_ns_per_sample "$f" | awk '{print $1 / 1000}')" "$(val bpf_ns_per_frame "$f")" \
			"$(val objects "$f")" "$(val table_mib "$f")" "$(val build_ms "$f")" \
			"$(val agent_cpu_ms "$f")" "$pc" "$pb"
	done
done

[ "${AB:-0}" -gt 0 ] || exit 0
echo
echo "# caches $AB A/B at $HZ Hz, ${PAIRS:-2} pair(s) per workload, load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '| workload | with µs/sample | without µs/sample | effect µs/sample (per pair) |\n'
printf '|---|---|---|---|\n'
for w in $ORDER; do
	on=() off=() eff=()
	for i in $(seq "${PAIRS:-2}"); do
		for o in A B; do
			(cd "$T" && eval "\"$RUN\" -F $HZ -$o $AB -- ${CMD[$w]}" >/dev/null 2>"$T/$w.ab")
			a=$(val bpf_ns_per_sample "$T/$w.ab") b=$(val twin_ns_per_sample "$T/$w.ab")
			[ -n "$a" ] && [ -n "$b" ] || continue
			on+=("$a") off+=("$b")
		done
		n=${#on[@]}
		[ "$n" -ge 2 ] && eff+=("$(awk -v a1="${on[n - 2]}" -v b1="${off[n - 2]}" -v a2="${on[n - 1]}" \
			-v b2="${off[n - 1]}" 'BEGIN {printf "%.1f", (a1 - b1 + a2 - b2) / 2000}')")
	done
	printf '| %s | %s | %s | %s |\n' "$w" \
		"$(printf '%s\n' "${on[@]}" | awk '{s += $1} END {if (NR) printf "%.1f", s / NR / 1000}')" \
		"$(printf '%s\n' "${off[@]}" | awk '{s += $1} END {if (NR) printf "%.1f", s / NR / 1000}')" \
		"${eff[*]}"
done
