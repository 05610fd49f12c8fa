"""Near-duplicate groups over a run's rows: exact bytes (sha256), perceptual hash (phash) and
embedding similarity, clustered, reported and used by search and serve (see run.py)."""
