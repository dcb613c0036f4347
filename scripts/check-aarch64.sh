#!/usr/bin/env bash
# aarch64: `cargo check` of the library for aarch64-unknown-linux-gnu, then
# the statistics kernels' unit tests (src/detect/simd.rs, the only code whose
# path differs by architecture) built for aarch64 and run under QEMU's user
# mode: the portable loops as the compiler vectorises them for NEON, and
# the exponential's bits against the x86_64 ones. The whole test suite is
# not run there: it would build all of DataFusion for aarch64.
# Installs what it needs if missing: the target's standard library (rustup),
# Debian's aarch64 cross compilers (the C libraries built by -sys crates,
# librdkafka, OpenSSL, zstd, need them even for a check; librdkafka's own
# configure script reads only CC/CXX, hence those) and qemu-user-static.
# Builds into its own folder beside $CARGO_TARGET_DIR, so it can run while
# the test build holds that one.
set -euo pipefail
cd "$(dirname "$0")/.."
triple=aarch64-unknown-linux-gnu
if ! rustup target list --installed | grep -qx "$triple"; then
  rustup target add "$triple"
fi
if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v aarch64-linux-gnu-g++ >/dev/null \
  || ! command -v qemu-aarch64-static >/dev/null; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends gcc-aarch64-linux-gnu g++-aarch64-linux-gnu \
    qemu-user-static
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
# The kernels' tests on aarch64 (scripts/simd-aarch64 builds src/detect/simd.rs
# on its own), linked by the cross gcc, run by QEMU with the cross sysroot.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -L /usr/aarch64-linux-gnu"
(cd scripts/simd-aarch64 && cargo test --quiet --locked --target "$triple")
echo "check-aarch64: the statistics kernels' tests pass on $triple (QEMU)" >&2
