#!/usr/bin/env bash
# Install every Debian package ember needs to build, run and test. Idempotent: a second run
# only checks. Needs root (apt-get); prints what it installs.
set -euo pipefail

PACKAGES=(
	# build
	build-essential pkg-config clang llvm bpftool libbpf-dev
	# libraries
	libelf-dev libdw-dev libiberty-dev zlib1g-dev libmicrohttpd-dev libcurl4-openssl-dev
	libjansson-dev libsqlite3-dev libzstd-dev libssl-dev
	# tests and tools
	libcmocka-dev sqlite3 zstd curl jq procps psmisc
	clickhouse-server clickhouse-client
	linux-perf bpftrace nodejs chromium
	# the Go part of the DWARF tests (tests/e2e/test_unwind_go.sh builds a Go workload)
	golang-go
	# export tests: xmllint checks the SVG, protoc --decode_raw the pprof protobuf
	libxml2-utils protobuf-compiler
)

missing=()
for p in "${PACKAGES[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
top=$(cd "$(dirname "$0")/.." && pwd)
# The page's browser test drives Debian's Chromium with playwright-core from npm.
npm_deps() {
	[ -d "$top/tests/web/node_modules/playwright-core" ] && return 0
	command -v npm >/dev/null || return 0
	echo "setup: npm ci in tests/web"
	(cd "$top/tests/web" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
}
if [ ${#missing[@]} -eq 0 ]; then
	npm_deps
	exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
	echo "setup: missing packages: ${missing[*]}; run as root (sudo) to install them" >&2
	exit 1
fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
npm_deps
echo "setup: done"
