#!/usr/bin/env bash
# Off-CPU profiling end to end: `ember record --off-cpu` of a workload whose four threads block
# in known places (a nanosleep loop, a pipe read, the pacing loop, vfork waits), DWARF and frame
# pointers; then `ember run --off-cpu` and the API: off-cpu rows of the process, none under
# Total, the on-CPU rows still there, uninterruptible ("D") blocks told from sleeps ("S") by the
# ember.offcpu.state tag, the counters in /metrics; and bad flag values.
# tests/e2e/test_offcpu_clickhouse.sh runs the API part on ClickHouse: EMBER_TEST_STORE names the
# store, OFFCPU_API_ONLY=1 skips `ember record`.
. "$(dirname "$0")/../lib/e2e.sh"
[ "$(id -u)" -eq 0 ] || { echo "needs root for BPF"; exit 77; }
W=${EMBER_BUILD:?}/workloads
[ -x "$W/offcpu" ] || fail "workload offcpu not built"

sum() { # file pattern → total value of the lines containing pattern
	awk -v p="$2" 'index($0, p) {m += $NF} END {printf "%d", m}' "$1"
}
# Each thread of the workload prints the time it spent blocked, as its own schedstat tells
# (elapsed - running - waiting for a CPU): ember's µs for it must be that, less what ember cannot
# see (blocks under 50 µs, the first block before the tables are ready) — 80-105 %, + 5 ms.
mine() { sed -n "s/.*blocked_ms.* $1=\([0-9]*\).*/\1/p" "$2"; }
blocked_ok() { # µs ms
	[ -n "$2" ] && [ "$1" -ge $(($2 * 800)) ] && [ "$1" -le $(($2 * 1050 + 5000)) ]
}
SECS=2
STORE=${EMBER_TEST_STORE:-sqlite:$E2E_TMP/run.db}

