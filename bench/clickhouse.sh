#!/usr/bin/env bash
# bench/clickhouse — ember's ClickHouse store against ClickHouse itself, in one run on one server.
#
# Ingest: gen_batches (bench/gen_batches.c) sends ROWS rows (STACKS stacks, SERVICES services,
# BATCH rows per batch, CLIENTS parallel clients) through `ember server --store clickhouse://`:
# zstd JSON over HTTP, decoding, validation, the exactly-once markers and the RowBinary INSERT.
# Then the very rows ember stored are exported batch by batch in the format ember sends
# (RowBinary, the same columns, in the order ember sends them: the sort key, then the stack,
# gzip at ember's level GZIP) and posted straight to ClickHouse's HTTP interface into
# an identical empty table, with the same batch size and the same number of parallel clients.
# The direct path gets its bodies ready-made (like gen_batches' JSON), so the ratio charges ember
# with everything it does per row.
#
# Query: ProfileTracing for one service over the whole data set (`"debug": true` gives the SQL
# that ran), REPS times, against the same SQL sent to ClickHouse with curl, REPS times,
# alternating; medians are compared.
#
# Per-statement times come from system.query_log (CH_QUERY_LOG=1, see tests/lib/clickhouse.sh).
# Output: key=value lines and a summary; exit 1 if a step fails (not if a target is missed).
# GZIP (default 0, ember's default towards a loopback server: stored blocks, CRC only) is the
# deflate level of the INSERT bodies on both sides (ember's `?gzip=` URL option).
# Usage: bench/clickhouse.sh [BUILD_DIR]
#        (env: ROWS STACKS SERVICES BATCH CLIENTS REPS GZIP, EMBER=binary)
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-${EMBER_BUILD:-$top/build}}
case $build in /*) ;; *) build=$top/$build ;; esac
ROWS=${ROWS:-1000000}
STACKS=${STACKS:-5000}
SERVICES=${SERVICES:-20}
BATCH=${BATCH:-20000}
CLIENTS=${CLIENTS:-2}
REPS=${REPS:-7}
GZIP=${GZIP:-0}
ember=${EMBER:-$build/ember}
gen=$build/bench/gen_batches
for b in "$ember" "$gen"; do
	[ -x "$b" ] || { echo "bench/clickhouse: $b not built (make BUILD=... $b)" >&2; exit 1; }
done

export CH_QUERY_LOG=1
# shellcheck source=../tests/lib/clickhouse.sh
source "$top/tests/lib/clickhouse.sh"
tmp=$(mktemp -d /tmp/ember-bench-ch.XXXXXX)
spid=
cleanup() {
	if [ -n "$spid" ]; then
		kill "$spid" 2>/dev/null
		wait "$spid" 2>/dev/null
	fi
	ch_stop
	rm -rf "$tmp"
}
ch_start || exit 1
trap cleanup EXIT
now() { date +%s.%N; }
# Waits (bounded) until ClickHouse has no merge running, so that neither side pays for the
# other's background work.
settle() {
	local i
	for i in $(seq 600); do
		[ "$(ch_query "SELECT count() FROM system.merges")" = 0 ] && return 0
		sleep 0.5
	done
}

# --- ingest through ember ----------------------------------------------------------------------
"$ember" server --listen 127.0.0.1:0 --store "$CH_URL/bench_ember?gzip=$GZIP" >"$tmp/server.log" 2>&1 &
spid=$!
for _ in $(seq 100); do
	grep -q '(port [0-9]*)' "$tmp/server.log" && break
	sleep 0.1
done
port=$(sed -n 's/.*(port \([0-9]*\)).*/\1/p' "$tmp/server.log" | head -1)
[ -n "$port" ] || { echo "bench/clickhouse: server did not start" >&2; cat "$tmp/server.log" >&2; exit 1; }
# An hour-aligned start an hour ago: all rows in one partition, well inside the retention.
start=$(( $(date +%s) / 3600 * 3600 - 3600 ))
seconds=$(( 3600 < ROWS / 1000 ? 3600 : (ROWS / 1000 > 60 ? ROWS / 1000 : 60) ))
echo "clickhouse $(ch_query 'SELECT version()'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
# CPU seconds (user + system) of a process: what it costs whatever else the machine runs
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat"; }
ember_cpu0=$(cpu_s "$spid")
ch_cpu0=$(cpu_s "$CH_PID")
if ! "$gen" --url "http://127.0.0.1:$port" --rows "$ROWS" --stacks "$STACKS" \
	--services "$SERVICES" --hosts 4 --seconds "$seconds" --start "$start" \
	--batch-rows "$BATCH" --clients "$CLIENTS" >"$tmp/gen.out"; then
	echo "bench/clickhouse: ingest through ember failed" >&2
	tail -n 20 "$tmp/server.log" >&2
	exit 1
