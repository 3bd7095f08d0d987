"""The generic trainer that every model family goes through.

A family supplies a `Task` (see `t2i/train/task.py`): how to initialise its params,
its loss, and optionally eval metrics and a picture of what it does. The trainer owns
everything else: mesh, sharded state, the jitted and donated step, the data iterator,
checkpoints, logs, signals and non-finite steps.

Run layout under `workdir`:
  checkpoints/<step>/{state,data,config}   orbax, keep-N, async
  tensorboard/                            event files (`tensorboard --logdir workdir`)
  samples/step_<step>.png                 grids with their prompts
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import signal
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

from t2i import config as config_lib
from t2i.data import pipeline
from t2i.errors import UsageError
from t2i.parallel.mesh import LOGICAL_AXIS_RULES, create_mesh
from t2i.parallel.partitioning import batch_sharding, global_batch, strip_boxes, tree_shardings
from t2i.train import logging as train_logging
from t2i.train.checkpoint import Checkpointer, abstract_like
from t2i.train.defaults import default_train_config  # noqa: F401 (re-exported)
from t2i.train.optim import make_optimizer
from t2i.train.state import TrainState, create_state, make_train_step

log = logging.getLogger("t2i.train")


class TrainingDiverged(RuntimeError):
    """Too many non-finite losses or gradients in a row."""


@dataclasses.dataclass
class TrainResult:
    state: TrainState
    history: list[dict]  # one row per log interval: step and mean metrics
    eval_metrics: dict  # the last evaluation
    stopped_by: str | None  # "SIGTERM" / "SIGINT" when interrupted, else None


class _StopFlag:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint at the next step boundary."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handlers, nothing to restore
                pass
        return self

    def _handle(self, signum, frame):
        del frame
        if self.signal_name is not None:  # a second signal: stop now, the hard way
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def describe_compiled(compiled) -> str:
    """FLOPs and memory of a compiled step, from XLA's own analyses."""
    parts = []
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        if cost and "flops" in cost:
            parts.append(f"{cost['flops'] / 1e9:.2f} GFLOP/step")
    except Exception:  # noqa: BLE001 - not every backend reports costs
        pass
    try:
        memory = compiled.memory_analysis()
        if memory is not None:
            mib = 1 << 20
            parts.append(
                f"args {memory.argument_size_in_bytes / mib:.1f} MiB, "
                f"temp {memory.temp_size_in_bytes / mib:.1f} MiB, "
                f"out {memory.output_size_in_bytes / mib:.1f} MiB per device"
            )
    except Exception:  # noqa: BLE001
        pass
    return "; ".join(parts) or "no cost analysis available"


def _mean_rows(rows: list[dict]) -> dict:
    host = jax.device_get(rows)
    return {key: float(np.mean([row[key] for row in host])) for key in host[0]}


def evaluate(task, params, config: ml_collections.ConfigDict, mesh, eval_fn=None) -> dict:
    """Runs the task's eval metrics over `config.train.eval_split` (numerator/denominator sums)."""
    eval_fn = eval_fn or jax.jit(task.eval_step)
    totals: dict[str, list[float]] = {}
    for host_batch in pipeline.eval_batches(
        config.data,
        config.train.eval_split,
        config.data.batch_size,
        task.transform,
        limit=config.train.eval_examples or None,
    ):
        sums = jax.device_get(eval_fn(params, global_batch(host_batch, mesh)))
        for name, (num, den) in sums.items():
            acc = totals.setdefault(name, [0.0, 0.0])
            acc[0] += float(num)
            acc[1] += float(den)
    return {name: num / max(den, 1.0) for name, (num, den) in totals.items()}


def _create_state(task, tx, rng) -> TrainState:
    params = task.init(rng)
    return create_state(params, tx, task.init_model_state(params))


def abstract_train_state(task, tx, mesh, rng):
    """(abstract state, shardings) without allocating anything (CONVENTIONS 7)."""
    abstract_boxed = jax.eval_shape(lambda key: _create_state(task, tx, key), rng)
    return strip_boxes(abstract_boxed), tree_shardings(abstract_boxed, mesh)


def init_train_state(task, tx, shardings, rng) -> TrainState:
    """Initialises the state directly into its shards: no unsharded copy ever exists."""
    return jax.jit(lambda key: strip_boxes(_create_state(task, tx, key)), out_shardings=shardings)(rng)


