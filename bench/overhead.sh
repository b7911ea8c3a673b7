#!/usr/bin/env bash
# bench/overhead.sh — what profiling costs: the ember agent at 99 Hz and 999 Hz (frame-pointer
# and, when built in, DWARF unwinding) beside `perf record -F 99 -a -g` and bpftrace's
# `profile:hz:99 { @[kstack, ustack, comm] = count(); }`, one after the other in the same run,
# each over the same load: two busy process slots, so both CPUs are busy.
#
#   slot 1: xz -T1 -6 compressing system libraries, over and over (Debian build, no frame pointers)
#   slot 2: a 3-second rotation of cpu_split, threads (two busy threads), a perl script
#           (recursion, sort, regex: many distinct stacks) and shlib (hot code in a dlopen'ed .so);
#           a new process every 3 s, so symbolization of new binaries is part of the cost.
#
# Per tool, over a DURATION-second window that starts WARMUP seconds after the tool is up (for
# ember with DWARF: after its start-up scan of the host's processes, whose table building is
# start-up cost, reported in "life CPU"):
#   CPU       the tool's process CPU clock (= utime+stime of all its threads, to the ns)
#   BPF       run_time_ns / run_cnt of the tool's BPF programs (kernel.bpf_stats_enabled=1 for
#             the run; read from the tool's own /proc/PID/fdinfo). BPF time is charged to the
#             sampled tasks, not to the tool, so it is reported beside CPU and added in "total".
#             perf uses no BPF: its stack walks run in the perf interrupt and are not measured.
#   RSS       VmHWM (peak) and VmRSS at the end of the window
#   samples/s BPF run_cnt / window for ember and bpftrace; samples / lifetime for perf
#   lost      ember: the agent's own counters (samples, map-full, rows) at shutdown, kernel
#             stack collisions apart; perf: lost events; bpftrace: none reported
# and over the tool's whole life (/usr/bin/time): start-up and exit CPU — bpftrace symbolizes at
# exit, perf record writes build-ids at exit and leaves symbolization to `perf report`, whose
# CPU is reported as perf's post-processing. The ember server (SQLite, started once) is measured
# apart over each agent window: it is not agent CPU.
#
# BASELINE=/path/to/another/ember runs that agent too, right after each ember run with the same
# settings, and reports the CPU ratio: on a shared machine whose load drifts, the ratio of two
# agents measured minutes apart over the same load is steadier than either number.
# DWARF tables are read from and written to the on-disk cache UNWIND_CACHE (default
# /var/cache/ember/unwind-bench, kept between runs as an agent's cache is between restarts, and
# apart from the default cache that agents of other versions on this host may rewrite).
#
# Usage: bench/overhead.sh [BUILD_DIR]      (root; default build dir: build)
# Environment: DURATION (30) WARMUP (3) FREQS ("99 999") UNWINDS ("fp dwarf"; "dwarf+offcpu"
#              adds --off-cpu)
#              TOOLS ("ember perf bpftrace") OUT (results dir, default a new /tmp dir)
#              BASELINE (another ember binary) UNWIND_CACHE (see above; "" for none)
# Output: a markdown table on stdout (also $OUT/table.md), raw logs in $OUT.
set -u
TOP=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-build}
case $BUILD in /*) ;; *) BUILD=$TOP/$BUILD ;; esac
DURATION=${DURATION:-30}
WARMUP=${WARMUP:-3}
FREQS=${FREQS:-99 999}
UNWINDS=${UNWINDS:-fp dwarf}
TOOLS=${TOOLS:-ember perf bpftrace}
EMBER=$BUILD/ember
BASELINE=${BASELINE:-}
export EMBER_UNWIND_CACHE=${UNWIND_CACHE-/var/cache/ember/unwind-bench}
W=$BUILD/workloads

die() { echo "overhead: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "needs root (BPF, perf -a)"
[ -x "$EMBER" ] || die "no $EMBER (make BUILD=... first)"
[ -z "$BASELINE" ] || [ -x "$BASELINE" ] || die "BASELINE $BASELINE is not an executable"
for w in cpu_split threads shlib; do [ -x "$W/$w" ] || die "no $W/$w (make BUILD=... all)"; done
for t in xz perl /usr/bin/time cc; do command -v "$t" >/dev/null || die "$t is missing"; done

OUT=${OUT:-$(mktemp -d /tmp/ember-overhead.XXXXXX)}
mkdir -p "$OUT"
cc -O2 -o "$OUT/overhead_cpu" "$TOP/bench/overhead_cpu.c" || die "cannot build overhead_cpu"
OLD_BPF_STATS=$(sysctl -n kernel.bpf_stats_enabled)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null; done
	wait 2>/dev/null
	sysctl -q -w kernel.bpf_stats_enabled="$OLD_BPF_STATS"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
sysctl -q -w kernel.bpf_stats_enabled=1

# --- load ---------------------------------------------------------------------------------------
DATA=$OUT/xz-input
find /usr/lib/x86_64-linux-gnu -maxdepth 1 -name '*.so*' -type f -print0 2>/dev/null |
	xargs -0 cat 2>/dev/null | head -c $((16 << 20)) >"$DATA"
cat >"$OUT/load.pl" <<'EOF'
# Many distinct stacks in a no-frame-pointer interpreter: recursion, sort, regex, hashes.
my $end = time + ($ARGV[0] // 3);
sub fib { my $n = shift; $n < 2 ? $n : fib($n - 1) + fib($n - 2) }
sub words { my %h; $h{$_ % 97} .= $_ for @_; join ' ', map { $h{$_} } sort keys %h }
while (time < $end) {
	fib(18);
	my @a = sort { $a <=> $b } map { rand } 1 .. 3000;
	my @m = (join(',', @a) =~ /(\d+)\.(\d{3})/g);
	words(@m);
}
EOF

load_start() {
	setsid bash -c "while :; do xz -T1 -6 -c '$DATA' >/dev/null; done" </dev/null &
	LOAD1=$!
	setsid bash -c "while :; do '$W/cpu_split' 3; '$W/threads' 3; perl '$OUT/load.pl' 3; '$W/shlib' 3; done" \
		</dev/null >/dev/null 2>&1 &
	LOAD2=$!
	PIDS+=("$LOAD1" "$LOAD2")
}
load_stop() {
	kill -TERM -- "-$LOAD1" "-$LOAD2" 2>/dev/null
	wait "$LOAD1" "$LOAD2" 2>/dev/null
}

# --- measuring ----------------------------------------------------------------------------------
# snap PID... → "PID MONO_NS CPU_NS BPF_RUN_NS BPF_RUN_CNT" lines (bench/overhead_cpu.c)
snap() { "$OUT/overhead_cpu" "$@"; }
# threads PID → "COMM NS" per thread name (schedstat run time, summed over same-named threads)
threads() {
	for t in /proc/"$1"/task/*; do
		echo "$(tr ' ' _ <"$t/comm" 2>/dev/null) $(cut -d' ' -f1 "$t/schedstat" 2>/dev/null)"
	done | awk 'NF == 2 {a[$1] += $2} END {for (k in a) print k, a[k]}' | sort
}
status_kib() { awk -v k="$2:" '$1 == k {print $2}' /proc/"$1"/status 2>/dev/null; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
forks() { awk '$1 == "processes" {print $2}' /proc/stat; }
# child_of PID: the tool under /usr/bin/time
child_of() {
	local c
	for _ in $(seq 1 100); do
		c=$(pgrep -P "$1" | head -n1)
		[ -n "$c" ] && { echo "$c"; return 0; }
		kill -0 "$1" 2>/dev/null || return 1
		sleep 0.05
	done
	return 1
}

# window NAME TOOL_PID [SERVER_PID]: waits WARMUP, measures DURATION seconds, writes $OUT/NAME.win
window() {
	local name=$1 pid=$2 spid=${3:-} l0 f0 f1 a b t0 t1
	sleep "$WARMUP"
	l0=$(loadavg)
	f0=$(forks)
	t0=$(threads "$pid")
	a=$(snap "$pid" $spid)
	sleep "$DURATION"
	b=$(snap "$pid" $spid)
	t1=$(threads "$pid")
	f1=$(forks)
	{
		echo "$a" | head -n1 | { read -r _ m0 c0 n0 k0
			echo "$b" | head -n1 | { read -r _ m1 c1 n1 k1
				echo "secs $(echo "($m1 - $m0) / 1000000000" | bc -l)"
				echo "cpu_ns $((c1 - c0))"
				echo "bpf_ns $((n1 - n0))"
				echo "bpf_cnt $((k1 - k0))"; }; }
		if [ -n "$spid" ]; then
			echo "server_ns $(( $(echo "$b" | sed -n 2p | cut -d' ' -f3) - $(echo "$a" | sed -n 2p | cut -d' ' -f3) ))"
		else
			echo "server_ns 0"
		fi
		echo "hwm_kib $(status_kib "$pid" VmHWM)"
		echo "rss_kib $(status_kib "$pid" VmRSS)"
		echo "load_start $l0"
		echo "load_end $(loadavg)"
		echo "forks $((f1 - f0))"
		join <(echo "$t0") <(echo "$t1") | awk '{printf "thread %s %d\n", $1, $3 - $2}'
	} >"$OUT/$name.win"
}
# stop_tool TIME_PID TOOL_PID SIGNAL: stops the tool, waits for /usr/bin/time to report
stop_tool() {
	kill -"$3" "$2" 2>/dev/null
	wait "$1" 2>/dev/null
}

# --- the tools ----------------------------------------------------------------------------------
SERVER_PID=""
server_start() {
	"$EMBER" server --listen 127.0.0.1:0 --store "sqlite:$OUT/ember.db" >"$OUT/server.log" 2>&1 &
	SERVER_PID=$!
	PIDS+=("$SERVER_PID")
	for _ in $(seq 1 100); do
		PORT=$(sed -n 's/.*serving on .* (port \([0-9]*\)).*/\1/p' "$OUT/server.log" | head -n1)
		[ -n "$PORT" ] && return 0
		sleep 0.05
	done
	die "ember server did not start: $(cat "$OUT/server.log")"
}

