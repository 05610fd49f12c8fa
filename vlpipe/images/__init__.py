"""Image helpers every layer may use: the guarded decoder, fingerprints, thumbnails, quality.

The lowest layer: nothing here imports the rest of vlpipe. This file stays free of Pillow, so the
CLI can read the default pixel limit without loading an image library at start-up.
"""

#: Pillow's own default limit (about 89.5 MP): the same semantics as `Image.MAX_IMAGE_PIXELS`.
DEFAULT_MAX_PIXELS: int = 89_478_485