fi
ember_cpu=$(echo "$(cpu_s "$spid") - $ember_cpu0" | bc -l)
settle # ClickHouse's CPU per phase includes the merges of the phase's parts
ch_cpu_ember=$(echo "$(cpu_s "$CH_PID") - $ch_cpu0" | bc -l)
ember_rps=$(sed -n 's/^rows_per_second=//p' "$tmp/gen.out")
ember_s=$(sed -n 's/^send_seconds=//p' "$tmp/gen.out")
batches=$(sed -n 's/^batches=//p' "$tmp/gen.out")
service=$(sed -n 's/^first_service=//p' "$tmp/gen.out")
stored=$(ch_query "SELECT count() FROM bench_ember.in_process")
[ "$stored" = "$ROWS" ] || { echo "bench/clickhouse: ember stored $stored of $ROWS rows" >&2; exit 1; }

# --- the same rows straight into ClickHouse ---------------------------------------------------
cols=$(ch_query "SELECT arrayStringConcat(groupArray(name), ', ') FROM (SELECT name FROM system.columns
	WHERE database = 'bench_ember' AND table = 'in_process')")
ch_query "CREATE DATABASE bench_direct" >/dev/null
ch_query "CREATE TABLE bench_direct.in_process AS bench_ember.in_process" >/dev/null
mkdir -p "$tmp/direct"
for id in $(ch_query "SELECT DISTINCT batch_id FROM bench_ember.in_process ORDER BY batch_id"); do
	curl -sS --fail "http://127.0.0.1:$CH_HTTP_PORT/" --data-binary \
		"SELECT $cols FROM bench_ember.in_process WHERE batch_id = '$id' ORDER BY app_service,
		profile_language_type, profile_event_type, time, profile_location_str FORMAT RowBinary" |
		/usr/bin/python3 -c 'import sys, zlib
z = zlib.compressobj(int(sys.argv[1]), zlib.DEFLATED, 31)
sys.stdout.buffer.write(z.compress(sys.stdin.buffer.read()) + z.flush())' "$GZIP" \
		>"$tmp/direct/$id.gz" || exit 1
done
insert_q=$(printf 'INSERT INTO bench_direct.in_process (%s) FORMAT RowBinary' "$cols" | jq -sRr @uri)
cat >"$tmp/post.sh" <<EOF
#!/bin/sh
exec curl -sS --fail -o /dev/null -H 'Content-Encoding: gzip' --data-binary "@\$1" \
	"http://127.0.0.1:$CH_HTTP_PORT/?query=$insert_q&max_insert_block_size=$((BATCH + 1))"
