#!/usr/bin/env bash
# Renders a backtest report in headless Chromium: produces the demo scenario
# to a file, replays it through pipelines/digits.yaml with its ground truth,
# and screenshots report.html to OUT/report.png (default OUT: target/report).
# Installs Debian's chromium package when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
OUT=${1:-target/report}
mkdir -p "$OUT"
if ! command -v chromium >/dev/null; then
  echo "installing chromium (apt)…" >&2
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  $SUDO apt-get install -y --no-install-recommends chromium >&2
fi
cargo build --quiet --tests
BIN="$CARGO_TARGET_DIR/debug/driftwatch"
"$BIN" produce pipelines/scenarios/demo.yaml --out "$OUT/demo.jsonl"
KAFKA_BROKERS=${KAFKA_BROKERS:-unused:9092} "$BIN" replay pipelines/digits.yaml \
  --input "$OUT/demo.jsonl" --truth "$OUT/demo.truth.json" --out "$OUT"
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
  --window-size=1000,3000 --screenshot="$(realpath "$OUT")/report.png" \
  "file://$(realpath "$OUT")/report.html" 2>/dev/null
echo "$OUT/report.png"