# run_ember UNWIND HZ [BIN NAME] → $OUT/NAME.{win,time,log} (NAME: ember-UNWIND-HZ); returns 1
# if the agent cannot start. UNWIND "dwarf+offcpu" (or "fp+offcpu"): that unwinding and --off-cpu.
run_ember() {
	local name=${4:-ember-$1-$2} tp pid extra=()
	[ "$1" = "${1%+offcpu}" ] || extra=(--off-cpu)
	/usr/bin/time -f '%e %U %S %M' -o "$OUT/$name.time" \
		"${3:-$EMBER}" agent --server "http://127.0.0.1:$PORT" --frequency "$2" --unwind "${1%+offcpu}" \
		"${extra[@]}" >"$OUT/$name.log" 2>&1 &
	tp=$!
	pid=$(child_of "$tp") || { wait "$tp"; return 1; } # exited at once
	for _ in $(seq 1 200); do
		grep -q "profiling this host" "$OUT/$name.log" && break
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	if ! grep -q "profiling this host" "$OUT/$name.log"; then
		kill -TERM "$pid" 2>/dev/null
		wait "$tp" 2>/dev/null
		return 1
	fi
	# DWARF: the start-up scan of every process first (bounded: 120 s)
	for _ in $(seq 1 1200); do
		[ "$1" = dwarf ] || break
		grep -q "unwind tables:" "$OUT/$name.log" && break
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	window "$name" "$pid" "$SERVER_PID"
	stop_tool "$tp" "$pid" TERM
	return 0
}

