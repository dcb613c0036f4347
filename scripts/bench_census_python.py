#!/usr/bin/env python3
"""The Python pipeline a user would write instead of driftwatch's census
pipeline, for `driftwatch bench --census` to be compared against in the same
session: JSON events (as they come off Kafka) → pandas → onnxruntime (the
skl2onnx model, batches of 256) → per window of 5000 sliding by 2500 against
the labelled 2015 records (read and scored once before the clock starts, as
driftwatch reads its `file` reference at start-up): scipy's KS on AGEP, chi-square on the 15 codes and the
predicted class, Fisher's exact test on the missing ages, the out-of-range
count, the unseen codes, and a CBPE accuracy estimate (scikit-learn's
isotonic calibration on the reference). Prints events/s end to end, and
ONNX Runtime alone on the same batches.

    pip install onnxruntime pyarrow pandas scipy scikit-learn
    python3 scripts/bench_census_python.py [EVENTS]
"""

import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort
import pandas as pd
import pyarrow.parquet as pq
from scipy.stats import chi2_contingency, fisher_exact, ks_2samp
from sklearn.isotonic import IsotonicRegression

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, ".deps", "census")
CODES = ["SCHL", "MAR", "RELP", "DIS", "ESP", "CIT", "MIG", "MIL", "ANC", "NATIVITY", "DEAR", "DEYE", "DREM",
         "SEX", "RAC1P"]
BATCH, WINDOW, SLIDE = 256, 5000, 2500


def payloads(n):
    rows = []
    for f in ["reference.pq", "analysis.pq"]:
        t = pq.read_table(os.path.join(DATA, f)).to_pandas()
        keep = ["id", "year", "AGEP"] + CODES + (["employed"] if "employed" in t else [])
        for r in t[keep].astype({c: str for c in CODES}).to_dict("records"):
            rows.append(json.dumps(r).encode())
    return [rows[i % len(rows)] for i in range(n)]


def score(sess, df):
    feeds = {"AGEP": df["AGEP"].to_numpy(np.float32).reshape(-1, 1)}
    for c in CODES:
        feeds[c] = df[c].to_numpy(object).reshape(-1, 1)
    label, probs = sess.run(["label", "probabilities"], feeds)
    return label, probs


def tests(ref, cur, calib):
    ks_2samp(ref["AGEP"].dropna(), cur["AGEP"].dropna())
    for c in CODES + ["pred"]:
        table = pd.crosstab(pd.concat([ref[c], cur[c]]), np.r_[np.zeros(len(ref)), np.ones(len(cur))])
        if table.shape[0] > 1:
            chi2_contingency(table)
    miss = lambda d: int(d["AGEP"].isna().sum())  # noqa: E731
    fisher_exact([[miss(ref), len(ref) - miss(ref)], [miss(cur), len(cur) - miss(cur)]])
    lo, hi = ref["AGEP"].min(), ref["AGEP"].max()
    int(((cur["AGEP"] < lo) | (cur["AGEP"] > hi)).sum())
    for c in ["SCHL", "RELP", "ANC", "RAC1P"]:
        int((~cur[c].isin(set(ref[c]))).sum())
    c1 = calib.predict(cur["p"])
    np.where(cur["pred"] == 1, c1, 1 - c1).mean()


def reference(sess):
    """The 2015 records, scored: the pipeline's reference file."""
    t = pq.read_table(os.path.join(DATA, "reference.pq")).to_pandas()
    df = t[["id", "year", "AGEP"] + CODES + ["employed"]].astype({c: str for c in CODES})
    label, probs = score(sess, df)
    df["pred"], df["p"] = label, probs[:, 1]
    return df


def main():
    events = int(sys.argv[1]) if len(sys.argv) > 1 else 277_677
    data = payloads(events)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # as the pipeline's model stage (model.threads: 1)
    sess = ort.InferenceSession(os.path.join(ROOT, "models", "census_lr.onnx"), sess_options=opts,
                                providers=["CPUExecutionProvider"])
    ref = reference(sess)
    calib = IsotonicRegression(out_of_bounds="clip").fit(ref["p"], ref["employed"])

    started = time.perf_counter()
    frames, infer = [], 0.0
    for i in range(0, len(data), BATCH):
        df = pd.DataFrame([json.loads(p) for p in data[i:i + BATCH]])
        t = time.perf_counter()
        label, probs = score(sess, df)
        infer += time.perf_counter() - t
        df["pred"], df["p"] = label, probs[:, 1]
        frames.append(df)
    scored = pd.concat(frames, ignore_index=True)
    evaluations = 0
    for end in range(WINDOW, len(scored) + 1, SLIDE):
        tests(ref, scored.iloc[end - WINDOW:end], calib)
        evaluations += 1
    total = time.perf_counter() - started
    print("python census pipeline: %d events, %d evaluations, %.0f events/s end to end; "
          "ONNX Runtime alone %.0f events/s" % (len(data), evaluations, len(data) / total, len(data) / infer))


if __name__ == "__main__":
    main()
