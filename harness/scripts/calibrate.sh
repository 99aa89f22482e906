#!/usr/bin/env bash
# Measures the harness's false-alarm rate and power on this machine with the smoke profile.
#
#   harness/scripts/calibrate.sh GATEWAY_URL [AA_RUNS] [RUNS_PER_SLOWDOWN] [SLOWDOWN_US...]
#
# Needs a running gateway (GATEWAY_URL, loopback) and a release build of the harness
# (HARNESS_BIN, default target/release/harness). Starts one demo target per configuration
# on 127.0.0.1:0, with control at BASE_US (default 1000 us) and treatment at BASE_US plus
# each slowdown, and runs loadtests/smoke.toml against it. Prints one line per run and a
# table of outcomes. A/A runs go twice: with the profile's margins and with margins 0 (the
# null sits exactly on the boundary there, so the false-alarm rate should be at most alpha).
set -euo pipefail

GATEWAY=${1:?usage: calibrate.sh GATEWAY_URL [AA_RUNS] [RUNS_PER_SLOWDOWN] [SLOWDOWN_US...]}
AA_RUNS=${2:-20}
PER=${3:-10}
shift $(( $# < 3 ? $# : 3 ))
SLOWDOWNS=${*:-"20 50 100 200 500"}
BASE_US=${BASE_US:-1000}
BIN=${HARNESS_BIN:-target/release/harness}
PROFILE=${PROFILE:-loadtests/smoke.toml}
WORK=$(mktemp -d)
trap 'kill "${TARGET_PID:-}" 2>/dev/null || true; rm -rf "$WORK"' EXIT

sed -E 's/^margins = .*/margins = { p50 = 0.0, p95 = 0.0, p99 = 0.0 }/' "$PROFILE" > "$WORK/zero.toml"

start_target() {
    "$BIN" demo-target --listen 127.0.0.1:0 --delay "$1" > "$WORK/target.log" &
    TARGET_PID=$!
    for _ in $(seq 50); do
        if grep -q '^listening on ' "$WORK/target.log"; then break; fi
        sleep 0.1
    done
    TARGET=http://$(head -1 "$WORK/target.log" | sed 's/^listening on //')
}

stop_target() { kill "$TARGET_PID"; wait "$TARGET_PID" 2>/dev/null || true; }

# run LABEL PROFILE N: N runs, one line each, tallied by outcome.
run() {
    local label=$1 profile=$2 n=$3 pass=0 regression=0 inconclusive=0 invalid=0
    for i in $(seq "$n"); do
        "$BIN" run "$profile" --gateway "$GATEWAY" --target "$TARGET" --out "$WORK/out" > /dev/null 2>&1 || true
        local outcome ratios
        outcome=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["verdict"]["outcome"])' "$WORK/out/summary.json")
        ratios=$(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(" ".join("%s=%.3f[%.3f,%.3f]" % (c["percentile"], c["ratio"] or 0, c["lower"] or 0, c["upper"] or 0) for c in s["comparisons"]))' "$WORK/out/summary.json")
        echo "$label run $i: $outcome $ratios"
        case $outcome in
            pass) pass=$((pass + 1)) ;;
            regression) regression=$((regression + 1)) ;;
            inconclusive) inconclusive=$((inconclusive + 1)) ;;
            *) invalid=$((invalid + 1)) ;;
        esac
        rm -rf "$WORK/out"
    done
    echo "$label: $n runs: $regression regression, $pass pass, $inconclusive inconclusive, $invalid invalid" | tee -a "$WORK/table"
}

start_target "control=${BASE_US}us,treatment=${BASE_US}us"
run "A/A, profile margins" "$PROFILE" "$AA_RUNS"
run "A/A, margins 0" "$WORK/zero.toml" "$AA_RUNS"
stop_target
for slow in $SLOWDOWNS; do
    start_target "control=${BASE_US}us,treatment=$((BASE_US + slow))us"
    run "+${slow} us on ${BASE_US} us" "$PROFILE" "$PER"
    stop_target
done
echo
cat "$WORK/table"
