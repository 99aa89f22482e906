#!/usr/bin/env bash
# Measures the CPU-per-request verdict's false-alarm rate and power on this machine.
#
#   harness/scripts/calibrate-cpu.sh GATEWAY_URL [AA_RUNS] [RUNS_PER_COST] [COST_US...]
#
# Needs a running gateway (GATEWAY_URL, loopback) and a release build of the harness
# (HARNESS_BIN, default target/release/harness). Each configuration gets two fresh
# `harness demo-target` processes, one per variant's deployment (control, treatment), both
# started with `--cpu treatment=COST_US` (only the treatment deployment sees treatment
# requests), and runs loadtests/smoke.toml with a [resources] section against them. A/A runs
# use no CPU cost on either side. Prints one line per run and a table of outcomes.
set -euo pipefail

GATEWAY=${1:?usage: calibrate-cpu.sh GATEWAY_URL [AA_RUNS] [RUNS_PER_COST] [COST_US...]}
AA_RUNS=${2:-20}
PER=${3:-10}
shift $(( $# < 3 ? $# : 3 ))
COSTS=${*:-"200"}
BIN=${HARNESS_BIN:-target/release/harness}
PROFILE=${PROFILE:-loadtests/smoke.toml}
CPU_MARGIN=${CPU_MARGIN:-0.10}
WORK=$(mktemp -d)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"' EXIT

{ cat "$PROFILE"; printf '\n[resources]\ncpu_margin = %s\n' "$CPU_MARGIN"; } > "$WORK/profile.toml"

# start_target NAME CPU_SPEC: a demo target on a free port; sets URL_<NAME>.
start_target() {
    "$BIN" demo-target --listen 127.0.0.1:0 --cpu "$2" > "$WORK/$1.log" &
    PIDS+=($!)
    for _ in $(seq 50); do
        if grep -q '^listening on ' "$WORK/$1.log"; then break; fi
        sleep 0.1
    done
    printf -v "URL_$1" 'http://%s' "$(head -1 "$WORK/$1.log" | sed 's/^listening on //')"
}

stop_targets() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    PIDS=()
}

# run LABEL N CPU_SPEC: N runs on fresh deployments, one line each, tallied by outcome.
run() {
    local label=$1 n=$2 pass=0 regression=0 inconclusive=0 invalid=0
    for i in $(seq "$n"); do
        start_target control "$3"
        start_target treatment "$3"
        "$BIN" run "$WORK/profile.toml" --gateway "$GATEWAY" \
            --variant-url "control=$URL_control" --variant-url "treatment=$URL_treatment" \
            --out "$WORK/out" > /dev/null 2>&1 || true
        stop_targets
        local line outcome
        line=$(python3 - "$WORK/out/summary.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
cpu = [c for c in s["comparisons"] if c["measure"] == "cpu_per_request"]
c = cpu[0] if cpu else {}
res = {r["variant"]: r["cpu_s_per_1k_requests"] for r in s.get("resources") or []}
print(s["verdict"]["outcome"], c.get("decision", "-"),
      "ratio=%.3f[%.3f,%.3f]" % (c.get("ratio") or 0, c.get("lower") or 0, c.get("upper") or 0),
      "cpu_s_per_1k=" + ",".join("%s:%.4f" % kv for kv in res.items()))
EOF
)
        outcome=$(echo "$line" | cut -d' ' -f2)
        echo "$label run $i: $line"
        case $outcome in
            pass) pass=$((pass + 1)) ;;
            regression) regression=$((regression + 1)) ;;
            inconclusive) inconclusive=$((inconclusive + 1)) ;;
            *) invalid=$((invalid + 1)) ;;
        esac
        rm -rf "$WORK/out"
    done
    echo "$label: $n runs, CPU decision: $regression regression, $pass pass, $inconclusive inconclusive, $invalid none" | tee -a "$WORK/table"
}

run "A/A, no CPU cost" "$AA_RUNS" ""
for cost in $COSTS; do
    run "+${cost} us CPU on treatment" "$PER" "treatment=${cost}us"
done
echo
cat "$WORK/table"
