#!/usr/bin/env python3
"""Train the small digits CNN shipped in models/ and export it to ONNX.

Development-time step (needs numpy, scikit-learn, onnx; no GPU, no download):
    python3 scripts/train_digits_cnn.py

Data: scikit-learn's 8x8 handwritten digits (ships with scikit-learn).
Model: Conv(1->8, 3x3) ReLU, Conv(8->16, 3x3, stride 2) ReLU, Dense(256->32) ReLU
= `embedding`, Dense(32->10) = `logits`. Input [N,1,8,8] float32, raw pixel
intensities 0..16 (the graph scales them to 0..1 itself).
Trained with AdamW written out in numpy (backprop by hand, im2col convs),
seeded, so the run is reproducible. The hyperparameters, dataset hash, split
and test accuracy are written into the ONNX metadata.

Also writes the held-out split as JSONL events (tests/data/digits_test.jsonl)
and the training split (models/digits_train.jsonl) used as a reference sample.
"""
import hashlib
import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

HP = dict(optimizer="AdamW", lr=3e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-4,
          epochs=40, batch_size=64, seed=20261126, test_size=0.25, split_seed=0)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def im2col(x, k, stride, pad):
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh = (h + 2 * pad - k) // stride + 1
    ow = (w + 2 * pad - k) // stride + 1
    cols = np.empty((n, c, k, k, oh, ow), dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            cols[:, :, i, j] = xp[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
    return cols.transpose(0, 4, 5, 1, 2, 3).reshape(n * oh * ow, c * k * k), oh, ow


def col2im(cols, shape, k, stride, pad, oh, ow):
    n, c, h, w = shape
    cols = cols.reshape(n, oh, ow, c, k, k).transpose(0, 3, 4, 5, 1, 2)
    xp = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=cols.dtype)
    for i in range(k):
        for j in range(k):
            xp[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride] += cols[:, :, i, j]
    return xp[:, :, pad:pad + h, pad:pad + w]


class Net:
    def __init__(self, rng):
        he = lambda fan_in, shape: rng.normal(0, np.sqrt(2.0 / fan_in), shape)
        self.p = {
            "W1": he(9, (8, 1, 3, 3)), "b1": np.zeros(8),
            "W2": he(72, (16, 8, 3, 3)), "b2": np.zeros(16),
            "W3": he(256, (32, 256)), "b3": np.zeros(32),
            "W4": he(32, (10, 32)) * 0.5, "b4": np.zeros(10),
        }

    def forward(self, x):
        p, c = self.p, {}
        x = x / 16.0
        n = x.shape[0]
        c["x"] = x
        c["c1"], oh1, ow1 = im2col(x, 3, 1, 1)
        z1 = (c["c1"] @ p["W1"].reshape(8, -1).T + p["b1"]).reshape(n, oh1, ow1, 8).transpose(0, 3, 1, 2)
        a1 = np.maximum(z1, 0)
        c["z1"], c["a1"], c["o1"] = z1, a1, (oh1, ow1)
        c["c2"], oh2, ow2 = im2col(a1, 3, 2, 1)
        z2 = (c["c2"] @ p["W2"].reshape(16, -1).T + p["b2"]).reshape(n, oh2, ow2, 16).transpose(0, 3, 1, 2)
        a2 = np.maximum(z2, 0)
        c["z2"], c["o2"] = z2, (oh2, ow2)
        f = a2.reshape(n, -1)
        c["f"] = f
        z3 = f @ p["W3"].T + p["b3"]
        e = np.maximum(z3, 0)
        c["z3"], c["e"] = z3, e
        logits = e @ p["W4"].T + p["b4"]
        return e, logits, c

    def backward(self, c, dlogits):
        p, g = self.p, {}
        n = dlogits.shape[0]
        g["W4"] = dlogits.T @ c["e"]
        g["b4"] = dlogits.sum(0)
        de = dlogits @ p["W4"] * (c["z3"] > 0)
        g["W3"] = de.T @ c["f"]
        g["b3"] = de.sum(0)
        df = de @ p["W3"]
        dz2 = df.reshape(c["z2"].shape) * (c["z2"] > 0)
        dz2m = dz2.transpose(0, 2, 3, 1).reshape(-1, 16)
        g["W2"] = (dz2m.T @ c["c2"]).reshape(p["W2"].shape)
        g["b2"] = dz2m.sum(0)
        dc2 = dz2m @ p["W2"].reshape(16, -1)
        da1 = col2im(dc2, c["a1"].shape, 3, 2, 1, *c["o2"])
        dz1 = da1 * (c["z1"] > 0)
        dz1m = dz1.transpose(0, 2, 3, 1).reshape(-1, 8)
        g["W1"] = (dz1m.T @ c["c1"]).reshape(p["W1"].shape)
        g["b1"] = dz1m.sum(0)
        return g


def softmax_xent(logits, y):
    z = logits - logits.max(1, keepdims=True)
    pr = np.exp(z)
    pr /= pr.sum(1, keepdims=True)
    loss = -np.log(pr[np.arange(len(y)), y] + 1e-12).mean()
    d = pr.copy()
    d[np.arange(len(y)), y] -= 1
    return loss, d / len(y)


def export(net, path, meta):
    p = {k: v.astype(np.float32) for k, v in net.p.items()}
    inits = [numpy_helper.from_array(v, k) for k, v in p.items()]
    inits.append(numpy_helper.from_array(np.array(1.0 / 16.0, dtype=np.float32), "scale"))
    nodes = [
        helper.make_node("Mul", ["pixels", "scale"], ["x"], name="scale_0_16"),
        helper.make_node("Conv", ["x", "W1", "b1"], ["z1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["z1"], ["a1"]),
        helper.make_node("Conv", ["a1", "W2", "b2"], ["z2"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["z2"], ["a2"]),
        helper.make_node("Flatten", ["a2"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "W3", "b3"], ["z3"], name="fc1", transB=1),
        helper.make_node("Relu", ["z3"], ["embedding"]),
        helper.make_node("Gemm", ["embedding", "W4", "b4"], ["logits"], name="fc2", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "digits_cnn",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 32]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, producer_name="driftwatch/scripts/train_digits_cnn.py",
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.doc_string = "Small CNN on scikit-learn 8x8 digits; outputs embedding (32) and logits (10)."
    for k, v in meta.items():
        e = model.metadata_props.add()
        e.key, e.value = k, str(v)
    onnx.checker.check_model(model)
    onnx.save(model, path)


def write_events(path, X, y, ids, scanner):
    with open(path, "w") as f:
        for i, (x, label) in enumerate(zip(X, y)):
            px = x.reshape(-1)
            f.write(json.dumps({
                "event_id": f"{scanner}-{ids[i]}", "ts": 1_767_225_600_000 + int(ids[i]) * 1000,
                "scanner": scanner, "pixels": [int(v) for v in px],
                "mean_intensity": round(float(px.mean()), 6), "ink_fraction": round(float((px > 4).mean()), 6),
                "label": int(label)}, separators=(",", ":")) + "\n")


def main():
    d = load_digits()
    X = d.images.astype(np.float64).reshape(-1, 1, 8, 8)
    y = d.target.astype(np.int64)
    data_hash = hashlib.sha256(d.images.astype(np.float64).tobytes() + d.target.astype(np.int64).tobytes()).hexdigest()
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=HP["test_size"], random_state=HP["split_seed"], stratify=y)
    rng = np.random.default_rng(HP["seed"])
    net = Net(rng)
    m = {k: np.zeros_like(v) for k, v in net.p.items()}
    v = {k: np.zeros_like(val) for k, val in net.p.items()}
    t = 0
    for epoch in range(HP["epochs"]):
        order = rng.permutation(tr)
        losses = []
        for s in range(0, len(order), HP["batch_size"]):
            b = order[s:s + HP["batch_size"]]
            _, logits, cache = net.forward(X[b])
            loss, dl = softmax_xent(logits, y[b])
            losses.append(loss)
            g = net.backward(cache, dl)
            t += 1
            for k in net.p:
                m[k] = HP["beta1"] * m[k] + (1 - HP["beta1"]) * g[k]
                v[k] = HP["beta2"] * v[k] + (1 - HP["beta2"]) * g[k] ** 2
                mh = m[k] / (1 - HP["beta1"] ** t)
                vh = v[k] / (1 - HP["beta2"] ** t)
                net.p[k] -= HP["lr"] * (mh / (np.sqrt(vh) + HP["eps"]) + HP["weight_decay"] * net.p[k])
        if epoch % 10 == 9:
            print(f"epoch {epoch + 1}: loss {np.mean(losses):.4f}", file=sys.stderr)
    _, logits, _ = net.forward(X[te])
    acc = float((logits.argmax(1) == y[te]).mean())
    print(f"test accuracy {acc:.4f} on {len(te)} held-out images", file=sys.stderr)
    meta = {f"train.{k}": v for k, v in HP.items()}
    meta.update({
        "dataset": "sklearn.datasets.load_digits", "dataset.sha256": data_hash,
        "split": f"stratified train_test_split(test_size={HP['test_size']}, random_state={HP['split_seed']}): "
                 f"{len(tr)} train / {len(te)} test",
        "test_accuracy": f"{acc:.4f}", "test_size": str(len(te)),
        "input": "pixels [N,1,8,8] float32, raw intensities 0..16",
    })
    export(net, os.path.join(ROOT, "models", "digits_cnn.onnx"), meta)
    os.makedirs(os.path.join(ROOT, "tests", "data"), exist_ok=True)
    write_events(os.path.join(ROOT, "tests", "data", "digits_test.jsonl"), d.images[te], y[te], te, "test")
    write_events(os.path.join(ROOT, "models", "digits_train.jsonl"), d.images[tr], y[tr], tr, "train")


if __name__ == "__main__":
    main()
