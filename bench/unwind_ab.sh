#!/usr/bin/env bash
# bench/unwind_ab — two builds of the BPF program on the same workload in the same run: both
# builds' unwind_run attach to one stopped process (-p), which then runs; BPF µs per sample of
# each. Whichever program runs second on a sample finds the shared memory warm (3-5 µs cheaper
# on the development VM), so every pair runs both attach orders and the effect is the mean of
# (new − old) over the two, which cancels the order.
#
#   bench/unwind_ab.sh OLD_BUILD_DIR NEW_BUILD_DIR   (root; ONLY=workloads, PAIRS=2, HZ=99)
set -u
OLD=$(cd "${1:?usage: bench/unwind_ab.sh OLD_BUILD NEW_BUILD}" && pwd)/bench/unwind_run
NEW=$(cd "${2:?usage: bench/unwind_ab.sh OLD_BUILD NEW_BUILD}" && pwd)/bench/unwind_run
HZ=${HZ:-99}
for b in "$OLD" "$NEW"; do [ -x "$b" ] || { echo "build $b first"; exit 1; }; done
[ "$(id -u)" -eq 0 ] || { echo "needs root"; exit 1; }
T=$(mktemp -d /tmp/ember-bench-unwind-ab.XXXXXX)
trap 'rm -rf "$T"' EXIT

DEFAULT_ORDER="perl python3.11 xz-T2 gzip dd"
. "$(dirname "${BASH_SOURCE[0]}")/unwind_workloads.sh"
val() { sed -n "s/.*[ :]$1=\([^ ]*\).*/\1/p" "$2"; }

# Starts the workload stopped, attaches $1 then $2, lets it run; prints "ns1 ns2".
run_pair() {
	printf 'kill -STOP $$\nexec %s >/dev/null\n' "${CMD[$w]}" > "$T/run.sh"
	sh "$T/run.sh" & local p=$!
	until grep -q '^[0-9]* ([^)]*) T' "/proc/$p/stat" 2>/dev/null; do sleep 0.05; done
	"$1" -F "$HZ" -p "$p" 2>"$T/first" & local r1=$!
	until grep -qs 'sampling' "$T/first" || ! kill -0 $r1 2>/dev/null; do sleep 0.05; done
	"$2" -F "$HZ" -p "$p" 2>"$T/second" & local r2=$!
	until grep -qs 'sampling' "$T/second" || ! kill -0 $r2 2>/dev/null; do sleep 0.05; done
	kill -CONT "$p"
	wait "$p" $r1 $r2
	echo "$(val bpf_ns_per_sample "$T/first") $(val bpf_ns_per_sample "$T/second")"
}

echo "# bench/unwind_ab at $HZ Hz, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# old $OLD"
echo "# new $NEW"
printf '| workload | old µs/sample | new µs/sample | effect µs/sample (per pair) |\n|---|---|---|---|\n'
for w in $ORDER; do
	olds=() news=() eff=()
	for i in $(seq "${PAIRS:-2}"); do
		read -r o1 n1 <<<"$(run_pair "$OLD" "$NEW")"
		read -r n2 o2 <<<"$(run_pair "$NEW" "$OLD")"
		[ -n "$o1" ] && [ -n "$n1" ] && [ -n "$o2" ] && [ -n "$n2" ] || continue
		olds+=("$o1" "$o2") news+=("$n1" "$n2")
		eff+=("$(awk -v a="$n1" -v b="$o1" -v c="$n2" -v d="$o2" \
			'BEGIN {printf "%.1f", (a - b + c - d) / 2000}')")
	done
	printf '| %s | %s | %s | %s |\n' "$w" \
		"$(printf '%s\n' "${olds[@]}" | awk '{s += $1} END {if (NR) printf "%.1f", s / NR / 1000}')" \
		"$(printf '%s\n' "${news[@]}" | awk '{s += $1} END {if (NR) printf "%.1f", s / NR / 1000}')" \
		"${eff[*]}"
done
