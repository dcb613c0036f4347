#!/usr/bin/env python3
"""NannyML's own CBPE on the census model's 2016-2018 windows: the figures
driftwatch's `cbpe` is compared with (tests/census.rs).

    python3 -m venv /tmp/nm && /tmp/nm/bin/pip install nannyml==0.13.1 statsmodels onnxruntime pyarrow
    /tmp/nm/bin/python scripts/cbpe_nannyml.py   # writes tests/fixtures/cbpe_nannyml.json

The model is models/census_lr.onnx, scored here by ONNX Runtime; the
reference is 2015 (labelled), the analysis 2016-2018 in id order, cut in
chunks of 5,000 rows (the last, shorter one included). Per chunk: NannyML's
estimated accuracy and ROC AUC, and the realised ones from the targets.
"""

import json
import os

import nannyml
import numpy as np
import onnxruntime as ort
import pandas as pd
import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, ".deps", "census")
FEATURES = ["AGEP", "SCHL", "MAR", "RELP", "DIS", "ESP", "CIT", "MIG", "MIL", "ANC", "NATIVITY", "DEAR", "DEYE",
            "DREM", "SEX", "RAC1P"]
CHUNK = 5000


def scored(df):
    sess = ort.InferenceSession(os.path.join(ROOT, "models", "census_lr.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"AGEP": df["AGEP"].to_numpy(np.float32).reshape(-1, 1)}
    for c in FEATURES[1:]:
        feeds[c] = df[c].astype(str).to_numpy(object).reshape(-1, 1)
    label, probs = sess.run(["label", "probabilities"], feeds)
    out = df.copy()
    out["p"] = probs[:, 1].astype(np.float64)
    out["pred"] = label
    return out


def auc(y, s):
    order = np.argsort(s, kind="mergesort")
    ranks = pd.Series(s[order]).rank().to_numpy()
    pos = y[order] == 1
    n1, n0 = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def main():
    ref = scored(pq.read_table(os.path.join(DATA, "reference.pq")).to_pandas())
    ana = pq.read_table(os.path.join(DATA, "analysis.pq")).to_pandas()
    tgt = pq.read_table(os.path.join(DATA, "analysis_target.pq")).to_pandas()
    ana = scored(ana.merge(tgt, on="id").sort_values("id").reset_index(drop=True))
    est = nannyml.CBPE(problem_type="classification_binary", y_pred_proba="p", y_pred="pred", y_true="employed",
                       metrics=["accuracy", "roc_auc"], chunk_size=CHUNK)
    est.fit(ref)
    res = est.estimate(ana.drop(columns=["employed"])).filter(period="analysis").to_df()
    chunks = []
    for _, row in res.iterrows():
        start, end = int(row[("chunk", "start_index")]), int(row[("chunk", "end_index")])
        part = ana.iloc[start:end + 1]
        y, pred, p = part["employed"].to_numpy(), part["pred"].to_numpy(), part["p"].to_numpy()
        chunks.append({
            "start": start, "end": end + 1,
            "first_id": int(part["id"].iloc[0]), "last_id": int(part["id"].iloc[-1]),
            "nannyml_accuracy": float(row[("accuracy", "value")]),
            "nannyml_roc_auc": float(row[("roc_auc", "value")]),
            "realised_accuracy": float((y == pred).mean()),
            "realised_roc_auc": auc(y, p),
        })
    err = np.mean([abs(c["nannyml_accuracy"] - c["realised_accuracy"]) for c in chunks])
    os.makedirs(os.path.join(ROOT, "tests", "fixtures"), exist_ok=True)
    with open(os.path.join(ROOT, "tests", "fixtures", "cbpe_nannyml.json"), "w") as f:
        json.dump({"generator": "scripts/cbpe_nannyml.py", "nannyml": nannyml.__version__, "chunk": CHUNK,
                   "nannyml_mean_abs_error": float(err), "chunks": chunks}, f, indent=1)
    print("%d chunks; NannyML's mean |estimated - realised accuracy| = %.4f" % (len(chunks), err))


if __name__ == "__main__":
    main()
