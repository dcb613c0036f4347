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


MASK = (1 << 64) - 1


def splitmix(seed, count):
    """SplitMix64 uniforms in [0, 1) -- the same integers and the same doubles
    as `tests/common` / the Rust unit tests produce (only exact operations)."""
    x = seed & MASK
    out = []
    for _ in range(count):
        x = (x + 0x9E3779B97F4A7C15) & MASK
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        z = z ^ (z >> 31)
        out.append((z >> 11) * (1.0 / (1 << 53)))
    return out


def synth(spec):
    """A sample from a generator spec: kind normal (Irwin-Hall sum of 12
    uniforms - 6), heavy (1/u - 1/v), ties (floor(6u)) or grid (i + offset);
    then * scale + shift. Only +, -, *, / and floor: bit-identical in Rust."""
    n, seed, kind = spec["n"], spec["seed"], spec["kind"]
    if kind == "grid":
        xs = [float(i) + spec["shift"] for i in range(n)]
        return np.array(xs)
    if kind == "normal":
        u = splitmix(seed, 12 * n)
        xs = []
        for i in range(n):
            acc = 0.0
            for j in range(12):
                acc += u[12 * i + j]
            xs.append(acc - 6.0)
    elif kind == "heavy":
        u = splitmix(seed, 2 * n)
        xs = [1.0 / (u[2 * i] + 1e-3) - 1.0 / (u[2 * i + 1] + 1e-3) for i in range(n)]
    elif kind == "ties":
        u = splitmix(seed, n)
        xs = [float(np.floor(6.0 * v)) for v in u]
    else:
        raise ValueError(kind)
    return np.array([x * spec["scale"] + spec["shift"] for x in xs])


def ks_large_cases():
    """Large samples given by generator specs, so the fixture stays small.
    Covers the exact path up to 10,000 and the asymptotic path (kstwo) above,
    in each of its regions: Ruben-Gambino (tiny en), Durbin/Pomeranz (en <= 140),
    Durbin for large en and small D, Pelz-Good, and the Smirnov tail."""
    def g(n, seed, kind="normal", shift=0.0, scale=1.0):
        return {"n": n, "seed": seed, "kind": kind, "shift": shift, "scale": scale}
    pairs = [
        (g(2000, 1), g(3000, 2)),
        (g(5000, 3), g(5000, 4, shift=0.05)),
        (g(10000, 5, "ties"), g(10000, 6, "ties")),
        (g(10000, 7), g(7001, 8, "heavy")),
        (g(10001, 9), g(10001, 10)),
        (g(20000, 11), g(20000, 12, shift=0.03)),
        (g(20000, 13), g(15000, 14, shift=0.2)),
        (g(12000, 15, "heavy"), g(12000, 16, "heavy", scale=1.1)),
        (g(15000, 17), g(50, 18)),
        (g(15000, 19), g(120, 20, shift=0.3)),
        (g(12000, 21), g(3, 22)),
        (g(12000, 23), g(1, 24, shift=10.0)),
        (g(12000, 0, "grid"), g(12000, 0, "grid", shift=30.5)),
        (g(20000, 25, "ties"), g(11000, 26, "ties")),
        (g(19999, 27), g(19999, 28, shift=1.0)),
    ]
    out = []
    for a, b in pairs:
        r = stats.ks_2samp(synth(a), synth(b), method="auto")
        out.append({"a": a, "b": b, "statistic": float(r.statistic), "p_value": float(r.pvalue)})
    return out


def kstwo_cases():
    out = []
    for n in [1, 2, 3, 5, 10, 50, 100, 140, 141, 500, 1000, 5000, 10000, 100000, 100001, 2000000]:
        for x in [0.0001, 0.001, 0.003, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.999]:
            out.append({"n": n, "x": x, "sf": float(stats.kstwo.sf(x, n))})
    return out


