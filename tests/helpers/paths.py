"""Where the tests find the repository, its example images and the shared Flickr8k copy."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FLICKR = REPO.parent / "shared" / "datasets" / "flickr8k"
EXAMPLES = REPO / "examples" / "images"


def flickr_split(root: Path, split: str, limit: int | None = None) -> list[str]:
    """Image file names of one split, in file order (fixed subsets for fast tests)."""
    names = []
    for line in (root / "splits.csv").read_text().splitlines()[1:]:
        name, s = line.rsplit(",", 1)
        if s == split:
            names.append(name)
    return names[:limit] if limit else names
