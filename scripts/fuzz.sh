#!/usr/bin/env bash
# Fuzzes the event decoder (`decode`) and the pipeline config loader
# (`pipeline_config`) with cargo-fuzz (libFuzzer), SECONDS each:
#
#   scripts/fuzz.sh            # 60 s per target
#   scripts/fuzz.sh 3600       # the longer run: an hour per target
#   FUZZ_SANITIZER=address scripts/fuzz.sh 600   # with AddressSanitizer
#
# Installs cargo-fuzz when missing. Runs on the stable toolchain:
# RUSTC_BOOTSTRAP lets cargo-fuzz pass its unstable compiler flags. The
# corpus grows in fuzz/corpus/<target> (git-ignored), seeded from the shipped
# pipelines and a few events; a crash is saved in fuzz/artifacts/<target>
# and fails this script. The build is instrumented, so it has its own target
# dir (the first build takes as long as a cold one).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-60}"
SANITIZER="${FUZZ_SANITIZER:-none}"
CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --quiet
fi
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/driftwatch-fuzz-target}"

# Seeds: the shipped pipelines, and events good and bad.
mkdir -p fuzz/corpus/pipeline_config fuzz/corpus/decode
for f in pipelines/*.yaml; do cp "$f" "fuzz/corpus/pipeline_config/seed-$(basename "$f")"; done
printf '%s' '{"event_id":"e1","ts":1700000000000,"scanner":"a","pixels":[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,0,1,2,3,4,5,6,7,8,9,10,11,12],"mean_intensity":4.5,"ink_fraction":0.3,"label":7}' > fuzz/corpus/decode/seed-digits
printf '%s' '{"v":1,"id":"a","ts":"2026-01-01T00:00:00Z","site":"s","x":1.5,"y":NaN,"n":3,"ok":true,"px":[[1,2,3],[4,5,6]],"label":2}' > fuzz/corpus/decode/seed-all-types
printf '%s' '{"v":"2","id":"b","ts":5,"x":-0.0,"px":[1,2,3,4,5,6],"label":null}' > fuzz/corpus/decode/seed-all-types-2

for t in decode pipeline_config; do
  echo "fuzz: $t for ${SECS}s (sanitizer: $SANITIZER)" >&2
  log="$CARGO_TARGET_DIR/fuzz-$t.log"
  mkdir -p "$CARGO_TARGET_DIR"
  rc=0
  cargo fuzz run --sanitizer "$SANITIZER" "$t" "fuzz/corpus/$t" -- \
    -max_total_time="$SECS" -max_len=8192 -print_final_stats=1 >"$log" 2>&1 || rc=$?
  grep -E "stat::number_of_executed_units|Done [0-9]+ runs" "$log" | sed "s/^/fuzz: $t: /" >&2 || true
  if [ "$rc" -ne 0 ]; then
    tail -40 "$log" >&2
    echo "fuzz: $t failed (exit $rc); a crashing input is kept in fuzz/artifacts/$t" >&2
    exit 1
  fi
done
