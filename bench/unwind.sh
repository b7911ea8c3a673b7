#!/usr/bin/env bash
# bench/unwind — the cost of DWARF unwinding in BPF, per workload, beside frame pointers,
# bpftrace and `perf record --call-graph dwarf` on the same workload in the same run.
#
#   bench/unwind.sh BUILD_DIR        (root; needs BUILD_DIR/bench/unwind_run; HZ=99 by default)
#
# Per workload: samples, user frames per sample, complete share; BPF time per run, per sample
# and per frame (bpf_stats, the program's own counters); two floors from a run of their own of
# the same command (unwind_run -f): an empty perf_event program (the kernel's dispatch and
# bpf_stats' clock reads) and one that reads a single word of the user stack (what any program
# that walks user stacks pays at least), and ember's time per sample minus the empty floor;
# tables (objects, MiB, build ms, cold: EMBER_UNWIND_CACHE="" so every table is built); the CPU
# of the sampling process (table builds, events, drains); perf's CPU and bytes written for the
# same command; and the peer — bpftrace's `profile:hz:HZ /pid == PID/ { @[kstack, ustack] =
# count(); }` on the same command (frame-pointer user stacks: the kernel's walker, one or two
# frames for these programs), its BPF time per sample of the process (run time over the samples
# in its map; its runs for other processes' samples included, as bpftrace pays them) and
# ember's DWARF time per sample over it.
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
declare -A BT DW

. "$(dirname "${BASH_SOURCE[0]}")/unwind_workloads.sh"
val() { sed -n "s/.*[ :]$1=\([^ ]*\).*/\1/p" "$2"; }

# bpftrace's profile programs need bpf_stats on for the run (unwind_run holds its own).
OLD_BPF_STATS=$(sysctl -n kernel.bpf_stats_enabled)
trap 'sysctl -q -w kernel.bpf_stats_enabled="$OLD_BPF_STATS"; rm -rf "$T"' EXIT
sysctl -q -w kernel.bpf_stats_enabled=1

# bpftrace on the workload w, started stopped so that no sample is missed: prints its BPF ns per
# sample of the workload (run time of its perf_event program, read from its fdinfo before it
# exits, over the samples counted in its map).
bpftrace_ns_per_sample() {
	command -v bpftrace >/dev/null || return 0
	printf 'kill -STOP $$\nexec %s >/dev/null\n' "${CMD[$w]}" > "$T/bt.sh"
	(cd "$T" && exec sh "$T/bt.sh") & local p=$! b f ns=0
	until grep -q '^[0-9]* ([^)]*) T' "/proc/$p/stat" 2>/dev/null; do sleep 0.05; done
	bpftrace -e "profile:hz:$HZ /pid == $p/ { @[kstack, ustack] = count(); }" >"$T/bt.out" 2>&1 &
	b=$!
	# Attached when its perf_event program has run once (it fires on every CPU).
	until grep -qs '^run_cnt:[[:space:]]*[1-9]' $(grep -ls '^prog_type:[[:space:]]*7$' \
		/proc/$b/fdinfo/* 2>/dev/null) /dev/null || ! kill -0 $b 2>/dev/null; do sleep 0.05; done
	kill -CONT $p
	wait $p
	for f in $(grep -ls '^prog_type:[[:space:]]*7$' /proc/$b/fdinfo/* 2>/dev/null); do
		ns=$(awk '/^run_time_ns:/ {print $2}' "$f")
	done
	kill -INT $b
	wait $b
	awk -v ns="$ns" '/\]: [0-9]+$/ {n += $NF} END {if (n) printf "%.0f", ns / n}' "$T/bt.out"
}

echo "# bench/unwind at $HZ Hz, $(nproc) CPUs, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '| workload | unwind | samples | frames/sample | complete | BPF ns/run | BPF µs/sample | floor ns/run | user floor ns/run | BPF − floor µs/sample | BPF ns/frame | tables | table MiB | build ms | sampler CPU ms | perf dwarf CPU ms | perf.data MiB |\n'
printf '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n'
for w in $ORDER; do
	(cd "$T" && eval "\"$RUN\" -f -F $HZ -- ${CMD[$w]}" >/dev/null 2>"$T/$w.floor")
	fl=$(val floor_ns_per_run "$T/$w.floor") ufl=$(val user_floor_ns_per_run "$T/$w.floor")
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
		printf '| %s | %s | %s | %s | %s %% | %s | %.1f | %s | %s | %.1f | %s | %s | %s | %s | %s | %s | %s |\n' \
			"$w" "$u" "$(val samples "$f")" "$(val frames_per_sample "$f")" \
			"$(val complete_pct "$f")" "$(val bpf_ns_per_run "$f")" \
			"$(val bpf_ns_per_sample "$f" | awk '{print $1 / 1000}')" "${fl:--}" "${ufl:--}" \
			"$(val bpf_ns_per_sample "$f" | awk -v fl="${fl:-0}" '{print ($1 - fl) / 1000}')" \
			"$(val bpf_ns_per_frame "$f")" \
			"$(val objects "$f")" "$(val table_mib "$f")" "$(val build_ms "$f")" \
			"$(val agent_cpu_ms "$f")" "$pc" "$pb"
	done
	bt=$(bpftrace_ns_per_sample)
	BT[$w]=${bt:-} DW[$w]=$(val bpf_ns_per_sample "$T/$w.dwarf")
done

echo
echo "# the peer: bpftrace profile:hz:$HZ @[kstack, ustack] = count() on the same command"
printf '| workload | ember DWARF µs/sample | bpftrace µs/sample | ember / bpftrace |\n|---|---|---|---|\n'
for w in $ORDER; do
	[ -n "${BT[$w]}" ] && [ -n "${DW[$w]}" ] || { echo "| $w | ${DW[$w]:--} | - | - |"; continue; }
	awk -v w="$w" -v e="${DW[$w]}" -v b="${BT[$w]}" \
		'BEGIN {printf "| %s | %.1f | %.1f | %.2f |\n", w, e / 1000, b / 1000, e / b}'
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
