#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests
# (integration tests run against the embedded Kafka-protocol broker, and the
# crash, outage and rebalance tests also against tansu, installed if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
source scripts/tansu.sh
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --all-targets
