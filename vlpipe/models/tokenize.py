"""Caption words: the one tokenisation shared by vlpipe-mini's vocabulary and the caption metrics.

It lives with the models because a model's vocabulary needs it at inference and models import
nothing from the eval package; the caption metrics import it from here. Lowercase, and every run
of characters other than letters and digits is a word break, so punctuation disappears and "dog's"
becomes "dog s".
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[^\W_]+")  # letters and digits of any script


def tokenize(text: str) -> str:
    """Lowercased words separated by single spaces, punctuation dropped."""
    return " ".join(_WORD.findall(text.lower()))
