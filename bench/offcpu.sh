#!/usr/bin/env bash
# bench/offcpu — what off-CPU profiling costs on a context-switch-heavy load, beside bpftrace's
# offcputime-style script and `perf record -e sched:sched_switch -g`, one after the other in the
# same run; ember also with --off-cpu-wakers (its wake-up program counted in its BPF time).
#
#   bench/offcpu.sh BUILD_DIR        (root; ROUNDS=200000 round trips of the workload)
#
# The load is tests/workloads/pingpong: two threads bouncing a byte over two pipes, every read a
# block and a wake-up (~4 context switches per round trip on 2 CPUs), started stopped; each tool
# attaches to it with -p (bpftrace: a pid filter), so /usr/bin/time counts the tool alone, and
# the load runs once the tool is ready. Per tool: the load's
# round trips per second and its slowdown against the runs without a tool (before and after, to
# bound the drift; a tool that keeps a CPU busy can also speed the load up, its wake-ups then
# finding the CPU awake); the tool's BPF time per context switch (bpf_stats: ember's own summary,
# bpftrace's program read from its fdinfo before it exits); its process CPU (/usr/bin/time, its
# start-up included); perf's bytes written; and the blocked time each profiler attributes to the
# load's pipe reads, which should agree. Every block counts (a 1 µs floor, not the default 50:
# the load's blocks are ~10-40 µs).
set -u
B=${1:?usage: bench/offcpu.sh BUILD_DIR}
B=$(cd "$B" && pwd)
ROUNDS=${ROUNDS:-200000}
EMBER=$B/ember
PP=$B/workloads/pingpong
for f in "$EMBER" "$PP"; do [ -x "$f" ] || { echo "build $f first (make BUILD=$B all)"; exit 1; }; done
[ "$(id -u)" -eq 0 ] || { echo "needs root"; exit 1; }
T=$(mktemp -d /tmp/ember-bench-offcpu.XXXXXX)
OLD_BPF_STATS=$(sysctl -n kernel.bpf_stats_enabled)
trap 'sysctl -q -w kernel.bpf_stats_enabled="$OLD_BPF_STATS"; rm -rf "$T"' EXIT
sysctl -q -w kernel.bpf_stats_enabled=1
# bpftrace finds tracepoints through tracefs (ember's tp_btf program does not need it).
[ -e /sys/kernel/tracing/events ] || mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null

rate() { sed -n 's/.*per_second=\([0-9]*\).*/\1/p' "$1"; }
cpu_ms() { awk '{printf "%.0f", ($1 + $2) * 1000}' "$1"; }

# The load, started stopped (pid in LOAD, its output in $T/$1.out): the tools attach to it with
# -p, so their /usr/bin/time counts them alone, then load_go lets it run.
load_start() {
	printf 'kill -STOP $$\nexec %s %s\n' "$PP" "$ROUNDS" > "$T/load.sh"
	sh "$T/load.sh" > "$T/$1.out" &
	LOAD=$!
	until grep -q '^[0-9]* ([^)]*) T' "/proc/$LOAD/stat" 2>/dev/null; do sleep 0.02; done
}
load_go() { kill -CONT "$LOAD"; wait "$LOAD"; }
# until_log FILE PATTERN PID: waits until FILE matches or PID is gone.
until_log() { until grep -qs "$2" "$1" || ! kill -0 "$3" 2>/dev/null; do sleep 0.05; done; }

baseline() {
	load_start base
	load_go
	rate "$T/base.out"
}

# ember record --off-cpu [--unwind fp]: rate, BPF µs per switch, CPU, blocked µs in the reads.
run_ember() { # name unwind [extra flag]
	load_start "$1"
	/usr/bin/time -f '%U %S' -o "$T/$1.time" "$EMBER" record --off-cpu ${3:-} --unwind "$2" \
		--off-cpu-min 1 -p "$LOAD" -o "$T/$1.folded" 2> "$T/$1.err" &
	local tool=$!
	until_log "$T/$1.err" 'off-CPU only' $tool
	load_go
	wait $tool
	printf '%s %s %s %s\n' "$(rate "$T/$1.out")" \
		"$(sed -n 's/.*context switches seen, BPF \([0-9.]*\) µs each.*/\1/p' "$T/$1.err")" \
		"$(cpu_ms "$T/$1.time")" \
		"$(awk 'index($0, "[k] anon_pipe_read") {m += $NF} END {printf "%d", m}' "$T/$1.folded")"
}

