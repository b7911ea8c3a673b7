#!/usr/bin/env bash
# `ember top` as a user runs it: a program burns 70 % of its CPU in hot_a and 30 % in hot_b;
# `ember top -p PID` must show both, in that proportion, as the functions burning the CPU, once
# per interval, and stop when the process is gone; --off-cpu shows where the threads wait;
# names reach the terminal without control bytes; a closed pipe stops it; bad flags get clear
# errors. Workloads run longer than needed and are killed, so no check depends on timing.
. "$(dirname "$0")/../lib/e2e.sh"
[ "$(id -u)" -eq 0 ] || { echo "needs root for BPF"; exit 77; }
W=${EMBER_BUILD:?}/workloads
[ -x "$W/cpu_split" ] || fail "workload cpu_split not built"
within() { awk -v v="$1" -v lo="$2" -v hi="$3" 'BEGIN {exit !(v >= lo && v <= hi)}'; }
TO=120 # bound of every top run: a regression fails instead of hanging the suite

"$W/cpu_split" 60 >/dev/null &
P=$!
E2E_PIDS+=("$P")
# 999 Hz: ~1,000 samples a table, a share good to a few points.
timeout $TO "$EMBER_BIN" top -F 999 -p $P --interval 1 -n 2 --batch >"$E2E_TMP/top.txt" 2>"$E2E_TMP/top.err" ||
	{ cat "$E2E_TMP/top.err"; fail "ember top"; }
cat "$E2E_TMP/top.txt"
check "two tables, as -n 2 asked" [ "$(grep -c '^ember top: ' "$E2E_TMP/top.txt")" = 2 ]
last() { awk -v f="$1" '/^ember top: /{t++} t == 2 && $NF == f && $3 == "cpu_split" {sub("%", "", $1); print $1}' "$E2E_TMP/top.txt"; }
a=$(last hot_a)
b=$(last hot_b)
check "hot_a burns ~70 % (60-80): ${a:-none}" within "${a:-0}" 60 80
check "hot_b burns ~30 % (20-40): ${b:-none}" within "${b:-0}" 20 40
check "hot_a first: the table is ranked by self" bash -c "awk '/^ember top: /{t++; n=0; next} t == 2 && /^ *[0-9.]+%/ {n++; if (n == 1) print \$NF}' '$E2E_TMP/top.txt' | grep -qx hot_a"
check "the header counts samples and how busy the CPUs were" grep -qE '^ember top: [0-9.]+ s, [1-9][0-9]* samples at 999 Hz on [0-9]+ CPUs \([0-9.]+ % busy\)$' "$E2E_TMP/top.txt"
check "batch output has no escape byte (no screen clearing)" bash -c "! grep -q $'\\e' '$E2E_TMP/top.txt'"
# --sort total: the callers come first, main and work on (nearly) every sample, then hot_a.
timeout $TO "$EMBER_BIN" top -F 999 -p $P --interval 1 -n 1 --sort total --lines 6 --batch >"$E2E_TMP/tot.txt" 2>/dev/null
cat "$E2E_TMP/tot.txt"
check "--sort total: work on ~100 %, listed before hot_a" bash -c "awk '/^ *[0-9.]+%/ {print \$NF}' '$E2E_TMP/tot.txt' | grep -nx -e work -e hot_a | head -n 1 | grep -q ':work$' && awk '\$NF == \"work\" {sub(\"%\", \"\", \$2); exit !(\$2 + 0 >= 95)}' '$E2E_TMP/tot.txt'"

# A reader that goes away stops it (SIGPIPE is ignored: the write fails and top exits).
timeout $TO "$EMBER_BIN" top -p $P --interval 0.5 2>/dev/null | head -n 1 >/dev/null
check "ember top | head -n 1: top ends with the pipe" [ "${PIPESTATUS[0]}" -ne 124 ]

# Without -n it stops by itself once the process is gone: killed after the first table.
timeout $TO "$EMBER_BIN" top -p $P --interval 1 --batch >"$E2E_TMP/top2.txt" 2>/dev/null &
T2=$!
for _ in $(seq 600); do grep -q '^ember top: ' "$E2E_TMP/top2.txt" 2>/dev/null && break; sleep 0.1; done
kill $P
wait $T2
rc=$?
check "without -n: exits 0 once the process is gone" [ $rc -eq 0 ]
check "without -n: showed tables until then" grep -q '^ember top: ' "$E2E_TMP/top2.txt"