def chi2_cases():
    tables = [
        [[10, 20, 30], [15, 15, 30]],
        [[500, 300, 200], [480, 320, 200]],
        [[1000, 0, 5], [990, 3, 12]],        # zero and rare cells
        [[1, 1], [0, 5]],
        [[100, 100, 0, 0], [50, 50, 1, 99]],  # categories unseen in the reference
        [[2000] * 10, [1800, 2200, 2000, 2000, 2100, 1900, 2000, 2000, 1950, 2050]],
        [[3, 0, 0, 7], [0, 4, 1, 0]],
    ]
    out = []
    for t in tables:
        arr = np.array(t, dtype=float)
        keep = arr.sum(axis=0) > 0
        r = stats.chi2_contingency(arr[:, keep], correction=False)
        out.append({"reference": t[0], "current": t[1], "statistic": float(r.statistic),
                    "p_value": float(r.pvalue), "dof": int(r.dof)})
    return out


def wasserstein_cases():
    out = []
    for a, b in [(g, h) for g, h in [
        ({"n": 300, "seed": 31, "kind": "normal", "shift": 0.0, "scale": 1.0},
         {"n": 500, "seed": 32, "kind": "normal", "shift": 0.5, "scale": 2.0}),
        ({"n": 1000, "seed": 33, "kind": "heavy", "shift": 0.0, "scale": 1.0},
         {"n": 999, "seed": 34, "kind": "ties", "shift": 0.0, "scale": 1.0}),
    ]]:
        out.append({"a": a, "b": b, "distance": float(stats.wasserstein_distance(synth(a), synth(b))),
                    "reference_std": float(np.std(synth(a)))})
    return out


def fisher_cases():
    """2x2 tables (errors, correct) x (reference, current): small, sparse, tied and large."""
    tables = [(8, 2, 1, 5), (1, 9, 11, 3), (0, 5, 5, 0), (3, 3, 3, 3), (20, 980, 45, 455),
              (0, 1000, 0, 500), (1, 0, 0, 1), (25, 975, 200, 300), (7, 12, 9, 4), (0, 3, 1, 0)]
    out = []
    for a, b, c, d in tables:
        _, p = stats.fisher_exact([[a, b], [c, d]])
        out.append({"table": [a, b, c, d], "p_value": float(p)})
    return out


def betabinom_sf_exact(x, m, a, b):
    """P(X >= x), X ~ beta-binomial(m, a, b), integer a and b, in exact rational arithmetic."""
    from fractions import Fraction
    from math import comb, factorial

    def beta(p, q):
        return Fraction(factorial(p - 1) * factorial(q - 1), factorial(p + q - 1))

    return float(sum(comb(m, j) * beta(j + a, m - j + b) for j in range(x, m + 1)) / beta(a, b))


def betabinom_cases():
    """Upper tails P(X >= x) of beta-binomial(m, a, b): out_of_range's exact p-value. Exact
    rationals, checked against scipy where scipy is accurate (its sf loses digits far in the
    tail: 1.498e-11 for the exact 1.308e-11 of (40, 1000, 2, 999))."""
    out = []
    for x, m, a, b in [(0, 10, 2, 99), (1, 10, 2, 99), (2, 4, 2, 98), (5, 150, 2, 299), (12, 150, 6, 295),
                       (40, 1000, 2, 999), (3, 1000, 20, 9981), (150, 150, 2, 99), (7, 50, 4, 30)]:
        exact = betabinom_sf_exact(x, m, a, b)
        if exact > 1e-6:
            assert abs(exact - stats.betabinom.sf(x - 1, m, a, b)) <= 1e-9 * exact
        out.append({"x": x, "m": m, "a": float(a), "b": float(b), "sf": exact})
    return out


def main():
    fixtures = os.path.join(ROOT, "tests", "fixtures")
    os.makedirs(fixtures, exist_ok=True)
    with open(os.path.join(fixtures, "ks_golden.json"), "w") as f:
        json.dump({"generator": "scripts/golden_stats.py", "scipy": scipy.__version__, "cases": ks_cases(),
                   "large_cases": ks_large_cases(), "kstwo": kstwo_cases()}, f)
    with open(os.path.join(fixtures, "stats_golden.json"), "w") as f:
        json.dump({"generator": "scripts/golden_stats.py", "scipy": scipy.__version__,
                   "chi2": chi2_cases(), "wasserstein": wasserstein_cases(), "fisher": fisher_cases(),
                   "betabinom": betabinom_cases()}, f, indent=1)


if __name__ == "__main__":
    main()
