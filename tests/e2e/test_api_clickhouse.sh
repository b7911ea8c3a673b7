#!/usr/bin/env bash
# The whole ProfileTracing suite (tests/e2e/test_api.sh) against a real, private ClickHouse
# server: the same golden JSON byte for byte, the same errors, organisations and restart.
set -u
top=${EMBER_TOP:-$(cd "$(dirname "$0")/../.." && pwd)}
export EMBER_TOP=$top
# shellcheck source=../lib/clickhouse.sh
source "$top/tests/lib/clickhouse.sh"
ch_start || exit 1
trap ch_stop EXIT
echo "clickhouse $(ch_query 'SELECT version()') on $CH_URL"
EMBER_TEST_STORE="$CH_URL/apitest" bash "$top/tests/e2e/test_api.sh" || exit 1
[ "$(ch_query "SELECT count() FROM system.databases WHERE name IN ('apitest', '0002_apitest')")" = 2 ] ||
	{ echo "FAIL: the suite did not write to ClickHouse"; exit 1; }
