#!/usr/bin/env bash
# Kill churn against the embedded broker (issue 26, item 5): `driftwatch
# broker` with a 4-partition topic, the demo scenario produced into it, and
# two `run` instances of one group (6 s sessions) of which one is killed
# with SIGKILL every 2-8 s and replaced, KILLS times per round, ROUNDS rounds. After every kill
# the broker must still be alive; if it died, the script says how (signal,
# exit code), keeps its log and core file (ulimit -c unlimited, in the
# round's folder) and exits 1. Usage:
#   scripts/chaos.sh [ROUNDS=5] [KILLS=30]     # DRIFTWATCH_BIN picks the binary
set -uo pipefail
ROUNDS="${1:-5}"
KILLS="${2:-30}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${DRIFTWATCH_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/driftwatch}"
[ -x "$BIN" ] || { echo "chaos: no binary at $BIN (cargo build --bin driftwatch, or set DRIFTWATCH_BIN)" >&2; exit 2; }
OUT="$(mktemp -d /tmp/driftwatch-chaos.XXXXXX)"
echo "chaos: $ROUNDS rounds of $KILLS kills; logs in $OUT" >&2
ulimit -c unlimited

# The digits pipeline with a 6 s session, so that a killed member leaves the
# group soon and instances keep joining and leaving.
PIPELINE="$OUT/digits.yaml"
sed -e "s|\.\./|$ROOT/|" -e 's|properties: {} |properties: {session.timeout.ms: "6000", heartbeat.interval.ms: "1000"} |' \
  "$ROOT/pipelines/digits.yaml" >"$PIPELINE"
grep -q 'session.timeout.ms' "$PIPELINE" || { echo "chaos: could not set the session timeout in $PIPELINE" >&2; exit 2; }

instances=()
start_instance() { # round dir, instance number
  KAFKA_BROKERS="$BOOT" DRIFTWATCH_LOG=info,rdkafka=warn \
    "$BIN" run "$PIPELINE" --metrics off --status-every 5 --group-id chaos \
    2>"$1/run-$2.log" &
  instances+=($!)
}

for round in $(seq 1 "$ROUNDS"); do
  dir="$OUT/round-$round"; mkdir -p "$dir"
  (cd "$dir" && exec "$BIN" broker --topic digits:4 >"$dir/boot" 2>"$dir/broker.log") &
  broker=$!
  for _ in $(seq 1 100); do [ -s "$dir/boot" ] && break; sleep 0.1; done
  BOOT="$(head -1 "$dir/boot")"
  (cd "$dir" && "$BIN" produce "$ROOT/pipelines/scenarios/demo.yaml" --brokers "$BOOT" --topic digits \
    >/dev/null 2>"$dir/produce.log") || { echo "chaos: produce failed, see $dir/produce.log" >&2; }
  instances=(); n=0
  start_instance "$dir" $((n++)); start_instance "$dir" $((n++))
  for k in $(seq 1 "$KILLS"); do
    sleep "$((RANDOM % 7 + 2))"
    i=$((RANDOM % 2))
    kill -9 "${instances[$i]}" 2>/dev/null; wait "${instances[$i]}" 2>/dev/null
    unset 'instances[i]'; instances=("${instances[@]}")
    if ! kill -0 "$broker" 2>/dev/null; then
      wait "$broker"; rc=$?
      sig=""; [ "$rc" -gt 128 ] && sig=" (signal $((rc - 128)): $(kill -l $((rc - 128))))"
      echo "chaos: round $round, kill $k: the broker died, exit $rc$sig; log $dir/broker.log; core: $(ls "$dir"/core* 2>/dev/null || echo none)" >&2
      for p in "${instances[@]}"; do kill -9 "$p" 2>/dev/null; done
      exit 1
    fi
    start_instance "$dir" $((n++))
  done
  for p in "${instances[@]}"; do kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  kill -INT "$broker"; wait "$broker"
  assigned=$(cat "$dir"/run-*.log | grep -c "partition assigned")
  echo "chaos: round $round: broker alive through $KILLS kills ($n instances, $assigned partition assignments)" >&2
  [ "$assigned" -gt 0 ] || { echo "chaos: no instance ever got a partition; see $dir/run-*.log" >&2; exit 2; }
  rm -f "$dir"/run-*.log
done
echo "chaos: $ROUNDS rounds, $((ROUNDS * KILLS)) kills, the broker never died" >&2
