#!/usr/bin/env bash
# Installs tansu, an independent Kafka implementation (Rust, sqlite storage),
# when missing: the crash, outage and rebalance tests run against it as well
# as against the embedded broker, so that nothing passes only because
# librdkafka's own mock agrees with librdkafka (DESIGN §8). Sourced by
# test.sh; exports DRIFTWATCH_TANSU. The first install builds from crates.io
# (about 15 minutes on 2 cores) into ~/.cache/driftwatch-tools.
set -euo pipefail
TANSU_VERSION=0.6.0
TOOLS="${DRIFTWATCH_TOOLS:-$HOME/.cache/driftwatch-tools}"
TANSU_BIN="$TOOLS/bin/tansu"
if [ ! -x "$TANSU_BIN" ] || [ "$(cat "$TOOLS/tansu.version" 2>/dev/null)" != "$TANSU_VERSION" ]; then
  echo "setup: installing tansu $TANSU_VERSION into $TOOLS (first time only)" >&2
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql \
    --root "$TOOLS"
  echo "$TANSU_VERSION" > "$TOOLS/tansu.version"
fi
export DRIFTWATCH_TANSU="$TANSU_BIN"