# bpftrace: the classic offcputime shape on the sched_switch tracepoint, the same 1 µs floor.
run_bpftrace() {
	cat > "$T/off.bt" <<'BT'
tracepoint:sched:sched_switch
{
	if (args->prev_state & 3 && args->prev_pid && pid == $1) {
		@start[args->prev_pid] = nsecs;
		@ks[args->prev_pid] = kstack;
		@us[args->prev_pid] = ustack;
	}
	$s = @start[args->next_pid];
	if ($s) {
		$d = nsecs - $s;
		if ($d >= 1000) {
			@off[@ks[args->next_pid], @us[args->next_pid]] = sum($d / 1000);
		}
		delete(@start[args->next_pid]);
	}
}
BT
	load_start bt
	/usr/bin/time -f '%U %S' -o "$T/bt.time" bpftrace -o "$T/bt.maps" "$T/off.bt" "$LOAD" \
		> "$T/bt.log" 2>&1 &
	local tp=$! b="" f ns=0 cnt=0
	until [ -n "$b" ] || ! kill -0 $tp 2>/dev/null; do
		b=$(pgrep -P $tp -x bpftrace); sleep 0.05
	done
	# Attached once its tracepoint program has run (context switches happen all the time).
	until grep -qs '^run_cnt:[[:space:]]*[1-9]' $(grep -ls '^prog_type:[[:space:]]*5$' \
		/proc/$b/fdinfo/* 2>/dev/null) /dev/null || ! kill -0 $b 2>/dev/null; do sleep 0.05; done
	load_go
	# Its program's stats go with it: read them before it exits.
	for f in $(grep -ls '^prog_type:[[:space:]]*5$' /proc/$b/fdinfo/* 2>/dev/null); do
		ns=$(awk '/^run_time_ns:/ {print $2}' "$f"); cnt=$(awk '/^run_cnt:/ {print $2}' "$f")
	done
	kill -INT "$b"
	wait $tp
	printf '%s %s %s %s\n' "$(rate "$T/bt.out")" \
		"$(awk -v n="$ns" -v c="$cnt" 'BEGIN {if (c) printf "%.2f", n / c / 1000}')" \
		"$(cpu_ms "$T/bt.time")" \
		"$(awk '/anon_pipe_read/ {r = 1} /^\]: [0-9]+$/ {if (r) m += $2; r = 0} END {printf "%d", m}' "$T/bt.maps")"
}

run_perf() {
	load_start perf
	/usr/bin/time -f '%U %S' -o "$T/perf.time" perf record -q -e sched:sched_switch -g \
		-p "$LOAD" -o "$T/perf.data" > /dev/null 2>&1 &
	local tool=$!
	sleep 0.5
	load_go
	wait $tool
	printf '%s - %s %s\n' "$(rate "$T/perf.out")" "$(cpu_ms "$T/perf.time")" \
		"$(stat -c %s "$T/perf.data" | awk '{printf "%.1f_MiB", $1 / 1048576}')"
}

echo "# bench/offcpu: pingpong $ROUNDS round trips, $(nproc) CPUs, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
b1=$(baseline)
read -r e_rate e_bpf e_cpu e_read <<< "$(run_ember ember dwarf)"
read -r f_rate f_bpf f_cpu f_read <<< "$(run_ember emberfp fp)"
read -r w_rate w_bpf w_cpu w_read <<< "$(run_ember emberwk dwarf --off-cpu-wakers)"
t_rate="" t_bpf="" t_cpu="" t_read=""
command -v bpftrace >/dev/null && read -r t_rate t_bpf t_cpu t_read <<< "$(run_bpftrace)"
p_rate="" p_cpu="" p_bytes=""
command -v perf >/dev/null && read -r p_rate _ p_cpu p_bytes <<< "$(run_perf)"
b2=$(baseline)
base=$(( (b1 + b2) / 2 ))
slow() { [ -n "$1" ] && awk -v r="$1" -v b="$base" 'BEGIN {printf "%.1f %%", 100 * (b - r) / b}' || echo -; }
# Blocked s in the reads, and per second of the load (two threads: up to 2; runs differ in speed).
sec() { # µs rate
	[ -n "$1" ] && [ -n "$2" ] && awk -v u="$1" -v r="$2" -v n="$ROUNDS" \
		'BEGIN {printf "%.2f (%.2f per s)", u / 1e6, u / 1e6 / (n / r)}' || echo -
}

printf '| tool | round trips/s | slowdown | BPF µs per context switch | tool CPU ms | blocked s in the pipe reads | notes |\n'
printf '|---|---|---|---|---|---|---|\n'
printf '| none (before, after) | %s, %s | – | – | – | – | |\n' "$b1" "$b2"
printf '| ember record --off-cpu (DWARF) | %s | %s | %s | %s | %s | |\n' "$e_rate" "$(slow "$e_rate")" "$e_bpf" "$e_cpu" "$(sec "$e_read" "$e_rate")"
printf '| ember record --off-cpu --unwind fp | %s | %s | %s | %s | %s | |\n' "$f_rate" "$(slow "$f_rate")" "$f_bpf" "$f_cpu" "$(sec "$f_read" "$f_rate")"
printf '| ember record --off-cpu-wakers (DWARF) | %s | %s | %s | %s | %s | wake-up program included |\n' "$w_rate" "$(slow "$w_rate")" "$w_bpf" "$w_cpu" "$(sec "$w_read" "$w_rate")"
[ -n "$t_rate" ] && printf '| bpftrace offcputime (sched_switch, kstack + ustack) | %s | %s | %s | %s | %s | |\n' "$t_rate" "$(slow "$t_rate")" "$t_bpf" "$t_cpu" "$(sec "$t_read" "$t_rate")"
[ -n "$p_rate" ] && printf '| perf record -e sched:sched_switch -g | %s | %s | – | %s | – | %s written |\n' "$p_rate" "$(slow "$p_rate")" "$p_cpu" "${p_bytes/_/ }"
[ -n "$t_bpf" ] && [ -n "$e_bpf" ] && awk -v e="$e_bpf" -v t="$t_bpf" 'BEGIN {printf "\nember DWARF / bpftrace BPF time per context switch: %.2f\n", e / t}'
exit 0
