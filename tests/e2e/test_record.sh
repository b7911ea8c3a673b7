#!/usr/bin/env bash
# `ember record` on test workloads with a known call structure (built with clang and frame
# pointers): frames in order, proportions, thread names, shared-library and kernel frames, -p PID,
# JIT frames from node's perf map, and agreement with `perf record -g` on the same workload.
. "$(dirname "$0")/../lib/e2e.sh"
[ "$(id -u)" -eq 0 ] || { echo "needs root for BPF"; exit 77; }
W=${EMBER_BUILD:?}/workloads
for w in cpu_split threads shlib syscalls; do [ -x "$W/$w" ] || fail "workload $w not built"; done

share() { # file pattern → percent of the total value in lines matching pattern
	awk -v p="$2" '{v=$NF; t+=v; if (index($0, p)) m+=v} END {printf "%d", t ? 100*m/t : 0}' "$1"
}
within() { [ "$1" -ge "$2" ] && [ "$1" -le "$3" ]; }

# 999 Hz for a few thousand samples: at 99 Hz on a loaded 2-CPU machine a ±5-point check on
# ~120 samples would fail by chance one run in four.
"$EMBER_BIN" record -F 999 -o "$E2E_TMP/split.folded" -- "$W/cpu_split" 4 >/dev/null || fail "record cpu_split"
a=$(share "$E2E_TMP/split.folded" ";main;work;hot_a")
b=$(share "$E2E_TMP/split.folded" ";main;work;hot_b")
echo "cpu_split: hot_a ${a}%, hot_b ${b}%"
check "frames in order main;work;hot_a and hot_a ~70% (±5)" within "$a" 65 75
check "hot_b ~30% (±5)" within "$b" 25 35
check "every line starts with the process and a [p] level (the pre-exec child is still 'ember')" bash -c "! grep -v '^cpu_split;\\[p\\] ' '$E2E_TMP/split.folded' | grep -q ."
check "values are sample counts (integers > 0)" bash -c "awk '\$NF !~ /^[1-9][0-9]*$/ {bad=1} END {exit bad}' '$E2E_TMP/split.folded'"

"$EMBER_BIN" record -F 99 -o "$E2E_TMP/split.svg" -- "$W/cpu_split" 1 >/dev/null || fail "record to svg"
check "-o x.svg writes an SVG flame graph with the functions" bash -c "head -c 300 '$E2E_TMP/split.svg' | grep -q '<svg' && grep -q 'hot_a' '$E2E_TMP/split.svg'"
"$EMBER_BIN" record -F 99 --format speedscope -o "$E2E_TMP/split.out" -- "$W/cpu_split" 1 >/dev/null || fail "record speedscope"
check "--format speedscope: valid speedscope JSON" bash -c "jq -e '.profiles[0].type == \"sampled\" and (.shared.frames | map(.name) | index(\"hot_a\"))' '$E2E_TMP/split.out' >/dev/null"
"$EMBER_BIN" record -F 99 --value us -o "$E2E_TMP/us.folded" -- "$W/cpu_split" 1 >/dev/null || fail "record --value us"
check "--value us: multiples of 10101 µs" bash -c "awk '\$NF % 10101 {bad=1} END {exit bad}' '$E2E_TMP/us.folded'"

"$EMBER_BIN" record -F 99 -o "$E2E_TMP/threads.folded" -- "$W/threads" 3 >/dev/null || fail "record threads"
check "thread names under [t]: worker-a runs burn_a" grep -q '^threads;\[t\] worker-a;.*burn_a' "$E2E_TMP/threads.folded"
check "thread names under [t]: worker-b runs burn_b" grep -q '^threads;\[t\] worker-b;.*burn_b' "$E2E_TMP/threads.folded"

"$EMBER_BIN" record -F 99 -o "$E2E_TMP/shlib.folded" -- "$W/shlib" 2 >/dev/null || fail "record shlib"
check "hot code in a shared library is [l]" bash -c "[ \$(awk -v p='[l] hot_lib_spin' '{v=\$NF; t+=v; if (index(\$0,p)) m+=v} END {printf \"%d\", t?100*m/t:0}' '$E2E_TMP/shlib.folded') -ge 80 ]"

