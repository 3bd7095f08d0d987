"""What a model family hands the generic trainer."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np


def ratio(correct: jax.Array, weight: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum of correct * weight, sum of weight): the pair an `eval_step` returns per
    metric, so the trainer can average over a whole split, padded batches included."""
    weight = weight.astype(jnp.float32)
    return jnp.sum(correct.astype(jnp.float32) * weight), jnp.sum(weight)


class Task:
    """A family's contract with `t2i.train.trainer.train`.

    Required: `init(rng) -> params` (logically partitioned boxes, as `Module.init`
    returns them) and `loss(params, batch, rng, step) -> (loss, metrics)`, both pure
    and traced under jit (`step`, the state's step counter, is for schedules inside
    the loss such as a learning-rate-like weight). Optional: `phase(step)`, static
    variants of the loss (a discriminator switched on after a warm-up), `init_model_state(params)`
    and `update_model_state(params, model_state, inputs, rng, step) -> (params,
    model_state, metrics)`, state carried between steps outside the optimizer (see
    `t2i.train.state.make_train_step`); `eval_step(params, batch) -> {name: (num, den)}` summed
    over a split; `visualize(params, batch, rng, host_batch) -> (uint8 images, texts)`
    drawn as a grid during training; `transform(example) -> example`, a host-side
    per-example map in the input pipeline (tokenisation, say), and
    `random_transform(example, np_rng) -> example`, a seeded augmentation applied to
    training examples only.
    """

    transform: Callable[[dict], dict] | None = None
    random_transform: Callable[[dict, np.random.Generator], dict] | None = None

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config

    def init(self, rng: jax.Array) -> Any:
        raise NotImplementedError

    def loss(self, params: Any, batch: dict, rng: jax.Array, step: jax.Array | None = None) -> tuple[jax.Array, dict]:
        raise NotImplementedError

    def init_model_state(self, params: Any) -> Any:
        return {}

    def inference_params(self, params: Any) -> Any:
        """The part of the params that sampling needs and `t2i export` keeps (a GAN
        drops its discriminator); all of them by default."""
        return params

    def phase(self, step: int) -> Any:
        """A hashable that picks the graph of step `step` (host int), handed to `loss` as
        `phase=`; the trainer compiles one step per distinct phase. None (the default):
        one graph, and `loss` gets no `phase` argument."""
        return None

    update_model_state: Callable | None = None

    @property
    def has_eval(self) -> bool:
        return type(self).eval_step is not Task.eval_step

    @property
    def has_visualize(self) -> bool:
        return type(self).visualize is not Task.visualize

    def eval_step(self, params: Any, batch: dict) -> dict:
        raise NotImplementedError

    def visualize(self, params: Any, batch: dict, rng: jax.Array, host_batch: dict):
        raise NotImplementedError
