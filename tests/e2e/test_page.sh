#!/usr/bin/env bash
# The flame-graph page in a real browser (Debian's Chromium driven by playwright-core), against a
# real server with imported data. Screenshots land in $EMBER_BUILD/test-logs/.
. "$(dirname "$0")/../lib/e2e.sh"
[ -x /usr/bin/chromium ] || { echo "chromium is not installed"; exit 77; }
[ -d "$EMBER_TOP/tests/web/node_modules/playwright-core" ] ||
	(cd "$EMBER_TOP/tests/web" && npm ci --no-audit --no-fund >/dev/null) || fail "npm ci in tests/web"
T=$(( $(date +%s) - 600 ))
server_start s --store "sqlite:$E2E_TMP/ember.db"
"$EMBER_BIN" import --server "$SRV_URL_s" --app-service deepflow-agent --time $T \
	"$EMBER_TOP/tests/fixtures/api/worked-example.folded" >/dev/null || fail "import"
"$EMBER_BIN" import --server "$SRV_URL_s" --app-service Total --time $T \
	"$EMBER_TOP/tests/fixtures/api/total-seed.folded" >/dev/null || fail "import Total"
# Off-CPU rows of two processes (µs blocked), and none under Total, as the agent writes them.
printf '[t] waiter;wait_pipe;[l] read;[k] __schedule 1500000\n' |
	"$EMBER_BIN" import --server "$SRV_URL_s" --app-service offsvc --event-type off-cpu --time $T - \
	>/dev/null || fail "import off-cpu"
printf '[t] napper;nap;[k] __schedule 250000\n' |
	"$EMBER_BIN" import --server "$SRV_URL_s" --app-service offsvc2 --event-type off-cpu --time $T - \
	>/dev/null || fail "import off-cpu 2"
# Off-CPU rows of one process tagged as the agent tags them: 300 ms uninterruptible, 700 ms asleep.
printf '[t] w;read_disk;[k] io_schedule 300000\n' |
	"$EMBER_BIN" import --server "$SRV_URL_s" --app-service statesvc --event-type off-cpu --time $T \
	--tag ember.offcpu.state=D - >/dev/null || fail "import D rows"
printf '[t] w;nap;[k] schedule 700000\n' |
	"$EMBER_BIN" import --server "$SRV_URL_s" --app-service statesvc --event-type off-cpu --time $T \
	--tag ember.offcpu.state=S - >/dev/null || fail "import S rows"
# A service whose split turned around within the hour: 70/30 an hour ago, 30/70 now.
printf '[t] w;work;hot_a 70000\n[t] w;work;hot_b 30000\n' |
	"$EMBER_BIN" import --server "$SRV_URL_s" --app-service cmpsvc --time $((T - 3600)) - >/dev/null ||
	fail "import the baseline"
printf '[t] w;work;hot_a 60000\n[t] w;work;hot_b 140000\n' |
	"$EMBER_BIN" import --server "$SRV_URL_s" --app-service cmpsvc --time $T - >/dev/null ||
	fail "import the new split"
shots=${EMBER_BUILD:-$E2E_TMP}/test-logs
mkdir -p "$shots"
node "$EMBER_TOP/tests/web/page.mjs" "$SRV_URL_s" "$shots" || fail "page checks"