EOF
chmod +x "$tmp/post.sh"
settle
ch_cpu0=$(cpu_s "$CH_PID")
t0=$(now)
# shellcheck disable=SC2012 # names are ours: bench-nodeN-NNNNNN.gz
ls "$tmp/direct"/*.gz | xargs -P "$CLIENTS" -n 1 "$tmp/post.sh" || { echo "direct insert failed" >&2; exit 1; }
t1=$(now)
settle
ch_cpu_direct=$(echo "$(cpu_s "$CH_PID") - $ch_cpu0" | bc -l)
direct_s=$(echo "$t1 - $t0" | bc -l)
stored=$(ch_query "SELECT count() FROM bench_direct.in_process")
[ "$stored" = "$ROWS" ] || { echo "bench/clickhouse: direct stored $stored of $ROWS rows" >&2; exit 1; }
direct_rps=$(echo "$ROWS / $direct_s" | bc -l)

# --- ProfileTracing against the raw GROUP BY ----------------------------------------------------
settle
req=$(printf '{"app_service":"%s","profile_language_type":"eBPF","profile_event_type":"on-cpu","time_start":%d,"time_end":%d,"debug":true}' \
	"$service" "$start" $((start + seconds - 1)))
curl -sS -X POST "http://127.0.0.1:$port/v1/profile/ProfileTracing" --data-binary "$req" >"$tmp/pt.json"
sql=$(jq -r '.debug.querier_debug[-1].sql' "$tmp/pt.json")
nodes=$(jq '.result | length' "$tmp/pt.json")
[ -n "$sql" ] && [ "$sql" != null ] || { echo "no SQL in the debug answer" >&2; head -c 500 "$tmp/pt.json" >&2; exit 1; }
api_t=() raw_t=()
for _ in $(seq "$REPS"); do
	api_t+=("$(curl -sS -o /dev/null -w '%{time_total}' -X POST \
		"http://127.0.0.1:$port/v1/profile/ProfileTracing" --data-binary "${req/,\"debug\":true/}")")
	raw_t+=("$(curl -sS -o /dev/null -w '%{time_total}' \
		"http://127.0.0.1:$CH_HTTP_PORT/" --data-binary "$sql")")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
api_med=$(median "${api_t[@]}")
raw_med=$(median "${raw_t[@]}")

# --- per-statement times (ClickHouse's own view) -------------------------------------------------
ch_query "SYSTEM FLUSH LOGS" >/dev/null
ch_query "SELECT multiIf(query LIKE 'INSERT INTO \`bench_ember\`.in_process%', 'ember rows INSERT',
		query LIKE 'INSERT INTO bench_direct.in_process%', 'direct rows INSERT',
		query LIKE '%.batches (batch_id%', 'ember batch marker INSERT',
		query LIKE 'SELECT max(state)%', 'ember batch probe', query LIKE '%bench_ember%GROUP BY%'
		AND query NOT LIKE '%batch_id%', 'ProfileTracing SQL', 'other') AS kind,
	count() AS n, round(sum(query_duration_ms) / 1000, 2) AS total_s,
	round(avg(query_duration_ms)) AS avg_ms
	FROM system.query_log WHERE type = 2 GROUP BY kind ORDER BY total_s DESC
	FORMAT PrettyCompactNoEscapes" >"$tmp/qlog.txt"

cat <<EOF
rows=$ROWS stacks=$STACKS services=$SERVICES batch_rows=$BATCH batches=$batches clients=$CLIENTS gzip=$GZIP
ember_seconds=$ember_s
ember_rows_per_second=$ember_rps
ember_server_cpu_us_per_row=$(printf '%.1f' "$(echo "$ember_cpu * 1000000 / $ROWS" | bc -l)") (decode, validate, encode, gzip, HTTP)
clickhouse_cpu_us_per_row_ember=$(printf '%.1f' "$(echo "$ch_cpu_ember * 1000000 / $ROWS" | bc -l)") (ClickHouse's CPU for ember's rows, merges included)
direct_seconds=$(printf '%.3f' "$direct_s")
direct_rows_per_second=$(printf '%.0f' "$direct_rps")
clickhouse_cpu_us_per_row_direct=$(printf '%.1f' "$(echo "$ch_cpu_direct * 1000000 / $ROWS" | bc -l)")
ingest_ratio=$(printf '%.2f' "$(echo "$ember_rps / $direct_rps" | bc -l)") (target >= 0.8)
cpu_ratio=$(printf '%.2f' "$(echo "$ch_cpu_direct / ($ch_cpu_ember + $ember_cpu)" | bc -l)") (direct CPU per row / (ClickHouse + ember server) CPU per row: the ingest ratio with the machine to ourselves, if CPU-bound)
query_service=$service query_nodes=$nodes reps=$REPS
profiletracing_median_seconds=$api_med
raw_groupby_median_seconds=$raw_med
query_ratio=$(printf '%.2f' "$(echo "$api_med / $raw_med" | bc -l)") (target <= 1.3)
EOF
cat "$tmp/qlog.txt"
