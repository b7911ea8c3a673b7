#!/usr/bin/env bash
# `ember diff` as a user runs it: record a program, change it, record again, ask what changed.
# cpu_split spends 70 % in hot_a and 30 % in hot_b, then (argv[2] = 30) the other way round: the
# table must name hot_a as shrunk and hot_b as grown by ~40 points, the SVG colour them blue
# and red, the folded output carry both values; and bad invocations get clear errors.
. "$(dirname "$0")/../lib/e2e.sh"
[ "$(id -u)" -eq 0 ] || { echo "needs root for BPF"; exit 77; }
W=${EMBER_BUILD:?}/workloads
[ -x "$W/cpu_split" ] || fail "workload cpu_split not built"
within() { awk -v v="$1" -v lo="$2" -v hi="$3" 'BEGIN {exit !(v >= lo && v <= hi)}'; }

# 999 Hz, 2 s of CPU each: ~2,000 samples, so a share is good to a point or two.
"$EMBER_BIN" record -F 999 -o "$E2E_TMP/before.folded" -- "$W/cpu_split" 2 70 >/dev/null 2>&1 || fail "record before"
"$EMBER_BIN" record -F 999 -o "$E2E_TMP/after.folded" -- "$W/cpu_split" 2.5 30 >/dev/null 2>&1 || fail "record after"

"$EMBER_BIN" diff "$E2E_TMP/before.folded" "$E2E_TMP/after.folded" >"$E2E_TMP/table" 2>"$E2E_TMP/table.err" || fail "ember diff"
cat "$E2E_TMP/table.err"
head -n 4 "$E2E_TMP/table"
change() { awk -v f="$1" '$NF == f {print $3; exit}' "$E2E_TMP/table"; }
a=$(change hot_a)
b=$(change hot_b)
check "table: hot_a shrank by ~40 points (-55..-25): $a" within "${a:-0}" -55 -25
check "table: hot_b grew by ~40 points (25..55): $b" within "${b:-0}" 25 55
check "table: the two largest changes come first" bash -c "sed -n '2,3p' '$E2E_TMP/table' | awk '{print \$NF}' | sort | tr '\\n' ' ' | grep -qx 'hot_a hot_b '"
check "the summary gives both totals as recorded" grep -qE '^ember diff: [0-9]+ stacks; before [0-9]+ samples, after [0-9]+ samples$' "$E2E_TMP/table.err"

"$EMBER_BIN" diff -o "$E2E_TMP/d.svg" "$E2E_TMP/before.folded" "$E2E_TMP/after.folded" 2>"$E2E_TMP/svg.err" || fail "ember diff -o x.svg"
check "SVG: the summary and the title say the baseline is drawn scaled" bash -c "grep -q 'baseline drawn scaled' '$E2E_TMP/svg.err' && grep -q 'baseline scaled to this total' '$E2E_TMP/d.svg'"
fill() { # the colour of the widest frame named $1 (short stacks may hold another)
	grep -o "<title>$1 ([0-9]* [^<]*</title><rect [^>]*fill=\"[^\"]*\"" "$E2E_TMP/d.svg" |
		sed 's/^<title>[^(]*(\([0-9]*\) .*fill="\(.*\)"/\1 \2/' | sort -n | tail -n 1 | cut -d' ' -f2
}
blue() { [[ $1 =~ ^rgb\(([0-9]+),([0-9]+),255\)$ ]] && [ "${BASH_REMATCH[1]}" = "${BASH_REMATCH[2]}" ] && [ "${BASH_REMATCH[1]}" -lt 200 ]; }
red() { [[ $1 =~ ^rgb\(255,([0-9]+),([0-9]+)\)$ ]] && [ "${BASH_REMATCH[1]}" = "${BASH_REMATCH[2]}" ] && [ "${BASH_REMATCH[1]}" -lt 200 ]; }
check "SVG: hot_a deep blue (shrank most): $(fill hot_a)" blue "$(fill hot_a)"
check "SVG: hot_b deep red (grew most): $(fill hot_b)" red "$(fill hot_b)"
check "SVG: titles give the baseline's value" grep -qE '<title>hot_a \([0-9]+ samples, [0-9.]+%; before [0-9.]+, -[0-9.]+, -[0-9.]+%\)' "$E2E_TMP/d.svg"

"$EMBER_BIN" diff -o "$E2E_TMP/d.folded" "$E2E_TMP/before.folded" "$E2E_TMP/after.folded" 2>/dev/null || fail "ember diff -o x.folded"
check "folded: 'stack BEFORE AFTER' on every line" bash -c "awk 'NF < 3 || \$(NF-1) !~ /^[0-9]+(\\.[0-9][0-9])?$/ || \$NF !~ /^[0-9]+$/ {bad=1} END {exit bad || NR == 0}' '$E2E_TMP/d.folded'"
tot() { awk -v c="$2" '{s += $(NF - c)} END {print s}' "$1"; }
check "folded: the scaled baseline has the new total (±1 per stack)" bash -c "awk -v n=\$(wc -l <'$E2E_TMP/d.folded') -v b=$(tot "$E2E_TMP/d.folded" 1) -v a=$(tot "$E2E_TMP/d.folded" 0) 'BEGIN {d = a - b; exit !(d <= n && d >= -n)}'"
"$EMBER_BIN" diff --raw --format folded - "$E2E_TMP/after.folded" <"$E2E_TMP/before.folded" >"$E2E_TMP/raw.folded" 2>/dev/null || fail "ember diff --raw from stdin"
check "--raw, BEFORE from stdin: the baseline's values as recorded" [ "$(tot "$E2E_TMP/raw.folded" 1)" = "$(awk '{s += $NF} END {print s}' "$E2E_TMP/before.folded")" ]

"$EMBER_BIN" diff "$E2E_TMP/before.folded" >/dev/null 2>"$E2E_TMP/e1"
check "one file: usage error (exit 2) asking for two" bash -c "[ $? -eq 2 ] && grep -q 'give two folded files' '$E2E_TMP/e1'"
"$EMBER_BIN" diff "$E2E_TMP/nosuch" "$E2E_TMP/after.folded" >/dev/null 2>"$E2E_TMP/e2"
check "a missing file: exit 1 naming it" bash -c "[ $? -eq 1 ] && grep -q 'cannot open .*nosuch' '$E2E_TMP/e2'"
: >"$E2E_TMP/empty.folded"
"$EMBER_BIN" diff "$E2E_TMP/empty.folded" "$E2E_TMP/after.folded" >/dev/null 2>"$E2E_TMP/e3"
check "an empty baseline: exit 1 saying it has no stacks" bash -c "[ $? -eq 1 ] && grep -q 'empty.folded has no stacks' '$E2E_TMP/e3'"
"$EMBER_BIN" diff - - </dev/null >/dev/null 2>"$E2E_TMP/e5"
check "both files stdin: usage error (exit 2)" bash -c "[ $? -eq 2 ] && grep -q \"only one of BEFORE and AFTER can be '-'\" '$E2E_TMP/e5'"
"$EMBER_BIN" diff --format png "$E2E_TMP/before.folded" "$E2E_TMP/after.folded" >/dev/null 2>"$E2E_TMP/e4"
check "--format png: exit 2 naming the formats" bash -c "[ $? -eq 2 ] && grep -q 'table, folded or svg' '$E2E_TMP/e4'"
e2e_done
