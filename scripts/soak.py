#!/usr/bin/env python3
"""Synthetic sensor readings for the bounded-windows soak (schemas/sensors.yaml).

    scripts/soak.py EVENTS [--per-hour N] [--seed S] > events.jsonl

Events are spaced evenly in event time (N an hour, default 1,000,000),
starting 2026-01-01T00:00:00Z. Hours 0-5 are clean; from hour 6 the
temperature drifts up by 0.3 standard deviations; from hour 8 a status
`recalibrating` the first hours never had appears in 0.5% of events; in
hour 9 the vibration sensor drops out in 5% of events (null). Seeded:
the same arguments give the same bytes.
"""
import argparse
import random
import sys

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z in ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("events", type=int)
    ap.add_argument("--per-hour", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    statuses = ["ok"] * 90 + ["warn"] * 8 + ["fault"] * 2
    step = 3_600_000 / a.per_hour
    out = sys.stdout
    lines = []
    for i in range(a.events):
        hour = int(i * step) // 3_600_000
        status = rng.choice(statuses)
        if hour >= 8 and rng.random() < 0.005:
            status = "recalibrating"
        temp = rng.gauss(20.0 + (0.3 if hour >= 6 else 0.0), 1.0)
        vib = "null" if hour == 9 and rng.random() < 0.05 else f"{rng.gauss(0.5, 0.1):.4f}"
        feats = ",".join(f"{rng.gauss(0.0, 1.0):.3f}" for _ in range(8))
        lines.append(
            f'{{"id":"e{i}","ts":{T0 + int(i * step)},"site":"s{rng.randrange(2000)}",'
            f'"status":"{status}","temperature":{temp:.3f},"vibration":{vib},"features":[{feats}]}}\n'
        )
        if len(lines) == 10_000:
            out.write("".join(lines))
            lines.clear()
    out.write("".join(lines))


if __name__ == "__main__":
    main()
