"""The train state shared by every family, and the one pure train step."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct


@struct.dataclass
class TrainState:
    """Everything a resumed run needs besides the data iterator.

    `ema_params` is sharded like `params`. `nonfinite_in_a_row` counts consecutive
    skipped updates (a non-finite loss or gradient); `nonfinite_total` counts all.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any
    nonfinite_in_a_row: jax.Array
    nonfinite_total: jax.Array


def create_state(params: Any, tx: optax.GradientTransformation) -> TrainState:
    """Works on boxed (logically partitioned) params: the boxes carry into opt_state."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        ema_params=jax.tree.map(jnp.copy, params),
        nonfinite_in_a_row=jnp.zeros((), jnp.int32),
        nonfinite_total=jnp.zeros((), jnp.int32),
    )


def ema_decay_at(step: jax.Array, max_decay: float) -> jax.Array:
    """Warms the EMA up: (1 + step) / (10 + step), capped at `max_decay`."""
    step = step.astype(jnp.float32)
    return jnp.minimum(max_decay, (1.0 + step) / (10.0 + step))


LossFn = Callable[[Any, dict, jax.Array], tuple[jax.Array, dict]]


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, schedule, ema_decay: float):
    """Builds `(state, batch, rng) -> (state, metrics)`; pure, to be jitted and donated.

    A step whose loss or gradient norm is not finite leaves params, optimizer state
    and EMA untouched (the step counter still moves on, so the data and the rng do
    too) and is counted; the host decides when too many in a row end the run.
    """

    def train_step(state: TrainState, batch: dict, rng: jax.Array):
        step_rng = jax.random.fold_in(rng, state.step)
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, step_rng)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        decay = ema_decay_at(state.step, ema_decay)
        ema_params = jax.tree.map(lambda e, p: e + (1.0 - decay) * (p - e), state.ema_params, params)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def keep_if_finite(new, old):
            return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

        new_state = state.replace(
            step=state.step + 1,
            params=keep_if_finite(params, state.params),
            opt_state=keep_if_finite(opt_state, state.opt_state),
            ema_params=keep_if_finite(ema_params, state.ema_params),
            nonfinite_in_a_row=jnp.where(finite, 0, state.nonfinite_in_a_row + 1),
            nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32),
        )
        metrics = dict(aux)
        metrics.update(
            loss=loss,
            grad_norm=grad_norm,
            param_norm=optax.tree.norm(state.params),
            update_norm=optax.tree.norm(updates),
            learning_rate=schedule(state.step),
            skipped=(~finite).astype(jnp.int32),
        )
        return new_state, metrics

    return train_step
