"""`t2i sample --pipeline parti`: prompts -> token grids -> pixels, with re-ranking.

The model is a training workdir or an export (`--checkpoint`; with none, the
committed Shapes reference `t2i/assets/parti_shapes.npz`). Its image tokenizer is the
one its config names (`model.image_tokenizer`; empty: the committed ViT-VQGAN), or
`--image_tokenizer`. The decode settings are the model's own (`config.sampling`,
saved with it), each overridden by its flag (`--guidance`, `--temperature`, `--top_k`,
`--top_p`).

With `--num_candidates N`, each prompt is sampled N times and a contrastive
image-text model (`--reranker`: a CLIP workdir or export; default the committed
Shapes CLIP) keeps the candidate it scores highest, as Parti re-ranks its samples.
Any object with `score(images, prompts) -> scores` can stand in (`ImageTextScorer`).

Every sample's randomness is its own key, `fold_in(fold_in(seed, prompt index),
candidate)`, so an image depends on its prompt, seed and index, never on the batch it
was drawn in.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from t2i.errors import UsageError
from t2i.parti.sampling import DecodeSettings, sample_tokens

ASSETS = Path(__file__).resolve().parent.parent / "assets"
REFERENCE_PARTI = str(ASSETS / "parti_shapes.npz")
REFERENCE_CLIP = str(ASSETS / "clip_shapes.npz")


def load_image_tokenizer(source: str | None):
    from t2i.vqgan.image_tokens import load_tokenizer

    return load_tokenizer(source or None)


_COMPILED: dict = {}


def sample_grids(task, params, tokens, mask, row_keys, settings: DecodeSettings) -> jax.Array:
    """Token grids [B, g, g] for one batch: one compiled call per (task, settings, shapes)."""
    key = (id(task), settings)
    if key not in _COMPILED:

        def run(params, tokens, mask, row_keys):
            flat = sample_tokens(task.model, params, tokens, mask, row_keys, settings)
            return flat.reshape(flat.shape[0], task.grid, task.grid)

        _COMPILED[key] = (task, jax.jit(run))  # holding task keeps its id unique
    return _COMPILED[key][1](params, tokens, mask, row_keys)


def decode_images(tokenizer, grids: jax.Array) -> jax.Array:
    """Token grids -> uint8 images through a loaded ViT-VQGAN."""
    key = ("decode", id(tokenizer.task))
    if key not in _COMPILED:
        _COMPILED[key] = (tokenizer.task, jax.jit(tokenizer.task.decode))
    return _COMPILED[key][1](tokenizer.params, grids)


def row_keys(seed: int, prompt_indices: np.ndarray, candidates: np.ndarray) -> jax.Array:
    base = jax.random.key(seed)
    per_prompt = jax.vmap(jax.random.fold_in, (None, 0))(base, jnp.asarray(prompt_indices, jnp.uint32))
    return jax.vmap(jax.random.fold_in)(per_prompt, jnp.asarray(candidates, jnp.uint32))


def encode_prompts(config, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Sentencepiece ids and mask; an empty prompt is an error, a long one is cut (said
    on stderr, with how many tokens the model reads)."""
    from t2i.text.tokenizer import config_tokenizer

    for index, prompt in enumerate(prompts):
        if not prompt.strip():
            raise UsageError(f"prompt {index + 1} is empty (parti draws from a caption; give one)")
    return _encode_saying_cuts(config_tokenizer(config), prompts)


def _encode_saying_cuts(tokenizer, prompts):
    """The tokenizer's ids and mask, with one stderr line per truncated prompt instead of
    its summary warning."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ids, mask = tokenizer.encode(list(prompts))
    for index, prompt in enumerate(prompts):
        pieces = len(tokenizer._sp.encode(prompt)) + int(tokenizer.add_eos)
        if pieces > tokenizer.max_length:
            print(
                f"t2i: note: prompt {index + 1} has {pieces} tokens; the model reads the first "
                f"{tokenizer.max_length} (the last one EOS)",
                file=sys.stderr,
            )
    return ids, mask


def decode_settings(task, options: dict) -> DecodeSettings:
    """The model's saved settings, each overridden by its flag when given."""
    from t2i.sampling import parse_option

    settings = task.default_decode_settings()
    overrides = dict(
        guidance_weight=parse_option(options, "guidance", float),
        temperature=parse_option(options, "temperature", float),
        top_k=parse_option(options, "top_k", int),
        top_p=parse_option(options, "top_p", float),
    )
    given = {name: value for name, value in overrides.items() if value is not None}
    return dataclasses.replace(settings, **given).check()


