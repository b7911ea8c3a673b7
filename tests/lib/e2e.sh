# Sourced by tests/e2e/*.sh: start and stop a real `ember server`, call it with curl, assert.
# Needs EMBER_BIN (set by scripts/run-tests.sh). Every helper fails the test with a message.
set -u
: "${EMBER_BIN:?EMBER_BIN must point to the ember binary}"
: "${EMBER_TOP:=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
E2E_TMP=$(mktemp -d /tmp/ember-e2e.XXXXXX)
E2E_PIDS=()
E2E_FAILS=0

e2e_cleanup() {
	for p in "${E2E_PIDS[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${E2E_PIDS[@]}"; do wait "$p" 2>/dev/null; done
	rm -rf "$E2E_TMP"
}
trap e2e_cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
check() { # description, command...: records a failure but continues
	local d=$1; shift
	if "$@"; then echo "ok - $d"; else echo "not ok - $d" >&2; E2E_FAILS=$((E2E_FAILS + 1)); fi
}
e2e_done() {
	[ "$E2E_FAILS" -eq 0 ] || fail "$E2E_FAILS check(s) failed"
	echo "all checks passed"
}

# ember_start NAME READY SUBCOMMAND [flags...]: starts `ember SUBCOMMAND --listen 127.0.0.1:0`,
# waits until it serves (and its log matches READY, when given) → SRV_URL_<NAME>, SRV_PID_<NAME>;
# log in $E2E_TMP/NAME.log
ember_start() {
	local name=$1 ready=$2 sub=$3; shift 3
	local log=$E2E_TMP/$name.log port=""
	"$EMBER_BIN" "$sub" --listen 127.0.0.1:0 "$@" >"$log" 2>&1 &
	local pid=$!
	E2E_PIDS+=("$pid")
	for _ in $(seq 1 300); do
		port=$(sed -n 's/.*serving on .* (port \([0-9]*\)).*/\1/p' "$log" | head -n1)
		[ -n "$port" ] && { [ -z "$ready" ] || grep -q "$ready" "$log"; } && break
		port=""
		kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; fail "ember $sub ($name) exited at start"; }
		sleep 0.05
	done
	[ -n "$port" ] || { cat "$log" >&2; fail "ember $sub ($name) did not start"; }
	printf -v "SRV_URL_$name" 'http://127.0.0.1:%s' "$port"
	printf -v "SRV_PID_$name" '%s' "$pid"
}

# server_start NAME [ember server flags...]
server_start() {
	local name=$1; shift
	ember_start "$name" "" server "$@"
}

# server_stop NAME: SIGTERM and wait (must exit 0)
server_stop() {
	local pidvar=SRV_PID_$1
	local pid=${!pidvar}
	kill -TERM "$pid" 2>/dev/null
	wait "$pid"
	local rc=$?
	[ $rc -eq 0 ] || { cat "$E2E_TMP/$1.log" >&2; fail "server $1 exited with $rc on SIGTERM"; }
}

# api URL JSON [extra curl args] → body in $E2E_TMP/resp.json, HTTP status echoed
api() {
	local url=$1 body=$2; shift 2
	curl -s -o "$E2E_TMP/resp.json" -w '%{http_code}' -X POST "$url/v1/profile/ProfileTracing" \
		-H 'Content-Type: application/json' --data-binary "$body" "$@"
}
resp() { cat "$E2E_TMP/resp.json"; }
jqr() { jq -r "$@" "$E2E_TMP/resp.json"; }