"$EMBER_BIN" record -F 99 -o "$E2E_TMP/sys.folded" -- "$W/syscalls" 2 >/dev/null || fail "record syscalls"
# libc's write() has no frame pointer: a frame-pointer walk skips its caller, the DWARF walk
# (the default) keeps it, so the user part reads main;do_syscalls;[l] write, then the kernel.
k=$(share "$E2E_TMP/sys.folded" ";[k] entry_SYSCALL_64")
echo "syscalls: ${k}% of samples in the kernel"
check "a large share of samples carries kernel frames" [ "$k" -ge 30 ]
check "kernel frames follow the complete user frames (main;do_syscalls;[l] write)" grep -qE ';main;do_syscalls;\[l\] (write|__GI___libc_write|__libc_write)[^;]*;\[k\] entry_SYSCALL_64' "$E2E_TMP/sys.folded"
"$EMBER_BIN" record -F 99 --unwind fp -o "$E2E_TMP/sysfp.folded" -- "$W/syscalls" 1 >/dev/null || fail "record --unwind fp"
check "--unwind fp still works: user then kernel frames" grep -qE ';main;(.*;)?\[l\] (write|syscall|__GI___libc_write)[^;]*;\[k\] entry_SYSCALL_64' "$E2E_TMP/sysfp.folded"
check "kernel frames are outermost first (entry_SYSCALL_64 before do_syscall_64)" grep -q '\[k\] entry_SYSCALL_64[^;]*;\[k\] do_syscall_64' "$E2E_TMP/sys.folded"

"$W/cpu_split" 6 >/dev/null & pid=$!
sleep 0.5
"$EMBER_BIN" record -F 99 -p $pid -d 2 -o "$E2E_TMP/pid.folded" 2>/dev/null || fail "record -p"
kill $pid 2>/dev/null; wait $pid 2>/dev/null
check "-p PID -d 2: the running process's frames" grep -q ';main;work;hot_a ' "$E2E_TMP/pid.folded"
check "-p PID: only that process" bash -c "! grep -v '^cpu_split;' '$E2E_TMP/pid.folded' | grep -q ."

# -- CMD follows the processes CMD forks: the shell runs cpu_split as its child ('; true' keeps
# sh from exec'ing it in place).
"$EMBER_BIN" record -F 499 -o "$E2E_TMP/child.folded" -- sh -c "$W/cpu_split 2; true" >/dev/null || fail "record sh -c"
check "-- CMD: its children are profiled too (cpu_split under sh -c)" grep -q '^cpu_split;.*;main;work;hot_a ' "$E2E_TMP/child.folded"

"$EMBER_BIN" record -p 999999999 -d 1 2>"$E2E_TMP/nopid.err"
check "-p of a missing process: clear error" bash -c "[ $? -ne 0 ] && grep -q 'no process' '$E2E_TMP/nopid.err'"

# JIT: node writes /tmp/perf-PID.map with --perf-basic-prof.
if command -v node >/dev/null; then
	cat > "$E2E_TMP/jit.js" <<'JS'
function emberHotLoop(n) { let x = 0; for (let i = 0; i < n; i++) x = (x * 31 + i) % 1000003; return x; }
// A fixed amount of work, not a fixed time: node's start-up must stay a small share even when
// the machine is loaded.
let s = 0;
for (let k = 0; k < 2500; k++) s += emberHotLoop(100000);
console.log(s > 0);
JS
	(cd "$E2E_TMP" && "$EMBER_BIN" record -F 99 -o "$E2E_TMP/node.folded" -- node --perf-basic-prof "$E2E_TMP/jit.js" >/dev/null) || fail "record node"
	j=$(share "$E2E_TMP/node.folded" "emberHotLoop")
	echo "node: ${j}% of samples in emberHotLoop (from /tmp/perf-PID.map)"
	check "JIT frames named from the perf map" [ "$j" -ge 50 ]
fi

# Agreement with perf on the same workload: the same top leaf functions.
if command -v perf >/dev/null; then
	perf record -q -F 99 -g -o "$E2E_TMP/perf.data" -- "$W/cpu_split" 3 >/dev/null 2>&1 || fail "perf record"
	perf script -i "$E2E_TMP/perf.data" 2>/dev/null |
		awk '/^[^ \t]/ {h = 1; next} h && NF {split($2, s, "+"); print s[1]; h = 0}' |
		sort | uniq -c | sort -rn | head -2 | awk '{print $2}' | sort > "$E2E_TMP/perf.top"
	awk '{n=split($0, f, ";"); sub(/ [0-9]+$/, "", f[n]); c[f[n]] += $NF} END {for (k in c) print c[k], k}' \
		"$E2E_TMP/split.folded" | sort -rn | head -2 | awk '{print $2}' | sort > "$E2E_TMP/ember.top"
	echo "perf top leaves: $(tr '\n' ' ' < "$E2E_TMP/perf.top"); ember: $(tr '\n' ' ' < "$E2E_TMP/ember.top")"
	check "top leaf functions match perf record -g" cmp -s "$E2E_TMP/perf.top" "$E2E_TMP/ember.top"
fi
e2e_done
