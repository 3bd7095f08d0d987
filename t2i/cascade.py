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
import json
import os
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
    sampler: str = "ddim"
    steps: int = 50
    guidance_weight: float = 3.0
    thresholding: str = "dynamic"
    percentile: float = 0.99
    noise_aug_level: float = 0.1  # super-resolution stages only
    # Guide only at log-SNR in [lo, hi] (None: unbounded on that side); see samplers.Guidance.
    guidance_interval: tuple[float | None, float | None] = (None, None)

    def guidance(self) -> samplers.Guidance:
        return samplers.Guidance(
            self.guidance_weight,
            self.thresholding,
            self.percentile,
            interval=samplers.interval_bounds(self.guidance_interval),
        )


# What a stage samples with when the command line names nothing: the reference Shapes
# cascade's best measured setting (docs/results.md, "The fourth fine-tune": guidance 4,
# 93% / 91% on test / heldout over 200 captions each, against 95% / 87% at 3 and
# 93.5% / 91% at 5 (4 and 5 one caption of 400 apart); chosen on the third fine-tune, where
# it was best on test and above 3 on heldout). The base is guided, but only at
# log-SNR -4..2: unguided at the noisiest steps its counts come out right far more
# often, and unguided at the last ones it loses nothing and saves their unconditional
# pass. A super-resolution stage is not guided (guidance 1 skips the unconditional
# pass and halves its cost) and takes 16 steps, as fewer leave a speckle that the Shapes
# evaluator misreads.
BASE_DEFAULTS = dict(sampler="ddpm", steps=50, guidance_weight=4.0, thresholding="none", guidance_interval=(-4.0, 2.0))
SR_DEFAULTS = dict(sampler="ddim", steps=16, guidance_weight=1.0, thresholding="none", noise_aug_level=0.1)


def default_settings(stage: Stage, **overrides) -> StageSettings:
    """The stage's default settings (by its role: base or super-resolution), overridden."""
    defaults = SR_DEFAULTS if stage.task.super_resolution else BASE_DEFAULTS
    return StageSettings(**{**defaults, **overrides})


@dataclasses.dataclass
class Stage:
    task: object
    params: object
    config: ml_collections.ConfigDict
    source: str  # the training workdir or the exported file it was loaded from
    step: int


# The committed Shapes cascade (docs/results.md says how it was trained and exported).
REFERENCE_DIR = Path(__file__).parent / "assets" / "imagen_shapes"
REFERENCE_STAGES = (str(REFERENCE_DIR / "base.npz"), str(REFERENCE_DIR / "sr.npz"))
_CONFIG_KEY = "__config__"
_STEP_KEY = "__step__"


def _restore_workdir(workdir: str, step: int | None):
    """(EMA params, config dict, step) of a checkpoint in a training workdir."""
    from t2i.parallel.mesh import create_mesh
    from t2i.tasks import get_task
    from t2i.train.checkpoint import Checkpointer, abstract_like
    from t2i.train.optim import make_optimizer
    from t2i.train.trainer import abstract_train_state

    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        raise UsageError(f"no checkpoints in {workdir}")
    checkpointer = Checkpointer(directory, async_save=False)
    try:
        steps = checkpointer.all_steps()
        if not steps:
            raise UsageError(f"no checkpoints in {workdir}")
        step = max(steps) if step is None else int(step)
        if step not in steps:
            raise UsageError(f"{workdir} has no checkpoint at step {step} (it has {', '.join(map(str, steps))})")
        config_dict = checkpointer.restore_config(step)
        config = ml_collections.ConfigDict(config_dict)
        task = get_task(config)
        tx, _ = make_optimizer(config.optimizer, config.train.num_steps)
        mesh = create_mesh({"data": 1}, jax.devices()[:1])
        abstract, shardings = abstract_train_state(task, tx, mesh, jax.random.key(0))
        state = checkpointer.restore(step, abstract_like(abstract, shardings))
    finally:
        checkpointer.close()
    return state.ema_params, config_dict, step


