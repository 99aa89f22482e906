#!/usr/bin/env bash
# CI smoke for the harness (issue 5): a real gateway and the demo target on loopback port 0,
# then loadtests/smoke.toml twice. With +5 ms on treatment the harness must exit 1 naming
# treatment; with equal variants it must not exit 1. Bounded: two ~12 s runs.
#
#   bash harness/scripts/ci-smoke.sh        (from the repository root)
#
# BIN_DIR=dir uses already built `gateway` and `harness` binaries from dir instead of building.
set -euo pipefail

if [ -n "${BIN_DIR:-}" ]; then
    BIN=$BIN_DIR
else
    cargo build --release -p gateway -p harness
    BIN=target/release
fi
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

# wait_for_addr LOG: prints host:port from the first "listening on" line of LOG.
wait_for_addr() {
    for _ in $(seq 100); do
        local addr
        addr=$(grep -ao 'listening on 127\.0\.0\.1:[0-9]*' "$1" 2>/dev/null | head -1 | sed 's/^listening on //')
        if [ -n "$addr" ]; then echo "$addr"; return 0; fi
        sleep 0.1
    done
    echo "no 'listening on' line in $1:" >&2
    cat "$1" >&2
    return 1
}

"$BIN/gateway" --listen 127.0.0.1:0 --storage "$WORK/data" --state-dir "$WORK/state" \
    --experiments gateway/experiments.example.json > "$WORK/gateway.log" 2>&1 &
PIDS+=($!)
GATEWAY=http://$(wait_for_addr "$WORK/gateway.log")

# smoke LABEL DELAYS: runs the smoke profile against a fresh demo target; sets CODE.
smoke() {
    "$BIN/harness" demo-target --listen 127.0.0.1:0 --delay "$2" > "$WORK/target-$1.log" 2>&1 &
    local target_pid=$!
    PIDS+=("$target_pid")
    local target
    target=http://$(wait_for_addr "$WORK/target-$1.log")
    set +e
    "$BIN/harness" run loadtests/smoke.toml --gateway "$GATEWAY" --target "$target" --out "$WORK/$1"
    CODE=$?
    set -e
    kill "$target_pid"
}

smoke ab "control=0ms,treatment=5ms"
if [ "$CODE" -ne 1 ] || ! grep -q '"variant": "treatment"' "$WORK/ab/summary.json"; then
    echo "harness smoke: +5 ms on treatment was not a regression naming treatment (exit $CODE)" >&2
    cat "$WORK/ab/summary.md" >&2 || true
    exit 1
fi
smoke aa "control=1ms,treatment=1ms"
if [ "$CODE" -eq 1 ]; then
    echo "harness smoke: the A/A run was called a regression" >&2
    cat "$WORK/aa/summary.md" >&2
    exit 1
fi
echo "harness smoke: A/B regression found (exit 1), A/A not a regression (exit $CODE)"