run_perf() {
	local tp pid
	/usr/bin/time -f '%e %U %S %M' -o "$OUT/perf.time" \
		perf record -F 99 -a -g -o "$OUT/perf.data" >"$OUT/perf.log" 2>&1 &
	tp=$!
	pid=$(child_of "$tp") || die "perf did not start"
	window perf "$pid"
	stop_tool "$tp" "$pid" INT
	/usr/bin/time -f '%e %U %S %M' -o "$OUT/perf-report.time" \
		perf report -i "$OUT/perf.data" --stdio >"$OUT/perf-report.txt" 2>/dev/null
}

run_bpftrace() {
	local tp pid
	/usr/bin/time -f '%e %U %S %M' -o "$OUT/bpftrace.time" \
		bpftrace -o "$OUT/bpftrace.out" -e 'profile:hz:99 { @[kstack, ustack, comm] = count(); }' \
		>"$OUT/bpftrace.log" 2>&1 &
	tp=$!
	pid=$(child_of "$tp") || die "bpftrace did not start"
	window bpftrace "$pid"
	stop_tool "$tp" "$pid" INT
}

# --- report -------------------------------------------------------------------------------------
val() { awk -v k="$1" '$1 == k {print $2}' "$2"; }
fmt() { LC_ALL=C printf "%.${2:-2f}" "$1" 2>/dev/null || echo "$1"; }
calc() { echo "$*" | bc -l; }

