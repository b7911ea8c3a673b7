# bench/unwind_workloads.sh — the workloads of bench/unwind.sh and bench/unwind_ab.sh, sourced
# by both: writes their inputs into $T and defines CMD[name] (a shell command line) and ORDER
# (the names to run: $ONLY, or DEFAULT_ORDER, or all).
# shellcheck shell=bash disable=SC2034
cat > "$T/w.pl" <<'PL'
sub fib { my $n = shift; return $n < 2 ? $n : fib($n - 1) + fib($n - 2); }
my %h; for my $i (1 .. 400000) { $h{"k$i"} = $i * 7 % 1013; }
my @s = sort { $h{$a} <=> $h{$b} } keys %h; print fib(27), "\n";
PL
cat > "$T/w.py" <<'PY'
import json
def fib(n): return n if n < 2 else fib(n - 1) + fib(n - 2)
d = {str(i): [i, {"x": i}] for i in range(200000)}
print(fib(27), len(json.loads(json.dumps(d))))
PY
cat > "$T/w.js" <<'JS'
function hot(n) { let x = 0; for (let i = 0; i < n; i++) x = (x * 31 + i) % 1000003; return x; }
const end = Date.now() + 3000; let s = 0;
while (Date.now() < end) s += hot(50000) + JSON.stringify({a: s}).length;
console.log(s > 0);
JS
for i in 1 2 3 4; do cat /usr/bin/perl /usr/lib/x86_64-linux-gnu/libc.so.6; done > "$T/in.bin"

declare -A CMD=(
	[perl]="perl $T/w.pl"
	[python3.11]="/usr/bin/python3.11 $T/w.py"
	[sqlite3]="sqlite3 :memory: 'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 4000000) SELECT sum(x % 7) FROM c;'"
	[xz-T2]="xz -6 -T2 -c $T/in.bin"
	[gzip]="gzip -6 -c $T/in.bin"
	[dd]="dd if=/dev/zero of=/dev/null bs=512 count=3000000"
	[node]="node $T/w.js"
)
ORDER=${ONLY:-${DEFAULT_ORDER:-"perl python3.11 sqlite3 xz-T2 gzip dd node"}}
