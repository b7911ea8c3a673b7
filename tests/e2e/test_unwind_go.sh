#!/usr/bin/env bash
# Go binaries under the DWARF walk (docs/unwinding.md, "Frame-pointer objects"): ember detects Go
# (.go.buildinfo or the Go build-id note) and walks its frames by frame pointers, the leaf by its
# row. tests/workloads/gohot.go is built twice with the installed go: as is (.debug_frame) and
# with -ldflags=-w (no CFI at all). Both must give main.* frames in order under
# runtime.main, walks that end at the outermost frame (saved rbp 0) counted complete, and the
# build with CFI keeps the frameless leaf's caller (main.middle).
# Skips (77) when go is not installed (Debian: golang-go, scripts/setup.sh installs it).
. "$(dirname "$0")/../lib/e2e.sh"
[ "$(id -u)" -eq 0 ] || { echo "needs root for BPF"; exit 77; }
command -v go >/dev/null || { echo "go not installed"; exit 77; }
T=$E2E_TMP
export GOCACHE=$T/gocache GOPATH=$T/gopath GOFLAGS= GO111MODULE=off
cp "$EMBER_TOP/tests/workloads/gohot.go" "$T/" || fail "copy gohot.go"
(cd "$T" && go build -o gohot gohot.go && go build -ldflags=-w -o gohot_nocfi gohot.go) ||
	fail "go build"
readelf -S "$T/gohot_nocfi" | grep -qE '\.(eh|debug)_frame' && fail "-ldflags=-w kept CFI"

# share FILE PATTERN → percent of the samples in main.inner whose user frames contain PATTERN
share() {
	awk -v p="$2" '/main\.inner/ {v=$NF; t+=v; if (index($0, p)) m+=v} END {printf "%d", t ? 100*m/t : 0}' "$1"
}
for b in gohot gohot_nocfi; do
	"$EMBER_BIN" record -F 499 -o "$T/$b.folded" -- "$T/$b" 3 >/dev/null 2>"$T/$b.err" ||
		{ cat "$T/$b.err" >&2; fail "record $b"; }
	n=$(awk '/main\.inner/ {t += $NF} END {print t + 0}' "$T/$b.folded")
	order=$(share "$T/$b.folded" ";runtime.goexit.abi0;runtime.main;main.main;main.outer;")
	read -r done walks <<<"$(sed -n 's/.*unwind: complete \([0-9]*\) \(.*\);.*/\1 \2/p' "$T/$b.err" |
		awk '{t = $1; for (i = 3; i <= NF; i += 2) t += $i; print $1, t}')"
	echo "$b: $n samples in main.inner, ${order}% under goexit;runtime.main;main.main;main.outer; $done of $walks walks complete"
	check "$b: >= 100 samples in main.inner" [ "$n" -ge 100 ]
	check "$b: >= 95% of them walk goexit;runtime.main;main.main;main.outer in order" [ "$order" -ge 95 ]
	check "$b: >= 80% of all walks complete (saved rbp 0 ends the walk)" \
		awk "BEGIN {exit !($walks > 0 && $done >= 0.8 * $walks)}"
done
m=$(share "$T/gohot.folded" ";main.outer;main.middle;main.inner")
echo "gohot: ${m}% of main.inner samples keep main.middle (the leaf's row)"
# The rest are start-up samples walked before the table was in BPF (frame pointers only).
check "with CFI: >= 80% of main.inner samples keep its caller main.middle" [ "$m" -ge 80 ]
e2e_done
