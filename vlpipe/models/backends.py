"""Which runtime executes a model's heavy graph on CPU: eager PyTorch or OpenVINO.

OpenVINO compiles the image tower into fused CPU kernels (and runs it in bf16 where the CPU has
it): on vlpipe-mini's tower it measured several times faster than eager PyTorch on the same
batches (docs/precision.md). It is optional: where it is not installed, `auto` uses torch and an
explicit `--backend openvino` falls back to torch with one line.
"""

from __future__ import annotations

import importlib.util
import sys

__all__ = [
    "BACKENDS",
    "OPENVINO_HUB_CAPTIONERS",
    "OPENVINO_HUB_EMBEDDERS",
    "openvino_installed",
    "resolve_backend",
]

BACKENDS = ("auto", "torch", "openvino")
#: hub embedder families (config model_type) whose image tower runs through OpenVINO
#: (vlpipe.models.hf_openvino); SigLIP 2's variable-size NaFlex input stays on torch
OPENVINO_HUB_EMBEDDERS = ("clip", "siglip")
#: hub captioner families whose vision encoder runs through OpenVINO (their decoders stay torch)
OPENVINO_HUB_CAPTIONERS = ("blip",)


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def resolve_backend(requested: str, device_type: str, warn=None) -> str:
    """`auto`: OpenVINO on CPU when installed, else torch; GPUs always run torch."""
    from vlpipe.errors import VlpipeError

    if requested not in BACKENDS:
        raise VlpipeError(f"unknown backend {requested!r}: use {', '.join(BACKENDS)}")
    if device_type != "cpu" or requested == "torch":
        return "torch"
    if openvino_installed():
        return "openvino"
    if requested == "openvino":
        (warn or _stderr)("vlpipe: openvino is not installed (pip install openvino): using torch")
    return "torch"


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)
