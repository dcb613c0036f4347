#!/usr/bin/env bash
# The demo: builds driftwatch, starts the embedded broker, streams digit images
# with a drifting scanner through pipelines/digits.yaml and shows what it finds.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# `--tests` builds the binary with the same dependency features as the test
# suite, so the demo and the tests share one warm build instead of two.
cargo build --quiet --tests
exec "$CARGO_TARGET_DIR/debug/driftwatch" demo "$@"
