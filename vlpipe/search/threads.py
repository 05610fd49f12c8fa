"""How many OpenMP threads FAISS uses for a search, shared by plain and filtered searches."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

# Fewer queries than this run on one OpenMP thread: a handful of queries gains nothing from more,
# and on a busy machine the threads' barrier spinning costs 5-20x (100k exact index, one query:
# 10.5 ms on one thread, 66 ms on two while other processes held both cores).
ONE_THREAD_BELOW = 16


@contextlib.contextmanager
def threads_for(queries: int) -> Iterator[None]:
    """One OpenMP thread (the calling thread's setting only, an OpenMP ICV) for a handful of
    queries; FAISS's own setting otherwise."""
    import faiss

    if queries >= ONE_THREAD_BELOW:
        yield
        return
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)
