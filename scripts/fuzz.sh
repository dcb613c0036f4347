#!/usr/bin/env bash
# Fuzzes the event decoder (`decode`) and the pipeline config loader
# (`pipeline_config`) with libFuzzer, SECONDS each:
#
#   scripts/fuzz.sh            # 60 s per target, cargo-fuzz
#   scripts/fuzz.sh 3600       # the longer run: an hour per target
#   FUZZ_SANITIZER=address scripts/fuzz.sh 600   # with AddressSanitizer
#   scripts/fuzz.sh --smoke 15 # the short run in CI (scripts/test.sh)
#
# The full runs install cargo-fuzz when missing and run on the stable
# toolchain (RUSTC_BOOTSTRAP lets cargo-fuzz pass its unstable compiler
# flags). Their build is instrumented throughout, so it has its own target dir
# (the first build takes as long as a cold one).
#
# --smoke builds the same targets as examples of the main package (feature
# `fuzz-targets`) in the test build's target dir, with coverage instrumentation
# for driftwatch's own code only (scripts/sancov-rustc): the dependencies are
# reused, so the short run costs minutes even on a cold CI machine.
#
# The corpus grows in fuzz/corpus/<target> (git-ignored), seeded from the
# shipped pipelines and a few events; a crash is saved in fuzz/artifacts/<target>
# and fails this script.
set -euo pipefail
cd "$(dirname "$0")/.."
SMOKE=0
if [ "${1:-}" = "--smoke" ]; then SMOKE=1; shift; fi
SECS="${1:-60}"
case "$SECS" in ''|*[!0-9]*) echo "fuzz: SECONDS must be a whole number, got '$SECS'" >&2; exit 2 ;; esac
SANITIZER="${FUZZ_SANITIZER:-none}"
if [ "$SMOKE" = 1 ]; then
  source scripts/setup.sh # the test build's target dir
  echo "fuzz: building the fuzz targets (coverage for driftwatch's own code)" >&2
  RUSTC_WORKSPACE_WRAPPER="$PWD/scripts/sancov-rustc" cargo build --quiet --features fuzz-targets \
    --example fuzz_decode --example fuzz_pipeline_config
else
  CARGO_FUZZ_VERSION=0.13.2
  if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --quiet
  fi
  export RUSTC_BOOTSTRAP=1
  export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/driftwatch-fuzz-target}"
fi

# Seeds: the shipped pipelines, and events good and bad.
mkdir -p fuzz/corpus/pipeline_config fuzz/corpus/decode
for f in pipelines/*.yaml; do cp "$f" "fuzz/corpus/pipeline_config/seed-$(basename "$f")"; done
printf '%s' '{"event_id":"e1","ts":1700000000000,"scanner":"a","pixels":[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,0,1,2,3,4,5,6,7,8,9,10,11,12],"mean_intensity":4.5,"ink_fraction":0.3,"label":7}' > fuzz/corpus/decode/seed-digits
printf '%s' '{"v":1,"id":"a","ts":"2026-01-01T00:00:00Z","site":"s","x":1.5,"y":NaN,"n":3,"ok":true,"px":[[1,2,3],[4,5,6]],"label":2}' > fuzz/corpus/decode/seed-all-types
printf '%s' '{"v":"2","id":"b","ts":5,"x":-0.0,"px":[1,2,3,4,5,6],"label":null}' > fuzz/corpus/decode/seed-all-types-2

for t in decode pipeline_config; do
  if [ "$SMOKE" = 1 ]; then how="short run"; else how="sanitizer: $SANITIZER"; fi
  echo "fuzz: $t for ${SECS}s ($how)" >&2
  log="$CARGO_TARGET_DIR/fuzz-$t.log"
  mkdir -p "$CARGO_TARGET_DIR"
  rc=0
  opts=(-max_total_time="$SECS" -max_len=8192 -print_final_stats=1)
  if [ "$SMOKE" = 1 ]; then
    # (cargo-fuzz sets the same artifact folder itself.)
    mkdir -p "fuzz/artifacts/$t"
    "$CARGO_TARGET_DIR/debug/examples/fuzz_$t" "fuzz/corpus/$t" "${opts[@]}" \
      -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1 || rc=$?
  else
    cargo fuzz run --sanitizer "$SANITIZER" "$t" "fuzz/corpus/$t" -- "${opts[@]}" >"$log" 2>&1 || rc=$?
  fi
  grep -E "stat::number_of_executed_units|Done [0-9]+ runs" "$log" | sed "s/^/fuzz: $t: /" >&2 || true
  if [ "$rc" -ne 0 ]; then
    tail -40 "$log" >&2
    echo "fuzz: $t failed (exit $rc); a crashing input is kept in fuzz/artifacts/$t" >&2
    exit 1
  fi
done
