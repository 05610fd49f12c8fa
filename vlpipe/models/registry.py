"""Model names to model objects: `mini`, a trained vlpipe-mini directory, an `open_clip:` name
(embedders), or a transformers model.

A name is resolved in this order: the built-in `mini`; a local directory (vlpipe-mini if it holds a
vlpipe-mini config, else a transformers checkpoint); anything else is treated as a Hugging Face hub
id, which fails with one clear line when the hub is unreachable.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # base imports torch, which text search on CPU does without
    from vlpipe.models.base import Captioner, Embedder
    from vlpipe.models.prompting import Prompting

__all__ = [
    "BUILTIN",
    "NONE",
    "bf16_measured_on_cpu",
    "is_vlpipe_mini",
    "light_text_encoder",
    "load_captioner",
    "load_embedder",
    "load_models",
    "refuse_open_clip_captioner",
    "runs_compiled_on_cpu",
]

BUILTIN = "mini"
OPEN_CLIP = "open_clip:"  # `open_clip:ARCH@TAG` etc. (vlpipe.models.openclip): embedders only


def is_vlpipe_mini(name: str) -> bool:
    """Whether `name` loads vlpipe-mini: the built-in `mini` or a trained vlpipe-mini directory
    (the models that --backend and bf16 on CPU apply to)."""
    from vlpipe.models.mini import is_mini_dir

    return name == BUILTIN or (os.path.isdir(name) and is_mini_dir(name))


def refuse_open_clip_captioner(name: str) -> None:
    if name.startswith(OPEN_CLIP):
        from vlpipe.errors import ModelLoadError

        raise ModelLoadError(
            f"{name!r} is an open_clip embedder: it cannot caption (use it as --embedder)"
        )


def load_captioner(
    name: str,
    device: str = "auto",
    precision: str = "auto",
    prompting: Prompting | None = None,
    max_tokens: int = 30,
    backend: str = "torch",
) -> Captioner:
    """`prompting` (a prompt, questions, candidates) is for prompted captioners only; `backend`
    (vlpipe.models.backends) applies to vlpipe-mini and BLIP's vision encoder."""
    refuse_open_clip_captioner(name)
    if is_vlpipe_mini(name):
        from vlpipe.models.mini.model import load_mini
        from vlpipe.models.prompting import takes_no_prompt

        if prompting is not None and (prompting.prompt is not None or prompting.asks):
            raise takes_no_prompt(name, "vlpipe-mini")
        path = None if name == BUILTIN else name
        return load_mini(path, device=device, precision=precision, backend=backend)
    from vlpipe.models.hf import load_hf_captioner

    return load_hf_captioner(
        name, device, precision, max_tokens=max_tokens, prompting=prompting, backend=backend
    )


def load_embedder(
    name: str, device: str = "auto", precision: str = "auto", backend: str = "torch"
) -> Embedder:
    if is_vlpipe_mini(name):
        from vlpipe.models.mini.model import load_mini

        path = None if name == BUILTIN else name
        return load_mini(path, device=device, precision=precision, backend=backend)
    if name.startswith(OPEN_CLIP):
        from vlpipe.models.openclip import load_open_clip_embedder

        return load_open_clip_embedder(name, device=device, precision=precision)
    from vlpipe.models.hf import load_hf_embedder

    return load_hf_embedder(name, device=device, precision=precision, backend=backend)


def light_text_encoder(name: str, device: str = "cpu"):
    """A text-queries-only encoder that needs no torch, or None where the model has none:
    vlpipe-mini on CPU runs its text path in NumPy, so a cold text search skips torch."""
    if not (is_vlpipe_mini(name) and device == "cpu"):
        return None
    from vlpipe.models.mini import SHIPPED_DIR
    from vlpipe.models.mini.text_query import MiniTextQueries

    return MiniTextQueries(SHIPPED_DIR if name == BUILTIN else name)


NONE = "none"  # `--captioner none` / `--embedder none`: that half of the work is not done


def load_models(
    captioner: str,
    embedder: str,
    device: str = "auto",
    precision: str = "auto",
    prompting: Prompting | None = None,
    backend: str = "torch",
) -> tuple[Captioner | None, Embedder | None]:
    """Both models (None for "none"); one shared object when both are the same fused model."""
    from vlpipe.models.base import Embedder

    cap = None
    if captioner != NONE:
        cap = load_captioner(captioner, device, precision, prompting, backend=backend)
    if embedder == captioner and isinstance(cap, Embedder):
        return cap, cap
    emb = None if embedder == NONE else load_embedder(embedder, device, precision, backend)
    return cap, emb


def bf16_measured_on_cpu(name: str, role: str = "embedder") -> bool:
    """Whether `--precision auto` may pick bf16 on a CPU for this model (as `role`, captioner or
    embedder): measured for vlpipe-mini and for hub CLIP / SigLIP embedders (docs/precision.md);
    other hub models stay fp32 there."""
    if name == NONE or is_vlpipe_mini(name):
        return True
    from vlpipe.models.precision import BF16_MEASURED_HUB_EMBEDDERS

    return role == "embedder" and _hub_family(name) in BF16_MEASURED_HUB_EMBEDDERS


def runs_compiled_on_cpu(name: str, role: str = "embedder") -> bool:
    """Whether `--backend` applies to this model: vlpipe-mini's tower, hub CLIP / SigLIP image
    towers and BLIP's vision encoder (vlpipe.models.hf_openvino); everything else runs torch."""
    if name == NONE:
        return False
    if is_vlpipe_mini(name):
        return True
    from vlpipe.models.backends import OPENVINO_HUB_CAPTIONERS, OPENVINO_HUB_EMBEDDERS

    families = OPENVINO_HUB_EMBEDDERS if role == "embedder" else OPENVINO_HUB_CAPTIONERS
    return _hub_family(name) in families


def _hub_family(name: str) -> str | None:
    """A transformers model's model_type from its config, None where it has none to read (an
    open_clip name, a bad path: loading the model reports that later, with its own line)."""
    if name.startswith(OPEN_CLIP):
        return None
    from vlpipe.errors import ModelLoadError
    from vlpipe.models.hf_facts import model_type
    from vlpipe.models.hf_load import load_config, resolve

    try:  # a local config.json's model_type is read as JSON: no transformers import for it
        return model_type(resolve(name)) or load_config(name)[1].model_type
    except ModelLoadError:
        return None
