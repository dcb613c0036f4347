#!/usr/bin/env python3
"""Golden values for the drift statistics, from scipy (the reference).

    python3 scripts/golden_stats.py      # rewrites tests/fixtures/ks_golden.json

Seeded: the same scipy gives the same file. Each KS case stores both samples,
so the Rust tests need no random generator of their own.
"""
import json
import os

import numpy as np
import scipy
from scipy import stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ks_cases():
    rng = np.random.default_rng(20261126)
    cases = []
    sizes = [(1, 1), (1, 5), (2, 3), (3, 3), (5, 7), (10, 10), (10, 25), (31, 17), (50, 50), (64, 100),
             (100, 100), (128, 97), (200, 300), (333, 500), (500, 500), (700, 1000), (1000, 1000), (1500, 999)]
    for i, (n, m) in enumerate(sizes):
        kind = ["normal", "shift", "ties", "heavy"][i % 4]
        if kind == "normal":
            a, b = rng.normal(size=n), rng.normal(size=m)
        elif kind == "shift":
            a, b = rng.normal(size=n), rng.normal(0.4, 1.0, size=m)
        elif kind == "ties":
            a, b = rng.integers(0, 5, size=n).astype(float), rng.integers(0, 6, size=m).astype(float)
        else:
            a, b = rng.standard_cauchy(size=n), rng.standard_cauchy(size=m) * 1.5
        cases.append((kind, a, b))
    x = rng.normal(size=40)
    cases.append(("identical", x, x.copy()))
    cases.append(("disjoint", np.arange(20.0), np.arange(20.0) + 100))
    out = []
    for kind, a, b in cases:
        r = stats.ks_2samp(a, b, method="auto")
        out.append({"kind": kind, "a": a.tolist(), "b": b.tolist(),
                    "statistic": float(r.statistic), "p_value": float(r.pvalue)})
    return out


def main():
    fixtures = os.path.join(ROOT, "tests", "fixtures")
    os.makedirs(fixtures, exist_ok=True)
    with open(os.path.join(fixtures, "ks_golden.json"), "w") as f:
        json.dump({"generator": "scripts/golden_stats.py", "scipy": scipy.__version__, "cases": ks_cases()}, f)


if __name__ == "__main__":
    main()