def export_stage(workdir: str, out_path: str, step: int | None = None) -> str:
    """Writes a checkpoint's EMA params (float16) and config into one .npz file.

    float16 rather than bfloat16: numpy stores it natively and its 10-bit mantissa keeps
    the weights to about 5e-4 relative error, while every weight of a U-Net trained in
    f32 lies far inside its range."""
    if not out_path.endswith(".npz"):
        raise UsageError(f"the export file must end in .npz, got {out_path}")
    from t2i.tasks import get_task

    params, config_dict, step = _restore_workdir(workdir, step)
    task = get_task(ml_collections.ConfigDict(config_dict))
    return write_export(task.inference_params(params), config_dict, step, out_path)


def write_export(params, config_dict: dict, step: int, out_path: str) -> str:
    """Writes (unboxed) params as float16 with their config and step: a file that
    `load_stage` reads. Atomic: a failure leaves no half-written file."""
    from flax import traverse_util

    flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
    arrays = {key: np.asarray(value, np.float16) for key, value in flat.items()}
    for key, value in arrays.items():
        if not np.all(np.isfinite(value)):
            raise UsageError(f"{key} overflows float16; keep this checkpoint in its workdir")
    arrays[_CONFIG_KEY] = np.asarray(json.dumps(config_dict, sort_keys=True))
    arrays[_STEP_KEY] = np.asarray(step, np.int64)
    directory = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(directory, exist_ok=True)
    tmp = out_path[: -len(".npz")] + ".tmp.npz"  # np.savez appends .npz to other names
    np.savez(tmp, **arrays)
    os.replace(tmp, out_path)  # never a half-written reference
    return out_path


def _load_export(path: str) -> Stage:
    from flax import traverse_util

    from t2i.parallel.partitioning import strip_boxes
    from t2i.tasks import get_task

    with np.load(path) as data:
        if _CONFIG_KEY not in data.files:
            raise UsageError(f"{path} is not a t2i stage export (no config inside)")
        config = ml_collections.ConfigDict(json.loads(str(data[_CONFIG_KEY])))
        step = int(data[_STEP_KEY])
        flat = {key: data[key] for key in data.files if key not in (_CONFIG_KEY, _STEP_KEY)}
    task = get_task(config)
    abstract = task.inference_params(strip_boxes(jax.eval_shape(task.init, jax.random.key(0))))
    expected = traverse_util.flatten_dict(abstract, sep="/")
    if set(expected) != set(flat):
        missing = sorted(set(expected) - set(flat))[:3]
        raise UsageError(f"{path} does not match its config's model (missing e.g. {missing})")
    params = {}
    for key, spec in expected.items():
        if flat[key].shape != spec.shape:
            raise UsageError(f"{path}: {key} has shape {flat[key].shape}, the model wants {spec.shape}")
        params[key] = jnp.asarray(flat[key], spec.dtype)
    return Stage(task=task, params=traverse_util.unflatten_dict(params, sep="/"), config=config, source=path, step=step)


def load_stage(source: str, step: int | None = None) -> Stage:
    """A stage from a training workdir (EMA params of the newest checkpoint, or of
    `step`) or from an exported .npz file."""
    from t2i.tasks import get_task

    if source.endswith(".npz"):
        if not os.path.isfile(source):
            raise UsageError(f"stage file not found: {source}")
        return _load_export(source)
    params, config_dict, step = _restore_workdir(source, step)
    config = ml_collections.ConfigDict(config_dict)
    return Stage(task=get_task(config), params=params, config=config, source=source, step=step)


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
        from t2i.text.tokenizer import Tokenizer, default_shapes_tokenizer

        tokenizer = (
            default_shapes_tokenizer(length) if tokenizer_name == "shapes" else Tokenizer(tokenizer_name, length)
        )

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
    stages: Sequence[Stage], settings: Sequence[StageSettings], prompts: Sequence[str], seed: int, batch_size: int = 16
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
