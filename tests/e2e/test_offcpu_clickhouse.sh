#!/usr/bin/env bash
# Off-CPU rows through ClickHouse: the API part of tests/e2e/test_offcpu.sh (`ember run
# --off-cpu`, the process's blocked time against what its threads measured, no off-cpu Total)
# on a real, private ClickHouse server.
set -u
top=${EMBER_TOP:-$(cd "$(dirname "$0")/../.." && pwd)}
export EMBER_TOP=$top
[ "$(id -u)" -eq 0 ] || { echo "needs root for BPF"; exit 77; }
# shellcheck source=../lib/clickhouse.sh
source "$top/tests/lib/clickhouse.sh"
ch_start || exit 1
trap ch_stop EXIT
echo "clickhouse $(ch_query 'SELECT version()') on $CH_URL"
EMBER_TEST_STORE="$CH_URL/offcpu" OFFCPU_API_ONLY=1 bash "$top/tests/e2e/test_offcpu.sh" || exit 1
rows=$(ch_query "SELECT count() FROM offcpu.in_process WHERE profile_event_type = 'off-cpu'")
echo "ClickHouse holds $rows off-cpu rows"
[ "${rows:-0}" -gt 0 ] || { echo "FAIL: no off-cpu row in ClickHouse"; exit 1; }
