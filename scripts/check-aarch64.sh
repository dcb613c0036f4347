#!/usr/bin/env bash
# aarch64 compiles: `cargo check` of the library for aarch64-unknown-linux-gnu
# (the statistics kernels have NEON-friendly portable paths there; see
# src/detect/simd.rs). Installs what it needs if missing: the target's
# standard library (rustup) and Debian's aarch64 cross compilers, which the C
# libraries built by -sys crates (librdkafka, OpenSSL, zstd) need even for a
# check. librdkafka's own configure script reads only CC/CXX, hence those.
# Builds into its own folder beside $CARGO_TARGET_DIR, so it can run while
# the test build holds that one.
set -euo pipefail
cd "$(dirname "$0")/.."
triple=aarch64-unknown-linux-gnu
if ! rustup target list --installed | grep -qx "$triple"; then
  rustup target add "$triple"
fi
if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v aarch64-linux-gnu-g++ >/dev/null; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends gcc-aarch64-linux-gnu g++-aarch64-linux-gnu
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/driftwatch-target}-aarch64"
export CC=aarch64-linux-gnu-gcc CXX=aarch64-linux-gnu-g++ AR=aarch64-linux-gnu-ar
# Host tools (build scripts, proc macros) keep the host compilers.
export CC_x86_64_unknown_linux_gnu=gcc CXX_x86_64_unknown_linux_gnu=g++ AR_x86_64_unknown_linux_gnu=ar
unset RUSTC_WORKSPACE_WRAPPER
# Warnings are errors, as on x86_64 (where clippy runs): code only one
# architecture uses must say so with cfg.
export RUSTFLAGS="-D warnings"
cargo check --quiet --target "$triple" --lib --benches
echo "check-aarch64: the library and benches compile for $triple" >&2
