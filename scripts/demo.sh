#!/usr/bin/env bash
# The demo: builds driftwatch, starts the embedded broker, streams digit images
# with a drifting scanner through pipelines/digits.yaml and shows what it finds.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --quiet --bin driftwatch
exec "$CARGO_TARGET_DIR/debug/driftwatch" demo "$@"
