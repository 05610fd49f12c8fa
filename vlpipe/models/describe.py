"""What a run's manifest records about its models, from their config files alone.

The driver of a run calls this instead of loading the models: it validates the names (a bad one
fails in one line before any work) and learns the embedding dimension and fingerprint, while the
weights load only in the workers that run them. A prompted captioner's processor (no weights)
is loaded too, to try the prompt and questions on a blank image.
"""

from __future__ import annotations

import json
import os

from vlpipe.errors import VlpipeError
from vlpipe.models.prompting import Prompting, settings_fingerprint, takes_no_prompt
from vlpipe.models.registry import NONE, OPEN_CLIP, refuse_open_clip_captioner


def describe_models(
    captioner: str, embedder: str, prompting: Prompting | None = None, **runtime: str
) -> dict:
    """{"captioner": {name, config}, "embedder": {name, config, fingerprint, dim}}; "none"
    (that half of the work is not done) describes as config None, dim 0. `prompting` (prompt,
    --ask questions, --candidates) is checked against the captioner here, before any work.
    `runtime` (device, precision, backend) is what the run resolves the embedder with."""
    if captioner == NONE and embedder == NONE:
        raise VlpipeError("--captioner none and --embedder none leave nothing to do: keep one")
    prompting = prompting or Prompting()
    if prompting.candidates > 1 and embedder == NONE:
        raise VlpipeError("--candidates needs an embedder to score them: drop --embedder none")
    return {
        "captioner": {"name": captioner, "config": describe_captioner(captioner, prompting)},
        "embedder": {"name": embedder, **describe_embedder(embedder, **runtime)},
    }


def describe_captioner(name: str, prompting: Prompting | None = None) -> dict | None:
    prompting = prompting or Prompting()
    if name == NONE:
        if prompting.given:
            raise VlpipeError("--prompt, --ask and --candidates need a captioner, not 'none'")
        return None
    refuse_open_clip_captioner(name)
    mini = _mini_dir(name)
    if mini:
        if prompting.prompt is not None or prompting.asks:
            raise takes_no_prompt(name, "vlpipe-mini")
        if prompting.candidates > 1:
            raise VlpipeError(
                "--candidates needs a transformers captioner (BLIP, GIT, a prompted model); "
                "vlpipe-mini generates one caption (its beam width is set in its config)"
            )
        return _describe_mini(mini)[0]
    from vlpipe.models.hf import captioner_kind
    from vlpipe.models.hf_load import load_config
    from vlpipe.models.hf_pixels import pixel_recipe

    location, config = load_config(name)  # config.json only: no weights at planning
    family = config.model_type
    if captioner_kind(name, family, prompting) == "prompted":
        from vlpipe.models.prompted import check_prompts, load_prompt_processor

        prompts = [prompting.prompt_for(family), *(q for _, q in prompting.asks)]
        check_prompts(name, load_prompt_processor(name, location), family, prompts)
        settings = prompting.describe(family)
        fingerprint = settings_fingerprint(family, name, prompting, {"decoding": "greedy"})
        return {"family": family, "name_or_path": name, "kind": "prompted", **settings,
                "decoding": "greedy", "fingerprint": fingerprint}  # fmt: skip
    recipe = pixel_recipe(name, location)
    described = {"family": family, "name_or_path": name, "image_size": recipe.image_size}
    return described | ({"candidates": prompting.candidates} if prompting.candidates > 1 else {})


def describe_embedder(
    name: str, device: str = "cpu", precision: str = "auto", backend: str = "torch"
) -> dict:
    """A hub embedder's config records the dtype and backend it resolves to with these."""
    if name == NONE:
        return {"config": None, "fingerprint": None, "dim": 0}
    mini = _mini_dir(name)
    if mini:
        config, fingerprint, dim = _describe_mini(mini)
        return {"config": config, "fingerprint": fingerprint, "dim": dim}
    if name.startswith(OPEN_CLIP):
        from vlpipe.models.openclip import load_open_clip_embedder

        embedder = load_open_clip_embedder(name, device=device, precision=precision)
    else:
        from vlpipe.models.hf import load_hf_embedder

        embedder = load_hf_embedder(name, device=device, precision=precision, backend=backend)
    # weights load lazily: none here
    return {
        "config": embedder.describe(),
        "fingerprint": embedder.fingerprint(),
        "dim": embedder.dim,
    }


def _mini_dir(name: str) -> str | None:
    from vlpipe.models.mini import SHIPPED_DIR, is_mini_dir

    if name == "mini":
        return SHIPPED_DIR
    return name if os.path.isdir(name) and is_mini_dir(name) else None


def _describe_mini(path: str) -> tuple[dict, str, int]:
    """The same describe() and fingerprint() a loaded MiniModel gives."""
    from vlpipe.models.mini import CONFIG_NAME, WEIGHTS_NAME, tower_entry, weights_fingerprint

    weights = os.path.join(path, WEIGHTS_NAME)
    if not os.path.isfile(weights):
        raise VlpipeError(f"{path}: not a vlpipe-mini model ({CONFIG_NAME} + {WEIGHTS_NAME})")
    with open(os.path.join(path, CONFIG_NAME)) as f:
        config = json.load(f)
    dim = int(config["dim"])
    fingerprint = weights_fingerprint(weights, dim)
    described = {
        "name": "vlpipe-mini",
        "format_version": config.get("format_version"),
        "dim": dim,
        "num_beams": int(config.get("num_beams", 1)),
        "tail_stage": config.get("tail_stage"),
        "weights_sha256": fingerprint.rsplit("-", 1)[-1],
        **tower_entry(config),
    }
    return described, fingerprint, dim
