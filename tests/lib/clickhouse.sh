# shellcheck shell=bash
# clickhouse.sh — run a private, throw-away ClickHouse server for tests and benches.
#
# Source it, then:
#   ch_start [HTTP_PORT]
#               pick two free loopback ports (or use HTTP_PORT for HTTP: a test that started a
#               client before the server), write a minimal config (users: `default` without a
#               password, `ember` with password `secret`), start clickhouse-server in the
#               background on a temp data dir, wait (bounded) until `SELECT 1` answers over HTTP.
#               Exports CH_HTTP_PORT, CH_TCP_PORT, CH_URL (clickhouse://127.0.0.1:PORT), CH_DIR,
#               CH_PID. Exits 77 (skip) when no clickhouse-server binary exists; returns 1 if the
#               server does not come up (its log is printed).
#               CH_QUERY_LOG=1 turns on system.query_log (per-statement times, for benches).
#   ch_free_port  print a loopback port nobody listens on now.
#   ch_stop     stop the server (SIGTERM, then SIGKILL) and remove the data dir.
# The server's pid is kept in $CH_DIR/server.pid, so a process that only inherited CH_DIR (a test
# program running `bash -c 'source clickhouse.sh; ch_restart'`) can kill and restart it too.
#   ch_kill     SIGKILL the server (crash tests); the data dir stays.
#   ch_restart  start the server again with the same ports and data, and wait for it.
#   ch_query SQL  run SQL over HTTP as `default`; prints the response body, fails on HTTP errors.
#   ch_edit_users SED_SCRIPT  edit users.xml in place, as an operator would; the server reloads it
#               by itself within a few seconds.
# Bounds: CH_START_TIMEOUT (seconds, default 60) for each wait.

CH_START_TIMEOUT=${CH_START_TIMEOUT:-60}

ch__bin() {
	if command -v clickhouse-server >/dev/null 2>&1; then
		echo "clickhouse-server"
	elif [ -x /usr/sbin/clickhouse-server ]; then
		echo /usr/sbin/clickhouse-server
	elif command -v clickhouse >/dev/null 2>&1; then
		echo "clickhouse server"
	else
		return 1
	fi
}

# A loopback port nobody listens on now (a race with another process is retried by ch_start).
ch__free_port() {
	local p
	while :; do
		p=$((20000 + RANDOM % 40000))
		# A connect that fails means nobody listens there now.
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return 0
		fi
	done
}

ch_free_port() {
	ch__free_port
}

ch__write_config() {
	local query_log="" log_queries=""
	if [ "${CH_QUERY_LOG:-0}" = 1 ]; then
		query_log="<query_log><database>system</database><table>query_log</table>"
		query_log="$query_log<flush_interval_milliseconds>1000</flush_interval_milliseconds></query_log>"
		log_queries="<log_queries>1</log_queries>"
	fi
	mkdir -p "$CH_DIR/data/tmp" "$CH_DIR/data/user_files" "$CH_DIR/log" "$CH_DIR/format_schemas"
	cat >"$CH_DIR/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <logger>
        <level>information</level>
        <log>$CH_DIR/log/server.log</log>
        <errorlog>$CH_DIR/log/error.log</errorlog>
        <size>100M</size>
        <count>1</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>$CH_HTTP_PORT</http_port>
    <tcp_port>$CH_TCP_PORT</tcp_port>
    <max_connections>256</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>8589934592</uncompressed_cache_size>
    <mark_cache_size>268435456</mark_cache_size>
    <path>$CH_DIR/data/</path>
    <tmp_path>$CH_DIR/data/tmp/</tmp_path>
    <user_files_path>$CH_DIR/data/user_files/</user_files_path>
    <format_schema_path>$CH_DIR/format_schemas/</format_schema_path>
    <users_config>$CH_DIR/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
    <builtin_dictionaries_reload_interval>3600</builtin_dictionaries_reload_interval>
    <max_session_timeout>3600</max_session_timeout>
    $query_log
    <default_session_timeout>60</default_session_timeout>
</yandex>
XML
	cat >"$CH_DIR/users.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>2000000000</max_memory_usage>
            <load_balancing>random</load_balancing>
            $log_queries
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
        <ember>
            <password>secret</password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </ember>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
XML
}

