"""Token grids stored beside a Shapes build: the data a token model (Parti) trains on.

`t2i tokenize` writes `<build>/image_tokens/<name>/<split>.array_record`, one record per
example in the split's order (a msgpack dict: `tokens` int16 [g, g], `caption`, and the
structured scene `kind`, `num_objects`, `color`, `shape`, `size`, `cx`, `cy`, `r` as
the input pipeline gives them), with `info.json` naming the tokenizer, the grid side
and the codebook size. `TokenGridSource` reads a split back by index (grain's
random-access protocol) as flat examples with `image_tokens` int32 [g, g].
"""

from __future__ import annotations

import json
import os

import numpy as np

from t2i.errors import UsageError

SCENE_KEYS = ("kind", "num_objects", "color", "shape", "size", "cx", "cy", "r")


def tokens_dir(build_dir: str, name: str) -> str:
    return os.path.join(build_dir, "image_tokens", name)


def encode_record(tokens: np.ndarray, caption: str, scene: dict) -> bytes:
    from flax import serialization

    record = {"tokens": np.asarray(tokens, np.int16), "caption": str(caption)}
    record.update({key: np.asarray(scene[key]) for key in SCENE_KEYS})
    return serialization.msgpack_serialize(record)


def read_info(directory: str) -> dict:
    path = os.path.join(directory, "info.json")
    if not os.path.isfile(path):
        raise UsageError(f"no token grids in {directory} (write them with: t2i tokenize)")
    with open(path) as f:
        return json.load(f)


class TokenGridSource:
    """Random access to a tokenized split: `len(source)`, `source[i]` -> flat example."""

    def __init__(self, directory: str, split: str):
        from array_record.python.array_record_data_source import ArrayRecordDataSource

        self.info = read_info(directory)
        path = os.path.join(directory, f"{split}.array_record")
        if not os.path.isfile(path):
            raise UsageError(f"no tokenized split {split} in {directory} (write it with: t2i tokenize)")
        self._source = ArrayRecordDataSource([path])

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        from flax import serialization

        if not 0 <= index < len(self):
            raise IndexError(index)
        record = serialization.msgpack_restore(self._source[index])
        example = {"image_tokens": np.asarray(record.pop("tokens"), np.int32)}
        example["caption"] = str(record.pop("caption"))
        example.update({key: np.asarray(value) for key, value in record.items()})
        return example
