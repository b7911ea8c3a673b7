#!/usr/bin/env bash
# ember on ClickHouse when ClickHouse is not (yet) there, refuses the credentials, or dies under
# an agent's load:
#   1. ember server started before ClickHouse: /healthz 503 naming the refused connection, ingest
#      503 + Retry-After, ProfileTracing 500 FAIL; ClickHouse comes up on that port → healthy
#      without a restart, the schema made then, ingest and query work;
#   2. a wrong password: 503 naming authentication; a user created later → healthy, working;
#   3. column types that drifted (a user altered in_process, or another ember version made it):
#      an incompatible type is named in the log and /healthz (column, expected, found) and
#      nothing is written or altered until it is fixed; then a missing column is added, a
#      LowCardinality(String) one is kept (the same bytes), a column not ember's is left alone;
#   4. `ember agent` (BPF, root) profiling threads through ember server while ClickHouse is
#      SIGKILLed for ~5 s and restarted: every second arrives, no row twice.
# Skips (77) without clickhouse-server.
. "$(dirname "$0")/../lib/e2e.sh"
# shellcheck source=../lib/clickhouse.sh
source "$EMBER_TOP/tests/lib/clickhouse.sh"
ch__bin >/dev/null || { echo "clickhouse-server not installed: skipping"; exit 77; }
trap 'ch_stop; e2e_cleanup' EXIT
W=${EMBER_BUILD:-$EMBER_TOP/build}/workloads
POLL=${CH_START_TIMEOUT:-60} # bound, in seconds, of every wait for recovery

health() { # URL → status code; body in $E2E_TMP/h.json
	curl -s -o "$E2E_TMP/h.json" -w '%{http_code}' "$1/healthz"
}
ingest() { # URL JSON → status code; headers in $E2E_TMP/ing.h, body in $E2E_TMP/ing.json
	curl -s -D "$E2E_TMP/ing.h" -o "$E2E_TMP/ing.json" -w '%{http_code}' -X POST \
		"$1/v1/profile/ingest" -H 'Content-Type: application/json' --data-binary "$2"
}
batch() { # ID SERVICE VALUE
	printf '{"version":1,"batch_id":"%s","rows":[{"time":%d,"app_service":"%s","profile_location_str":"[p] %s;main;work","profile_value":%d}]}' \
		"$1" "$T" "$2" "$2" "$3"
}
q() { # URL SERVICE
	api "$1" "{\"app_service\":\"$2\",\"profile_language_type\":\"eBPF\",\"profile_event_type\":\"on-cpu\",\"time_start\":$((T - 60)),\"time_end\":$((T + 60))}"
}
wait_healthy() { # URL: polls /healthz, bounded by POLL seconds
	local i
	for i in $(seq $((POLL * 5))); do
		[ "$(health "$1")" = 200 ] && return 0
		sleep 0.2
	done
	return 1
}
desc() { jq -r .DESCRIPTION "$1"; }
T=$(( $(date +%s) - 600 ))

# --- 1. the server starts before ClickHouse --------------------------------------------------------
CHP=$(ch_free_port)
server_start s --store "clickhouse://127.0.0.1:$CHP/ops"
URL=$SRV_URL_s
check "ClickHouse down: /healthz 503" [ "$(health "$URL")" = 503 ]
check "ClickHouse down: /healthz names the host and the refused connection" \
	[ "$(desc "$E2E_TMP/h.json")" = "clickhouse 127.0.0.1:$CHP: unreachable: connection refused" ]
check "ClickHouse down: ingest 503" [ "$(ingest "$URL" "$(batch ops-1 svc 7)")" = 503 ]
check "ClickHouse down: ingest says Retry-After" grep -qi '^Retry-After: [0-9]' "$E2E_TMP/ing.h"
check "ClickHouse down: ingest names the cause" grep -q "connection refused" "$E2E_TMP/ing.json"
check "ClickHouse down: ProfileTracing 500 FAIL" [ "$(q "$URL" svc)-$(jqr .OPT_STATUS)" = 500-FAIL ]
check "ClickHouse down: ProfileTracing names the cause" bash -c "jq -r .DESCRIPTION '$E2E_TMP/resp.json' | grep -q 'unreachable: connection refused'"

ch_start "$CHP" || fail "clickhouse did not start on port $CHP"
check "ClickHouse up: /healthz 200 without a restart" wait_healthy "$URL"
check "ClickHouse up: the schema was made on first contact" \
	[ "$(ch_query "SELECT count() FROM system.tables WHERE database = 'ops' AND name = 'in_process'")" = 1 ]
check "ClickHouse up: ingest 200" [ "$(ingest "$URL" "$(batch ops-1 svc 7)")" = 200 ]
check "ClickHouse up: the batch is stored" [ "$(ch_query "SELECT sum(profile_value) FROM ops.in_process")" = 7 ]
check "ClickHouse up: ProfileTracing answers" [ "$(q "$URL" svc)-$(jqr '.result[0].total_value')" = 200-7 ]

