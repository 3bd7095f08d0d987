"""Frozen text-encoder outputs, computed once per data set and read by training.

Imagen's text encoder is frozen, so running it at every training step only costs time.
`t2i data embed` encodes every distinct caption of a build once and stores, beside the
data set (`<build>/text_embeddings/<encoder>_L<length>/`):
  captions.json         the distinct captions, in row order
  embeddings.npy        float16 [num_captions, length, width]
  mask.npy              bool [num_captions, length]
Captions repeat a lot in Shapes (a few thousand distinct ones in 30k examples), so the
table is small; the input pipeline looks each example's caption up by its text.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Iterable

import numpy as np
from tqdm import tqdm

from t2i.errors import UsageError
from t2i.io import atomic_dir

# "minilm_phrases": MiniLM with each Shapes relation ending a phrase that is encoded on
# its own (MiniLMEncoder's phrase_breaks); see docs/results.md for why.
ENCODERS = ("minilm", "minilm_phrases")


def table_dir(build_dir: str, encoder: str, length: int) -> str:
    return os.path.join(build_dir, "text_embeddings", f"{encoder}_L{length}")


def make_encoder(encoder: str, length: int) -> Callable:
    if encoder in ENCODERS:
        from t2i.data.shapes import RELATIONS
        from t2i.text.minilm import MiniLMEncoder

        breaks = RELATIONS if encoder == "minilm_phrases" else ()
        return MiniLMEncoder.from_package(max_length=length, phrase_breaks=breaks).encode
    raise UsageError(f"unknown text encoder '{encoder}' (known: {', '.join(ENCODERS)})")


def write_table(captions: Iterable[str], encode: Callable, out_dir: str, batch_size: int = 256) -> int:
    """Encodes the distinct captions and writes the table atomically; returns its size."""
    distinct = sorted(set(captions))
    if not distinct:
        raise UsageError("no captions to encode")
    embeddings, masks = [], []
    for start in tqdm(range(0, len(distinct), batch_size), desc="encoding captions", unit="batch"):
        chunk = distinct[start : start + batch_size]
        padded = chunk + [chunk[-1]] * (batch_size - len(chunk))  # one compiled shape
        hidden, mask = encode(padded)
        embeddings.append(np.asarray(hidden, np.float16)[: len(chunk)])
        masks.append(np.asarray(mask, bool)[: len(chunk)])
    with atomic_dir(out_dir, existing="replace") as staging:
        np.save(os.path.join(staging, "embeddings.npy"), np.concatenate(embeddings))
        np.save(os.path.join(staging, "mask.npy"), np.concatenate(masks))
        with open(os.path.join(staging, "captions.json"), "w") as f:
            json.dump(distinct, f)
    return len(distinct)


class EmbeddingTable:
    """Caption -> (embeddings float32 [L, D], mask bool [L]) from a written table."""

    def __init__(self, directory: str):
        if not os.path.isfile(os.path.join(directory, "captions.json")):
            raise UsageError(f"no text embeddings in {directory}; compute them with: t2i data embed ...")
        with open(os.path.join(directory, "captions.json")) as f:
            self._rows = {caption: row for row, caption in enumerate(json.load(f))}
        self._embeddings = np.load(os.path.join(directory, "embeddings.npy"), mmap_mode="r")
        self._mask = np.load(os.path.join(directory, "mask.npy"))
        self.directory = directory

    def __len__(self) -> int:
        return len(self._rows)

    def lookup(self, caption: str) -> tuple[np.ndarray, np.ndarray]:
        row = self._rows.get(caption)
        if row is None:
            raise UsageError(f"caption {caption!r} has no embedding in {self.directory}; rerun t2i data embed")
        return np.asarray(self._embeddings[row], np.float32), self._mask[row]
