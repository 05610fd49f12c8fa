"""vlpipe's Beam ModelHandler: captions, image embeddings and text scores for a batch of images.

The handler plugs into Beam's `RunInference` in a user's own pipeline:

    images | beam.Map(prepare_image, models) | RunInference(VlpipeModelHandler(...))

It is vlpipe.worker.inference.ImageInference, which vlpipe's own pipeline drives from a
shard-level DoFn (see `worker/shard.py` for why), with Beam's ModelHandler interface: both paths
share one implementation of batching and inference. Beam's ML package is imported here only.
"""

from __future__ import annotations

from apache_beam.ml.inference.base import ModelHandler

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

    def __init__(self, *args, min_batch_size: int = 1, **kwargs):
        """ImageInference's arguments (captioner, embedder, device, ...), plus Beam's smallest
        batch; Beam's largest is ImageInference's `max_batch_size`."""
        ImageInference.__init__(self, *args, **kwargs)
        ModelHandler.__init__(
            self, min_batch_size=min_batch_size, max_batch_size=self.max_batch_size
        )

    def get_metrics_namespace(self) -> str:
        return "vlpipe"

    def share_model_across_processes(self) -> bool:
        return False
