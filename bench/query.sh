#!/bin/bash
# bench/query.sh BUILD_DIR — the server on SQLite, end to end, against the raw store query.
#
# 1. A real `ember server` on a fresh SQLite file; bench/gen_batches (built as
#    BUILD_DIR/bench/gen_batches) sends BQ_ROWS rows (default 1,000,000: 5,000 distinct stacks
#    of ~30 frames, 20 services, 4 hosts, 600 one-second windows) as zstd batches of
#    BQ_BATCH_ROWS rows from BQ_CLIENTS concurrent clients through POST /v1/profile/ingest.
#    Reported: rows/s (wall, first request to last answer) and the server's CPU per row.
# 2. ProfileTracing for one service, BQ_RUNS times (median), against the SQL the store ran —
#    taken from the API's own debug answer — run by the sqlite3 tool on the same file in the
#    same run (`.timer on`, output to /dev/null, the store's cache and mmap pragmas), BQ_RUNS
#    times, alternating with the API calls. Reported: wall medians, CPU (server CPU per request
#    vs the tool's user+sys), ratios.
#    Cases: the whole 600 s (--max-stacks default, not reached), the last 60 s, and the whole
#    range with --max-stacks 100 (reached: the answer says it is cut).
# BQ_PERF=1 adds a perf profile of the server during ingest and during the queries; BQ_KEEP=1
# keeps the database and the logs (the temporary directory is printed).
# Exits non-zero only if something does not work (a refused batch, a failed query); missing a
# performance target is printed, not failed: the machine may be shared.
set -u
BUILD=${1:-build}
TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
case $BUILD in /*) ;; *) BUILD=$TOP/$BUILD ;; esac
EMBER=$BUILD/ember
GEN=$BUILD/bench/gen_batches
ROWS=${BQ_ROWS:-1000000}
STACKS=${BQ_STACKS:-5000}
SERVICES=${BQ_SERVICES:-20}
BATCH_ROWS=${BQ_BATCH_ROWS:-100000}
CLIENTS=${BQ_CLIENTS:-2}
RUNS=${BQ_RUNS:-21}
PERF=${BQ_PERF:-0}
KEEP=${BQ_KEEP:-0}
TARGET_ROWS_S=500000
TARGET_RATIO=1.3

for f in "$EMBER" "$GEN"; do
	[ -x "$f" ] || { echo "bench/query: $f missing: make BUILD=${1:-build} bench" >&2; exit 1; }
done
command -v sqlite3 >/dev/null || { echo "bench/query: the sqlite3 tool is needed" >&2; exit 1; }
command -v jq >/dev/null || { echo "bench/query: jq is needed" >&2; exit 1; }

TMP=$(mktemp -d /tmp/ember-bench-query.XXXXXX)
DB=$TMP/bench.db
SRV_PID=""
cleanup() {
	[ -n "$SRV_PID" ] && kill "$SRV_PID" 2>/dev/null && wait "$SRV_PID" 2>/dev/null
	if [ "$KEEP" = 1 ]; then echo "bench/query: kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

die() { echo "bench/query: $*" >&2; exit 1; }
median() { sort -g | awk '{v[NR] = $1} END {if (NR % 2) print v[(NR + 1) / 2];
	else printf "%.6f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ticks_to_s() { awk -v t="$1" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.3f", t / hz}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "n/a"}'; }

# server_start [flags...]: a server on $DB; sets SRV_PID and URL.
server_start() {
	# --retention 0: no prune thread deleting rows while we measure.
	"$EMBER" server --listen 127.0.0.1:0 --store "sqlite:$DB" --retention 0 "$@" \
		>"$TMP/server.log" 2>&1 &
	SRV_PID=$!
	local port=""
	for _ in $(seq 1 200); do
		port=$(sed -n 's/.*serving on .* (port \([0-9]*\)).*/\1/p' "$TMP/server.log" | head -n1)
		[ -n "$port" ] && break
		kill -0 "$SRV_PID" 2>/dev/null || { cat "$TMP/server.log" >&2; die "server exited"; }
		sleep 0.05
	done
	[ -n "$port" ] || die "server did not start"
	URL=http://127.0.0.1:$port
}
server_stop() {
	kill -TERM "$SRV_PID" && wait "$SRV_PID" || die "server did not stop cleanly"
	SRV_PID=""
}

