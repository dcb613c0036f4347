#!/usr/bin/env python3
"""Golden values of the text model input, from the reference implementations:
Hugging Face `tokenizers` (Python) for the token ids, and onnxruntime +
numpy masked-mean pooling (sentence-transformers' Pooling) for the embeddings.

    pip install tokenizers==0.23.3 onnxruntime==1.31.1 numpy
    scripts/setup.sh   # fetches .deps/minilm/{model.onnx,tokenizer.json}
    python3 scripts/golden_text.py

Reads tests/data/text/sentences.jsonl (one JSON string per line), writes
tests/data/text/golden.json: for every text its ids (truncated at 128,
unpadded); for the paragraphs (texts of 3+ sentences) also the mean-pooled
embedding, each text run alone (batch of one, no padding).
"""

import hashlib
import json
import os

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, ".deps/minilm/model.onnx")
TOKENIZER = os.path.join(ROOT, ".deps/minilm/tokenizer.json")
DATA = os.path.join(ROOT, "tests/data/text")
MAX_LENGTH = 128


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main():
    texts = [json.loads(line) for line in open(os.path.join(DATA, "sentences.jsonl"), encoding="utf-8")]
    tok = Tokenizer.from_file(TOKENIZER)
    tok.enable_truncation(MAX_LENGTH)
    tok.no_padding()
    session = ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"])
    rows = []
    for text in texts:
        enc = tok.encode(text)
        row = {"text": text, "ids": enc.ids}
        if text.count(". ") >= 2:
            ids = np.array([enc.ids], dtype=np.int64)
            mask = np.array([enc.attention_mask], dtype=np.int64)
            types = np.array([enc.type_ids], dtype=np.int64)
            (hidden,) = session.run(["last_hidden_state"],
                                    {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
            m = mask[..., None].astype(np.float32)
            pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
            row["embedding"] = [float(f"{v:.6g}") for v in pooled[0]]
        rows.append(row)
    out = {
        "model_sha256": sha256(MODEL),
        "tokenizer_sha256": sha256(TOKENIZER),
        "max_length": MAX_LENGTH,
        "texts": rows,
    }
    with open(os.path.join(DATA, "golden.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"{len(rows)} texts, {sum('embedding' in r for r in rows)} embeddings")


if __name__ == "__main__":
    main()
