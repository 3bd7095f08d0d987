"""The `train` config block, apart from the trainer so that configs load without the
input pipeline's dependencies (grain, TFDS): a config can then be read where only the
model and its step run (the accelerator ablation script, export)."""

from __future__ import annotations

import ml_collections


def default_train_config() -> ml_collections.ConfigDict:
    """The `train` block every experiment config starts from."""
    return ml_collections.ConfigDict(
        dict(
            num_steps=1000,
            log_every=50,
            checkpoint_every=500,
            keep_checkpoints=3,
            async_checkpoints=True,
            eval_every=0,
            eval_split="validation",
            eval_examples=0,  # 0: the whole split
            eval_ema=True,
            ema_decay=0.999,
            max_nonfinite_in_a_row=20,
            # A fresh run (no checkpoint in its workdir yet) may start from another
            # run's EMA params: a workdir (its newest checkpoint, or init_from_step) or
            # an exported .npz. See `warm_start`.
            init_from="",
            init_from_step=0,
            sample_every=0,
            num_samples=16,
            sample_scale=4,
        )
    )


def default_data_config(batch_size: int, **fields) -> ml_collections.ConfigDict:
    """The `data` block of a Shapes experiment: the small build in data/tfds, read by two
    threads, no text tokenizer or embeddings unless `fields` names them. `fields`
    overrides or adds keys (a family's own, e.g. `image_tokens` or `recolor_prob`)."""
    block = dict(
        builder_config="small",
        data_dir="data/tfds",
        split="train",
        batch_size=batch_size,
        seed=0,
        num_threads=2,
        prefetch=4,
        tokenizer="",  # "shapes" (the bundled sentencepiece model), a path, or ""
        text_embeddings="",  # precomputed frozen-encoder outputs, e.g. "minilm"
        max_text_length=24,
    )
    block.update(fields)
    return ml_collections.ConfigDict(block)
