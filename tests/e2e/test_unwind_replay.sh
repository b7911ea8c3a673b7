#!/usr/bin/env bash
# Perf-replay agreement (design/dwarf-unwinding.md §3.2 (a)): each workload runs under
# `perf record --call-graph dwarf`, then tools/unwind_replay unwinds every sample's user registers
# and stack copy with ember's tables and plain-C walker and compares it frame by frame with
# `perf script`. Deterministic and BPF-free. Passes when every workload is ≥ MIN_IDENTICAL %
# identical. Skips (77) when perf cannot record here.
set -u
MIN_IDENTICAL=${MIN_IDENTICAL:-99.5}
build=${EMBER_BUILD:-$(cd "$(dirname "$0")/../.." && pwd)/build}
replay=$build/tools/unwind_replay
[ -x "$replay" ] || { echo "missing $replay (make $replay)"; exit 1; }
command -v perf >/dev/null || { echo "perf not installed"; exit 77; }
work=$(mktemp -d /tmp/ember-replay.XXXXXX)
trap '[ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT

if ! perf record -q -e cpu-clock -F 999 --call-graph dwarf,16384 -o "$work/probe.data" -- true \
	>/dev/null 2>&1; then
	echo "perf record with --call-graph dwarf does not work here"
	exit 77
fi

# A program that spends its time inside a signal handler: stacks cross __restore_rt.
cat >"$work/sigw.c" <<'EOF'
#include <signal.h>
#include <stdio.h>
#include <sys/time.h>
static volatile unsigned long sink;
static volatile int handled;
__attribute__((noinline)) static void spin(unsigned long n)
{
	for (unsigned long i = 0; i < n; i++)
		sink += i * i;
}
__attribute__((noinline)) static void handler_work(void) { spin(2000000); }
static void on_prof(int sig) { (void)sig; handler_work(); handled++; }
__attribute__((noinline)) static void main_work(void) { spin(100000); }
int main(void)
{
	struct sigaction sa = { 0 };
	struct itimerval it = { { 0, 2000 }, { 0, 2000 } };

	sa.sa_handler = on_prof;
	sigaction(SIGPROF, &sa, NULL);
	setitimer(ITIMER_PROF, &it, NULL);
	while (handled < 500)
		main_work();
	printf("%lu\n", sink);
	return 0;
}
EOF
gcc -O2 -fomit-frame-pointer -o "$work/sigw" "$work/sigw.c" || { echo "cannot build sigw"; exit 1; }

# 16 MB of compressible-but-not-trivial bytes for xz and gzip.
src=/usr/lib/x86_64-linux-gnu/libc.so.6
for f in /usr/lib/x86_64-linux-gnu/libLLVM-14.so /usr/bin/node /usr/bin/python3.11; do
	[ -r "$f" ] && { src=$f; break; }
done
for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16; do cat "$src"; done | head -c 16M >"$work/data.bin"

run_perl='my %h; sub fib { my $n = shift; $n < 2 ? $n : fib($n-1) + fib($n-2) }
for my $i (1..200000) { $h{"k$i"} = sqrt($i) } my @k = sort { $h{$a} <=> $h{$b} } keys %h;
my $m = 0; for (@k) { $m++ if /7.*3/ } print fib(24) + $m, "\n";'
run_py='import sys
def fib(n): return n if n < 2 else fib(n-1) + fib(n-2)
d = {str(i): i * i for i in range(1000000)}
s = sorted(d, key=lambda k: -d[k])
print(fib(31) + len(s))'
run_sql='WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<6000000) SELECT sum(x) FROM c;'

names=() cmds=()
add() { names+=("$1"); cmds+=("$2"); }
# Debian's own binaries (no frame pointers), by absolute path: PATH may hold other builds.
[ -x /usr/bin/perl ] && add perl "/usr/bin/perl -e '$run_perl'"
[ -x /usr/bin/python3.11 ] && add python3.11 "/usr/bin/python3.11 -c '$run_py'"
[ -x /usr/bin/sqlite3 ] && add sqlite3 "/usr/bin/sqlite3 :memory: '$run_sql'"
[ -x /usr/bin/xz ] && add xz-T2 "/usr/bin/xz -6 -T2 -c $work/data.bin"
[ -x /usr/bin/gzip ] && add gzip "/usr/bin/gzip -9 -c $work/data.bin"
add dd "/usr/bin/dd if=/dev/zero of=/dev/null bs=512 count=1500000"
add sigw "$work/sigw"

fail=0
for i in "${!names[@]}"; do
	n=${names[$i]} data=$work/${names[$i]}.data
	# The workload is perf's direct child: perf's own unwinding (the oracle) mixes up the
	# mappings of an image replaced by exec (e.g. bash -c 'exec ...') and stops early.
	if ! eval "perf record -q -e cpu-clock -F 999 --call-graph dwarf,16384 -o \"\$data\" \
		-- ${cmds[$i]}" >/dev/null 2>"$work/$n.err"; then
		echo "$n: perf record failed: $(tail -n 3 "$work/$n.err")"
		fail=1
		continue
	fi
	perf script -i "$data" --ns --no-inline --max-stack 1024 -F tid,time,ip,sym,dso \
		>"$work/$n.txt" 2>/dev/null
	if ! "$replay" -i "$data" -s "$work/$n.txt" -n "$n" -t "$MIN_IDENTICAL" -v \
		>"$work/$n.out"; then
		echo "FAIL below $MIN_IDENTICAL % identical:"
		cat "$work/$n.out"
		fail=1
	else
		grep "^$n:" "$work/$n.out"
	fi
	rm -f "$data"
done
exit $fail