if [ "${OFFCPU_API_ONLY:-0}" != 1 ]; then
	# A budget no CPU reaches here (the workload blocks ~900 times a second): every block has
	# its stacks, so the checks below can ask for them all.
	"$EMBER_BIN" record --off-cpu --off-cpu-captures 100000 -o "$E2E_TMP/off.folded" -- "$W/offcpu" $SECS >"$E2E_TMP/off.out" \
		2>"$E2E_TMP/off.err" || { cat "$E2E_TMP/off.err"; fail "record --off-cpu"; }
	nap=$(sum "$E2E_TMP/off.folded" ";[t] napper;[l] clone3;[l] start_thread;napper;nap;")
	wait_=$(sum "$E2E_TMP/off.folded" ";[t] waiter;[l] clone3;[l] start_thread;waiter;wait_pipe;[l] read")
	pace_fn=$(awk 'index($0, ";[p] offcpu;_start;") && index($0, ";main;pace;") {m += $NF} END {printf "%d", m}' "$E2E_TMP/off.folded")
	echo "record --off-cpu: nap ${nap} µs, wait_pipe ${wait_} µs, main;pace ${pace_fn} µs; the workload: $(cat "$E2E_TMP/off.out")"
	tail -n 2 "$E2E_TMP/off.err"
	check "napper: its blocked time, under clone3;start_thread;napper;nap" blocked_ok "$nap" "$(mine napper "$E2E_TMP/off.out")"
	check "waiter: its blocked time, under wait_pipe;[l] read" blocked_ok "$wait_" "$(mine waiter "$E2E_TMP/off.out")"
	check "main: its blocked time, under _start ... main;pace" blocked_ok "$pace_fn" "$(mine main "$E2E_TMP/off.out")"
	vf=$(sum "$E2E_TMP/off.folded" ";[t] vforker;")
	check "vforker: its blocked time (vfork waits and naps): $vf µs" blocked_ok "$vf" "$(mine vforker "$E2E_TMP/off.out")"
	check "a vfork parent waits for its child in the kernel" grep -qE ';\[t\] vforker;.*\[k\] __do_sys_vfork;.*\[k\] __schedule [0-9]+$' "$E2E_TMP/off.folded"
	check "kernel frames of a nanosleep, from the syscall to __schedule" grep -qE ';nap;.*;\[k\] entry_SYSCALL_64[^;]*;.*nanosleep.*;\[k\] schedule;\[k\] __schedule [0-9]+$' "$E2E_TMP/off.folded"
	check "kernel frames of the pipe read" grep -qE ';wait_pipe;\[l\] read;.*\[k\] (vfs_read|ksys_read).*;\[k\] __schedule [0-9]+$' "$E2E_TMP/off.folded"
	check "no frame of the tracepoint or the BPF program" bash -c "! grep -qE '\\[k\\] (bpf_|__bpf_|__traceiter_|trace_)' '$E2E_TMP/off.folded'"
	check "values are µs (integers > 0)" bash -c "awk '\$NF !~ /^[1-9][0-9]*$/ {bad=1} END {exit bad}' '$E2E_TMP/off.folded'"
	check "the summary counts the blocks" grep -qE '^ember record: [1-9][0-9]* off-CPU blocks \(0 without stacks' "$E2E_TMP/off.err"
	check "without --off-cpu-wakers, no waker frames" bash -c "! grep -q '\[w\] ' '$E2E_TMP/off.folded'"

	# Who ended each wait: the pipe reader by main's write, the sleepers by the timer interrupt,
	# the vfork parent by its child's exit; the blocked time is the same as without wakers.
	"$EMBER_BIN" record --off-cpu-wakers --off-cpu-captures 100000 -o "$E2E_TMP/wk.folded" -- "$W/offcpu" $SECS >"$E2E_TMP/wk.out" \
		2>"$E2E_TMP/wk.err" || { cat "$E2E_TMP/wk.err"; fail "record --off-cpu-wakers"; }
	tail -n 1 "$E2E_TMP/wk.err"
	check "wakers: wait_pipe's read woken by offcpu's pipe write" grep -qE ';wait_pipe;\[l\] read;.*\[k\] __schedule;\[w\] offcpu;\[wk\] try_to_wake_up;.*\[wk\] (anon_)?pipe_write;.*\[wk\] do_syscall_64' "$E2E_TMP/wk.folded"
	check "wakers: nap woken by the timer interrupt" grep -qE ';nap;.*\[k\] __schedule;\[w\] interrupt;\[wk\] try_to_wake_up;\[wk\] hrtimer_wakeup;.*\[wk\] asm_sysvec_apic_timer_interrupt [0-9]+$' "$E2E_TMP/wk.folded"
	check "wakers: the vfork parent woken by its child's exit" grep -qE ';\[t\] vforker;.*__do_sys_vfork;.*\[k\] __schedule;\[w\] vforker;\[wk\] try_to_wake_up;.*\[wk\] do_exit' "$E2E_TMP/wk.folded"
	wnap=$(sum "$E2E_TMP/wk.folded" ";[t] napper;[l] clone3;[l] start_thread;napper;nap;")
	check "wakers: napper's blocked time unchanged ($wnap µs)" blocked_ok "$wnap" "$(mine napper "$E2E_TMP/wk.out")"
	check "wakers: the summary counts them" grep -qE '^ember record: [1-9][0-9]* wakers taken' "$E2E_TMP/wk.err"
	check "wakers: every block still has its stacks" grep -qE '^ember record: [1-9][0-9]* off-CPU blocks \(0 without stacks' "$E2E_TMP/wk.err"
	check "wakers: no frame of the tracepoint or the BPF program" bash -c "! grep -qE '\\[w?k\\] (bpf_|__bpf_|__traceiter_|trace_)' '$E2E_TMP/wk.folded'"
	check "wakers: one row per waker, not per task an interrupt found (no '[w] swapper')" bash -c "! grep -q '\\[w\\] swapper' '$E2E_TMP/wk.folded'"

	"$EMBER_BIN" record --off-cpu --unwind fp -o "$E2E_TMP/offfp.folded" -- "$W/offcpu" 1 >/dev/null 2>&1 || fail "record --off-cpu --unwind fp"
	check "--unwind fp: napper blocked in a nanosleep" grep -qE '^offcpu;\[t\] napper;.*\[k\] [^;]*nanosleep' "$E2E_TMP/offfp.folded"

	# The exports say what they hold: the SVG's title, pprof's sample type (off-cpu, in µs).
	"$EMBER_BIN" record --off-cpu -o "$E2E_TMP/off.svg" -- "$W/offcpu" 1 >/dev/null 2>&1 || fail "record --off-cpu -o x.svg"
	check "SVG: titled as off-CPU, the nap frame in µs" bash -c "grep -q '<text id=\"title\"[^>]*>[^<]*offcpu (off-CPU)<' '$E2E_TMP/off.svg' && grep -q 'nap ([0-9]* microseconds' '$E2E_TMP/off.svg'"
	"$EMBER_BIN" record --off-cpu -o "$E2E_TMP/off.pb.gz" -- "$W/offcpu" 1 >/dev/null 2>&1 || fail "record --off-cpu -o x.pb.gz"
	gunzip -c "$E2E_TMP/off.pb.gz" >"$E2E_TMP/off.pb" || fail "the pprof file is not gzip"
	# string_table entries are field 6, length-delimited: 0x32, the length, the bytes
	pb_has() { LC_ALL=C grep -qaP "\\x32$(printf '\\x%02x' ${#1})$1" "$E2E_TMP/off.pb"; }
	pb_off_cpu() { pb_has off-cpu && pb_has microseconds && ! pb_has cpu; }
	check "pprof: the sample type is off-cpu/microseconds, not cpu" pb_off_cpu

	"$EMBER_BIN" record --off-cpu --value samples -- true >/dev/null 2>"$E2E_TMP/bad.err"
	rc=$?
	check "--off-cpu with --value samples: refused (exit 2) with a reason" bash -c "[ $rc -eq 2 ] && grep -q 'µs blocked' '$E2E_TMP/bad.err'"
	"$EMBER_BIN" record --off-cpu --off-cpu-min 0 -- true >/dev/null 2>"$E2E_TMP/bad2.err"
	rc=$?
	check "--off-cpu-min 0: refused (exit 2)" bash -c "[ $rc -eq 2 ] && grep -q 'off-cpu-min' '$E2E_TMP/bad2.err'"
	"$EMBER_BIN" agent --server http://127.0.0.1:1 --off-cpu-captures x >/dev/null 2>"$E2E_TMP/bad3.err"
	rc=$?
	check "agent --off-cpu-captures x: refused (exit 2), the flag named" bash -c "[ $rc -eq 2 ] && grep -q \"invalid value 'x' for --off-cpu-captures\" '$E2E_TMP/bad3.err'"
