"""The figures in README.md, BENCHMARKS.md's prose and docs/*.md that are not benchmark outputs,
so `python -m bench.figures` does not hold them to a results file: each with its reason.

Add an entry only for a number that no benchmark measures (a goal, a setting, arithmetic, another
package's size); a figure a benchmark measured belongs in its results file, or out of the prose.
"""

from __future__ import annotations

#: (file relative to the repo, text on the line that holds the figure, why it is not a
#: benchmark output). The figure is excused where it lies inside that text on a line of that file.
EXCEPTIONS: list[tuple[str, str, str]] = [
    ("README.md", "fp16: 0.75 GB of weights by parameter count",
     "arithmetic (parameters x 2 bytes in fp16), said to be not measured"),
    ("docs/runners.md", "fp16: 0.75 GB of", "arithmetic (parameters x 2 bytes in fp16), said to be"
     " not measured"),
    ("docs/runners.md", "~1 MB per 1,000 with 256-d embeddings",
     "arithmetic: 256 float32 values are 1 KB a row"),
    ("docs/runners.md", "at most every 2 s)", "the progress writer's interval, a setting"),
    ("docs/runners.md", "every 2 s for the first 20 s", "the progress poller's schedule"),
    ("docs/runners.md", "at most every 30 s;", "the progress poller's schedule"),
    ("docs/privacy.md", "The weights (2 MB) ship inside", "the size of another package's files"),
    ("docs/privacy.md", "image upscaled 2x", "the baseline's setting"),
    ("BENCHMARKS.md", "The goal of 2.5x is not met", "a goal the issue sets"),
    ("docs/vlpipe-mini.md", "above 10 images/s", "the issue's floor, a goal"),
    ("docs/vlpipe-mini.md", "| issue 24 target | 0.27 | | 0.71 | | | | 0.21 | 0.53 |",
     "the issue's quality goals"),
    ("docs/vlpipe-mini.md", "held-out train images too: CIDEr 0.510",
     "the shipped model's training log: vlpipe train's held-out train evaluation"),
    ("docs/vlpipe-mini.md", "pins, in fp32): t2i R@1 0.594 /",
     "PINNED in tests/test_mini_model.py, which checks them"),
    ("docs/vlpipe-mini.md", "R@10 0.934, i2t R@10 0.96, BLEU-4 0.248, CIDEr 0.649 (bf16:",
     "PINNED in tests/test_mini_model.py, which checks them"),
    ("docs/vlpipe-mini.md", "also picks 3: CIDEr 0.462 against",
     "history: the previous weights' held-out train evaluation"),
    ("README.md", "ranking counts 4x when", "a fusion weight, a setting"),
    ("README.md", "and 0.1x otherwise", "a fusion weight, a setting"),
    ("docs/dedup.md", "past 4x the rows it was trained for", "a rebuild threshold, a setting"),
    ("docs/runners.md", "(under 100 MB at 224 px)",
     "arithmetic: the decode-ahead images' pixels at 224 px"),
]  # fmt: skip
