#!/usr/bin/env bash
# Installs tansu, an independent Kafka implementation (Rust, sqlite storage),
# when missing: the crash, outage and rebalance tests run against it as well
# as against the embedded broker, so that nothing passes only because
# librdkafka's own mock agrees with librdkafka (DESIGN §8). The first install
# builds from crates.io into ~/.cache/driftwatch-tools (about 13 minutes on 2
# idle cores); test.sh runs it alongside the test build, then sources it to
# export DRIFTWATCH_TANSU.
set -euo pipefail
TANSU_VERSION=0.6.0
TOOLS="${DRIFTWATCH_TOOLS:-$HOME/.cache/driftwatch-tools}"
TANSU_BIN="$TOOLS/bin/tansu"
if [ ! -x "$TANSU_BIN" ] || [ "$(cat "$TOOLS/tansu.version" 2>/dev/null)" != "$TANSU_VERSION" ]; then
  echo "setup: installing tansu $TANSU_VERSION into $TOOLS (first time only)" >&2
  # tansu's release profile (one codegen unit, thin LTO) compiles its largest
  # crates on one core; a test broker needs no such speed, so it is built with
  # 16 units, no LTO, opt-level 1 (about 26 CPU-minutes). Its own (temporary)
  # target dir: it may run while the test build holds CARGO_TARGET_DIR.
  CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_LTO=false \
    CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_DEBUG=false \
    env -u CARGO_TARGET_DIR cargo install tansu --version "$TANSU_VERSION" --locked \
    --features dynostore,libsql --root "$TOOLS"
  echo "$TANSU_VERSION" > "$TOOLS/tansu.version"
fi
export DRIFTWATCH_TANSU="$TANSU_BIN"
