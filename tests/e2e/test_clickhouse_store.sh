#!/usr/bin/env bash
# The ClickHouse store against a real, private ClickHouse server: starts one with
# tests/lib/clickhouse.sh and runs test_store_clickhouse with CH_URL set (schema, queries,
# gauge, duplicates, every byte value, the injection corpus, organisations, cancellation, auth,
# and SIGKILL + restart mid-ingest). Skips (77) when clickhouse-server is not installed.
set -u
top=${EMBER_TOP:-$(cd "$(dirname "$0")/../.." && pwd)}
build=${EMBER_BUILD:-$top/build}
bin=$build/tests/test_store_clickhouse
export EMBER_TOP=$top

# shellcheck source=../lib/clickhouse.sh
source "$top/tests/lib/clickhouse.sh"
if [ ! -x "$bin" ]; then
	echo "FAIL: $bin not built"
	exit 1
fi
ch_start || exit 1
trap ch_stop EXIT
echo "clickhouse $(ch_query 'SELECT version()') on $CH_URL"
"$bin"
rc=$?
if [ $rc -ne 0 ]; then
	echo "FAIL: test_store_clickhouse exited $rc; server log tail:"
	tail -n 20 "$CH_DIR/log/error.log" 2>/dev/null
	exit 1
fi
# The binary must really have run against the server, not skipped.
if [ "$(ch_query "SELECT count() FROM system.databases WHERE name LIKE 'ember_t_%'")" -lt 5 ]; then
	echo "FAIL: the test databases are missing: did the tests skip?"
	exit 1
fi
echo "PASS"
