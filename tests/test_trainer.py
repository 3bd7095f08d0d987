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

from t2i import families
from t2i.classifier.task import ShapesClassifierTask
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

    def loss_fn(p, batch, rng, step):
        del rng, step
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
    def loss(self, params, batch, rng, step=None):
        loss, metrics = super().loss(params, batch, rng, step)
        return loss * jnp.nan, metrics


def test_too_many_nonfinite_steps_stop_the_run(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setattr(families, "get_task", _NanTask)
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


class _CountingTask(ShapesClassifierTask):
    """Carries a step counter and the sum of the losses in its model state, and pins
    one param to the counter: what a VQ codebook's non-gradient updates look like."""

    def init_model_state(self, params):
        return {"count": jnp.zeros((), jnp.int32), "loss_sum": jnp.zeros((), jnp.float32)}

    def loss(self, params, batch, rng, step=None):
        loss, metrics = super().loss(params, batch, rng, step)
        return loss, dict(metrics, state_inputs={"loss": loss, "step": step})

    def update_model_state(self, params, model_state, inputs, rng, step):
        count = model_state["count"] + 1
        params = jax.tree.map(lambda x: x, params)
        params["params"]["Conv_0"]["Conv_0"]["bias"] = (
            params["params"]["Conv_0"]["Conv_0"]["bias"].at[0].set(count.astype(jnp.float32))
        )
        new_state = {"count": count, "loss_sum": model_state["loss_sum"] + inputs["loss"]}
        return params, new_state, {"seen_step": inputs["step"].astype(jnp.float32)}


def test_model_state_survives_a_resume(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setattr(families, "get_task", _CountingTask)
    tiny_config.train.num_steps = 4
    tiny_config.train.log_every = 1
    first = train(tiny_config, str(tmp_path / "a"), interrupt_at_step=2, progress=False)
    assert first.stopped_by == "SIGTERM" and int(first.state.model_state["count"]) == 2
    resumed = train(tiny_config, str(tmp_path / "a"), progress=False)
    whole = train(tiny_config, str(tmp_path / "b"), progress=False)
    assert int(resumed.state.model_state["count"]) == 4
    np.testing.assert_allclose(resumed.state.model_state["loss_sum"], whole.state.model_state["loss_sum"], rtol=1e-6)
    # The hook saw the step counter and its param edit stuck (EMA follows it).
    assert [row["seen_step"] for row in whole.history] == [0.0, 1.0, 2.0, 3.0]
    assert float(whole.state.params["params"]["Conv_0"]["Conv_0"]["bias"][0]) == 4.0


def test_nonfinite_step_leaves_model_state_alone():
    params = {"w": jnp.ones((3,))}
    tx = optax.sgd(0.1)

    def loss_fn(p, batch, rng, step):
        return jnp.sum(p["w"] * batch["x"]), {"state_inputs": batch["x"]}

    def update(params, model_state, inputs, rng, step):
        return params, {"total": model_state["total"] + jnp.sum(inputs)}, {}

    step = jax.jit(make_train_step(loss_fn, tx, lambda s: 0.1, 0.9, update))
    state = create_state(params, tx, {"total": jnp.zeros(())})
    state, _ = step(state, {"x": jnp.array([1.0, 2.0, 3.0])}, jax.random.key(0))
    state, metrics = step(state, {"x": jnp.array([1.0, jnp.nan, 3.0])}, jax.random.key(0))
    assert int(metrics["skipped"]) == 1
    assert float(state.model_state["total"]) == 6.0


def test_optimizer_groups_train_parts_with_their_own_settings():
    from t2i.errors import UsageError
    from t2i.train.optim import default_optimizer_config, make_optimizer

    opt = default_optimizer_config()
    opt.warmup_steps = 0
    opt.weight_decay = 0.0
    opt.groups = {"discriminator": {"learning_rate": 0.0}}
    tx, _ = make_optimizer(opt, 10)
    params = {"generator": {"w": jnp.ones(2)}, "discriminator": {"w": jnp.ones(2)}}
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert float(jnp.abs(updates["generator"]["w"]).min()) > 0
    np.testing.assert_array_equal(updates["discriminator"]["w"], 0.0)
    opt.groups = {"critic": {"learning_rate": 0.0}}
    with pytest.raises(UsageError, match=r"optimizer.groups \['critic'\] must be top-level parts of the params"):
        make_optimizer(opt, 10)[0].init(params)
    opt.groups = {"discriminator": {"learning_rat": 0.0}}
    with pytest.raises(UsageError, match="optimizer.groups.discriminator.learning_rat is not an optimizer setting"):
        make_optimizer(opt, 10)