# row NAME LABEL SAMPLES_PER_S LOST OUTPUT → a table line; sets ROW_CPU (ms/s)
row() {
	local n=$1 win=$OUT/$1.win secs cpu bpf cnt hwm rss srv life_cpu u s
	secs=$(val secs "$win"); cpu=$(val cpu_ns "$win"); bpf=$(val bpf_ns "$win")
	cnt=$(val bpf_cnt "$win"); hwm=$(val hwm_kib "$win"); rss=$(val rss_kib "$win")
	srv=$(val server_ns "$win")
	ROW_CPU=$(calc "$cpu / 1000000 / $secs")
	local bpfms=$(calc "$bpf / 1000000 / $secs")
	local per=$([ "$cnt" -gt 0 ] && calc "$bpf / $cnt / 1000" || echo 0)
	read -r _ u s _ < <(tail -n1 "$OUT/$n.time")
	life_cpu=$(calc "($u + $s) * 1000")
	printf '| %s | %s | %s %% | %s | %s | %s %% | %s / %s | %s | %s | %s | %s | %s |\n' \
		"$2" "$(fmt "$ROW_CPU" 2f)" "$(fmt "$(calc "$ROW_CPU / 10")" 3f)" \
		"$(fmt "$bpfms" 2f)" "$(fmt "$per" 1f)" "$(fmt "$(calc "($ROW_CPU + $bpfms) / 10")" 3f)" \
		"$(fmt "$(calc "$hwm / 1024")" 1f)" "$(fmt "$(calc "$rss / 1024")" 1f)" \
		"$3" "$4" "$(fmt "$life_cpu" 0f)" \
		"$([ "$srv" -gt 0 ] && fmt "$(calc "$srv / 1000000 / $secs")" 2f || echo "—")" "$5"
}

echo "overhead: results in $OUT; $(nproc) CPUs, kernel $(uname -r), load $(loadavg)" >&2
load_start
sleep 1
declare -A CPU
for tool in $TOOLS; do
	case $tool in
	ember)
		[ -n "$SERVER_PID" ] || server_start
		for u in $UNWINDS; do
			for hz in $FREQS; do
				echo "overhead: ember agent --unwind $u --frequency $hz, ${DURATION}s" >&2
				run_ember "$u" "$hz" || {
					why=$(grep -m1 ' error ' "$OUT/ember-$u-$hz.log" | cut -d' ' -f3-)
					echo "overhead: ember --unwind $u unavailable: $why" >&2
					echo "$why" >"$OUT/ember-$u-$hz.unavailable"
				}
				[ -n "$BASELINE" ] || continue
				echo "overhead: baseline $BASELINE --unwind $u --frequency $hz, ${DURATION}s" >&2
				run_ember "$u" "$hz" "$BASELINE" "base-$u-$hz" ||
					echo "overhead: baseline --unwind $u did not start" >&2
			done
		done
		;;
	perf) echo "overhead: perf record -F 99 -a -g, ${DURATION}s" >&2; run_perf ;;
	bpftrace) echo "overhead: bpftrace profile:hz:99, ${DURATION}s" >&2; run_bpftrace ;;
	*) die "unknown tool $tool" ;;
	esac
done
load_stop