perf_start() { # NAME
	[ "$PERF" = 1 ] || return 0
	perf record -g -q -o "$TMP/perf.$1" -p "$SRV_PID" >/dev/null 2>&1 &
	PERF_PID=$!
	sleep 0.5
}
perf_stop() { # NAME
	[ "$PERF" = 1 ] || return 0
	kill -INT "$PERF_PID"; wait "$PERF_PID" 2>/dev/null
	echo "--- perf: server during $1 (self time by shared object, then by symbol)"
	perf report -i "$TMP/perf.$1" --no-children --sort dso --stdio -g none 2>/dev/null |
		grep '%' | head -8
	perf report -i "$TMP/perf.$1" --no-children --sort dso,sym --stdio -g none 2>/dev/null |
		grep '%' | head -25
}

echo "bench/query: $(nproc) cores, $(uname -sr), $(date -u +%Y-%m-%dT%H:%MZ)," \
	"load $(cut -d' ' -f1-3 /proc/loadavg), sqlite3 tool $(sqlite3 --version | cut -d' ' -f1)"

# --- 1. ingest -------------------------------------------------------------------------------
server_start
perf_start ingest
c0=$(cpu_ticks "$SRV_PID")
"$GEN" --url "$URL" --rows "$ROWS" --stacks "$STACKS" --services "$SERVICES" \
	--batch-rows "$BATCH_ROWS" --clients "$CLIENTS" --start "$(($(date +%s) / 60 * 60 - 600))" \
	>"$TMP/gen.out" || die "ingest failed"
c1=$(cpu_ticks "$SRV_PID")
perf_stop ingest
# shellcheck disable=SC1090
. "$TMP/gen.out"
ING_CPU=$(ticks_to_s $((c1 - c0)))
ING_RPS=$rows_per_second
ING_CPU_RPS=$(awk -v r="$rows" -v c="$ING_CPU" 'BEGIN {printf "%.0f", (c > 0 ? r / c : 0)}')
stored=$(sqlite3 "$DB" "SELECT count(*) FROM samples") || die "cannot read $DB"
nstacks=$(sqlite3 "$DB" "SELECT count(*) FROM stacks")
frames=$(sqlite3 "$DB" "SELECT printf('%.1f', avg(length(text) - length(replace(text, ';', '')) + 1))
	FROM stacks")
[ "$stored" = "$rows" ] || die "stored $stored rows of $rows"
echo "ingest: $rows rows ($nstacks distinct stacks, $frames frames on average, $services services)" \
	"in $batches zstd batches of <= $BATCH_ROWS rows ($json_bytes bytes JSON, $zstd_bytes zstd)" \
	"from $clients clients: $send_seconds s, $ING_RPS rows/s; server CPU $ING_CPU s" \
	"= $ING_CPU_RPS rows per CPU-second"

# --- 2. ProfileTracing against the raw query ---------------------------------------------------
# query_case NAME TSTART TEND: BQ_RUNS API calls and BQ_RUNS raw runs; appends a table row.
ROWS_MD=""
query_case() {
	local name=$1 ts=$2 te=$3 body sql status desc nodes nres i c0 c1
	local api_wall api_cpu raw_wall raw_cpu line api_ticks
	body="{\"app_service\":\"$first_service\",\"profile_event_type\":\"on-cpu\","
	body+="\"profile_language_type\":\"eBPF\",\"time_start\":$ts,\"time_end\":$te"
	status=$(curl -s -o "$TMP/debug.json" -w '%{http_code}' -X POST \
		"$URL/v1/profile/ProfileTracing" --data-binary "$body,\"debug\":true}")
	[ "$status" = 200 ] || { cat "$TMP/debug.json" >&2; die "$name: HTTP $status"; }
	sql=$(jq -r '.debug.querier_debug[-1].sql' "$TMP/debug.json")
	desc=$(jq -r '.DESCRIPTION' "$TMP/debug.json")
	nodes=$(jq '.result | length' "$TMP/debug.json")
	nres=$(sqlite3 "$DB" "SELECT count(*) FROM ($sql)")
	# API calls and raw runs alternate, so both see the same load on a shared machine. One
	# sqlite3 process (a coprocess) keeps its cache warm, as the server's reader does.
	coproc RAW { sqlite3 "$DB" 2>&1; }
	printf 'PRAGMA mmap_size=268435456;\nPRAGMA cache_size=-32768;\n.timer on\n' >&"${RAW[1]}"
	read -r _ <&"${RAW[0]}" # the mmap_size pragma answers with its value
	: >"$TMP/api.times"
	: >"$TMP/raw.times"
	api_ticks=0
	for i in $(seq 1 "$RUNS"); do
		c0=$(cpu_ticks "$SRV_PID")
		curl -s -o "$TMP/resp.json" -w '%{http_code} %{time_total} %{size_download}\n' \
			-X POST "$URL/v1/profile/ProfileTracing" --data-binary "$body}" \
			>>"$TMP/api.times" || die "$name: curl failed"
		c1=$(cpu_ticks "$SRV_PID")
		api_ticks=$((api_ticks + c1 - c0))
		printf '.once /dev/null\n%s;\n' "$sql" >&"${RAW[1]}"
		read -r -t 600 line <&"${RAW[0]}" || die "$name: no answer from sqlite3"
		case $line in "Run Time"*) echo "$line" >>"$TMP/raw.times" ;;
		*) die "$name: sqlite3: $line" ;; esac
	done
	exec {RAW[1]}>&-
	wait "$RAW_PID" 2>/dev/null
	awk '$1 != 200 {exit 1}' "$TMP/api.times" || die "$name: a call failed"
	api_wall=$(awk '{print $2}' "$TMP/api.times" | median)
	api_cpu=$(awk -v t="$api_ticks" -v n="$RUNS" -v hz="$(getconf CLK_TCK)" \
		'BEGIN {printf "%.4f", t / hz / n}')
	raw_wall=$(awk '/^Run Time/ {print $4}' "$TMP/raw.times" | median)
	raw_cpu=$(awk '/^Run Time/ {print $6 + $8}' "$TMP/raw.times" | median)
	printf '%s: %s stacks, %s nodes, %s bytes; API %.4f s (CPU %.4f s), raw %.4f s (CPU %.4f s);' \
		"$name" "$nres" "$nodes" "$(awk 'NR == 1 {print $3}' "$TMP/api.times")" \
		"$api_wall" "$api_cpu" "$raw_wall" "$raw_cpu"
	echo " ratio wall $(ratio "$api_wall" "$raw_wall"), CPU $(ratio "$api_cpu" "$raw_cpu")" \
		"${desc:+(DESCRIPTION: ${desc:0:60}...)}"
	ROWS_MD+="| $name | $nres | $nodes | $(printf '%.1f' "$(awk -v v="$api_wall" 'BEGIN {print v * 1000}')")"
	ROWS_MD+=" | $(printf '%.1f' "$(awk -v v="$raw_wall" 'BEGIN {print v * 1000}')")"
	ROWS_MD+=" | $(ratio "$api_wall" "$raw_wall") | $(awk -v v="$api_cpu" 'BEGIN {printf "%.1f", v * 1000}')"
	ROWS_MD+=" | $(awk -v v="$raw_cpu" 'BEGIN {printf "%.1f", v * 1000}') | $(ratio "$api_cpu" "$raw_cpu") |"
	ROWS_MD+=$'\n'
	LAST_RATIO=$(ratio "$api_wall" "$raw_wall")
}