def warm_start(state: TrainState, source: str, step: int | None = None) -> TrainState:
    """Starts `params` and `ema_params` from another run's EMA params (a training workdir,
    its newest checkpoint or `step`, or an exported .npz), for a fresh run that builds on
    a trained model. Params the source lacks (a branch added since, zero-initialised so
    the model's output is unchanged at the first step) keep their initialisation; a
    source param of another shape, or with no place in the model, is an error. The
    optimizer state and the step start afresh."""
    from flax import traverse_util

    from t2i.model_files import load_model  # reads workdirs and exports alike

    source_params = traverse_util.flatten_dict(load_model(source, step, inference_only=False).params, sep="/")
    target = traverse_util.flatten_dict(state.params, sep="/")
    unplaced = sorted(set(source_params) - set(target))
    if unplaced:
        raise UsageError(
            f"train.init_from={source}: {len(unplaced)} of its params have no place in this model, e.g. {unplaced[0]}"
        )
    for key, value in source_params.items():
        if value.shape != target[key].shape:
            raise UsageError(
                f"train.init_from={source}: {key} has shape {tuple(value.shape)} there, "
                f"{tuple(target[key].shape)} in this model"
            )
    fresh = sorted(set(target) - set(source_params))
    log.info(
        "warm start from %s: %d params loaded, %d initialised afresh %s", source, len(source_params), len(fresh), fresh
    )

    def merged():  # called twice: params and EMA must not share (donated) buffers
        return traverse_util.unflatten_dict(
            {
                key: jax.device_put(np.asarray(source_params[key], leaf.dtype), leaf.sharding)
                if key in source_params
                else jnp.copy(leaf)
                for key, leaf in target.items()
            },
            sep="/",
        )

    return state.replace(params=merged(), ema_params=merged())


def compile_train_step(step_fn, shardings, mesh, state, batch, rng):
    """Jits the step with explicit shardings and donation, compiled ahead of time."""
    batch_shardings = {k: batch_sharding(mesh, v.ndim) for k, v in batch.items()}
    replicated = NamedSharding(mesh, PartitionSpec())
    jitted = jax.jit(
        step_fn,
        in_shardings=(shardings, batch_shardings, replicated),
        out_shardings=(shardings, replicated),
        donate_argnums=(0,),
    )
    return jitted.lower(state, batch, rng).compile()


