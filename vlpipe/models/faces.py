"""Face detection for `--detect-faces`: MTCNN with the weights that ship inside facenet-pytorch.

Why MTCNN: its three small networks (P/R/O-Net, 2 MB) ship in the `facenet-pytorch` package on
PyPI, so it runs offline; OpenCV 5 dropped its cascade detector and mediapipe ships no face model
(NOTES.md). facenet-pytorch's metadata pins torch<2.3, numpy<2 and Pillow<10.3, none of which it
needs for detection, so it is installed with `pip install --no-deps facenet-pytorch==2.6.0` (the
Makefile's own step) and is not a dependency in setup.py. vlpipe builds the three networks from
facenet-pytorch's classes and loads their weight files itself, with `weights_only=True`.

The detector runs in the worker on the decoded image (a small one: about the model's input size),
so faces are looked for at a scale relative to the image: `min_face` is the smallest face found,
as a share of the image's shorter side.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from vlpipe.errors import ModelLoadError

#: a box is kept when O-Net's face probability is at least this (`--face-threshold`)
DEFAULT_THRESHOLD = 0.9
#: the smallest face looked for, as a share of the shorter side (9 px on a 224 px image)
DEFAULT_MIN_FACE = 0.04
INSTALL_HINT = "install it with: pip install --no-deps facenet-pytorch==2.6.0"
_NETS = ("pnet", "rnet", "onet")
#: P/R/O-Net stage thresholds and pyramid factor: MTCNN's published defaults
_STAGES = (0.6, 0.7, 0.7)
_FACTOR = 0.709

Box = tuple[float, float, float, float]


def weights_dir() -> str:
    """The folder of facenet-pytorch's MTCNN weights; ModelLoadError when it is not there."""
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"--detect-faces needs the facenet-pytorch package: {INSTALL_HINT}")
    folder = os.path.join(next(iter(spec.submodule_search_locations)), "data")
    missing = [n for n in _NETS if not os.path.isfile(os.path.join(folder, f"{n}.pt"))]
    if missing:
        raise ModelLoadError(
            f"--detect-faces: facenet-pytorch at {folder} lacks {', '.join(missing)}.pt;"
            f" reinstall it ({INSTALL_HINT})"
        )
    return folder


def check_detector() -> None:
    """At planning: the detector loads, or one ModelLoadError line (never a failure per row)."""
    load_networks()


_CACHE: dict[str, tuple] = {}
_LOCK = threading.Lock()


def load_networks() -> tuple:
    """(pnet, rnet, onet) in eval mode, once per process (every thread shares them)."""
    with _LOCK:
        if "nets" not in _CACHE:
            _CACHE["nets"] = _load(weights_dir())
        return _CACHE["nets"]


def _load(folder: str) -> tuple:
    import torch

    try:
        from facenet_pytorch.models.mtcnn import ONet, PNet, RNet
    except Exception as exc:  # noqa: BLE001 - an import that breaks on our numpy/Pillow/torch
        raise ModelLoadError(f"--detect-faces: cannot import facenet-pytorch ({exc})") from None
    nets = []
    for name, cls in zip(_NETS, (PNet, RNet, ONet), strict=True):
        net = cls(pretrained=False)
        try:
            state = torch.load(os.path.join(folder, f"{name}.pt"), weights_only=True)
            net.load_state_dict(state)
        except Exception as exc:  # noqa: BLE001 - a damaged or mismatched weight file
            raise ModelLoadError(f"--detect-faces: cannot load {name}.pt ({exc})") from None
        nets.append(net.eval())
    return tuple(nets)


@dataclass
class FaceDetector:
    """Finds faces in RGB images; boxes are normalised (x0, y0, x1, y1) in [0, 1]."""

    threshold: float = DEFAULT_THRESHOLD
    min_face: float = DEFAULT_MIN_FACE
    nets: tuple = field(default_factory=load_networks, repr=False)

    def detect(self, image: Image.Image) -> list[Box]:
        """The faces of one image, most confident first."""
        return [box for box, _ in self.detect_scored(image)]

    def detect_scored(self, image: Image.Image) -> list[tuple[Box, float]]:
        """(box, probability) of each face at or above the threshold, most confident first."""
        import torch
        from facenet_pytorch.models.utils.detect_face import detect_face

        width, height = image.size
        if min(width, height) < 12:
            return []
        pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
        min_px = max(1.0, self.min_face * min(width, height))
        with torch.inference_mode():
            boxes, _ = detect_face(pixels, min_px, *self.nets, _STAGES, _FACTOR, "cpu")
        found = [
            (_normalised(row[:4], width, height), float(row[4]))
            for row in np.asarray(boxes[0], dtype=np.float64).reshape(-1, 5)
            if float(row[4]) >= self.threshold
        ]
        return sorted(found, key=lambda f: -f[1])


def _normalised(xyxy: Sequence[float], width: int, height: int) -> Box:
    x0, y0, x1, y1 = (float(v) for v in xyxy)
    clip = lambda v: min(1.0, max(0.0, v))  # noqa: E731
    return (clip(x0 / width), clip(y0 / height), clip(x1 / width), clip(y1 / height))


__all__ = [
    "DEFAULT_MIN_FACE",
    "DEFAULT_THRESHOLD",
    "FaceDetector",
    "check_detector",
    "load_networks",
    "weights_dir",
]
