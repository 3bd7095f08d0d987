"""The Imagen cascade at sampling time: text -> base model -> super-resolution stages.

Each stage is loaded from a training workdir (its newest checkpoint's EMA params and
the config stored beside it), so `t2i sample --pipeline imagen --checkpoint
runs/imagen_base --checkpoint runs/imagen_sr` samples exactly what was trained. Every
stage has its own sampler, step count, guidance weight, thresholding and (for
super-resolution) noise-conditioning augmentation level. Prompts run in batches, each
stage of a batch one jitted call; the seed makes the whole run reproducible.
"""

from __future__ import annotations

import dataclasses
import os
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

    def guidance(self) -> samplers.Guidance:
        return samplers.Guidance(self.guidance_weight, self.thresholding, self.percentile)


@dataclasses.dataclass
class Stage:
    task: object
    params: object
    config: ml_collections.ConfigDict
    workdir: str
    step: int


def load_stage(workdir: str) -> Stage:
    """The EMA params and task of the newest checkpoint in `workdir`."""
    from t2i.parallel.mesh import create_mesh
    from t2i.tasks import get_task
    from t2i.train.checkpoint import Checkpointer, abstract_like
    from t2i.train.optim import make_optimizer
    from t2i.train.trainer import abstract_train_state

    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        raise UsageError(f"no checkpoints in {workdir}")
    checkpointer = Checkpointer(directory, async_save=False)
    step = checkpointer.latest_step()
    if step is None:
        raise UsageError(f"no checkpoints in {workdir}")
    config = ml_collections.ConfigDict(checkpointer.restore_config(step))
    task = get_task(config)
    tx, _ = make_optimizer(config.optimizer, config.train.num_steps)
    mesh = create_mesh({"data": 1}, jax.devices()[:1])
    abstract, shardings = abstract_train_state(task, tx, mesh, jax.random.key(0))
    state = checkpointer.restore(step, abstract_like(abstract, shardings))
    checkpointer.close()
    return Stage(task=task, params=state.ema_params, config=config, workdir=workdir, step=step)


def text_front_end(config: ml_collections.ConfigDict):
    """prompts -> what the stage's text front end reads, for new prompts. Built once per
    stage: the frozen encoder's weights load and compile once."""
    data = config.data
    length = int(data.max_text_length)
    if data.get("text_embeddings"):
        from t2i.text.embeddings import make_encoder

        encode = make_encoder(data.text_embeddings, length)

        def embed(prompts):
            embeddings, mask = encode(list(prompts))
            return {"text_embeddings": jnp.asarray(embeddings, jnp.float32), "text_mask": jnp.asarray(mask)}

        return embed
    if data.get("tokenizer"):
        from t2i.text.tokenizer import Tokenizer, default_shapes_tokenizer

        tokenizer = (
            default_shapes_tokenizer(length) if data.tokenizer == "shapes" else Tokenizer(data.tokenizer, length)
        )

        def tokenize(prompts):
            tokens, mask = tokenizer.encode(list(prompts))
            return {"tokens": jnp.asarray(tokens), "text_mask": jnp.asarray(mask)}

        return tokenize
    raise UsageError("the stage's config names neither data.text_embeddings nor data.tokenizer")


def run_cascade(
    stages: Sequence[Stage], settings: Sequence[StageSettings], prompts: Sequence[str], seed: int, batch_size: int = 16
) -> np.ndarray:
    """uint8 images [N, S, S, 3] at the last stage's resolution."""
    if len(settings) != len(stages):
        raise UsageError(f"{len(stages)} stages but {len(settings)} sets of stage settings")
    for previous, stage in zip(stages, stages[1:]):
        if stage.task.low_resolution != previous.task.resolution:
            raise UsageError(
                f"stage {stage.workdir} upsamples from {stage.task.low_resolution} px "
                f"but {previous.workdir} makes {previous.task.resolution} px"
            )
    front_ends = [text_front_end(stage.config) for stage in stages]
    samplers_of_stages = []
    for stage, setting in zip(stages, settings):
        task = stage.task

        def sample(params, batch, rng, task=task, setting=setting):
            return task.sample(
                params,
                batch,
                rng,
                steps=setting.steps,
                sampler=setting.sampler,
                guidance=setting.guidance(),
                aug_level=setting.noise_aug_level,
            )

        samplers_of_stages.append(jax.jit(sample))
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
