"""`vlpipe serve --blur-faces`: every thumbnail the page shows has its faces blurred.

Why: a run's exports blur faces with `--blur-faces`; a search page over the same run should not
show them either. The boxes are the run's own (`face_boxes`, from `vlpipe run --detect-faces`),
read for the one row a thumbnail is made for; a run without them gets faces looked for on the
thumbnail itself, with the same detector. Blurred thumbnails are cached under their own names,
so a cache shared with an unblurred server never hands out an unblurred one.
"""

from __future__ import annotations

import io
import logging
import threading

import pyarrow as pa
from PIL import Image

from vlpipe.errors import VlpipeError
from vlpipe.images.blur import blur_jpeg

log = logging.getLogger(__name__)

COLUMN = "face_boxes"
#: suffix of blurred thumbnails' cache files
VARIANT = "-blurred"


class FaceBlur:
    """thumbnail JPEG of an indexed image -> the same with its faces blurred."""

    def __init__(self, searcher):
        self.searcher = searcher
        self.stored_boxes = self._has_column()
        self._detector = None
        self._lock = threading.Lock()

    def check(self) -> None:
        """At start-up: a run without stored boxes needs the detector, which must load."""
        if not self.stored_boxes:
            from vlpipe.models.faces import check_detector

            check_detector()

    def __call__(self, image_id: str, jpeg: bytes) -> bytes:
        boxes = self._boxes(image_id) if self.stored_boxes else None
        if boxes is None:
            with Image.open(io.BytesIO(jpeg)) as im:
                boxes = self._detect(im.convert("RGB"))
        return blur_jpeg(jpeg, boxes)

    def _has_column(self) -> bool:
        try:
            return COLUMN in self.searcher.rows().schema().names
        except (VlpipeError, OSError, pa.ArrowException, AttributeError) as exc:
            log.info("no stored face boxes (%s): faces are looked for on thumbnails", exc)
            return False

    def _boxes(self, image_id: str) -> list | None:
        row = self.searcher.row_of(image_id)
        if row is None:
            return None
        try:
            [values] = self.searcher.rows().read([row], [COLUMN])
        except (VlpipeError, OSError, pa.ArrowException) as exc:
            log.warning("cannot read the face boxes of %s: %s", image_id, exc)
            return None
        return values[COLUMN]

    def _detect(self, image: Image.Image) -> list:
        from vlpipe.models.faces import FaceDetector

        with self._lock:
            if self._detector is None:
                self._detector = FaceDetector()
            return self._detector.detect(image)


__all__ = ["VARIANT", "FaceBlur"]