ch_query() {
	curl -sS --fail-with-body --max-time 30 "http://127.0.0.1:$CH_HTTP_PORT/" --data-binary "$1"
}

# ClickHouse (18.16 at least) notices a changed users.xml by its mtime in whole seconds: an edit
# made within the second the file was written or loaded goes unseen for good. Wait for the next
# second first.
ch_edit_users() {
	local f="$CH_DIR/users.xml"
	while [ "$(date +%s)" -le "$(stat -c %Y "$f")" ]; do
		sleep 0.1
	done
	sed -i "$1" "$f"
}

ch__wait_up() {
	local deadline=$((SECONDS + CH_START_TIMEOUT))
	while [ $SECONDS -lt $deadline ]; do
		if [ "$(curl -s --max-time 2 "http://127.0.0.1:$CH_HTTP_PORT/?query=SELECT%201" 2>/dev/null)" = 1 ]; then
			return 0
		fi
		if ! ch__alive "$CH_PID"; then
			break
		fi
		sleep 0.2
	done
	echo "clickhouse: server did not answer on 127.0.0.1:$CH_HTTP_PORT within ${CH_START_TIMEOUT}s" >&2
	tail -n 30 "$CH_DIR/log/error.log" "$CH_DIR/log/stderr.log" >&2 2>/dev/null
	return 1
}

ch__launch() {
	local bin
	bin=$(ch__bin) || return 1
	# shellcheck disable=SC2086 # "clickhouse server" is two words on purpose
	setsid $bin --config-file="$CH_DIR/config.xml" >"$CH_DIR/log/stdout.log" 2>"$CH_DIR/log/stderr.log" &
	CH_PID=$!
	echo "$CH_PID" >"$CH_DIR/server.pid"
	export CH_PID
}

# True while pid runs (a zombie, killed but not yet reaped, counts as gone).
ch__alive() {
	[ -r "/proc/$1/stat" ] && ! grep -q '^[0-9]* (.*) Z' "/proc/$1/stat" 2>/dev/null
}

ch__pid() {
	if [ -n "${CH_DIR:-}" ] && [ -r "$CH_DIR/server.pid" ]; then
		cat "$CH_DIR/server.pid"
	else
		echo "${CH_PID:-}"
	fi
}

ch_start() {
	local bin attempt fixed=${1:-}
	if ! bin=$(ch__bin); then
		echo "clickhouse-server not installed: skipping"
		exit 77
	fi
	CH_DIR=$(mktemp -d /tmp/ember-ch.XXXXXX)
	export CH_DIR
	for attempt in 1 2 3; do
		CH_HTTP_PORT=${fixed:-$(ch__free_port)}
		CH_TCP_PORT=$(ch__free_port)
		[ "$CH_HTTP_PORT" = "$CH_TCP_PORT" ] && continue
		export CH_HTTP_PORT CH_TCP_PORT
		export CH_URL="clickhouse://127.0.0.1:$CH_HTTP_PORT"
		ch__write_config
		ch__launch || return 1
		if ch__wait_up; then
			return 0
		fi
		kill -9 "$CH_PID" 2>/dev/null
		echo "clickhouse: start attempt $attempt failed, retrying" >&2
	done
	return 1
}

ch_kill() {
	local pid
	pid=$(ch__pid)
	[ -n "$pid" ] || return 0
	kill -9 "$pid" 2>/dev/null
	# The port must be free before a restart can bind it again.
	local deadline=$((SECONDS + CH_START_TIMEOUT))
	while [ $SECONDS -lt $deadline ] && ch__alive "$pid"; do
		sleep 0.1
	done
	return 0
}

ch_restart() {
	ch_kill
	ch__launch || return 1
	ch__wait_up
}

ch_stop() {
	local pid
	pid=$(ch__pid)
	if [ -n "$pid" ] && ch__alive "$pid"; then
		kill -TERM "$pid" 2>/dev/null
		local deadline=$((SECONDS + 20))
		while [ $SECONDS -lt $deadline ] && ch__alive "$pid"; do
			sleep 0.2
		done
		kill -9 "$pid" 2>/dev/null
	fi
	CH_PID=
	if [ -n "${CH_DIR:-}" ] && [ -d "$CH_DIR" ]; then
		rm -rf "$CH_DIR"
	fi
	CH_DIR=
}
