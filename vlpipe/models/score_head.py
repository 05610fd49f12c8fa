"""A score head over the run's image embeddings: a linear layer or an MLP, in the layout of
LAION's improved aesthetic predictor (an `nn.Sequential` named `layers` of Linear layers, with
Dropouts between them that hold no weights and no activation; it reads L2-normalised CLIP
ViT-L/14 embeddings, 768 wide). A plain `nn.Linear` state dict (`weight`, `bias`) works too.

The layers are the state dict's 2-D `*weight` tensors in the order of their names (numbers
compared as numbers), each with its `*bias` if present; an activation between them may be named
in the safetensors metadata (`{"activation": "relu"}`; default none, as LAION's). It runs in
NumPy: a few small matrix products per batch. A `.pth`/`.pt` is read with
`torch.load(weights_only=True)`, never unpickled freely.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

import numpy as np

from vlpipe.errors import VlpipeError
from vlpipe.models.score_base import Scorer, ScoreSpec

ACTIVATIONS = {
    "none": lambda x: x,
    "relu": lambda x: np.maximum(x, 0),
    "gelu": lambda x: 0.5 * x * (1 + np.tanh(0.7978845608 * (x + 0.044715 * x**3))),
    "tanh": np.tanh,
}


@dataclass
class Head:
    weights: list[np.ndarray]  # (out, in) each
    biases: list[np.ndarray]  # (out,) each (zeros where the file has none)
    activation: str = "none"

    @property
    def input_width(self) -> int:
        return self.weights[0].shape[1]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        act = ACTIVATIONS[self.activation]
        x = np.asarray(x, np.float32)
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = x @ w.T + b
            if i < len(self.weights) - 1:
                x = act(x)
        return x[:, 0]


def read_head(path: str) -> Head:
    """The head in `path`; one-line VlpipeError for anything that is not one."""
    if not os.path.isfile(path):
        raise VlpipeError(f"--score: no such head file {path}")
    tensors, metadata = _tensors(path)
    activation = (metadata or {}).get("activation", "none")
    if activation not in ACTIVATIONS:
        raise VlpipeError(
            f"--score: {path}: unknown activation {activation!r} in its metadata"
            f" ({', '.join(ACTIVATIONS)})"
        )
    names = sorted((k for k, v in tensors.items() if k.endswith("weight") and v.ndim == 2),
                   key=_natural)  # fmt: skip
    if not names:
        raise VlpipeError(f"--score: {path} holds no 2-D weight tensors: not a linear or MLP head")
    weights, biases = [], []
    for name in names:
        w = np.asarray(tensors[name], np.float32)
        b = tensors.get(name[: -len("weight")] + "bias")
        b = np.zeros(w.shape[0], np.float32) if b is None else np.asarray(b, np.float32)
        if b.shape != (w.shape[0],):
            raise VlpipeError(f"--score: {path}: {name} is {w.shape} but its bias is {b.shape}")
        if weights and w.shape[1] != weights[-1].shape[0]:
            raise VlpipeError(
                f"--score: {path}: {name} takes {w.shape[1]} inputs but the layer before it gives"
                f" {weights[-1].shape[0]}: not a chain of linear layers"
            )
        weights.append(w)
        biases.append(b)
    if weights[-1].shape[0] != 1:
        raise VlpipeError(
            f"--score: {path}: the last layer gives {weights[-1].shape[0]} outputs; a score head"
            " ends in one"
        )
    return Head(weights, biases, activation)


def _tensors(path: str) -> tuple[dict[str, np.ndarray], dict | None]:
    if path.lower().endswith(".safetensors"):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(path, framework="np") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
        except (SafetensorError, OSError, ValueError) as exc:
            raise VlpipeError(
                f"--score: {path} is not a readable safetensors file ({exc})"
            ) from None
    import warnings

    import torch

    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols: not the user's line
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file (UnpicklingError, struct.error...)
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise VlpipeError(f"--score: {path} is not a plain state dict ({first})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise VlpipeError(f"--score: {path} is not a state dict of tensors")
    return {k: v.detach().float().numpy() for k, v in state.items()}, None


def _natural(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def describe(spec: ScoreSpec, embedder_dim: int) -> dict:
    """At planning: the head's shapes checked against the embedder's width."""
    head = read_head(spec.source)
    if embedder_dim == 0:
        raise VlpipeError(f"--score {spec.text}: a head scores embeddings, and this run has none")
    if head.input_width != embedder_dim:
        raise VlpipeError(
            f"--score {spec.text}: the head takes {head.input_width}-wide embeddings but the"
            f" embedder gives {embedder_dim}"
        )
    return {
        "kind": "head",
        "source": spec.source,
        "layers": [list(w.shape) for w in head.weights],
        "activation": head.activation,
        "fingerprint": _digest(spec.source),
    }


class HeadScorer(Scorer):
    needs_pixels = False

    def __init__(self, spec: ScoreSpec):
        self.spec = spec
        self.head = read_head(spec.source)

    def score(self, pixels, embeddings: np.ndarray | None) -> np.ndarray:
        return self.head(embeddings).astype(np.float32)


def load(spec: ScoreSpec, device: str = "auto", precision: str = "auto") -> HeadScorer:
    return HeadScorer(spec)