{
	echo "| tool | CPU ms/s | % of a core | BPF ms/s | BPF µs/run | CPU+BPF % core | RSS peak / end MiB | samples/s | lost | life CPU ms | server ms/s | output |"
	echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
	for u in $UNWINDS; do
		for hz in $FREQS; do
			for n in ember-$u-$hz base-$u-$hz; do
				label="ember agent $hz Hz, $u"
				[ "$n" = "${n#base}" ] || label="baseline agent $hz Hz, $u"
				if [ -e "$OUT/$n.unavailable" ]; then
					echo "| $label | unavailable: $(cut -c1-80 "$OUT/$n.unavailable") |"
					continue
				fi
				[ -e "$OUT/$n.win" ] || continue
				sum=$(grep 'agent: samples' "$OUT/$n.log" | tail -n1)
				lost=$(echo "$sum" | sed -n 's/.*drops: samples \([0-9]*\) map-full \([0-9]*\) collisions \([0-9]*\) rows \([0-9]*\).*/\1+\2+\4 (kstack coll. \3)/p')
				sps=$(calc "$(val bpf_cnt "$OUT/$n.win") / $(val secs "$OUT/$n.win")")
				row "$n" "$label" "$(fmt "$sps" 0f)" "${lost:-?}" \
					"$(du -b "$OUT/ember.db" | cut -f1) B SQLite (all runs)"
				CPU[$n]=$ROW_CPU
			done
		done
	done
	if [ -e "$OUT/perf.win" ]; then
		psamples=$(sed -n 's/.*(\([0-9]*\) samples).*/\1/p' "$OUT/perf.log" | tail -n1)
		plost=$(grep -oE 'lost [0-9]+' "$OUT/perf.log" | awk '{s+=$2} END{print s+0}')
		read -r pe _ < <(tail -n1 "$OUT/perf.time")
		read -r _ ru rs _ < <(tail -n1 "$OUT/perf-report.time")
		row perf "perf record -F 99 -a -g" "$(fmt "$(calc "${psamples:-0} / $pe")" 0f)" "$plost" \
			"$(du -b "$OUT/perf.data" | cut -f1) B perf.data; perf report $(fmt "$(calc "($ru + $rs) * 1000")" 0f) ms CPU"
		CPU[perf]=$ROW_CPU
	fi
	if [ -e "$OUT/bpftrace.win" ]; then
		sps=$(calc "$(val bpf_cnt "$OUT/bpftrace.win") / $(val secs "$OUT/bpftrace.win")")
		keys=$(grep -cE '\]: [0-9]+$' "$OUT/bpftrace.out")
		# bpftrace drops new keys silently once a map holds max_map_keys (4096 by default)
		row bpftrace "bpftrace profile:hz:99" "$(fmt "$sps" 0f)" \
			"$([ "$keys" -ge 4096 ] && echo "map full: new stacks dropped; ")$(grep -c 'failed to look up stack id' "$OUT/bpftrace.log") stack ids lost" \
			"$keys keys, $(du -b "$OUT/bpftrace.out" | cut -f1) B"
		CPU[bpftrace]=$ROW_CPU
	fi
	echo
	for u in $UNWINDS; do
		for ref in perf bpftrace; do
			n=ember-$u-99
			[ -n "${CPU[$n]:-}" ] && [ -n "${CPU[$ref]:-}" ] || continue
			echo "- ember $u 99 Hz CPU / $ref CPU: $(fmt "$(calc "${CPU[$n]} / ${CPU[$ref]}")" 2f)"
		done
		for hz in $FREQS; do
			n=ember-$u-$hz
			[ -n "${CPU[$n]:-}" ] && [ -n "${CPU[base-$u-$hz]:-}" ] || continue
			echo "- ember $u $hz Hz CPU / baseline CPU: $(fmt "$(calc "${CPU[$n]} / ${CPU[base-$u-$hz]}")" 2f)"
		done
	done
	echo
	echo "CPU ms/s per thread (schedstat; ember names its threads, a baseline may not):"
	for f in "$OUT"/ember-*.win "$OUT"/base-*.win; do
		[ -e "$f" ] || continue
		echo "- $(basename "$f" .win): $(awk -v s="$(val secs "$f")" \
			'$1 == "thread" {printf "%s %.2f, ", $2, $3 / 1e6 / s}' "$f" | sed 's/, $//')"
	done
	echo
	echo "Host activity per window: load average (1/5/15 min) at start → end; new processes/s"
	echo "on the whole host (/proc/stat 'processes'; the load itself starts about 1/s):"
	for f in "$OUT"/*.win; do
		echo "- $(basename "$f" .win): $(sed -n 's/^load_start //p' "$f") → $(sed -n 's/^load_end //p' "$f");" \
			"$(fmt "$(calc "$(val forks "$f") / $(val secs "$f")")" 1f) new processes/s"
	done
} | tee "$OUT/table.md"
