"""Grain input pipeline over the Shapes array_record files.

Training: one global shuffle (reshuffled every epoch) of the whole split, seeded, then
each process reads its own strided share of the stream and batches its rows; the
trainer assembles the process-local batches into one global array. The iterator is a
grain `DatasetIterator` whose state goes into every checkpoint, so a resumed run reads
exactly the batch the interrupted run would have read next.

Every example becomes a flat dict of fixed-shape numpy arrays (objects padded to
`MAX_OBJECTS` with -1 / 0) plus the caption string, which stays on the host.
"""

from __future__ import annotations

import os
from typing import Callable, Iterator

import grain
import jax
import ml_collections
import numpy as np

from t2i.data import shapes, shapes_tfds
from t2i.errors import UsageError

MAX_OBJECTS = 3
Transform = Callable[[dict], dict]
RandomTransform = Callable[[dict, np.random.Generator], dict]


def data_source(data: ml_collections.ConfigDict, split: str):
    """Random-access source of one split; a clear error if it was never built.

    With `data.image_tokens` set (a folder name under the build's `image_tokens/`, as
    `t2i tokenize --name` wrote it), the split's token grids instead of its images:
    examples with `image_tokens` [g, g], the caption and the scene."""
    tokens_name = data.get("image_tokens", "")
    if tokens_name:
        from t2i.data.token_grids import TokenGridSource, tokens_dir

        data_source(ml_collections.ConfigDict({**data.to_dict(), "image_tokens": ""}), split)  # the build exists
        return TokenGridSource(tokens_dir(build_dir(data), tokens_name), split)
    if split not in shapes_tfds.SPLITS:
        raise UsageError(f"unknown split '{split}' (choose from {', '.join(shapes_tfds.SPLITS)})")
    shapes_builder = shapes_tfds.builder(data.builder_config, data.data_dir)
    if not shapes_builder.is_prepared():
        raise UsageError(
            f"data set shapes/{data.builder_config} not found in {os.path.abspath(data.data_dir)}; "
            f"build it with: t2i data build shapes --builder_config {data.builder_config} "
            f"--data_dir {data.data_dir}"
        )
    return shapes_builder.as_data_source(split=split)


def to_arrays(example: dict) -> dict:
    """A TFDS example -> flat fixed-shape arrays (the batch format every family reads).
    Token-grid examples (`data.image_tokens`) are stored flat already."""
    if "objects" not in example:
        return example
    objects = example["objects"]
    n = len(objects["color"])
    out = {key: np.asarray(value) for key, value in example.items() if key.startswith("image_")}
    caption = example["caption"]
    out["caption"] = caption.decode() if isinstance(caption, bytes) else str(caption)
    out["kind"] = np.int32(example["kind"])
    out["num_objects"] = np.int32(n)
    for key in ("color", "shape", "size"):
        padded = np.full((MAX_OBJECTS,), -1, np.int32)
        padded[:n] = np.asarray(objects[key], np.int32)
        out[key] = padded
    for key in ("cx", "cy", "r"):
        padded = np.zeros((MAX_OBJECTS,), np.float32)
        padded[:n] = np.asarray(objects[key], np.float32)
        out[key] = padded
    return out


def text_transform(data: ml_collections.ConfigDict) -> Transform | None:
    """Adds `tokens` int32 [L] and `text_mask` bool [L] when `data.tokenizer` is set, or
    precomputed encoder outputs when `data.text_embeddings` names an encoder.

    `data.tokenizer` is "shapes" (the shipped model) or a path to any sentencepiece
    model (T5's spiece.model included); `data.max_text_length` is L.
    """
    name = data.get("tokenizer", "")
    encoder = data.get("text_embeddings", "")
    if name and encoder:
        raise UsageError("set one of data.tokenizer and data.text_embeddings, not both")
    if encoder:
        return embedding_transform(data, encoder)
    if not name:
        return None
    from t2i.text.tokenizer import tokenizer_for

    tokenizer = tokenizer_for(name, int(data.max_text_length))

    def add_tokens(example: dict) -> dict:
        ids, mask = tokenizer.encode([example["caption"]])
        return {**example, "tokens": ids[0], "text_mask": mask[0]}

    return add_tokens


