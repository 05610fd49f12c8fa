"""vlpipe-mini's text tower and text head in NumPy, for `vlpipe search` on CPU.

A cold text search used to spend most of its time importing torch and transformers' BERT stack
(about 4 of 6 s here, BENCHMARKS.md) to embed one sentence. MiniLM-L6 is six small BERT layers,
so the query path runs them in NumPy from the same safetensors files, tokenised by `tokenizers`
from the package's own tokenizer.json: no torch, no transformers. It is the same maths as
`MiniLM.encode` + `JointHeads.text` in eval mode (tests compare the two), in float32.
"""

from __future__ import annotations

import json
import os

import numpy as np

from vlpipe.errors import VlpipeError
from vlpipe.models.mini import load_weights

MAX_TOKENS = 128  # as MiniLM.encode truncates


def _erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): NumPy has no erf, and exact GELU needs it."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    return sign * (1.0 - poly * np.exp(-a * a))


def gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x / np.sqrt(2.0)).astype(x.dtype))


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _linear(x: np.ndarray, w: dict, name: str) -> np.ndarray:
    out = x @ w[name + ".weight"].T
    bias = w.get(name + ".bias")
    return out if bias is None else out + bias


class MiniLMNumpy:
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2 norm), one sentence at a time."""

    def __init__(self, path: str):
        from tokenizers import Tokenizer

        with open(os.path.join(path, "config.json")) as f:
            config = json.load(f)
        if (
            config.get("hidden_act") != "gelu"
            or config.get("position_embedding_type") != "absolute"
        ):
            raise VlpipeError(f"{path}: not the BERT layout this encoder implements")
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config["layer_norm_eps"])
        self.w = load_weights(os.path.join(path, "model.safetensors"))
        self.tokenizer = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(MAX_TOKENS)

    def encode(self, texts: list[str]) -> np.ndarray:
        """(N, 384) float32, L2-normalised. Unpadded, so no attention mask is needed."""
        return np.stack([self._one(enc.ids) for enc in self.tokenizer.encode_batch(list(texts))])

    def _one(self, ids: list[int]) -> np.ndarray:
        w, t = self.w, len(ids)
        x = w["embeddings.word_embeddings.weight"][ids]
        x = x + w["embeddings.position_embeddings.weight"][:t]
        x = x + w["embeddings.token_type_embeddings.weight"][0]
        e = "embeddings.LayerNorm"
        x = layer_norm(x, w[e + ".weight"], w[e + ".bias"], self.eps)
        for i in range(self.layers):
            x = self._layer(x, f"encoder.layer.{i}.")
        pooled = x.mean(0)
        return pooled / max(float(np.linalg.norm(pooled)), 1e-12)

    def _layer(self, x: np.ndarray, p: str) -> np.ndarray:
        w, t, d = self.w, x.shape[0], x.shape[1]
        hd = d // self.heads

        def heads(name: str) -> np.ndarray:
            return _linear(x, w, p + name).reshape(t, self.heads, hd).transpose(1, 0, 2)

        q, k, v = (
            heads("attention.self.query"),
            heads("attention.self.key"),
            heads("attention.self.value"),
        )
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(hd)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        attended = (scores / scores.sum(-1, keepdims=True)) @ v
        attended = attended.transpose(1, 0, 2).reshape(t, d)
        ln = p + "attention.output.LayerNorm"
        x = layer_norm(
            x + _linear(attended, w, p + "attention.output.dense"),
            w[ln + ".weight"],
            w[ln + ".bias"],
            self.eps,
        )
        h = gelu(_linear(x, w, p + "intermediate.dense"))
        ln = p + "output.LayerNorm"
        return layer_norm(
            x + _linear(h, w, p + "output.dense"), w[ln + ".weight"], w[ln + ".bias"], self.eps
        )


class MiniTextQueries:
    """Text queries into a vlpipe-mini model's joint space; the Embedder subset search needs."""

    def __init__(self, model_dir: str):
        from vlpipe.models.mini import WEIGHTS_NAME, minilm_dir, weights_fingerprint

        weights = os.path.join(model_dir, WEIGHTS_NAME)
        self.head = load_weights(weights, "heads.text.")
        self.dim = int(self.head["mlp.5.weight"].shape[0])
        self._fingerprint = weights_fingerprint(weights, self.dim)
        self.text = MiniLMNumpy(minilm_dir())

    def fingerprint(self) -> str:
        return self._fingerprint

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """ProjectionHead in eval mode: LayerNorm-MLP plus a linear skip, L2-normalised."""
        x, h = self.text.encode(texts), self.head
        y = layer_norm(x, h["mlp.0.weight"], h["mlp.0.bias"], 1e-5)
        y = _linear(gelu(_linear(y, h, "mlp.2")), h, "mlp.5") + _linear(x, h, "skip")
        return y / np.maximum(np.linalg.norm(y, axis=-1, keepdims=True), 1e-12)