# --- 2. wrong credentials, then the right user appears ---------------------------------------------
server_start w --store "clickhouse://ember:wrong@127.0.0.1:$CHP/opsauth"
check "wrong password: the server starts, /healthz 503" [ "$(health "$SRV_URL_w")" = 503 ]
check "wrong password: /healthz names authentication and the user" \
	[ "$(desc "$E2E_TMP/h.json")" = "clickhouse 127.0.0.1:$CHP: authentication failed for user 'ember'" ]
check "wrong password: ingest 503 + Retry-After" bash -c "[ \"\$(curl -s -D '$E2E_TMP/w.h' -o '$E2E_TMP/w.json' -w '%{http_code}' -X POST '$SRV_URL_w/v1/profile/ingest' --data-binary '$(batch auth-1 svc 3)')\" = 503 ] && grep -qi '^Retry-After' '$E2E_TMP/w.h' && grep -q 'authentication failed' '$E2E_TMP/w.json'"
check "wrong password: ProfileTracing 500 FAIL naming authentication" \
	bash -c "[ \"\$(curl -s -o '$E2E_TMP/w.json' -w '%{http_code}' -X POST '$SRV_URL_w/v1/profile/ProfileTracing' --data-binary '{\"app_service\":\"svc\",\"profile_language_type\":\"eBPF\",\"profile_event_type\":\"on-cpu\",\"time_start\":$T,\"time_end\":$T}')\" = 500 ] && grep -q 'authentication failed' '$E2E_TMP/w.json'"
check "wrong password: no database made" \
	[ "$(ch_query "SELECT count() FROM system.databases WHERE name = 'opsauth'")" = 0 ]

server_start l --store "clickhouse://late:pw@127.0.0.1:$CHP/opslate"
check "unknown user: /healthz 503 naming authentication" \
	bash -c "[ \"\$(curl -s -o '$E2E_TMP/l.json' -w '%{http_code}' '$SRV_URL_l/healthz')\" = 503 ] && grep -q \"authentication failed for user 'late'\" '$E2E_TMP/l.json'"
# The operator adds the user; ClickHouse reloads users.xml by itself.
ch_edit_users 's|</users>|<late><password>pw</password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></late></users>|'
check "user created later: /healthz 200 without a restart" wait_healthy "$SRV_URL_l"
check "user created later: ingest 200" [ "$(ingest "$SRV_URL_l" "$(batch late-1 svc 9)")" = 200 ]
check "user created later: ProfileTracing answers" [ "$(q "$SRV_URL_l" svc)-$(jqr '.result[0].total_value')" = 200-9 ]

# --- 3. column drift ------------------------------------------------------------------------------
server_start d --store "clickhouse://127.0.0.1:$CHP/drift"
check "drift: a fresh table is healthy and logs no drift" bash -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' '$SRV_URL_d/healthz')\" = 200 ] && ! grep -q 'in_process: column' '$E2E_TMP/d.log'"
server_stop d
ch_query "ALTER TABLE drift.in_process MODIFY COLUMN profile_value Int32" &&
	ch_query "ALTER TABLE drift.in_process DROP COLUMN compression_algo" &&
	ch_query "ALTER TABLE drift.in_process ADD COLUMN note String" &&
	curl -sS --fail-with-body "http://127.0.0.1:$CH_HTTP_PORT/?allow_experimental_low_cardinality_type=1" \
		--data-binary "ALTER TABLE drift.in_process MODIFY COLUMN host LowCardinality(String)" ||
	fail "altering drift.in_process"
server_start d2 --store "clickhouse://127.0.0.1:$CHP/drift"
DRIFT="drift.in_process column profile_value is Int32, ember writes Int64: refusing to write until the column is Int64"
check "drift: /healthz 503 names the column, found and expected type" \
	[ "$(health "$SRV_URL_d2")-$(desc "$E2E_TMP/h.json")" = "503-clickhouse 127.0.0.1:$CHP: $DRIFT" ]
check "drift: the log says so at open" \
	grep -q "error clickhouse: drift.in_process: column profile_value is Int32, ember writes Int64: refusing to write" "$E2E_TMP/d2.log"
check "drift: ingest 503 + Retry-After naming the column" bash -c "[ \"\$(curl -s -D '$E2E_TMP/d.h' -o '$E2E_TMP/d.json' -w '%{http_code}' -X POST '$SRV_URL_d2/v1/profile/ingest' --data-binary '$(batch drift-1 svc 5)')\" = 503 ] && grep -qi '^Retry-After' '$E2E_TMP/d.h' && grep -q 'column profile_value is Int32' '$E2E_TMP/d.json'"
check "drift: nothing written, nothing altered" \
	[ "$(ch_query "SELECT count() FROM drift.in_process")-$(ch_query "SELECT count() FROM system.columns WHERE database = 'drift' AND name = 'compression_algo'")" = 0-0 ]