perf_start query
query_case "$first_service, 600 s, max-stacks 1000000 (not reached)" "$time_start" "$time_end"
MAIN_RATIO=$LAST_RATIO
query_case "$first_service, last 60 s" "$((time_end - 59))" "$time_end"
perf_stop query
server_stop
server_start --max-stacks 100
query_case "$first_service, 600 s, --max-stacks 100 (reached)" "$time_start" "$time_end"
server_stop

echo
echo "| ingest | rows | batches × rows | clients | wall s | rows/s | server CPU s | rows/CPU-s |"
echo "|---|---|---|---|---|---|---|---|"
echo "| $services services, $nstacks stacks, ~$frames frames | $rows | $batches × ≤$BATCH_ROWS" \
	"| $clients | $send_seconds | $ING_RPS | $ING_CPU | $ING_CPU_RPS |"
echo
echo "| ProfileTracing (one service) | stacks | nodes | API ms | raw ms | ratio |" \
	"API CPU ms | raw CPU ms | CPU ratio |"
echo "|---|---|---|---|---|---|---|---|---|"
printf '%s' "$ROWS_MD"
echo
awk -v r="$ING_RPS" -v t="$TARGET_ROWS_S" 'BEGIN {printf "target ingest >= %d rows/s: %s (%d)\n",
	t, (r >= t ? "met" : "MISSED"), r}'
awk -v r="$MAIN_RATIO" -v t="$TARGET_RATIO" 'BEGIN {printf "target API <= %.1fx raw: %s (%.2fx)\n",
	t, (r <= t ? "met" : "MISSED"), r}'
