"""The Imagen cascade at sampling time: text -> base model -> super-resolution stages.

Each stage is loaded from a training workdir (its newest checkpoint's EMA params and
the config stored beside it), so `t2i sample --pipeline imagen --checkpoint
runs/imagen_base --checkpoint runs/imagen_sr` samples exactly what was trained, or from
an exported reference file (`t2i export`: the EMA params in float16 and the config in
one .npz, a fraction of a training checkpoint's size); with no `--checkpoint` the
committed Shapes references in `t2i/assets/` are used. Every
stage has its own sampler, step count, guidance weight, thresholding and (for
super-resolution) noise-conditioning augmentation level. Prompts run in batches, each
stage of a batch one jitted call; the seed makes the whole run reproducible.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from t2i.diffusion import samplers
from t2i.errors import UsageError


@dataclasses.dataclass(frozen=True)
class StageSettings:
    """How one stage samples. A trained stage carries its own in its config's `sampling`
    block (`from_config`): that is the one source of defaults, and the command line
    overrides it field by field (`default_settings`)."""

    sampler: str
    steps: int
    guidance_weight: float
    thresholding: str
    percentile: float
    noise_aug_level: float  # super-resolution stages only
    # Guide only at log-SNR in [lo, hi] (None: unbounded on that side); see samplers.Guidance.
    guidance_interval: tuple[float | None, float | None]

    @classmethod
    def from_config(cls, sampling: ml_collections.ConfigDict) -> "StageSettings":
        return cls(
            sampler=str(sampling.sampler),
            steps=int(sampling.steps),
            guidance_weight=float(sampling.guidance_weight),
            thresholding=str(sampling.thresholding),
            percentile=float(sampling.percentile),
            noise_aug_level=float(sampling.noise_aug_level),
            # .get: configs stored before the interval existed have no such field
            guidance_interval=tuple(sampling.get("guidance_interval") or (None, None)),
        )

    def guidance(self) -> samplers.Guidance:
        return samplers.Guidance(
            self.guidance_weight,
            self.thresholding,
            self.percentile,
            interval=samplers.interval_bounds(self.guidance_interval),
        )


def default_settings(stage, **overrides) -> StageSettings:
    """The settings saved with the stage (its config's `sampling` block), overridden."""
    return dataclasses.replace(StageSettings.from_config(stage.config.sampling), **overrides)


# The committed Shapes cascade (docs/results.md says how it was trained and exported).
REFERENCE_DIR = Path(__file__).resolve().parent.parent / "assets" / "imagen_shapes"
REFERENCE_STAGES = (str(REFERENCE_DIR / "base.npz"), str(REFERENCE_DIR / "sr.npz"))


def load_stage(source: str, step: int | None = None):
    """An Imagen stage (a `t2i.model_files.TrainedModel`) from a workdir or an export."""
    from t2i.model_files import load_model

    return load_model(source, step, family="imagen")


def text_front_end(config: ml_collections.ConfigDict):
    """prompts -> what the stage's text front end reads, for new prompts. Built once per
    encoder and length: the frozen encoder's weights load and compile once, however
    many stages and calls share it."""
    data = config.data
    return _front_end(data.get("text_embeddings") or "", data.get("tokenizer") or "", int(data.max_text_length))


@functools.lru_cache(maxsize=8)
def _front_end(text_embeddings: str, tokenizer_name: str, length: int):
    if text_embeddings:
        from t2i.text.embeddings import make_encoder

        encode = make_encoder(text_embeddings, length)

        def embed(prompts):
            embeddings, mask = encode(list(prompts))
            return {"text_embeddings": jnp.asarray(embeddings, jnp.float32), "text_mask": jnp.asarray(mask)}

        return embed
    if tokenizer_name:
        from t2i.text.tokenizer import tokenizer_for

        tokenizer = tokenizer_for(tokenizer_name, length)

        def tokenize(prompts):
            tokens, mask = tokenizer.encode(list(prompts))
            return {"tokens": jnp.asarray(tokens), "text_mask": jnp.asarray(mask)}

        return tokenize
    raise UsageError("the stage's config names neither data.text_embeddings nor data.tokenizer")


_SAMPLERS: dict = {}


def _compiled_sampler(task, setting: StageSettings):
    """One jitted sampler per (task, settings), kept across calls: a sweep that comes
    back to a stage's settings (the SR stage under every base setting, or a second
    split) does not compile it again."""
    key = (id(task), setting)
    if key not in _SAMPLERS:

        def sample(params, batch, rng):
            return task.sample(
                params,
                batch,
                rng,
                steps=setting.steps,
                sampler=setting.sampler,
                guidance=setting.guidance(),
                aug_level=setting.noise_aug_level,
            )

        _SAMPLERS[key] = (task, jax.jit(sample))  # holding task keeps its id unique
    return _SAMPLERS[key][1]


def run_cascade(
    stages: Sequence, settings: Sequence[StageSettings], prompts: Sequence[str], seed: int, batch_size: int = 16
) -> np.ndarray:
    """uint8 images [N, S, S, 3] at the last stage's resolution."""
    if len(settings) != len(stages):
        raise UsageError(f"{len(stages)} stages but {len(settings)} sets of stage settings")
    for previous, stage in zip(stages, stages[1:]):
        if stage.task.low_resolution != previous.task.resolution:
            raise UsageError(
                f"stage {stage.source} upsamples from {stage.task.low_resolution} px "
                f"but {previous.source} makes {previous.task.resolution} px"
            )
    front_ends = [text_front_end(stage.config) for stage in stages]
    samplers_of_stages = [_compiled_sampler(stage.task, setting) for stage, setting in zip(stages, settings)]
    outputs = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        padded = chunk + [chunk[-1]] * (batch_size - len(chunk))  # one compiled shape per stage
        rng = jax.random.fold_in(jax.random.key(seed), start)
        images = None
        for index, (stage, sample) in enumerate(zip(stages, samplers_of_stages)):
            batch = front_ends[index](padded)
            if images is not None:
                batch[f"image_{stage.task.low_resolution}"] = images
            images = sample(stage.params, batch, jax.random.fold_in(rng, index))
        outputs.append(np.asarray(jax.device_get(images))[: len(chunk)])
    return np.concatenate(outputs)


def imagen_pipeline(prompts: Sequence[str], seed: int, options: dict) -> tuple[np.ndarray, dict]:
    """The Imagen cascade from training workdirs or exported stages (`--checkpoint`,
    base first); without any, the committed Shapes reference cascade."""
    sources = options.get("checkpoints") or list(REFERENCE_STAGES)
    stages = [load_stage(source) for source in sources]
    per_stage = stage_options(options, len(stages))
    settings = [default_settings(stage, **given) for stage, given in zip(stages, per_stage)]
    images = run_cascade(stages, settings, prompts, seed, batch_size=int(options.get("batch_size", 16)))
    described = [
        dict(source=stage.source, step=stage.step, **dataclasses.asdict(setting))
        for stage, setting in zip(stages, settings)
    ]
    return images, {"pipeline": "imagen", "stages": described}


def _interval(text: str) -> tuple[float | None, float | None]:
    from t2i.diffusion.samplers import parse_interval

    return parse_interval(text)


# Per-stage options: the `t2i sample` flag -> (StageSettings field, type). Each flag takes
# comma-separated values, one per stage (base first), or one for every stage.
STAGE_FLAGS = {
    "sampler": ("sampler", str),
    "steps": ("steps", int),
    "guidance": ("guidance_weight", float),
    "thresholding": ("thresholding", str),
    "percentile": ("percentile", float),
    "aug_level": ("noise_aug_level", float),
    "guidance_interval": ("guidance_interval", _interval),  # LO:HI in log-SNR, e.g. "-6:2,:"
}


def stage_options(options: dict, num_stages: int) -> list[dict]:
    """Per-stage settings from comma-separated option strings ("5,3": base 5, SR 3;
    one value serves every stage)."""
    per_stage = [dict() for _ in range(num_stages)]
    for option, (name, kind) in STAGE_FLAGS.items():
        text = options.get(option)
        if text is None:
            continue
        flag = "--" + option
        values = str(text).split(",")
        if len(values) not in (1, num_stages):
            raise UsageError(f"{flag} has {len(values)} values for {num_stages} stages")
        for index in range(num_stages):
            try:
                per_stage[index][name] = kind(values[index if len(values) > 1 else 0])
            except ValueError as error:
                raise UsageError(f"bad value for {flag}: {text!r} ({error})") from None
    return per_stage