fi

# ember run --off-cpu: the agent's rows through the API.
ember_start run "profiling this host" run --off-cpu-wakers --store "$STORE"
"$W/offcpu" $SECS >"$E2E_TMP/run-workload.out"
all_ms=$(awk '{for (i = 2; i <= NF; i++) {split($i, kv, "="); s += kv[2]}} END {printf "%d", s}' "$E2E_TMP/run-workload.out")
tree() { # app event [tag_filter] → HTTP status; body in resp.json
	local now; now=$(date +%s)
	api "$SRV_URL_run" "{\"app_service\":\"$1\",\"profile_language_type\":\"eBPF\",\"profile_event_type\":\"$2\",\"tag_filter\":\"${3:-}\",\"time_start\":$((now - 60)),\"time_end\":$((now + 1))}"
}
# The agent flushes a window each second: poll until the root is in range and stopped changing
# across a flush (two reads 1.5 s apart), so that the last window is not missed.
root=0 last=-1
for _ in $(seq 1 30); do
	[ "$(tree offcpu off-cpu)" = 200 ] && root=$(jqr '.result[0].total_value // 0')
	[ "$root" = "$last" ] && blocked_ok "$root" "$all_ms" &&
		jqr '.result[].profile_location_str' | grep -qx 'wait_pipe' && break
	last=$root
	sleep 1.5
