#!/usr/bin/env python3
"""Alibi Detect's MMDDrift (PyTorch backend, CPU) at the sizes of driftwatch's
tiled MMD benchmark (`cargo bench --bench stats -- tiled`): d = 32, B = 100
permutations, sigma from the median heuristic on the reference, two threads.

Each size runs in its own process, so its peak memory is its own:

    python scripts/bench_mmd_alibi.py            # 2k, 10k, 20k, 50k, stops at the first failure
    python scripts/bench_mmd_alibi.py 10000      # one size

Needs `pip install "alibi-detect[torch]==0.13.0"` (a venv of its own: it
pins numpy < 2). Alibi Detect holds the (n + m)² kernel matrix, so memory
grows as n²; driftwatch's tiled path does not.
"""
import os
import resource
import subprocess
import sys
import time


def one(n: int) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(2)
    from alibi_detect.cd import MMDDrift

    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 32)).astype(np.float32)
    y = (rng.standard_normal((n, 32)) + 0.01).astype(np.float32)
    t = time.perf_counter()
    cd = MMDDrift(x, backend="pytorch", p_val=0.05, n_permutations=100, device="cpu")
    p = cd.predict(y)["data"]["p_val"]
    took = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"alibi-detect MMDDrift n=m={n} d=32 B=100 threads=2   {took:8.3f} s   p = {float(p):.3f}   peak RSS {peak:.0f} MiB")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        one(int(sys.argv[2]))
        return
    sizes = [int(a) for a in sys.argv[1:]] or [2_000, 10_000, 20_000, 50_000]
    for n in sizes:
        r = subprocess.run([sys.executable, __file__, "--one", str(n)], capture_output=True, text=True)
        if r.returncode != 0:
            tail = (r.stderr.strip().splitlines() or ["killed"])[-1]
            print(f"alibi-detect MMDDrift n=m={n}: failed (exit {r.returncode}): {tail}")
            break
        print(r.stdout.strip())


if __name__ == "__main__":
    main()
