"""`vlpipe ask`: a question answered by a prompted vision-language model about the top-k images
of a search (or one image), so "how many dogs?" runs over "dogs on a beach" without a pipeline.

The images are read from their indexed uris (files, any fsspec URL, tar members) and decoded
with the pipeline's guarded decoder; one that cannot be read gets no answer and an `error`
instead of failing the others. The model is the run's own captioner when that is a prompted
model, else the one named; vlpipe-mini and the classic captioners (BLIP, GIT) take no question
and are refused in one line, and so is a question the model's processor will not take.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vlpipe.errors import VlpipeError
from vlpipe.models.prompting import Prompting

if TYPE_CHECKING:
    from PIL import Image

    from vlpipe.search.searcher import Searcher

#: hits answered per generate call
ASK_BATCH = 8
#: the most bytes read from one source image
MAX_SOURCE_BYTES = 64 * 2**20


@dataclass
class Answer:
    """A search hit (None for a --image question), the image's uri and the model's answer."""

    uri: str
    answer: str | None
    hit: object | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        out = self.hit.to_dict() if self.hit is not None else {"uri": self.uri}
        out["answer"] = self.answer
        if self.error is not None:
            out["error"] = self.error
        return out


@dataclass
class Asker:
    """An open index and the prompted model that answers; the model loads on first question."""

    searcher: Searcher | None
    model: str
    device: str = "cpu"
    max_tokens: int = 30
    _captioner: object = field(default=None, repr=False)

    @classmethod
    def open(
        cls, index: str | None, model: str | None = None, device: str = "cpu", max_tokens: int = 30
    ) -> Asker:
        """`model` None: the run's captioner, which must be a prompted model."""
        searcher = None
        if index is not None:
            from vlpipe.search.searcher import Searcher

            searcher = Searcher.open(index, device=device)
        if model is None:
            if searcher is None:
                raise VlpipeError("give --model (a prompted model) when asking about --image alone")
            model = run_captioner(searcher)
        return cls(searcher, model, device, max_tokens)

    def captioner(self):
        if self._captioner is None:
            from vlpipe.models.registry import load_captioner

            # a prompt marks the request as prompted: vlpipe-mini and BLIP/GIT refuse it
            self._captioner = load_captioner(
                self.model, self.device, prompting=Prompting(prompt=""), max_tokens=self.max_tokens
            )
        return self._captioner

    def about_hits(
        self, question: str, about: str | None = None, k: int = 20, where: str | None = None
    ) -> list[Answer]:
        """The question, asked of each of the top-k images of a search for `about` (default:
        the question itself)."""
        question = _check(question, "question")
        if self.searcher is None:
            raise VlpipeError("give --index to ask about search results, or --image")
        query = _check(about, "--about") if about is not None else question
        self.captioner().check_prompts([question])  # one line, before any image is read
        hits = self.searcher.search_text([query], k, where=where)[0]
        answers = [Answer(h.uri, None, h) for h in hits]
        min_side = self.captioner().image_size  # JPEGs decode reduced down to this, no further
        self._answer(question, answers, [_read_hit(h.uri, min_side) for h in hits])
        return answers

    def about_images(self, question: str, images: list[Image.Image], uris: list[str]) -> list:
        question = _check(question, "question")
        self.captioner().check_prompts([question])
        answers = [Answer(u, None) for u in uris]
        self._answer(question, answers, [(im, None) for im in images])
        return answers

    def _answer(self, question: str, answers: list[Answer], loaded: list) -> None:
        cap = self.captioner()
        todo = []
        for answer, (image, error) in zip(answers, loaded, strict=True):
            if image is None:
                answer.error = error
            else:
                todo.append((answer, cap.preprocess(image)))
        for start in range(0, len(todo), ASK_BATCH):
            chunk = todo[start : start + ASK_BATCH]
            replies = cap.answers([im for _, im in chunk], [question], self.max_tokens)
            for (answer, _), reply in zip(chunk, replies, strict=True):
                answer.answer = reply[0]


def run_manifest(searcher: Searcher) -> dict:
    """The manifest.json of the index's run ({} when there is none)."""
    from vlpipe.rundir import RunDir

    store = getattr(searcher, "store", None)
    if store is None:  # a searcher over vectors alone
        return {}
    return RunDir(store.fs.unstrip_protocol(posixpath.dirname(store.folder))).read_manifest() or {}


def answer_columns(searcher: Searcher) -> list[str]:
    """The run's --ask columns, in the order asked."""
    config = run_manifest(searcher).get("config") or {}
    return [name for name, _ in config.get("asks") or ()]


def run_captioner(searcher: Searcher) -> str:
    """The captioner of the index's run, when it can answer questions; else one line."""
    manifest = run_manifest(searcher)
    described = (manifest.get("models") or {}).get("captioner") or {}
    config = described.get("config") or {}
    if config.get("kind") == "prompted":
        return described["name"]
    name = described.get("name", "unknown")
    kind = "vlpipe-mini" if config.get("name") == "vlpipe-mini" else config.get("family", name)
    raise VlpipeError(
        f"the run's captioner {name!r} ({kind}) cannot answer questions: pass --model with a "
        "prompted model (any AutoModelForImageTextToText hub id or directory: llava, qwen2_vl, "
        "idefics3, paligemma, ...)"
    )


def _check(text: str | None, what: str) -> str:
    if text is None or not text.strip():
        raise VlpipeError(f"empty {what}: give some words")
    return text.strip()


def _read_hit(uri: str, min_side: int):
    """(image, None), or (None, why) when the source cannot be read or decoded."""
    from vlpipe.images.decode import DecodeError, decode_image
    from vlpipe.reading.sources import ThumbnailError, read_source

    try:
        return decode_image(read_source(uri, MAX_SOURCE_BYTES), min_side).image, None
    except (ThumbnailError, DecodeError) as exc:
        return None, str(exc)
