#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests
# (integration tests run against the embedded Kafka-protocol broker, and the
# crash, outage and rebalance tests also against tansu, installed if missing),
# a check that the library compiles for aarch64 (and the statistics kernels'
# tests there, under QEMU), then a short fuzz run of the
# decoder and the config loader.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# tansu, when missing, is built alongside the test build: much of a cold
# build keeps one core busy (DataFusion's crates compile one after another),
# so the two together take less time than one after the other.
tansu_log="$CARGO_TARGET_DIR/tansu-install.log"
mkdir -p "$CARGO_TARGET_DIR"
echo "test: tansu is installed if missing, alongside the build (log: $tansu_log)" >&2
scripts/tansu.sh >"$tansu_log" 2>&1 &
tansu_pid=$!
# aarch64 compiles (its own build folder), also alongside, at low priority.
aarch64_log="$CARGO_TARGET_DIR/check-aarch64.log"
echo "test: aarch64 is checked alongside the build (log: $aarch64_log)" >&2
nice -n 19 scripts/check-aarch64.sh >"$aarch64_log" 2>&1 &
aarch64_pid=$!
trap 'kill "$tansu_pid" "$aarch64_pid" 2>/dev/null || true' EXIT
cargo fmt --check
# Lints and tests in one build: clippy-driver compiles our own crates (the
# same lints as `cargo clippy --all-targets -- -D warnings`), dependencies are
# built once, for the tests. See scripts/clippy-rustc.
export RUSTC_WORKSPACE_WRAPPER="$PWD/scripts/clippy-rustc"
cargo test --all-targets --no-run
if ! wait "$tansu_pid"; then
  tail -30 "$tansu_log" >&2
  echo "test: installing tansu failed (whole log: $tansu_log)" >&2
  exit 1
fi
source scripts/tansu.sh
cargo test --all-targets
# The statistics again on the paths of smaller CPUs (AVX2 only, and no SIMD at
# all; see src/detect/simd.rs), so that every machine tests every path it can run.
for cap in avx2 portable; do
  DRIFTWATCH_SIMD=$cap cargo test --lib detect::
  DRIFTWATCH_SIMD=$cap cargo test --test statistics
done
if ! wait "$aarch64_pid"; then
  tail -30 "$aarch64_log" >&2
  echo "test: the aarch64 check failed (whole log: $aarch64_log)" >&2
  exit 1
fi
unset RUSTC_WORKSPACE_WRAPPER
scripts/fuzz.sh --smoke "${FUZZ_SMOKE_SECONDS:-15}"
