"""Trained-model files: one way to load a trained model of any family for use, and the
export format.

A trained model is read from either
- a training workdir: the EMA params of its newest checkpoint (or of `step`) and the
  config stored beside them; only the EMA params are read from disk (a partial
  restore), so neither the optimizer state nor its shapes are needed; or
- an export (`t2i export`, `write_export`): the inference params (`Task.inference_params`)
  in float16 with the config and step, in one `.npz`, a fraction of a checkpoint's
  size. The committed reference models in `t2i/assets/` are exports.

The config names the family (`config.task`), and the family registry builds its
task, so the same call loads an Imagen stage, a tokenizer, a Parti model or a CLIP.
This module sits below both the trainer (warm starts read model files) and the
families' samplers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from t2i.errors import UsageError

_CONFIG_KEY = "__config__"
_STEP_KEY = "__step__"


@dataclasses.dataclass
class TrainedModel:
    task: object  # the family's Task, built from `config`
    params: object  # inference params (EMA), unboxed
    config: ml_collections.ConfigDict
    source: str  # the training workdir or the exported file it was loaded from
    step: int

    @property
    def family(self) -> str:
        return str(self.config.task)


def _restore_workdir(workdir: str, step: int | None, mesh=None, inference_only: bool = True):
    """(EMA params, config dict, step) of a checkpoint in a training workdir: the
    inference params (`Task.inference_params`), or all of them (a warm start carries a
    GAN's discriminator along too)."""
    from t2i.families import get_task
    from t2i.parallel.mesh import create_mesh
    from t2i.parallel.partitioning import strip_boxes, tree_shardings
    from t2i.train.checkpoint import Checkpointer, abstract_like

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
        task = get_task(ml_collections.ConfigDict(config_dict))
        mesh = mesh or create_mesh({"data": 1}, jax.devices()[:1])
        boxed = jax.eval_shape(task.init, jax.random.key(0))
        boxed = task.inference_params(boxed) if inference_only else boxed
        abstract = abstract_like(strip_boxes(boxed), tree_shardings(boxed, mesh))
        params = checkpointer.restore_part(step, {"ema_params": abstract})["ema_params"]
    finally:
        checkpointer.close()
    return params, config_dict, step


def export_model(workdir: str, out_path: str, step: int | None = None, sampling: list[str] | None = None) -> str:
    """Writes a checkpoint's inference EMA params (float16) and config into one .npz.

    `sampling` ("KEY=VALUE" strings) sets fields of the exported config's `sampling`
    block, the model's sampling defaults (the settings a sweep found best, say); the
    workdir is not changed.

    float16 rather than bfloat16: numpy stores it natively and its 10-bit mantissa keeps
    the weights to about 5e-4 relative error, while every weight trained here lies far
    inside its range (an overflow is an error, not a silent inf)."""
    if not out_path.endswith(".npz"):
        raise UsageError(f"the export file must end in .npz, got {out_path}")
    params, config_dict, step = _restore_workdir(workdir, step)
    if sampling:
        from t2i.families import parse_sampling

        changes = parse_sampling(config_dict.get("task"), sampling)
        config_dict = {**config_dict, "sampling": {**config_dict.get("sampling", {}), **changes}}
    return write_export(params, config_dict, step, out_path)


def write_export(params, config_dict: dict, step: int, out_path: str) -> str:
    """Writes (unboxed) params as float16 with their config and step: a file that
    `load_model` reads. Atomic: a failure leaves no half-written file."""
    from flax import traverse_util

    from t2i.io import atomic_file

    flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
    arrays = {key: np.asarray(value, np.float16) for key, value in flat.items()}
    for key, value in arrays.items():
        if not np.all(np.isfinite(value)):
            raise UsageError(f"{key} overflows float16; keep this checkpoint in its workdir")
    arrays[_CONFIG_KEY] = np.asarray(json.dumps(config_dict, sort_keys=True))
    arrays[_STEP_KEY] = np.asarray(step, np.int64)
    with atomic_file(out_path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return out_path


def _read_export(path: str) -> tuple[dict, dict, int]:
    """(flat arrays, config dict, step) of an export; a clear error for anything else."""
    try:
        with np.load(path, allow_pickle=False) as data:
            files = list(data.files)
            if _CONFIG_KEY not in files:
                raise UsageError(f"not a t2i model file: {path} (no config inside)")
            config = json.loads(str(data[_CONFIG_KEY]))
            step = int(data[_STEP_KEY])
            flat = {key: data[key] for key in files if key not in (_CONFIG_KEY, _STEP_KEY)}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, json.JSONDecodeError, KeyError):
        raise UsageError(f"not a t2i model file: {path}") from None
    if not isinstance(config, dict) or "task" not in config:
        raise UsageError(f"not a t2i model file: {path} (its config names no family)")
    return flat, config, step


def _load_export(path: str, mesh=None) -> TrainedModel:
    from flax import traverse_util

    from t2i.families import get_task
    from t2i.parallel.partitioning import strip_boxes, tree_shardings

    flat, config_dict, step = _read_export(path)
    config = ml_collections.ConfigDict(config_dict)
    task = get_task(config)
    boxed = task.inference_params(jax.eval_shape(task.init, jax.random.key(0)))
    expected = traverse_util.flatten_dict(strip_boxes(boxed), sep="/")
    shardings = traverse_util.flatten_dict(tree_shardings(boxed, mesh), sep="/") if mesh is not None else {}
    if set(expected) != set(flat):
        missing = sorted(set(expected) - set(flat))[:3]
        raise UsageError(f"{path} does not match its config's model (missing e.g. {missing})")
    params = {}
    for key, spec in expected.items():
        if flat[key].shape != spec.shape:
            raise UsageError(f"{path}: {key} has shape {flat[key].shape}, the model wants {spec.shape}")
        value = np.asarray(flat[key], spec.dtype)
        params[key] = jax.device_put(value, shardings[key]) if key in shardings else jnp.asarray(value)
    params = traverse_util.unflatten_dict(params, sep="/")
    return TrainedModel(task=task, params=params, config=config, source=path, step=step)


def load_model(
    source: str, step: int | None = None, *, family: str | None = None, mesh=None, inference_only: bool = True
) -> TrainedModel:
    """A trained model from a training workdir (EMA params of the newest checkpoint, or
    of `step`) or from an exported .npz. `family` (a `config.task` name, or a tuple of
    them): the model must be of that family, else a one-line error naming both.
    `mesh`: where to place the params, sharded by their logical axes (default: one
    device). `inference_only=False` reads every EMA param of a workdir (an export holds
    only the inference params)."""
    from t2i.families import get_task

    if source.endswith(".npz") or os.path.isfile(source):
        if not os.path.isfile(source):
            raise UsageError(f"model file not found: {source}")
        model = _load_export(source, mesh)
    elif os.path.isdir(source):
        params, config_dict, step = _restore_workdir(source, step, mesh, inference_only)
        config = ml_collections.ConfigDict(config_dict)
        model = TrainedModel(task=get_task(config), params=params, config=config, source=source, step=step)
    else:
        raise UsageError(f"model not found: {source} (a training workdir or an exported .npz)")
    wanted = (family,) if isinstance(family, str) else family
    if wanted and model.family not in wanted:
        raise UsageError(f"{source} holds a {model.family} model, not {' or '.join(wanted)}")
    return model