check "drift: the details are logged once, not on every request" \
	[ "$(grep -c 'error clickhouse: drift.in_process: column profile_value is Int32' "$E2E_TMP/d2.log")" = 1 ]
ch_query "ALTER TABLE drift.in_process MODIFY COLUMN profile_value Int64" || fail "altering drift.in_process back"
check "drift fixed: /healthz 200 without a restart" wait_healthy "$SRV_URL_d2"
check "drift fixed: the missing column was added and logged" bash -c "[ \"\$(source '$EMBER_TOP/tests/lib/clickhouse.sh'; ch_query \"SELECT type FROM system.columns WHERE database = 'drift' AND table = 'in_process' AND name = 'compression_algo'\")\" = String ] && grep -q 'column compression_algo was missing: added as String' '$E2E_TMP/d2.log'"
check "drift fixed: LowCardinality(String) host kept, noted as the same bytes" bash -c "[ \"\$(source '$EMBER_TOP/tests/lib/clickhouse.sh'; ch_query \"SELECT type FROM system.columns WHERE database = 'drift' AND table = 'in_process' AND name = 'host'\")\" = 'LowCardinality(String)' ] && grep -q 'column host is LowCardinality(String) where ember creates String: the same bytes' '$E2E_TMP/d2.log'"
check "drift fixed: a column not ember's is named and left alone" grep -q "column note is not ember's: left to its default" "$E2E_TMP/d2.log"
check "drift fixed: ingest 200" [ "$(ingest "$SRV_URL_d2" "$(batch drift-1 svc 5)")" = 200 ]
check "drift fixed: the row reads back, host included" \
	[ "$(ch_query "SELECT sum(profile_value), any(note) FROM drift.in_process")" = "$(printf '5\t')" ]
check "drift fixed: ProfileTracing answers" [ "$(q "$SRV_URL_d2" svc)-$(jqr '.result[0].total_value')" = 200-5 ]

# --- 4. an agent's rows across a ClickHouse crash ---------------------------------------------------
if [ "$(id -u)" -ne 0 ] || [ ! -x "$W/threads" ]; then
	echo "skipping the agent part: needs root (BPF) and $W/threads"
	e2e_done
	exit 0
fi
server_start a --store "clickhouse://127.0.0.1:$CHP/opsagent"
"$EMBER_BIN" agent --server "$SRV_URL_a" --spool-dir "$E2E_TMP/spool" --process-regex '^threads$' \
	>"$E2E_TMP/agent.log" 2>&1 &
AGENT=$!
E2E_PIDS+=("$AGENT")
# After the agent's start-up scan of the host's unwind tables: a window drained late during it
# folds two seconds into one (test_agent saw 12 of 13 seconds at load 7).
for _ in $(seq $((POLL * 20))); do grep -q "unwind tables: " "$E2E_TMP/agent.log" && break; sleep 0.05; done
grep -q "unwind tables: " "$E2E_TMP/agent.log" || { cat "$E2E_TMP/agent.log" >&2; fail "the agent did not finish its start-up scan"; }
# threads burns for a span of wall time (cpu_split's is CPU time): the outage falls inside it.
"$W/threads" 16 >/dev/null &
LOAD=$!
sleep 5
ch_kill                               # ClickHouse dies mid-ingest …
sleep 5
ch_restart || fail "clickhouse did not restart"   # … and comes back on the same port and data
wait "$LOAD"
# The agent retries after Retry-After: wait (bounded) until every second of the run is stored.
span=0 secs=0
for _ in $(seq $((POLL * 2))); do
	read -r secs span <<<"$(ch_query "SELECT count(DISTINCT time), max(time) - min(time) + 1 FROM
		opsagent.in_process WHERE app_service = 'threads' AND process_id = $LOAD" 2>/dev/null || echo "0 0")"
	[ "${span:-0}" -ge 14 ] && [ "$secs" -ge $((span - 1)) ] && break
	sleep 0.5
done
sleep 2 # one more upload interval: a duplicate would arrive now
kill -TERM "$AGENT"
wait "$AGENT"
check "agent exited cleanly" [ $? -eq 0 ]
read -r secs span <<<"$(ch_query "SELECT count(DISTINCT time), max(time) - min(time) + 1 FROM
	opsagent.in_process WHERE app_service = 'threads' AND process_id = $LOAD")"
echo "threads rows cover $secs of $span seconds, across a ~5 s ClickHouse outage"
check "every second of the run arrived, including the outage" [ "$secs" -ge $((span - 1)) -a "$span" -ge 14 ]
check "no row stored twice" [ "$(ch_query "SELECT count() FROM (SELECT time, process_id,
	profile_location_str, count() AS c FROM opsagent.in_process GROUP BY time, process_id,
	profile_location_str HAVING c > 1)")" = 0 ]
check "the agent saw the outage (503 / retry)" grep -qiE "503|retry|unavailable" "$E2E_TMP/agent.log"
check "the server logged the outage" grep -q "unreachable" "$E2E_TMP/a.log"
e2e_done
