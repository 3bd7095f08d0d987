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
    `model_state` holds what a model carries between steps outside the optimizer (a
    VQ codebook's usage window and EMA statistics); `{}` for most tasks.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any
    nonfinite_in_a_row: jax.Array
    nonfinite_total: jax.Array
    model_state: Any = struct.field(default_factory=dict)


def create_state(params: Any, tx: optax.GradientTransformation, model_state: Any = None) -> TrainState:
    """Works on boxed (logically partitioned) params: the boxes carry into opt_state."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        ema_params=jax.tree.map(jnp.copy, params),
        nonfinite_in_a_row=jnp.zeros((), jnp.int32),
        nonfinite_total=jnp.zeros((), jnp.int32),
        model_state={} if model_state is None else model_state,
    )


def state_to_tree(state: TrainState) -> dict:
    """The checkpointed form: a dict of the fields, without `model_state` when it is
    empty, so checkpoints of tasks without one keep the layout they had before the
    field existed (and older checkpoints still restore)."""
    tree = {name: getattr(state, name) for name in state.__dataclass_fields__}
    if not jax.tree.leaves(tree["model_state"]):
        del tree["model_state"]
    return tree


def tree_to_state(tree: dict) -> TrainState:
    return TrainState(**{"model_state": {}, **tree})


def ema_decay_at(step: jax.Array, max_decay: float) -> jax.Array:
    """Warms the EMA up: (1 + step) / (10 + step), capped at `max_decay`."""
    step = step.astype(jnp.float32)
    return jnp.minimum(max_decay, (1.0 + step) / (10.0 + step))


LossFn = Callable[[Any, dict, jax.Array, jax.Array], tuple[jax.Array, dict]]
# (params, model_state, inputs, rng, step) -> (params, model_state, metrics)
ModelStateFn = Callable[[Any, Any, Any, jax.Array, jax.Array], tuple[Any, Any, dict]]

# The key of a loss's aux dict whose value goes to `update_model_state`, not to metrics.
STATE_INPUTS = "state_inputs"


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    schedule,
    ema_decay: float,
    update_model_state: ModelStateFn | None = None,
):
    """Builds `(state, batch, rng) -> (state, metrics)`; pure, to be jitted and donated.

    `loss_fn(params, batch, rng, step)` returns `(loss, aux)`; aux's scalars are
    metrics, except `aux[STATE_INPUTS]`, which is handed with the updated params to
    `update_model_state` (if given): the place for updates that are not gradient steps
    (an EMA codebook, dead-code restarts). The EMA params follow the params it returns.

    A step whose loss or gradient norm is not finite leaves params, optimizer state,
    model state and EMA untouched (the step counter still moves on, so the data and the
    rng do too) and is counted; the host decides when too many in a row end the run.
    """

    def train_step(state: TrainState, batch: dict, rng: jax.Array):
        step_rng = jax.random.fold_in(rng, state.step)
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, step_rng, state.step)
        aux = dict(aux)
        state_inputs = aux.pop(STATE_INPUTS, None)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        model_state = state.model_state
        if update_model_state is not None:
            params, model_state, state_metrics = update_model_state(
                params, model_state, state_inputs, jax.random.fold_in(step_rng, 1), state.step
            )
            aux.update(state_metrics)
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
            model_state=keep_if_finite(model_state, state.model_state),
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
