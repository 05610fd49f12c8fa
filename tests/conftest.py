"""Shared test fixtures. Tests that need ../shared skip with a reason where it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.paths import FLICKR

#: fixtures shared by many modules (`tiny` models, the `s3_server`, the tiny prompted models):
#: no module imports them
pytest_plugins = ["tests.helpers.reliability", "tests.helpers.s3_server", "tests.helpers.prompted"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def flickr() -> Path:
    """The Flickr8k development copy, read in place; skips where a clone has no ../shared."""
    if not (FLICKR / "captions.csv").exists():
        pytest.skip(f"needs the Flickr8k copy at {FLICKR} (absent in a user's clone)")
    return FLICKR


@pytest.fixture
def one_faiss_thread():
    """FAISS on one OpenMP thread: on a 2-core machine shared with other processes, the
    threads' barrier spinning makes small searches 5-20x slower (vlpipe.search.searcher)."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)
