#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests
# (integration tests run against the embedded Kafka-protocol broker, and the
# crash, outage and rebalance tests also against tansu, installed if missing),
# then a short fuzz run of the decoder and the config loader.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
source scripts/tansu.sh
cargo fmt --check
# Lints and tests in one build: clippy-driver compiles our own crates (the
# same lints as `cargo clippy --all-targets -- -D warnings`), dependencies are
# built once, for the tests. See scripts/clippy-rustc.
RUSTC_WORKSPACE_WRAPPER="$PWD/scripts/clippy-rustc" cargo test --all-targets
scripts/fuzz.sh --smoke "${FUZZ_SMOKE_SECONDS:-15}"
