"""What a prompted captioner is asked per image: the prompt, extra questions (`--ask`), the bound
on image pixels, and how many caption candidates to re-rank (`--candidates`).

Kept apart from vlpipe.models.prompted (which imports torch and transformers) because the driver,
the options and the CLI need these settings and their checks without loading any model.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from vlpipe.errors import VlpipeError

__all__ = [
    "CAPTION_SCORE",
    "DEFAULT_PROMPT",
    "FAMILY_PROMPTS",
    "Prompting",
    "check_columns",
    "model_fields",
    "parse_asks",
    "settings_fingerprint",
    "takes_no_prompt",
]

#: the prompt when none is given, by model_type; any other prompted family gets DEFAULT_PROMPT
DEFAULT_PROMPT = "Describe this image in one sentence."
FAMILY_PROMPTS = {
    "paligemma": "caption en",  # PaliGemma's own task prefixes: "caption en", "answer en ..."
    # Florence-2 was trained on task tokens: <CAPTION> is its one-sentence caption, like the
    # default above; <DETAILED_CAPTION> and <MORE_DETAILED_CAPTION> (a paragraph) are --prompt
    "florence2": "<CAPTION>",
    "blip-2": "",  # BLIP-2 captions unprompted; questions read "Question: ... Answer:"
    "instructblip": DEFAULT_PROMPT,
}

#: the column that holds the best candidate's score under --candidates
CAPTION_SCORE = "caption_score"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Prompting:
    """Settings for a prompted captioner; the defaults mean "the family's own behaviour"."""

    prompt: str | None = None  # None: the family's default (FAMILY_PROMPTS, DEFAULT_PROMPT)
    asks: tuple[tuple[str, str], ...] = ()  # (column name, question), in the order given
    max_image_pixels: int | None = None  # None: the processor's own bound, if it has one
    candidates: int = 1  # captions generated per image; the embedder keeps the best one

    @property
    def given(self) -> bool:
        """Whether any setting differs from the defaults (a classic captioner takes none)."""
        return self != Prompting()

    def prompt_for(self, family: str) -> str:
        return (
            self.prompt if self.prompt is not None else FAMILY_PROMPTS.get(family, DEFAULT_PROMPT)
        )

    def columns(self) -> list[str]:
        """The columns these settings add to every row."""
        return [name for name, _ in self.asks] + ([CAPTION_SCORE] if self.candidates > 1 else [])

    def describe(self, family: str) -> dict:
        """JSON-able settings as a run uses them (the default prompt spelled out)."""
        return {
            "prompt": self.prompt_for(family),
            "asks": dict(self.asks),
            "max_image_pixels": self.max_image_pixels,
            "candidates": self.candidates,
        }

    def key(self) -> dict:
        """What a rerun into the same output must repeat (only what differs from the defaults,
        so runs made before these settings existed still match)."""
        out: dict = {}
        if self.prompt is not None:
            out["prompt"] = self.prompt
        if self.asks:
            out["asks"] = [list(a) for a in self.asks]
        if self.max_image_pixels:
            out["max_image_pixels"] = self.max_image_pixels
        if self.candidates > 1:
            out["candidates"] = self.candidates
        return out


def model_fields(prompting: Prompting) -> tuple:
    """The Arrow fields of the columns these settings add: a string per question, the
    candidates' score as float32."""
    import pyarrow as pa

    fields = [pa.field(name, pa.string()) for name, _ in prompting.asks]
    if prompting.candidates > 1:
        fields.append(pa.field(CAPTION_SCORE, pa.float32()))
    return tuple(fields)


def parse_asks(values: list[str] | tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """`NAME=QUESTION` strings to pairs; one-line errors for a malformed or repeated NAME."""
    out: list[tuple[str, str]] = []
    for value in values:
        name, sep, question = value.partition("=")
        name, question = name.strip(), question.strip()
        if not sep or not _NAME.match(name) or not question:
            raise VlpipeError(
                f"--ask {value!r}: expected NAME=QUESTION with NAME a column name "
                '(letters, digits, _), e.g. --ask has_text="Is there any text?"'
            )
        if name in {n for n, _ in out}:
            raise VlpipeError(f"--ask {name} is given twice: one question per column")
        out.append((name, question))
    return tuple(out)


def check_columns(prompting: Prompting, taken: set[str] | frozenset[str]) -> None:
    """--ask names must not clash with vlpipe's columns or each other (refused at planning)."""
    for name in prompting.columns():
        if name in taken:
            raise VlpipeError(
                f"--ask {name}: a column named {name!r} already exists in the output; "
                "pick another NAME"
            )


def takes_no_prompt(name: str, kind: str) -> VlpipeError:
    """The one line for a prompt or question given to a captioner that takes none."""
    return VlpipeError(
        f"{name!r} ({kind}) takes no prompt or question: --prompt, --ask and `vlpipe ask` need "
        "a prompted model (any AutoModelForImageTextToText hub id or directory: llava, "
        "qwen2_vl, idefics3, paligemma, ...)"
    )


def settings_fingerprint(family: str, name: str, prompting: Prompting, generation: dict) -> str:
    """A prompted captioner's identity: the model, the prompt, the questions, the generation."""
    blob = json.dumps(
        {"family": family, "name": name, **prompting.describe(family), **generation},
        sort_keys=True,
    )
    return hashlib.sha1(blob.encode()).hexdigest()[:16]