# --off-cpu: where the four threads of the offcpu workload wait, by the program's own innermost
# frame: three in nanosleep (main's pace, nap, the vforker between forks), one in read (25 %).
"$W/offcpu" 60 >/dev/null &
P=$!
E2E_PIDS+=("$P")
timeout $TO "$EMBER_BIN" top --off-cpu -p $P --interval 1 -n 2 --batch >"$E2E_TMP/off.txt" 2>"$E2E_TMP/off.err" ||
	{ cat "$E2E_TMP/off.err"; fail "ember top --off-cpu"; }
kill $P
cat "$E2E_TMP/off.txt"
offlast() { awk -v f="$1" '/^ember top/{t++} t == 2 && $NF == f {sub("%", "", $1); print $1}' "$E2E_TMP/off.txt"; }
sl=$(offlast clock_nanosleep)
rd=$(offlast read)
check "--off-cpu: nanosleep ~70 % of the blocked time (55-85): ${sl:-none}" within "${sl:-0}" 55 85
check "--off-cpu: the pipe read ~25 % (15-35): ${rd:-none}" within "${rd:-0}" 15 35
noks() { ! awk '/^ember top/{t++} t && /^ *[0-9.]+%/ && ($(NF-1) == "[k]" || $(NF-1) == "[w]" || $(NF-1) == "[wk]")' "$E2E_TMP/off.txt" | grep -q .; }
check "--off-cpu: no kernel frame as self (the program's own frames)" noks
# "ember top --off-cpu: 1.1 s, 4.41 s of blocks that ended in it": some, and at most the four
# threads' worth (a block counts whole in the interval it ends in: up to one 10 ms pace more).
hdr() { awk '/^ember top --off-cpu: /{gsub(",", ""); s = $4; b = $6; if (b <= 0 || b > 4 * s + 0.1) bad = 1; n++} END {exit bad || n != 2}' "$E2E_TMP/off.txt"; }
check "--off-cpu: the header gives the blocked seconds, four threads' worth at most" hdr

# A process may name itself with terminal escapes: top prints them as '?'.
python3 -c '
import ctypes, time
ctypes.CDLL(None).prctl(15, b"\x1b]0;pwn\x07", 0, 0, 0)
end = time.time() + 60
while time.time() < end: pass' &
P=$!
E2E_PIDS+=("$P")
timeout $TO "$EMBER_BIN" top -p $P --interval 1 -n 2 --batch >"$E2E_TMP/esc.txt" 2>/dev/null
kill $P
check "a name with escapes reaches the terminal as '?'" grep -q '?]0:pwn?' "$E2E_TMP/esc.txt"
check "... and no escape byte at all" bash -c "! grep -q $'\\e' '$E2E_TMP/esc.txt'"

# A thread id names its process: top says so and profiles the process.
"$W/threads" 60 >/dev/null &
P=$!
E2E_PIDS+=("$P")
for _ in $(seq 100); do [ "$(ls "/proc/$P/task" 2>/dev/null | wc -l)" -gt 1 ] && break; sleep 0.05; done
TID=$(ls "/proc/$P/task" | grep -vx "$P" | head -n 1)
timeout $TO "$EMBER_BIN" top -p "$TID" --interval 1 -n 1 --batch >"$E2E_TMP/tid.txt" 2>"$E2E_TMP/tid.err"
kill $P
check "-p THREAD: said to be a thread of its process" grep -q "$TID is a thread of process $P: profiling the process" "$E2E_TMP/tid.err"
check "-p THREAD: the process's functions in the table" grep -qE ' threads +burn_' "$E2E_TMP/tid.txt"

timeout $TO "$EMBER_BIN" top -p 999999999 >/dev/null 2>"$E2E_TMP/e1"
check "a pid that does not exist: exit 1 saying so" bash -c "[ $? -eq 1 ] && grep -q 'no process 999999999' '$E2E_TMP/e1'"
timeout $TO "$EMBER_BIN" top --interval 0.05 >/dev/null 2>"$E2E_TMP/e2"
check "--interval 0.05: exit 2 naming the range" bash -c "[ $? -eq 2 ] && grep -q 'interval wants 0.2..3600' '$E2E_TMP/e2'"
e2e_done
