"""vlpipe's Beam ModelHandler: captions, image embeddings and text scores for a batch of images.

The handler plugs into Beam's `RunInference` in a user's own pipeline:

    images | beam.Map(prepare_image, models) | RunInference(VlpipeModelHandler(...))

It is vlpipe.worker.inference.ImageInference, which vlpipe's own pipeline drives from a
shard-level DoFn (see `worker/shard.py` for why), with Beam's ModelHandler interface: both paths
share one implementation of batching and inference. Beam's ML package is imported here only.
"""

from __future__ import annotations

from apache_beam.ml.inference.base import ModelHandler

from vlpipe.models.prompting import Prompting
from vlpipe.worker.inference import (
    ImageInference,
    ImageResult,
    Models,
    PreparedImage,
    prepare_image,
)

__all__ = ["ImageResult", "Models", "PreparedImage", "VlpipeModelHandler", "prepare_image"]


class VlpipeModelHandler(ImageInference, ModelHandler[PreparedImage, ImageResult, Models]):
    """Loads the captioner and embedder once per process; one forward pass per batch."""

    def __init__(
        self,
        captioner: str = "mini",
        embedder: str = "mini",
        device: str = "auto",
        precision: str = "auto",
        max_caption_tokens: int = 30,
        min_batch_size: int = 1,
        max_batch_size: int = 32,
        prompting: Prompting | None = None,
        scores: tuple[str, ...] = (),
        backend: str = "torch",
        detect_faces: bool = False,
    ):
        ModelHandler.__init__(self, min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        ImageInference.__init__(
            self,
            captioner=captioner,
            embedder=embedder,
            device=device,
            precision=precision,
            max_caption_tokens=max_caption_tokens,
            max_batch_size=max_batch_size,
            prompting=prompting,
            scores=scores,
            backend=backend,
            detect_faces=detect_faces,
        )

    def get_metrics_namespace(self) -> str:
        return "vlpipe"

    def share_model_across_processes(self) -> bool:
        return False
