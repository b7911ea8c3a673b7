#!/usr/bin/env bash
# ProfileTracing end to end: a real `ember server` on a temporary SQLite file, data put in with
# `ember import`, the API called with curl, answers compared with golden JSON and DeepFlow's ids.
. "$(dirname "$0")/../lib/e2e.sh"
FIX=$EMBER_TOP/tests/fixtures/api
DB=$E2E_TMP/ember.db
# The same suite runs on ClickHouse: tests/e2e/test_api_clickhouse.sh sets EMBER_TEST_STORE.
STORE=${EMBER_TEST_STORE:-sqlite:$DB}
T=$(( $(date +%s) / 60 * 60 - 3600 ))  # an hour ago: inside the 72 h retention

server_start s --store "$STORE" --max-body 64k
URL=$SRV_URL_s
req() { # app_service [extra json]
	printf '{"app_service":"%s","profile_language_type":"eBPF","profile_event_type":"on-cpu","time_start":%d,"time_end":%d%s}' \
		"$1" $((T - 10)) $((T + 10)) "${2:-}"
}

# --- data in -------------------------------------------------------------------------------
"$EMBER_BIN" import --server "$URL" --app-service deepflow-agent --time $T --process-id 42 \
	--tag k8s.label.app=agent "$FIX/worked-example.folded" || fail "import worked example"
"$EMBER_BIN" import --server "$URL" --app-service Total --time $T "$FIX/total-seed.folded" || fail "import Total"

# --- the worked example of deepflow-behaviour §2.4, byte for byte ----------------------------
check "worked example: HTTP 200" [ "$(api "$URL" "$(req deepflow-agent)")" = 200 ]
check "worked example: golden JSON byte for byte" cmp -s "$E2E_TMP/resp.json" "$FIX/worked-example.golden.json"
check "content type is DeepFlow's" bash -c "curl -s -D - -o /dev/null -X POST '$URL/v1/profile/ProfileTracing' -d '$(req deepflow-agent)' | grep -qi '^Content-Type: application/json; charset=utf-8'"

# --- the seed's Total example: its three node ids exactly ----------------------------------
api "$URL" "$(req Total)" >/dev/null
check "Total root" [ "$(jqr '.result[0] | "\(.profile_location_str) \(.node_id) \(.parent_node_id) \(.total_value)"')" = "Total  -1 27573" ]
check "seed id of [p] process-exporte" [ "$(jqr '.result[] | select(.profile_location_str=="[p] process-exporte") | .node_id')" = 9d3c5fd3-4cd2-5d04-be22-e0f27144f638 ]
check "seed id of [p] deepflow-agent" [ "$(jqr '.result[] | select(.profile_location_str=="[p] deepflow-agent") | .node_id')" = 1762633e-a955-5c80-a5be-22529903b0bf ]
check "seed id of [t] stats-collector and its parent" [ "$(jqr '.result[] | select(.profile_location_str=="[t] stats-collector") | "\(.node_id) \(.parent_node_id) \(.self_value)"')" = "99e8ce53-e3bf-5b33-a63d-aa47e00e2ff4 1762633e-a955-5c80-a5be-22529903b0bf 33" ]
check "[p] deepflow-agent self and total" [ "$(jqr '.result[] | select(.profile_location_str=="[p] deepflow-agent") | "\(.self_value) \(.total_value)"')" = "2512 2545" ]