done
echo "API off-cpu root of offcpu: $root µs; its threads say they were blocked $all_ms ms"
check "API: off-cpu tree of the process, the blocked time of its threads" blocked_ok "$root" "$all_ms"
check "API: nap and wait_pipe nodes" bash -c "jq -r '.result[].profile_location_str' '$E2E_TMP/resp.json' | grep -qx nap && jq -r '.result[].profile_location_str' '$E2E_TMP/resp.json' | grep -qx wait_pipe"
check "API: the kernel frames end at [k] __schedule" bash -c "jq -r '.result[].profile_location_str' '$E2E_TMP/resp.json' | grep -qx '\\[k\\] __schedule'"
check "API (run --off-cpu-wakers): the pipe reader's waker, offcpu's pipe write" bash -c "jq -r '.result[].profile_location_str' '$E2E_TMP/resp.json' | grep -qx '\\[w\\] offcpu' && jq -r '.result[].profile_location_str' '$E2E_TMP/resp.json' | grep -qxE '\\[wk\\] (anon_)?pipe_write'"
frames() { jq -r '.result[].profile_location_str' "$E2E_TMP/resp.json"; }
has() { frames | grep -qxF "$1"; }
tree offcpu off-cpu "tag.ember.offcpu.state = 'D'" >/dev/null
d_root=$(jqr '.result[0].total_value // 0')
check "API, state D: the vfork waits, $d_root µs" bash -c "[ $d_root -gt 0 ]"
check "API, state D: under [k] __do_sys_vfork" has '[k] __do_sys_vfork'
check "API, state D: no sleep in it (nap, wait_pipe)" bash -c "! jq -r '.result[].profile_location_str' '$E2E_TMP/resp.json' | grep -qxE 'nap|wait_pipe'"
tree offcpu off-cpu "tag.ember.offcpu.state = 'S'" >/dev/null
s_root=$(jqr '.result[0].total_value // 0')
check "API, state S: the sleeps, nap" has nap
check "API, state S: and wait_pipe" has wait_pipe
check "API, state S: not the vfork waits" bash -c "! jq -r '.result[].profile_location_str' '$E2E_TMP/resp.json' | grep -qx '\[k\] __do_sys_vfork'"
check "API: S + D is the whole off-CPU time ($s_root + $d_root = $root µs)" [ $((s_root + d_root)) -eq "$root" ]
tree Total off-cpu >/dev/null
check "API: no off-cpu rows under Total (as DeepFlow)" [ "$(jqr '.result | length')" = 0 ]
tree Total on-cpu >/dev/null
check "API: the on-CPU Total is still there" bash -c "[ \$(jq -r '.result[0].total_value // 0' '$E2E_TMP/resp.json') -gt 0 ]"
blocks=$(curl -s "$SRV_URL_run/metrics" | sed -n 's/^ember_agent_offcpu_blocks_total \([0-9]*\)$/\1/p')
check "/metrics: ember_agent_offcpu_blocks_total counts blocks" [ "${blocks:-0}" -gt 0 ]
wakers=$(curl -s "$SRV_URL_run/metrics" | sed -n 's/^ember_agent_offcpu_wakers_total \([0-9]*\)$/\1/p')
check "/metrics: ember_agent_offcpu_wakers_total counts wakers taken" [ "${wakers:-0}" -gt 0 ]
server_stop run
check "the agent's summary names its off-CPU blocks" grep -qE 'off-CPU: [1-9][0-9]* blocks counted' "$E2E_TMP/run.log"
e2e_done
