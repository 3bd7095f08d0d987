"""The image tokenizer at use time: `t2i reconstruct` and `t2i tokenize`.

`reconstruct_split` round-trips a Shapes split's images through a trained ViT-VQGAN and
writes the reconstructions as PNGs with a `manifest.jsonl` (`prompt`, `image`) that
`t2i eval shapes` scores, a side-by-side grid (originals left, reconstructions right)
and `metrics.json` (PSNR, codebook usage and perplexity over the images).

`tokenize_splits` turns a build's splits into token grids stored beside it, for Parti:
`<build>/image_tokens/<name>/<split>.array_record`, one record per example (a msgpack
dict: `tokens` int16 [g, g], `caption`, and the structured scene: `kind`,
`num_objects`, `color`, `shape`, `size`, `cx`, `cy`, `r`, as the input pipeline gives
them), in the split's order, with `info.json` naming the tokenizer
(`t2i.data.token_grids` is the format; its `TokenGridSource` reads them back).

Both write into a temporary folder beside the target and move it into place at the
end: a failure leaves no half-written output.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import jax
import ml_collections
import numpy as np
from PIL import Image

from t2i.errors import UsageError
from t2i.io import atomic_dir

REFERENCE_TOKENIZER = str(Path(__file__).resolve().parent.parent / "assets" / "vit_vqgan_shapes.npz")


def load_tokenizer(source: str | None = None, step: int | None = None):
    """A trained tokenizer (`t2i.model_files.TrainedModel`) from a workdir or an export;
    the committed Shapes reference when `source` is None."""
    from t2i.model_files import load_model

    return load_model(source or REFERENCE_TOKENIZER, step, family="vit_vqgan")


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
    from t2i.train.logging import save_grid
    from t2i.vqgan.task import psnr, to_model_range

    if num < 1:
        raise UsageError(f"--num must be at least 1, got {num}")
    task = stage.task
    data = _data_config(stage, data_dir, builder_config)
    key = task.image_key
    reconstruct = jax.jit(task.reconstruct)
    batches = _batches(stage, data, split, num, batch_size)  # errors before anything is written
    first = next(batches)
    with atomic_dir(out_dir) as staging:
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
    return metrics


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

    from t2i.data import pipeline
    from t2i.data.token_grids import SCENE_KEYS, encode_record, tokens_dir

    task = stage.task
    data = _data_config(stage, data_dir, builder_config)
    for split in splits:
        pipeline.data_source(data, split)
    out_dir = tokens_dir(pipeline.build_dir(data), name)
    if os.path.exists(out_dir):
        if not overwrite:
            raise UsageError(f"{out_dir} exists; pass --overwrite to replace it")
    tokenize = jax.jit(task.tokenize)
    with atomic_dir(out_dir, existing="replace") as staging:
        counts = {}
        for split in splits:
            writer = ArrayRecordWriter(os.path.join(staging, f"{split}.array_record"), "group_size:1")
            count = 0
            for batch, valid in _batches(stage, data, split, None, batch_size):
                grids = np.asarray(jax.device_get(tokenize(stage.params, batch[task.image_key])))
                for row in range(valid):
                    scene = {key: batch[key][row] for key in SCENE_KEYS}
                    writer.write(encode_record(grids[row], batch["caption"][row], scene))
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
    return out_dir
