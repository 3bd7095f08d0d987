"""Optimizers from config: AdamW or Adafactor, warmup + cosine, global-norm clipping.

`optimizer.groups` (optional) gives parts of the params their own optimizer: each
entry names a top-level key of the task's params and overrides any of the optimizer's
fields for it (a GAN's discriminator with its own learning rate and betas). The parts
share one optimizer state (`optax.multi_transform`) and each clips its own gradient
norm; params in no group use the top-level settings.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from t2i.errors import UsageError


def learning_rate_schedule(opt: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `learning_rate`, then cosine down to `end_lr_fraction` of it."""
    decay_steps = max(int(total_steps), int(opt.warmup_steps) + 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=opt.learning_rate,
        warmup_steps=int(opt.warmup_steps),
        decay_steps=decay_steps,
        end_value=opt.learning_rate * opt.end_lr_fraction,
    )


def _decoupled_weight_decay(schedule: optax.Schedule, rate: float) -> optax.GradientTransformation:
    """Adds -lr(t) * rate * param to the update (AdamW's decay, for any optimizer)."""

    def init(params):
        del params
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params):
        lr = schedule(state.count)
        updates = jax.tree.map(lambda u, p: u - lr * rate * p, updates, params)
        return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init, update)


def make_optimizer(
    opt: ml_collections.ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Returns `(tx, schedule)` (the schedule of the params in no group)."""
    groups = dict(opt.get("groups") or {})
    tx, schedule = _one_optimizer(opt, total_steps)
    if not groups:
        return tx, schedule
    transforms = {DEFAULT_GROUP: tx}
    for name, overrides in groups.items():
        group_opt = ml_collections.ConfigDict({k: v for k, v in opt.items() if k != "groups"})
        for key, value in dict(overrides).items():
            if key not in group_opt:
                raise UsageError(f"optimizer.groups.{name}.{key} is not an optimizer setting")
            group_opt[key] = value
        transforms[name] = _one_optimizer(group_opt, total_steps)[0]

    def labels(params):
        if not isinstance(params, dict) or not set(groups) <= set(params):
            present = sorted(params) if isinstance(params, dict) else type(params).__name__
            raise UsageError(f"optimizer.groups {sorted(groups)} must be top-level parts of the params {present}")
        return {
            key: jax.tree.map(lambda _: key if key in groups else DEFAULT_GROUP, value) for key, value in params.items()
        }

    return optax.multi_transform(transforms, labels), schedule


DEFAULT_GROUP = "default"


def _one_optimizer(
    opt: ml_collections.ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Clipping comes first so the update sees clipped grads."""
    schedule = learning_rate_schedule(opt, total_steps)
    if opt.name == "adamw":
        core = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay)
    elif opt.name == "adafactor":
        # Factored second moments: the optimizer Parti used at scale (memory ~ rows + cols).
        # optax's own `weight_decay_rate` is not scaled by the learning rate (it decays
        # even at lr 0, during warmup); decay here is decoupled and lr-scaled as in AdamW.
        core = optax.adafactor(schedule)
        if opt.weight_decay:
            core = optax.chain(core, _decoupled_weight_decay(schedule, opt.weight_decay))
    else:
        raise UsageError(f"unknown optimizer '{opt.name}' (choose adamw or adafactor)")
    parts = []
    if opt.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(opt.clip_norm))
    parts.append(core)
    return optax.chain(*parts), schedule


def default_optimizer_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            name="adamw",
            learning_rate=1e-3,
            warmup_steps=100,
            end_lr_fraction=0.0,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            weight_decay=1e-4,
            clip_norm=1.0,
        )
    )
