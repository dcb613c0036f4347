#!/usr/bin/env bash
# Soak of bounded windows (issue 24): EVENTS synthetic sensor readings, 1M an
# hour of event time (scripts/soak.py), replayed through
# pipelines/sensors-hourly.yaml: hourly windows of a million events against
# the first hour's million, each sampled to 10,000 for KS/MMD/ranges, with
# exact counts for the categorical tests. Prints events/s and the process's
# resident memory over the run (sampled every second into rss.tsv): flat
# when the windows are bounded.
#
#   scripts/soak.sh [EVENTS]        # default 10,000,000 (a 1.7 GB file, generated once)
#
# SOAK_DIR (default $CARGO_TARGET_DIR/soak) holds the events and the output;
# SOAK_PROFILE=release measures the release build (default: the dev build
# the tests share).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh >/dev/null
events="${1:-10000000}"
dir="${SOAK_DIR:-$CARGO_TARGET_DIR/soak}"
profile="${SOAK_PROFILE:-dev}"
mkdir -p "$dir"
input="$dir/events-$events.jsonl"
if [ ! -s "$input" ]; then
  echo "soak: writing $events events to $input" >&2
  python3 scripts/soak.py "$events" >"$input.part"
  mv "$input.part" "$input"
fi
cargo build --profile "$profile" --bin driftwatch >&2
bin="$CARGO_TARGET_DIR/$([ "$profile" = dev ] && echo debug || echo "$profile")/driftwatch"
rm -rf "$dir/out"
start=$(date +%s.%N)
/usr/bin/time -v "$bin" replay pipelines/sensors-hourly.yaml --input "$input" --out "$dir/out" \
  2>"$dir/replay.log" &
pid=$!
echo -e "seconds\trss_mb" >"$dir/rss.tsv"
child=""
while kill -0 "$pid" 2>/dev/null; do
  child="${child:-$(pgrep -P "$pid" -x driftwatch || true)}"
  if [ -n "$child" ] && [ -r "/proc/$child/status" ]; then
    rss=$(awk '/^VmRSS/ {print int($2 / 1024)}' "/proc/$child/status" 2>/dev/null || true)
    [ -n "$rss" ] && echo -e "$(echo "$(date +%s.%N) - $start" | bc | cut -d. -f1)\t$rss" >>"$dir/rss.tsv"
  fi
  sleep 1
done
wait "$pid" || { tail -20 "$dir/replay.log" >&2; exit 1; }
end=$(date +%s.%N)
secs=$(echo "$end - $start" | bc)
peak=$(awk -F: '/Maximum resident set size/ {print int($2 / 1024)}' "$dir/replay.log")
evals=$(wc -l <"$dir/out/stats.jsonl")
echo "soak: $events events in ${secs%.*} s ($(echo "$events / $secs" | bc) events/s, $profile build), $evals evaluations, peak RSS $peak MB"
# Resident memory at each tenth of the run: flat once the first windows are full.
awk -F'\t' 'NR > 1 {t[NR] = $1; r[NR] = $2; n = NR} END {
  printf "soak: RSS (MB) at each tenth of the run:";
  for (i = 1; i <= 10; i++) { k = int(1 + (n - 1) * i / 10); printf " %s", r[k] }
  print "" }' "$dir/rss.tsv"
