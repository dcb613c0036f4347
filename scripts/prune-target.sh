#!/usr/bin/env bash
# Keeps the shared build folder ($CARGO_TARGET_DIR) from filling the disk.
#
# Every checkout builds its own test binaries (cargo hashes the package path
# into their names), each about 0.7 GB with line tables, and every edit leaves
# an incremental-compilation folder behind. Without pruning, a few fresh-clone
# CI runs fill the disk and the linker dies with SIGBUS. This keeps the newest
# KEEP (default 2) versions of each test binary, example and incremental
# folder; dependencies (rlibs) are never touched, so nothing is recompiled,
# at worst relinked.
#
# Sourced by setup.sh (after CARGO_TARGET_DIR is set); also runs on its own.
set -euo pipefail
target="${CARGO_TARGET_DIR:-$HOME/.cache/driftwatch-target}"
[ -d "$target" ] || exit 0
python3 - "$target" "${DRIFTWATCH_PRUNE_KEEP:-2}" <<'PY'
import os, re, shutil, sys
from collections import defaultdict

target, keep = sys.argv[1], int(sys.argv[2])
# cargo's artifact names: <name>-<16 hex digits>
hashed = re.compile(r"^(.+)-([0-9a-f]{16})$")

def stale(entries):
    """Entries beyond the newest `keep` of each name, oldest last."""
    groups = defaultdict(list)
    for path in entries:
        m = hashed.match(os.path.basename(path))
        if m:
            groups[m.group(1)].append(path)
    for paths in groups.values():
        paths.sort(key=os.path.getmtime, reverse=True)
        yield from paths[keep:]

freed = 0
for profile in ("debug", "release"):
    for sub in ("deps", "examples"):
        folder = os.path.join(target, profile, sub)
        if not os.path.isdir(folder):
            continue
        binaries = [os.path.join(folder, f) for f in os.listdir(folder)]
        binaries = [p for p in binaries if os.path.isfile(p) and os.access(p, os.X_OK)
                    and not p.endswith((".so", ".rlib", ".rmeta"))]
        for path in stale(binaries):
            freed += os.path.getsize(path)
            os.remove(path)
            if os.path.exists(path + ".d"):
                os.remove(path + ".d")
    folder = os.path.join(target, profile, "incremental")
    if os.path.isdir(folder):
        dirs = [os.path.join(folder, d) for d in os.listdir(folder)]
        for path in stale([d for d in dirs if os.path.isdir(d)]):
            for root, _, files in os.walk(path):
                freed += sum(os.path.getsize(os.path.join(root, f)) for f in files)
            shutil.rmtree(path, ignore_errors=True)
if freed > 100_000_000:
    print(f"prune-target: freed {freed / 1e9:.1f} GB of stale test binaries and "
          f"incremental folders in {target}", file=sys.stderr)
PY
