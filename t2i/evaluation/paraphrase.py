"""Shapes captions rephrased outside the training grammar: does a model follow words it
never saw in a caption?

`paraphrase(caption)` swaps words for synonyms that no Shapes caption uses ("big" for
"large", "tiny" for "small", "violet" for "purple", "over"/"under" for
"above"/"below", ...). A sample drawn from the paraphrase is scored against the
original caption (its structured request), so the score says whether the model read
the new words the way it reads the old ones. A model with a frozen pretrained text
encoder (Imagen with MiniLM or T5) may generalise to synonyms; one whose text encoder
learnt its vocabulary from Shapes captions alone (Parti's, CLIP's) has never seen
these words, so the words fall to sentencepiece pieces it has no meaning for.
"""

from __future__ import annotations

import re

# Whole words or phrases of the Shapes grammar -> what a person might write instead.
SYNONYMS = {
    "large": "big",
    "small": "tiny",
    "purple": "violet",
    "above": "over",
    "below": "under",
    "to the left of": "left of",
    "to the right of": "right of",
    "a photo of": "a photograph of",
    "a picture of": "an illustration of",
}

_PATTERN = re.compile(r"\b(" + "|".join(re.escape(k) for k in sorted(SYNONYMS, key=len, reverse=True)) + r")\b")


def paraphrase(caption: str) -> str:
    """The caption with every listed word or phrase replaced by its synonym."""
    return _PATTERN.sub(lambda match: SYNONYMS[match.group(1)], caption)
