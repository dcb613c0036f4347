#!/usr/bin/env python3
"""The Python pipeline a user would write instead of driftwatch's news
pipeline, for `driftwatch bench --corpus` to be compared against in the same
session: tokenizers + onnxruntime + numpy masked-mean pooling + the head,
then, per window of 1000 sliding by 250 against the first 1000, MMD² with a
permutation p-value (numpy, 400 permutations, median heuristic) and KS on
the text descriptors (scipy). Prints paragraphs/s, and inference alone.

    pip install tokenizers==0.23.3 onnxruntime==1.31.1 numpy scipy onnx
    python3 scripts/bench_text_python.py [EVENTS]
"""

import os
import sys
import time

import numpy as np
import onnxruntime as ort
from scipy.stats import ks_2samp
from tokenizers import Tokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_news_head import CORPUS, MODEL, TOKENIZER, paragraphs, read_text  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAD = os.path.join(ROOT, "models/news_head.onnx")
BATCH, WINDOW, SLIDE, PERMUTATIONS = 64, 1000, 250, 400


def texts(n):
    out = []
    for topic in sorted(os.listdir(CORPUS)):
        for name in sorted(os.listdir(os.path.join(CORPUS, topic))):
            out += paragraphs(read_text(os.path.join(CORPUS, topic, name)))
    rng = np.random.default_rng(1)
    order = rng.permutation(len(out))
    return [out[order[i % len(out)]] for i in range(n)]


def mmd_p(x, y, rng):
    z = np.vstack([x, y])
    sq = (z * z).sum(1)
    d = np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0)
    sigma2 = np.median(d[np.triu_indices(len(z), 1)])
    k = np.exp(-d / (2 * sigma2))
    n = len(x)

    def stat(idx):
        a, b = idx[:n], idx[n:]
        return k[np.ix_(a, a)].mean() + k[np.ix_(b, b)].mean() - 2 * k[np.ix_(a, b)].mean()

    observed = stat(np.arange(len(z)))
    exceed = sum(stat(rng.permutation(len(z))) >= observed for _ in range(PERMUTATIONS))
    return observed, (exceed + 1) / (PERMUTATIONS + 1)


def main():
    events = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    data = texts(events)
    tok = Tokenizer.from_file(TOKENIZER)
    tok.enable_truncation(128)
    tok.enable_padding()  # to the longest of each batch
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    model = ort.InferenceSession(MODEL, opts, providers=["CPUExecutionProvider"])
    head = ort.InferenceSession(HEAD, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    embeddings, descriptors, infer = [], [], 0.0
    started = time.perf_counter()
    evaluations = 0
    for start in range(0, events, BATCH):
        part = data[start:start + BATCH]
        encs = tok.encode_batch(part)
        ids = np.array([e.ids for e in encs], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
        t = time.perf_counter()
        (hidden,) = model.run(["last_hidden_state"],
                              {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
        infer += time.perf_counter() - t
        m = mask[..., None].astype(np.float32)
        pooled = (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
        pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        head.run(None, {"embedding": pooled})
        embeddings.append(pooled)
        descriptors += [(len(s), mask[i].sum(), sum(not c.isascii() for c in s) / max(len(s), 1))
                        for i, s in enumerate(part)]
        seen = start + len(part)
        # Evaluate every SLIDE events once reference and a current window are full.
        while seen >= 2 * WINDOW + evaluations * SLIDE:
            end = 2 * WINDOW + evaluations * SLIDE
            allv = np.vstack(embeddings)
            mmd_p(allv[:WINDOW], allv[end - WINDOW:end], rng)
            d = np.array(descriptors, dtype=np.float64)
            for c in range(d.shape[1]):
                ks_2samp(d[:WINDOW, c], d[end - WINDOW:end, c])
            evaluations += 1
    total = time.perf_counter() - started
    print(f"python pipeline: {events / total:.1f} paragraphs/s end to end, "
          f"{events / infer:.1f} paragraphs/s inference alone, {evaluations} evaluations")


if __name__ == "__main__":
    main()