def train(
    config: ml_collections.ConfigDict, workdir: str, *, interrupt_at_step: int | None = None, progress: bool = True
) -> TrainResult:
    """Trains `config.task` until `config.train.num_steps`, resuming from `workdir`.

    `interrupt_at_step` behaves exactly like a SIGTERM arriving during that step
    (tests use it to prove that a resumed run reproduces an uninterrupted one).
    """
    from t2i.families import get_task  # the registry imports every family

    task = get_task(config)
    train_cfg = config.train
    total_steps = int(train_cfg.num_steps)
    tx, schedule = make_optimizer(config.optimizer, total_steps)
    mesh = create_mesh(dict(config.mesh))
    os.makedirs(workdir, exist_ok=True)
    writer = train_logging.MetricWriter(workdir, enabled=jax.process_index() == 0)
    checkpointer = Checkpointer(
        os.path.join(workdir, "checkpoints"), keep=train_cfg.keep_checkpoints, async_save=train_cfg.async_checkpoints
    )
    config_json = config_lib.to_json(config)
    history: list[dict] = []
    eval_metrics: dict = {}

    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES), _StopFlag() as stop:
        rng = jax.random.key(config.seed)
        init_rng, train_rng = jax.random.split(rng)

        abstract_state, shardings = abstract_train_state(task, tx, mesh, init_rng)
        iterator = pipeline.train_iterator(
            config.data, config.data.batch_size, config.data.seed, task.transform, task.random_transform
        )

        start_step = checkpointer.latest_step()
        if start_step is not None:
            state = checkpointer.restore(start_step, abstract_like(abstract_state, shardings), iterator)
            log.info("resumed from %s at step %d", checkpointer.directory, start_step)
        else:
            state = init_train_state(task, tx, shardings, init_rng)
            if train_cfg.get("init_from"):
                state = warm_start(state, train_cfg.init_from, train_cfg.get("init_from_step") or None)
            start_step = 0
        num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_state.params))
        log.info("%s: %.2fM parameters on mesh %s", config.task, num_params / 1e6, dict(mesh.shape))

        # One compiled step per phase of the task (`Task.phase`): a GAN's warm-up without
        # its discriminator, its lazy-R1 steps. Static phases rather than `lax.cond`,
        # whose branches XLA's CPU backend runs an order of magnitude slower.
        compiled_steps: dict = {}

        def step_for(step: int):
            phase = task.phase(step)
            if phase not in compiled_steps:
                loss_fn = task.loss if phase is None else functools.partial(task.loss, phase=phase)
                step_fn = make_train_step(loss_fn, tx, schedule, train_cfg.ema_decay, task.update_model_state)
                compiled_steps[phase] = compile_train_step(step_fn, shardings, mesh, state, batch, train_rng)
                label = "" if phase is None else f" (phase {phase})"
                tqdm.write(f"compiled train step{label}: {describe_compiled(compiled_steps[phase])}")
            return compiled_steps[phase]

        eval_fn = jax.jit(task.eval_step) if task.has_eval else None
        params_for_eval = (lambda s: s.ema_params) if train_cfg.eval_ema else (lambda s: s.params)

        def run_eval(step: int):
            nonlocal eval_metrics
            if eval_fn is None:
                return
            eval_metrics = evaluate(task, params_for_eval(state), config, mesh, eval_fn)
            writer.scalars(step, eval_metrics, prefix=f"eval_{train_cfg.eval_split}")
            tqdm.write(
                f"step {step}: eval on {train_cfg.eval_split}: "
                + ", ".join(f"{k}={v:.4f}" for k, v in sorted(eval_metrics.items()))
            )

        def save(step: int, force: bool = False):
            checkpointer.save(step, state, iterator, config_json, force=force)

        bar = tqdm(
            total=total_steps,
            initial=start_step,
            disable=not progress or jax.process_index() != 0,
            unit="step",
            dynamic_ncols=True,
        )
        pending: list[dict] = []
        step = start_step
        last_log_time, last_log_step = time.time(), step
        try:
            while step < total_steps:
                batch = global_batch(next(iterator), mesh)
                state, metrics = step_for(step)(state, batch, train_rng)
                step += 1
                pending.append(metrics)
                if interrupt_at_step is not None and step >= interrupt_at_step and stop.signal_name is None:
                    stop.signal_name = "SIGTERM"
                bar.update(1)

                if step % train_cfg.log_every == 0 or step == total_steps or stop.signal_name:
                    means = _mean_rows(pending)
                    pending = []
                    now = time.time()
                    means["steps_per_second"] = (step - last_log_step) / max(now - last_log_time, 1e-9)
                    last_log_time, last_log_step = now, step
                    writer.scalars(step, means)
                    history.append({"step": step, **means})
                    bar.set_postfix(loss=f"{means['loss']:.4f}", refresh=False)
                    if not progress and jax.process_index() == 0:
                        print(
                            f"step {step}: loss {means['loss']:.4f}, {means['steps_per_second']:.2f} steps/s",
                            flush=True,
                        )
                    in_a_row = int(jax.device_get(state.nonfinite_in_a_row))
                    if in_a_row >= train_cfg.max_nonfinite_in_a_row:
                        raise TrainingDiverged(
                            f"stopping at step {step}: {in_a_row} non-finite losses or gradients in a row "
                            f"(limit train.max_nonfinite_in_a_row={train_cfg.max_nonfinite_in_a_row}); "
                            f"last checkpoint: step {checkpointer.latest_step()}"
                        )
                if stop.signal_name:
                    save(step, force=True)
                    checkpointer.wait()
                    tqdm.write(
                        f"{stop.signal_name} at step {step}: checkpoint saved; run the same command again to resume"
                    )
                    break
                if step % train_cfg.checkpoint_every == 0:
                    save(step)
                if train_cfg.eval_every and step % train_cfg.eval_every == 0 and step < total_steps:
                    run_eval(step)
                if task.has_visualize and train_cfg.sample_every and step % train_cfg.sample_every == 0:
                    _write_samples(task, state, config, mesh, workdir, writer, step, train_rng)
            else:
                if checkpointer.latest_step() != step:
                    save(step, force=True)
                run_eval(step)
                if task.has_visualize and train_cfg.sample_every and step % train_cfg.sample_every:
                    _write_samples(task, state, config, mesh, workdir, writer, step, train_rng)
        finally:
            bar.close()
            checkpointer.close()
            writer.close()
    return TrainResult(state=state, history=history, eval_metrics=eval_metrics, stopped_by=stop.signal_name)


def _write_samples(task, state, config, mesh, workdir, writer, step, rng):
    batch = next(
        pipeline.eval_batches(
            config.data, config.train.eval_split, config.data.batch_size, task.transform, limit=config.train.num_samples
        )
    )
    images, texts = task.visualize(state.ema_params, global_batch(batch, mesh), jax.random.fold_in(rng, step), batch)
    path = os.path.join(workdir, "samples", f"step_{step:07d}.png")
    n = min(len(texts), config.train.num_samples)
    train_logging.save_grid(path, np.asarray(images)[:n], list(texts)[:n], scale=config.train.sample_scale)
    writer.image(step, "samples", train_logging.make_grid(np.asarray(images)[:n]))
