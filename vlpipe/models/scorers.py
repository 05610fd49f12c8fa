"""`--score NAME=SPEC`: learned scores, one float32 column NAME per scorer, run in the same
batches as the captioner and embedder.

The kinds, one module each (KINDS):
- `head`: a linear layer or MLP over the run's image embeddings, from a `.safetensors` file or a
  `.pth`/`.pt` state dict (loaded with `weights_only=True`), in the layout of LAION's improved
  aesthetic predictor (vlpipe.models.score_head);
- `classifier`: an image classifier from the hub or a local directory with the label whose
  probability is kept, `MODEL:LABEL` (vlpipe.models.score_classifier).

The driver describes every scorer at planning (`describe_scores`: shapes, labels, fingerprints;
no image is read), so a bad spec fails in one line before any work; the workers load them.
"""

from __future__ import annotations

import re

from vlpipe.errors import VlpipeError
from vlpipe.models import score_classifier, score_head
from vlpipe.models.score_base import Scorer, ScoreSpec

HEAD_SUFFIXES = (".safetensors", ".pth", ".pt")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_score(text: str) -> ScoreSpec:
    """`NAME=FILE.safetensors|.pth|.pt` (a head) or `NAME=MODEL:LABEL` (a classifier)."""
    name, sep, spec = text.partition("=")
    name, spec = name.strip(), spec.strip()
    if not sep or not name or not spec:
        raise VlpipeError(f"--score {text!r}: expected NAME=SPEC (a head file or MODEL:LABEL)")
    if not _NAME.match(name):
        raise VlpipeError(f"--score {text!r}: the name {name!r} must be a plain column name")
    if spec.lower().endswith(HEAD_SUFFIXES):
        return ScoreSpec(name, "head", spec)
    model, colon, label = spec.rpartition(":")
    if not colon or not model or not label:
        raise VlpipeError(
            f"--score {text!r}: a classifier needs the label whose probability is kept"
            f" (NAME=MODEL:LABEL); a head is a {', '.join(HEAD_SUFFIXES)} file"
        )
    return ScoreSpec(name, "classifier", model, label)


def parse_scores(texts: list[str] | tuple[str, ...], reserved: frozenset[str]) -> list[ScoreSpec]:
    """Every --score, checked against each other and against vlpipe's own columns."""
    specs = [parse_score(t) for t in texts]
    seen: set[str] = set()
    for s in specs:
        if s.name in reserved:
            raise VlpipeError(f"--score {s.text}: {s.name!r} is one of vlpipe's own columns")
        if s.name in seen:
            raise VlpipeError(f"--score: the name {s.name!r} is given twice")
        seen.add(s.name)
    return specs


#: kind -> the module that describes it (at planning) and loads it (in the workers)
KINDS = {"head": score_head, "classifier": score_classifier}


def describe_scores(specs: list[ScoreSpec], embedder_dim: int) -> dict[str, dict]:
    """{name: {kind, source, label, fingerprint, ...}} for the manifest; raises VlpipeError (one
    line) for a file that is not a head of the expected shapes, a label the model lacks, ..."""
    return {s.name: KINDS[s.kind].describe(s, embedder_dim) for s in specs}


def load_scorers(
    specs: list[ScoreSpec], device: str = "auto", precision: str = "auto"
) -> list[Scorer]:
    return [KINDS[s.kind].load(s, device, precision) for s in specs]