# --- tag_filter ------------------------------------------------------------------------------
api "$URL" "$(req deepflow-agent ',"tag_filter":"process_id = 42 AND k8s.label.app = '"'agent'"'"')" >/dev/null
check "tag_filter matching keeps everything" [ "$(jqr '.result[0].total_value')" = 50505 ]
api "$URL" "$(req deepflow-agent ',"tag_filter":"process_id = 43 OR app_service = '"'x'"'"')" >/dev/null
check "tag_filter OR stays inside the other conditions (result null)" [ "$(jqr '.result')" = null ]
check "bad tag_filter: 400 with position" [ "$(api "$URL" "$(req deepflow-agent ',"tag_filter":"process_id = = 1"')")" = 400 ]
check "bad tag_filter: INVALID_POST_DATA naming the position" bash -c "jq -r .DESCRIPTION '$E2E_TMP/resp.json' | grep -q 'position'"
check "unknown tag_filter field: 400" [ "$(api "$URL" "$(req deepflow-agent ',"tag_filter":"podx = 1"')")" = 400 ]
check "unknown field is named" bash -c "jq -r .DESCRIPTION '$E2E_TMP/resp.json' | grep -q podx"
check "injection attempt answers 400 or nothing, and the data survives" bash -c "
	api() { curl -s -o /dev/null -w '%{http_code}' -X POST '$URL/v1/profile/ProfileTracing' --data-binary \"\$1\"; }
	c=\$(api '$(req deepflow-agent ',"tag_filter":"app_service = '"'x'"'; DROP TABLE samples; --"')')
	[ \"\$c\" = 400 ] || [ \"\$c\" = 200 ]"
api "$URL" "$(req deepflow-agent)" >/dev/null
check "data intact after injection attempt" [ "$(jqr '.result[0].total_value')" = 50505 ]

# --- the injection corpus, through the API: as a quoted value, as a tag value and as the whole
# filter. Every answer is 200 or 400 (never a 500 from a broken statement) and the data survives.
inj_codes=$E2E_TMP/inj.codes
: > "$inj_codes"
while IFS= read -r p; do
	q=${p//\\/\\\\}; q=${q//\'/\\\'}   # the tag_filter string escapes: \\ and \'
	for f in "app_service = '$q'" "$p"; do
		body=$(jq -cn --arg f "$f" --argjson t $T '{app_service:"deepflow-agent", profile_language_type:"eBPF",
			profile_event_type:"on-cpu", time_start:($t-10), time_end:($t+10), tag_filter:$f}')
		api "$URL" "$body" >> "$inj_codes"
		echo >> "$inj_codes"
	done
done < "$EMBER_TOP/tests/fixtures/injection.txt"
echo "injection corpus: $(sort "$inj_codes" | uniq -c | tr '\n' ' ')"
check "injection corpus: $(grep -c . "$inj_codes") requests, each 200 or 400" bash -c "! grep -vqE '^(200|400)$' '$inj_codes'"
api "$URL" "$(req deepflow-agent)" >/dev/null
check "injection corpus: data intact afterwards, byte for byte" cmp -s "$E2E_TMP/resp.json" "$FIX/worked-example.golden.json"

# --- max_kernel_stack_depth -----------------------------------------------------------------
api "$URL" "$(req deepflow-agent ',"max_kernel_stack_depth":0')" >/dev/null
check "depth 0 removes kernel frames; main_loop keeps the value as self" [ "$(jqr '[.result[] | select(.profile_location_str | startswith("[k]"))] | length')-$(jqr '.result[] | select(.profile_location_str=="main_loop") | .self_value')" = "0-20202" ]
api "$URL" "$(req deepflow-agent ',"max_kernel_stack_depth":1')" >/dev/null
check "depth 1 keeps exactly the outermost kernel frame" [ "$(jqr '[.result[] | select(.profile_location_str | startswith("[k]")) | .profile_location_str] | join(",")')" = "[k] entry_SYSCALL_64" ]
api "$URL" "$(req deepflow-agent ',"max_kernel_stack_depth":2')" >/dev/null
check "depth 2 with 2 kernel frames leaves the stack alone (DeepFlow drops one)" cmp -s "$E2E_TMP/resp.json" "$FIX/worked-example.golden.json"
api "$URL" "$(req deepflow-agent ',"max_kernel_stack_depth":null')" >/dev/null
check "depth null = -1" cmp -s "$E2E_TMP/resp.json" "$FIX/worked-example.golden.json"

# --- formats, discovery, debug ----------------------------------------------------------------
api "$URL" "$(req deepflow-agent ',"format":"compact"')" >/dev/null
check "compact: root function and node_values" [ "$(jqr '"\(.result.functions[0]) \(.result.node_values.values[0] | join(","))"')" = "deepflow-agent 0,-1,0,50505" ]
check "compact: 10 nodes, 10 functions" [ "$(jqr '"\(.result.node_values.values | length) \(.result.functions | length)"')" = "10 10" ]
api "$URL" "$(req '')" >/dev/null
check "empty app_service discovers services (root joins them)" [ "$(jqr '"\(.result[0].profile_location_str) \(.result[0].total_value)"')" = "Total, deepflow-agent 78078" ]
api "$URL" "$(req deepflow-agent ',"debug":true')" >/dev/null
check "debug object with the SQL that ran" bash -c "jq -e '.debug.querier_debug[0].sql | test(\"SELECT\")' '$E2E_TMP/resp.json' >/dev/null && jq -e '.debug.format_time | test(\"s$\")' '$E2E_TMP/resp.json' >/dev/null"
api "$URL" "$(req nosuchservice)" >/dev/null
check "no data: result null, SUCCESS" [ "$(jqr '"\(.OPT_STATUS) \(.result)"')" = "SUCCESS null" ]
api "$URL" '{"APP_SERVICE":"deepflow-agent","Profile_Language_Type":"eBPF","profile_event_type":"on-cpu","time_start":'$((T - 1))',"time_end":'$T',"unknown_key":1}' >/dev/null
check "keys case-insensitive, unknown keys ignored, time range inclusive" [ "$(jqr '.result[0].total_value')" = 50505 ]

# --- errors -----------------------------------------------------------------------------------
check "bad JSON: 400" [ "$(api "$URL" $'{\n  "app_service": "x",\n  oops}')" = 400 ]
check "bad JSON: names line and column" bash -c "jq -r .DESCRIPTION '$E2E_TMP/resp.json' | grep -q 'line 3, column'"
check "the seed's own invalid curl example: 400" [ "$(api "$URL" '{"app_service": "deepflow-agent","profile_language_type": "eBPF","profile_event_type": "on-cpu","tag_filter: "","time_start": 1708479421,"time_end": 1708480321,}')" = 400 ]
check "empty body: 400 EOF" [ "$(api "$URL" '')-$(jqr .DESCRIPTION | cut -c1-3)" = "400-EOF" ]
api "$URL" '{"app_service":"x","time_start":0}' >/dev/null
check "missing fields: every one named, gin style" [ "$(jqr .DESCRIPTION | grep -c "failed on the 'required' tag")" = 4 ]
check "missing fields: envelope" [ "$(jqr '"\(.OPT_STATUS) \(.result) \(.debug)"')" = "INVALID_POST_DATA null null" ]
check "string for an int: 400" [ "$(api "$URL" '{"app_service":"x","profile_language_type":"eBPF","profile_event_type":"on-cpu","time_start":"1","time_end":2}')" = 400 ]
check "fraction for an int: 400" [ "$(api "$URL" '{"app_service":"x","profile_language_type":"eBPF","profile_event_type":"on-cpu","time_start":1.5,"time_end":2}')" = 400 ]
check "body too large: 413" [ "$(api "$URL" "$(head -c 70000 /dev/zero | tr '\0' ' ')")" = 413 ]
check "wrong method: 405" [ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/v1/profile/ProfileTracing")" = 405 ]
check "unknown path: 404" [ "$(curl -s -o /dev/null -w '%{http_code}' -X POST "$URL/v1/nope")" = 404 ]
check "bad X-Org-Id: 500 FAIL (as DeepFlow)" [ "$(api "$URL" "$(req deepflow-agent)" -H 'X-Org-Id: abc')-$(jqr .OPT_STATUS)" = "500-FAIL" ]
check "healthz" [ "$(curl -s "$URL/healthz" | jq -r .result.status)" = ok ]

# --- ingest errors lose nothing ---------------------------------------------------------------
ingest() { curl -s -o "$E2E_TMP/ing.json" -w '%{http_code}' -X POST "$URL/v1/profile/ingest" -H 'Content-Type: application/json' --data-binary "$1"; }
GOOD='{"version":1,"batch_id":"b-1","rows":[{"time":'$T',"app_service":"svc","profile_location_str":"a;b","profile_value":5}]}'
check "ingest: good batch" [ "$(ingest "$GOOD")-$(jq -r .result.duplicate "$E2E_TMP/ing.json")" = "200-false" ]
check "ingest: same batch id is a duplicate" [ "$(ingest "$GOOD")-$(jq -r .result.duplicate "$E2E_TMP/ing.json")" = "200-true" ]
BAD='{"version":1,"batch_id":"b-2","rows":[{"time":'$T',"app_service":"svc","profile_location_str":"a;c","profile_value":5},{"time":'$T',"app_service":"svc","profile_location_str":"a;d","profile_value":"x"}]}'
check "ingest: bad row 400" [ "$(ingest "$BAD")" = 400 ]
check "ingest: error names row and field" bash -c "jq -r .DESCRIPTION '$E2E_TMP/ing.json' | grep -q \"row 1: field 'profile_value'\""
api "$URL" "$(req svc)" >/dev/null
check "ingest: duplicate stored once, bad batch stored not at all" [ "$(jqr '.result[0].total_value')" = 5 ]
printf 'a;b 1\nno value here\na;c x\n' > "$E2E_TMP/bad.folded"
"$EMBER_BIN" import --server "$URL" --app-service badimport --time $T "$E2E_TMP/bad.folded" 2>"$E2E_TMP/imp.err"
check "import of a file with bad lines fails" [ $? -ne 0 ]
check "import names the bad line numbers" bash -c "grep -q 'bad.folded:2:' '$E2E_TMP/imp.err' && grep -q 'bad.folded:3:' '$E2E_TMP/imp.err'"
api "$URL" "$(req badimport)" >/dev/null
check "nothing of the bad file stored" [ "$(jqr .result)" = null ]

# --- organisations ----------------------------------------------------------------------------
"$EMBER_BIN" import --server "$URL" --app-service orgsvc --time $T --org 2 "$FIX/total-seed.folded" >/dev/null || fail "import org 2"
api "$URL" "$(req orgsvc)" -H 'X-Org-Id: 2' >/dev/null
check "org 2 sees its data" [ "$(jqr '.result[0].total_value')" = 27573 ]
api "$URL" "$(req orgsvc)" >/dev/null
check "org 1 does not see org 2's data" [ "$(jqr .result)" = null ]
api "$URL" "$(req deepflow-agent)" -H 'X-Org-Id: 2' >/dev/null
check "org 2 does not see org 1's data" [ "$(jqr .result)" = null ]

# --- ember query: the same data as a tree, folded stacks and JSON -------------------------------
Q=("$EMBER_BIN" query --server "$URL" --app-service deepflow-agent --from $((T - 10)) --to $((T + 10)))
"${Q[@]}" > "$E2E_TMP/tree.txt" || fail "ember query tree"
check "query tree: root 100% with the total" grep -qE '^100\.00% +50505  deepflow-agent$' "$E2E_TMP/tree.txt"
check "query tree: children indented under their parent, with percentages" grep -qE '^ 80\.00% +40404    \[t\] tokio-runtime-w$' "$E2E_TMP/tree.txt"
check "query tree: depth shown by indentation" grep -qE '^ 40\.00% +20202            \[k\] do_syscall_64$' "$E2E_TMP/tree.txt"
"${Q[@]}" --format folded | sort > "$E2E_TMP/q.folded"
sort "$FIX/worked-example.folded" | awk '{v=$NF; $NF=""; sub(/ $/, ""); s[$0]+=v} END {for (k in s) print k, s[k]}' | sort > "$E2E_TMP/want.folded"
check "query folded: the imported stacks back, duplicates summed" cmp -s "$E2E_TMP/q.folded" "$E2E_TMP/want.folded"
"${Q[@]}" --format json > "$E2E_TMP/q.json"
check "query json: the API's answer" [ "$(jq -r '.result[0].total_value' "$E2E_TMP/q.json")" = 50505 ]
"${Q[@]}" --format speedscope -o "$E2E_TMP/q.speedscope.json" || fail "query speedscope"
check "query --format speedscope: frames and weights add up to the total" [ "$(jq '[.profiles[0].weights[]] | add' "$E2E_TMP/q.speedscope.json")" = 50505 ]
"${Q[@]}" --format svg -o "$E2E_TMP/q.svg" || fail "query svg"
check "query --format svg: an SVG with the frames" bash -c "grep -q '<svg' '$E2E_TMP/q.svg' && grep -q 'tokio-runtime-w' '$E2E_TMP/q.svg'"
"${Q[@]}" --format pprof -o "$E2E_TMP/q.pb.gz" || fail "query pprof"
check "query --format pprof: gzip'ed protobuf naming the functions" bash -c "gzip -t '$E2E_TMP/q.pb.gz' && zcat '$E2E_TMP/q.pb.gz' | grep -aq main_loop"
"${Q[@]}" --format json -o /dev/full 2>"$E2E_TMP/full.err"
check "query to a full disk: exit 1 naming the failed write" bash -c "[ $? -eq 1 ] && grep -q 'writing /dev/full failed' '$E2E_TMP/full.err'"
"${Q[@]}" --tag-filter 'nosuchfield = 1' 2>"$E2E_TMP/q.err" >/dev/null
check "query with a bad filter: non-zero exit and the server's message" bash -c "[ $? -ne 0 ] && grep -q 'nosuchfield' '$E2E_TMP/q.err'"
"$EMBER_BIN" query --server "$URL" --app-service deepflow-agent --since 10m --max-kernel-depth 0 --format folded > "$E2E_TMP/q0.folded" 2>/dev/null
check "query --since and --max-kernel-depth 0 (no data this recent: empty, exit 0)" [ $? -eq 0 ]

# --- ember query --compare: the same range a day earlier is the baseline ------------------------
printf 'main;parse 30\nmain;work 70\n' | "$EMBER_BIN" import --server "$URL" --app-service cmp-svc \
	--time $((T - 86400)) - >/dev/null || fail "import the baseline"
printf 'main;parse 90\nmain;work 60\n' | "$EMBER_BIN" import --server "$URL" --app-service cmp-svc \
	--time $T - >/dev/null || fail "import today's"
C=("$EMBER_BIN" query --server "$URL" --app-service cmp-svc --from $((T - 10)) --to $((T + 10)) --compare 1d)
"${C[@]}" >"$E2E_TMP/cmp.txt" 2>"$E2E_TMP/cmp.err" || fail "query --compare"
check "query --compare: parse 30 % → 60 %, +30 points, first, values as recorded" bash -c "sed -n 2p '$E2E_TMP/cmp.txt' | grep -qE '^ +30\.00% +60\.00% +\+30\.00 +30 +90  parse$'"
check "query --compare: work 70 % → 40 %, -30 points" grep -qE '^ +70\.00% +40\.00% +-30\.00 +70 +60  work$' "$E2E_TMP/cmp.txt"
check "query --compare: both totals said" grep -q '86400 s earlier 100 microseconds, now 150$' "$E2E_TMP/cmp.err"
"${C[@]}" --format folded >"$E2E_TMP/cmp.folded" 2>/dev/null || fail "query --compare --format folded"
check "query --compare --format folded: 'stack BEFORE AFTER', the baseline scaled" bash -c "[ \"\$(cat '$E2E_TMP/cmp.folded')\" = \"\$(printf 'main;parse 45 90\nmain;work 105 60')\" ]"
"${C[@]}" -o "$E2E_TMP/cmp.svg" 2>/dev/null || fail "query --compare -o x.svg"
check "query --compare -o x.svg (the format from the name): parse red, with both values" grep -q '<title>parse (90 microseconds, 60.00%; before 45, +45, +100.00%)</title><rect [^>]*fill="rgb(255,' "$E2E_TMP/cmp.svg"
"${C[@]}" --min-percent 5 >/dev/null 2>"$E2E_TMP/cmp4.err"
check "query --compare --min-percent: refused (exit 2)" bash -c "[ $? -eq 2 ] && grep -q 'min-percent is for the tree' '$E2E_TMP/cmp4.err'"
"${C[@]}" --format pprof >/dev/null 2>"$E2E_TMP/cmp2.err"
check "query --compare --format pprof: refused (exit 2), the formats named" bash -c "[ $? -eq 2 ] && grep -q 'tree (a table of changes), folded or svg' '$E2E_TMP/cmp2.err'"
"$EMBER_BIN" query --server "$URL" --app-service cmp-svc --from $((T - 10)) --to $((T + 10)) --compare 2d -o "$E2E_TMP/none.txt" >/dev/null 2>"$E2E_TMP/cmp3.err"
check "query --compare without a baseline: exit 1 saying so, no file written" bash -c "[ $? -eq 1 ] && grep -q 'no data for cmp-svc .*(the baseline)' '$E2E_TMP/cmp3.err' && [ ! -e '$E2E_TMP/none.txt' ]"

# --- self-metrics --------------------------------------------------------------------------------
curl -s "$URL/metrics" > "$E2E_TMP/metrics.txt"
check "metrics: successful and invalid queries counted" bash -c "grep -qE '^ember_profile_queries_total\{outcome=\"ok\"\} [1-9]' '$E2E_TMP/metrics.txt' && grep -qE '^ember_profile_queries_total\{outcome=\"invalid\"\} [1-9]' '$E2E_TMP/metrics.txt'"
check "metrics: stored, duplicate and invalid batches counted" bash -c "grep -qE '^ember_ingest_batches_total\{outcome=\"duplicate\"\} 1$' '$E2E_TMP/metrics.txt' && grep -qE '^ember_ingest_batches_total\{outcome=\"invalid\"\} 1$' '$E2E_TMP/metrics.txt' && grep -qE '^ember_ingest_rows_total [1-9]' '$E2E_TMP/metrics.txt'"
check "metrics: store up" grep -qE '^ember_store_up\{store="[a-z]+"\} 1$' "$E2E_TMP/metrics.txt"

# --- restart: the data is still there ----------------------------------------------------------
server_stop s
server_start s2 --store "$STORE"
api "$SRV_URL_s2" "$(req deepflow-agent)" >/dev/null
check "after restart: same answer byte for byte" cmp -s "$E2E_TMP/resp.json" "$FIX/worked-example.golden.json"
server_stop s2
e2e_done
