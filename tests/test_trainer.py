"""The generic trainer: exact resume, restore onto another mesh, non-finite steps, signals."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import REPO

from t2i import tasks
from t2i.tasks.classifier import ShapesClassifierTask
from t2i.train.state import create_state, make_train_step
from t2i.train.trainer import TrainingDiverged, train


def _losses(result):
    return [(row["step"], row["loss"]) for row in result.history]


def test_resumed_run_reproduces_uninterrupted_losses(tiny_config, tmp_path):
    tiny_config.train.async_checkpoints = True
    full = train(tiny_config, str(tmp_path / "full"), progress=False)
    assert [step for step, _ in _losses(full)] == [1, 2, 3, 4, 5, 6]

    first = train(tiny_config, str(tmp_path / "split"), interrupt_at_step=4, progress=False)
    assert first.stopped_by == "SIGTERM" and int(first.state.step) == 4
    second = train(tiny_config, str(tmp_path / "split"), progress=False)
    assert [step for step, _ in _losses(second)] == [5, 6]

    # Exact on CPU: same data (the iterator state was restored), same rng, same params.
    assert _losses(first) + _losses(second) == _losses(full)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(second.state.params), jax.device_get(full.state.params))
    config_json = json.load(open(tmp_path / "split/checkpoints/6/config/metadata"))
    assert config_json["task"] == "shapes_classifier"


def test_restore_onto_a_different_mesh(tiny_config, tmp_path):
    tiny_config.mesh.data = 8
    tiny_config.train.num_steps = 3
    tiny_config.train.checkpoint_every = 1
    tiny_config.train.keep_checkpoints = 2
    tiny_config.train.sample_every = 3
    saved = train(tiny_config, str(tmp_path), progress=False)
    assert sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()) == [2, 3]  # keep-N
    assert os.listdir(tmp_path / "samples") == ["step_0000003.png"]  # the periodic grid
    tiny_config.mesh.data = 2
    tiny_config.mesh.fsdp = 2
    tiny_config.mesh.tensor = 2
    tiny_config.train.num_steps = 4
    resumed = train(tiny_config, str(tmp_path), progress=False)
    assert [row["step"] for row in resumed.history] == [4]
    specs = {str(x.sharding.spec) for x in jax.tree.leaves(resumed.state.params)}
    assert any("tensor" in s for s in specs)
    assert np.isfinite(resumed.history[0]["loss"])
    del saved


def test_nonfinite_update_is_skipped_and_counted():
    params = {"w": jnp.ones((3,))}
    tx = optax.sgd(0.1)

    def loss_fn(p, batch, rng):
        del rng
        return jnp.sum(p["w"] * batch["x"]), {}

    step = jax.jit(make_train_step(loss_fn, tx, lambda s: 0.1, ema_decay=0.9))
    state = create_state(params, tx)
    rng = jax.random.key(0)
    state, metrics = step(state, {"x": jnp.array([1.0, jnp.nan, 1.0])}, rng)
    assert int(metrics["skipped"]) == 1 and int(state.nonfinite_in_a_row) == 1
    np.testing.assert_array_equal(state.params["w"], np.ones(3))
    assert int(state.step) == 1
    state, metrics = step(state, {"x": jnp.array([1.0, 1.0, 1.0])}, rng)
    assert int(metrics["skipped"]) == 0 and int(state.nonfinite_in_a_row) == 0
    assert int(state.nonfinite_total) == 1
    np.testing.assert_allclose(state.params["w"], np.full(3, 0.9))


class _NanTask(ShapesClassifierTask):
    def loss(self, params, batch, rng):
        loss, metrics = super().loss(params, batch, rng)
        return loss * jnp.nan, metrics


def test_too_many_nonfinite_steps_stop_the_run(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setattr(tasks, "_registry", lambda: {"shapes_classifier": _NanTask})
    tiny_config.train.max_nonfinite_in_a_row = 3
    with pytest.raises(TrainingDiverged, match="stopping at step 3: 3 non-finite losses or gradients in a row"):
        train(tiny_config, str(tmp_path), progress=False)


def test_sigterm_saves_a_checkpoint_and_exits(tiny_data_dir, tmp_path):
    workdir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "t2i.cli",
        "train",
        "--config",
        os.path.join(REPO, "configs/shapes_classifier.py:tiny"),
        "--workdir",
        str(workdir),
        "--no_progress",
        f"--config.data.data_dir={tiny_data_dir}",
        "--config.train.num_steps=100000",
        "--config.train.checkpoint_every=100000",
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    lines = []
    deadline = time.time() + 240
    for line in process.stdout:
        lines.append(line)
        if line.startswith("step 3:") or time.time() > deadline:
            break
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    lines.append(output)
    assert process.returncode == 128 + signal.SIGTERM, "".join(lines)
    assert "SIGTERM at step" in "".join(lines)
    steps = [int(name) for name in os.listdir(workdir / "checkpoints") if name.isdigit()]
    assert steps and min(steps) >= 3


def test_adafactor_on_an_fsdp_mesh(tiny_config, tmp_path):
    """Factored optimizer state (row/column moments) shards and trains; no decay at lr 0."""
    tiny_config.optimizer.name = "adafactor"
    tiny_config.mesh.data = 1
    tiny_config.mesh.fsdp = -1
    tiny_config.train.num_steps = 2
    result = train(tiny_config, str(tmp_path), progress=False)
    first, second = result.history
    assert first["learning_rate"] == 0.0 and first["update_norm"] == 0.0
    assert second["update_norm"] > 0 and np.isfinite(second["loss"])
    assert any("fsdp" in str(x.sharding.spec) for x in jax.tree.leaves(result.state.opt_state))