def build_dir(data: ml_collections.ConfigDict) -> str:
    """The folder of the built data set (where derived tables such as text embeddings live)."""
    return str(shapes_tfds.builder(data.builder_config, data.data_dir).data_dir)


def embedding_transform(data: ml_collections.ConfigDict, encoder: str) -> Transform:
    """Adds precomputed frozen-encoder outputs: `text_embeddings` float32 [L, D] and
    `text_mask` bool [L] (`t2i data embed` writes them)."""
    from t2i.text.embeddings import EmbeddingTable, table_dir

    table = EmbeddingTable(table_dir(build_dir(data), encoder, int(data.max_text_length)))

    def add_embeddings(example: dict) -> dict:
        embeddings, mask = table.lookup(example["caption"])
        return {**example, "text_embeddings": embeddings, "text_mask": mask}

    return add_embeddings


def _compose(*transforms: Transform | None) -> Transform:
    chain = [t for t in transforms if t is not None]

    def apply(example: dict) -> dict:
        for transform in chain:
            example = transform(example)
        return example

    return apply


def _stack(rows: list[dict]) -> dict:
    return {key: np.stack([row[key] for row in rows]) for key in rows[0]}


def per_process_batch_size(global_batch_size: int) -> int:
    count = jax.process_count()
    if global_batch_size % count:
        raise UsageError(f"batch size {global_batch_size} does not divide over {count} processes")
    return global_batch_size // count


def train_iterator(
    data: ml_collections.ConfigDict,
    global_batch_size: int,
    seed: int,
    transform: Transform | None = None,
    random_transform: RandomTransform | None = None,
) -> grain.DatasetIterator:
    """Infinite, deterministic, checkpointable iterator of process-local batches.

    `random_transform(example, rng)` (augmentation) gets a numpy Generator derived from
    `seed` and the example's position in the stream: fresh every epoch, and the same
    again after a resume.
    """
    dataset = grain.MapDataset.source(data_source(data, data.split)).shuffle(seed=seed).repeat()
    dataset = dataset[jax.process_index() :: jax.process_count()]
    dataset = dataset.map(_compose(to_arrays, text_transform(data), transform))
    if random_transform is not None:
        dataset = dataset.random_map(random_transform, seed=seed + 1)
    dataset = dataset.batch(per_process_batch_size(global_batch_size), drop_remainder=True, batch_fn=_stack)
    options = grain.ReadOptions(num_threads=int(data.num_threads), prefetch_buffer_size=int(data.prefetch))
    return iter(dataset.to_iter_dataset(options))


def eval_batches(
    data: ml_collections.ConfigDict,
    split: str,
    global_batch_size: int,
    transform: Transform | None = None,
    limit: int | None = None,
) -> Iterator[dict]:
    """One pass over a split in order; the last batch is padded, `valid` marks real rows."""
    source = data_source(data, split)
    total = len(source) if limit is None else min(limit, len(source))
    local = per_process_batch_size(global_batch_size)
    process = jax.process_index()
    prepare = _compose(to_arrays, text_transform(data), transform)
    for start in range(0, total, global_batch_size):
        rows, valid = [], []
        for i in range(start + process * local, start + (process + 1) * local):
            rows.append(prepare(source[min(i, total - 1)]))  # pad with a real example...
            valid.append(i < total)  # ...masked out here
        batch = _stack(rows)
        batch["valid"] = np.asarray(valid)
        yield batch


def label_names() -> dict[str, tuple[str, ...]]:
    """Class names of the integer fields, for printing."""
    return {"kind": shapes.KINDS, "color": shapes.COLORS, "shape": shapes.SHAPES, "size": tuple(shapes.SIZES)}