def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    seed: int,
    settings: DecodeSettings,
    *,
    num_candidates: int = 1,
    scorer=None,
    batch_size: int = 16,
) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 images [P, S, S, 3] (the best of `num_candidates` per prompt when a scorer
    is given) and the scores [P, N] (None without a scorer)."""
    if num_candidates < 1:
        raise UsageError(f"--num_candidates must be at least 1, got {num_candidates}")
    if batch_size < 1:
        raise UsageError(f"--batch_size must be at least 1, got {batch_size}")
    ids, mask = encode_prompts(model.config, prompts)
    rows = [(p, c) for p in range(len(prompts)) for c in range(num_candidates)]
    images = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        padded = chunk + [chunk[-1]] * (batch_size - len(chunk))  # one compiled shape
        prompt_index = np.asarray([p for p, _ in padded])
        keys = row_keys(seed, prompt_index, np.asarray([c for _, c in padded]))
        grids = sample_grids(model.task, model.params, ids[prompt_index], mask[prompt_index], keys, settings)
        images.append(np.asarray(jax.device_get(decode_images(tokenizer, grids)))[: len(chunk)])
    images = np.concatenate(images).reshape((len(prompts), num_candidates) + images[0].shape[1:])
    if num_candidates == 1 or scorer is None:
        return images[:, 0], None
    scores = scorer.score(images.reshape((-1,) + images.shape[2:]), [prompts[p] for p, _ in rows])
    scores = np.asarray(scores, np.float64).reshape(len(prompts), num_candidates)
    best = np.argmax(scores, axis=1)
    return images[np.arange(len(prompts)), best], scores


def default_num_candidates(config, options: dict) -> int:
    """`--num_candidates`, else the model's `config.sampling.num_candidates` (re-ranking
    is part of Parti's pipeline, so a trained model may store it), else 1."""
    from t2i.sampling import parse_option

    given = parse_option(options, "num_candidates", int)
    return int(given if given is not None else config.sampling.get("num_candidates", 1))


def load_scorer(source: str | None):
    from t2i.clip.scorer import CLIPScorer

    return CLIPScorer.from_file(source or REFERENCE_CLIP)


def parti_pipeline(prompts: Sequence[str], seed: int, options: dict) -> tuple[np.ndarray, dict]:
    from t2i.model_files import load_model

    checkpoints = options.get("checkpoints") or [REFERENCE_PARTI]
    if len(checkpoints) != 1:
        raise UsageError(f"--pipeline parti takes one --checkpoint, got {len(checkpoints)}")
    model = load_model(checkpoints[0], family="parti")
    settings = decode_settings(model.task, options)
    tokenizer_source = options.get("image_tokenizer") or model.config.model.get("image_tokenizer") or None
    tokenizer = load_image_tokenizer(tokenizer_source)
    model.task.check_token_grids(dict(grid=tokenizer.task.grid, num_codes=int(tokenizer.config.model.num_codes)))
    num_candidates = default_num_candidates(model.config, options)
    scorer = load_scorer(options.get("reranker")) if num_candidates > 1 else None
    images, scores = generate(
        model,
        tokenizer,
        prompts,
        seed,
        settings,
        num_candidates=num_candidates,
        scorer=scorer,
        batch_size=int(options.get("batch_size") or 16),
    )
    described = dict(
        pipeline="parti",
        checkpoint=model.source,
        step=model.step,
        image_tokenizer=tokenizer.source,
        num_candidates=num_candidates,
        reranker=getattr(scorer, "source", None),
        **dataclasses.asdict(settings),
    )
    return images, described
