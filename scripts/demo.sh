#!/usr/bin/env bash
# The demo: builds driftwatch, starts the embedded broker, streams digit images
# with a drifting scanner through pipelines/digits.yaml and shows what it finds.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# Only the binary: no test binaries to compile and link. Its dependencies
# resolve to the same features as the test suite's (see Cargo.toml), so a
# later `scripts/test.sh` reuses them.
cargo build --quiet --bin driftwatch
exec "$CARGO_TARGET_DIR/debug/driftwatch" demo "$@"
