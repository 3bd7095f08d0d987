"""The image tokenizer at use time: `t2i reconstruct` and `t2i tokenize`.

`reconstruct_split` round-trips a Shapes split's images through a trained ViT-VQGAN and
writes the reconstructions as PNGs with a `manifest.jsonl` (`prompt`, `image`) that
`t2i eval shapes` scores, a side-by-side grid (originals left, reconstructions right)
and `metrics.json` (PSNR, codebook usage and perplexity over the images).

`tokenize_splits` turns a build's splits into token grids stored beside it, for Parti:
`<build>/image_tokens/<name>/<split>.array_record`, one record per example (a msgpack
dict: `tokens` int16 [g, g], `caption`, and the structured scene: `kind`,
`num_objects`, `color`, `shape`, `size`, `cx`, `cy`, `r`, as the input pipeline gives
them), in the split's order, with `info.json` naming the tokenizer. `TokenSource`
reads them back by index (grain's random-access source protocol).

Both write into a temporary folder beside the target and move it into place at the
end: a failure leaves no half-written output.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import jax
import ml_collections
import numpy as np
from PIL import Image

from t2i.errors import UsageError

REFERENCE_TOKENIZER = str(Path(__file__).parent / "assets" / "vit_vqgan_shapes.npz")
SCENE_KEYS = ("kind", "num_objects", "color", "shape", "size", "cx", "cy", "r")


def load_tokenizer(source: str | None = None, step: int | None = None):
    """A trained tokenizer (`cascade.Stage`) from a workdir or an export; the committed
    Shapes reference when `source` is None."""
    from t2i.cascade import load_stage
    from t2i.tasks.vqgan import VQGANTask

    stage = load_stage(source or REFERENCE_TOKENIZER, step)
    if not isinstance(stage.task, VQGANTask):
        raise UsageError(f"{stage.source} is a {stage.config.task} model, not an image tokenizer (vit_vqgan)")
    return stage


def _data_config(stage, data_dir: str | None, builder_config: str | None) -> ml_collections.ConfigDict:
    data = ml_collections.ConfigDict(stage.config.data.to_dict())
    data.tokenizer = ""
    data.text_embeddings = ""
    if data_dir:
        data.data_dir = data_dir
    if builder_config:
        data.builder_config = builder_config
    return data


def _batches(stage, data, split: str, num: int | None, batch_size: int):
    """(host batch, number of valid rows) over the first `num` examples of a split."""
    from t2i.data import pipeline

    pipeline.data_source(data, split)  # a missing build or split: one clear line
    if batch_size < 1:
        raise UsageError(f"--batch_size must be at least 1, got {batch_size}")
    for batch in pipeline.eval_batches(data, split, batch_size, limit=num):
        yield batch, int(np.sum(batch["valid"]))


def _staging(out_dir: str) -> str:
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise UsageError(f"output folder {out_dir} exists and is not empty")
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".t2i_tokens_", dir=parent)
    os.chmod(staging, 0o755)  # mkdtemp's 0700 would outlive the rename
    return staging


def _commit(staging: str, out_dir: str) -> None:
    if os.path.isdir(out_dir):
        os.rmdir(out_dir)  # empty, checked before
    os.replace(staging, out_dir)


def codebook_statistics(codes: np.ndarray, num_codes: int) -> dict:
    """Usage (share of codes that occur) and perplexity (exp entropy) of code grids."""
    counts = np.bincount(codes.reshape(-1), minlength=num_codes).astype(np.float64)
    probs = counts / max(counts.sum(), 1.0)
    nonzero = probs[probs > 0]
    return dict(
        codebook_usage=float(np.mean(counts > 0)),
        codebook_perplexity=float(np.exp(-np.sum(nonzero * np.log(nonzero)))),
    )


def reconstruct_split(
    stage,
    split: str,
    num: int,
    out_dir: str,
    *,
    data_dir: str | None = None,
    builder_config: str | None = None,
    batch_size: int = 64,
    grid_examples: int = 16,
) -> dict:
    """Round-trips the first `num` images of `split`; returns the metrics it wrote."""
    from t2i.tasks.vqgan import psnr, to_model_range
    from t2i.train.logging import save_grid

    if num < 1:
        raise UsageError(f"--num must be at least 1, got {num}")
    task = stage.task
    data = _data_config(stage, data_dir, builder_config)
    key = task.image_key
    reconstruct = jax.jit(task.reconstruct)
    batches = _batches(stage, data, split, num, batch_size)  # errors before anything is written
    first = next(batches)
    staging = _staging(out_dir)
    try:
        originals, recons, captions, codes, scores = [], [], [], [], []
        index = 0
        with open(os.path.join(staging, "manifest.jsonl"), "w") as manifest:
            for batch, valid in [first, *batches]:
                recon, grid = jax.device_get(reconstruct(stage.params, batch[key]))
                recon, grid = np.asarray(recon)[:valid], np.asarray(grid)[:valid]
                image = np.asarray(batch[key])[:valid]
                scores.append(np.asarray(psnr(to_model_range(recon), to_model_range(image))))
                codes.append(grid)
                for row in range(valid):
                    filename = f"{index:05d}.png"
                    Image.fromarray(recon[row]).save(os.path.join(staging, filename))
                    caption = str(batch["caption"][row])
                    manifest.write(json.dumps({"prompt": caption, "image": filename, "index": index}) + "\n")
                    index += 1
                if len(originals) < grid_examples:
                    originals.extend(image[: grid_examples - len(originals)])
                    recons.extend(recon[: grid_examples - len(recons)])
                    captions.extend(str(c) for c in batch["caption"][:valid][: grid_examples - len(captions)])
        pairs = np.concatenate([np.stack(originals), np.stack(recons)], axis=2)
        save_grid(os.path.join(staging, "grid.png"), pairs, captions, scale=2)
        metrics = dict(
            split=split,
            num_images=index,
            psnr=float(np.mean(np.concatenate(scores))),
            **codebook_statistics(np.concatenate(codes), int(stage.config.model.num_codes)),
            tokenizer=stage.source,
            step=stage.step,
        )
        with open(os.path.join(staging, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=1, sort_keys=True)
        _commit(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return metrics


def tokens_dir(build_dir: str, name: str) -> str:
    return os.path.join(build_dir, "image_tokens", name)


def tokenize_splits(
    stage,
    splits: Sequence[str],
    name: str,
    *,
    data_dir: str | None = None,
    builder_config: str | None = None,
    batch_size: int = 256,
    overwrite: bool = False,
) -> str:
    """Writes every example of `splits` as token grids beside the build; returns the folder."""
    from array_record.python.array_record_module import ArrayRecordWriter
    from flax import serialization

    from t2i.data import pipeline

    task = stage.task
    data = _data_config(stage, data_dir, builder_config)
    for split in splits:
        pipeline.data_source(data, split)
    out_dir = tokens_dir(pipeline.build_dir(data), name)
    if os.path.exists(out_dir):
        if not overwrite:
            raise UsageError(f"{out_dir} exists; pass --overwrite to replace it")
    tokenize = jax.jit(task.tokenize)
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".t2i_tokens_", dir=os.path.dirname(out_dir))
    os.chmod(staging, 0o755)  # mkdtemp's 0700 would outlive the rename
    try:
        counts = {}
        for split in splits:
            writer = ArrayRecordWriter(os.path.join(staging, f"{split}.array_record"), "group_size:1")
            count = 0
            for batch, valid in _batches(stage, data, split, None, batch_size):
                grids = np.asarray(jax.device_get(tokenize(stage.params, batch[task.image_key])))
                for row in range(valid):
                    record = {"tokens": grids[row].astype(np.int16), "caption": str(batch["caption"][row])}
                    record.update({k: np.asarray(batch[k][row]) for k in SCENE_KEYS})
                    writer.write(serialization.msgpack_serialize(record))
                    count += 1
            writer.close()
            counts[split] = count
        info = dict(
            tokenizer=stage.source,
            step=stage.step,
            grid=int(task.grid),
            num_codes=int(stage.config.model.num_codes),
            image_size=int(task.image_size),
            builder_config=data.builder_config,
            splits=counts,
        )
        with open(os.path.join(staging, "info.json"), "w") as f:
            json.dump(info, f, indent=1, sort_keys=True)
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


class TokenSource:
    """Random access to a tokenized split: `len(source)`, `source[i]` -> dict."""

    def __init__(self, directory: str, split: str):
        from array_record.python.array_record_module import ArrayRecordReader

        path = os.path.join(directory, f"{split}.array_record")
        if not os.path.isfile(path):
            raise UsageError(f"no tokenized split {split} in {directory} (run t2i tokenize)")
        with open(os.path.join(directory, "info.json")) as f:
            self.info = json.load(f)
        self._reader = ArrayRecordReader(path)

    def __len__(self) -> int:
        return self._reader.num_records()

    def __getitem__(self, index: int) -> dict:
        from flax import serialization

        if not 0 <= index < len(self):
            raise IndexError(index)
        return serialization.msgpack_restore(self._reader.read([index])[0])
