"""The ViT-VQGAN task (issue 4): each network gets exactly its own loss's gradient, the
warm-up and lazy-R1 phases, codebook bookkeeping through the trainer's model state,
a tiny config that overfits one batch, the paper's parameter counts, and the
train -> export -> reconstruct / tokenize path with its errors."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from conftest import REPO

from t2i.config import load_config
from t2i.errors import UsageError
from t2i.families import get_task
from t2i.parallel.partitioning import strip_boxes
from t2i.train.state import STATE_INPUTS, create_state, make_train_step
from t2i.vqgan import quantizer as vq
from t2i.vqgan.gan import discriminator_loss, generator_loss, r1_penalty
from t2i.vqgan.task import VQGANTask, to_model_range
from t2i.vqgan.vit_vqgan import ViTVQGAN

CONFIG = os.path.join(REPO, "configs/vit_vqgan.py")


def tiny_task(*overrides) -> VQGANTask:
    return get_task(load_config(CONFIG + ":tiny", list(overrides)))


def images(n=4, size=32, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)), jnp.uint8)


def test_each_network_gets_only_its_own_losses_gradient():
    task = tiny_task()
    params = strip_boxes(task.init(jax.random.key(0)))
    batch = {"image_32": images()}
    grads = jax.grad(lambda p: task.loss(p, batch, jax.random.key(1), None, (True, False))[0])(params)

    x = to_model_range(batch["image_32"])
    recon = lambda g: task.model.apply(g, x)[0]  # noqa: E731
    d = task.discriminator.apply

    def generator_side(g):
        out, aux = task.model.apply(g, x)
        return jnp.mean((out - x) ** 2) + aux["loss"] + 0.1 * generator_loss(d(params["discriminator"], out))

    def discriminator_side(dp):
        fake = recon(params["generator"])
        return discriminator_loss(d(dp, x), d(dp, fake))

    expected_g = jax.grad(generator_side)(params["generator"])
    expected_d = jax.grad(discriminator_side)(params["discriminator"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads["generator"], expected_g)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads["discriminator"], expected_d
    )


def test_phases_warm_up_and_lazy_r1():
    task = tiny_task("--config.loss.adversarial_start=4", "--config.loss.r1_every=3")
    assert [task.phase(s) for s in (0, 3, 4, 5, 6)] == [
        (False, False),
        (False, False),
        (True, False),
        (True, False),
        (True, True),
    ]
    params = strip_boxes(task.init(jax.random.key(0)))
    batch = {"image_32": images()}
    loss = lambda p, phase: task.loss(p, batch, jax.random.key(1), None, phase)  # noqa: E731

    warm = jax.grad(lambda p: loss(p, (False, False))[0])(params)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(warm["discriminator"]))
    (plain, m_plain), (with_r1, m_r1) = loss(params, (True, False)), loss(params, (True, True))
    real = to_model_range(batch["image_32"])
    r1 = r1_penalty(lambda im: task.discriminator.apply(params["discriminator"], im), real)
    np.testing.assert_allclose(with_r1 - plain, 0.5 * 1.0 * 3 * r1, rtol=1e-4)
    assert set(m_plain) == set(m_r1)  # the same metric names in every phase
    assert tiny_task("--config.loss.adversarial_weight=0").phase(10) is None


def test_model_state_tracks_usage_and_sets_the_ema_codebook():
    task = tiny_task("--config.model.codebook_learning=ema", "--config.codebook.restart_dead=False")
    params = strip_boxes(task.init(jax.random.key(0)))
    state = task.init_model_state(params)
    assert state["codebook"]["recent_counts"].shape == (2, 16)
    encodings = vq.l2_normalize(jax.random.normal(jax.random.key(2), (2, 4, 4, 8)))
    indices = jnp.zeros((2, 4, 4), jnp.int32).at[0, 0, :2].set(jnp.array([3, 5]))
    new_params, new_state, metrics = task.update_model_state(
        params, state, dict(indices=indices, encodings=encodings), jax.random.key(3), jnp.int32(0)
    )
    np.testing.assert_allclose(metrics["codebook_usage"], 3 / 16)
    expected = vq.ema_codebook(vq.CodebookState(**new_state["codebook"]))
    np.testing.assert_allclose(new_params["generator"]["params"]["quantizer"]["codebook"], expected)
    # Code 3 moved towards the one encoding assigned to it; unassigned code 7 did not move.
    old = vq.l2_normalize(params["generator"]["params"]["quantizer"]["codebook"])
    assert float(jnp.dot(expected[3], encodings[0, 0, 0])) > float(jnp.dot(old[3], encodings[0, 0, 0]))
    np.testing.assert_allclose(expected[7], old[7], atol=1e-6)


def test_tiny_config_overfits_one_batch():
    task = tiny_task("--config.loss.adversarial_weight=0", "--config.codebook.window=20", "--config.model.num_codes=64")
    # Four smooth random images (4x4 colours, bilinearly upsampled): 64 tokens to memorise.
    low = jnp.asarray(np.random.default_rng(1).uniform(0, 255, (4, 4, 4, 3)))
    batch = {"image_32": jnp.clip(jax.image.resize(low, (4, 32, 32, 3), "bilinear"), 0, 255).astype(jnp.uint8)}
    params = strip_boxes(task.init(jax.random.key(0)))
    tx = optax.adam(3e-3)
    state = create_state(params, tx, task.init_model_state(params))
    step = jax.jit(make_train_step(task.loss, tx, lambda s: 3e-3, 0.0, task.update_model_state))
    history = []
    for _ in range(300):
        state, metrics = step(state, batch, jax.random.key(0))
        history.append(float(metrics["psnr"]))
    first, last = np.mean(history[:5]), np.mean(history[-5:])
    assert last > first + 8.0, (first, last)  # seen: 10.3 dB -> 23.4 dB
    assert STATE_INPUTS not in metrics and float(metrics["codebook_usage"]) >= 0.5


@pytest.mark.parametrize(
    "encoder,decoder,paper_encoder,paper_decoder",
    [
        # Parti section 2.1: ViT-VQGAN-Small about 30M, -Large about 600M; ViT-VQGAN
        # table 1: Base-Base 91M each.
        ("small", "large", 30e6, 600e6),
        ("base", "base", 91e6, 91e6),
    ],
)
def test_paper_tokenizer_parameter_counts(encoder, decoder, paper_encoder, paper_decoder):
    model = ViTVQGAN(image_size=256, patch_size=8, encoder=encoder, decoder=decoder, num_codes=8192, code_dim=32)
    params = strip_boxes(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 256, 256, 3))))["params"]

    def count(keys):
        return sum(int(np.prod(x.shape)) for k in keys for x in jax.tree.leaves(params[k]))

    encoder_params = count(["patch_embed", "encoder_stack", "encoder_head"])
    decoder_params = count(["decoder_stack", "decoder_head"])
    assert abs(encoder_params / paper_encoder - 1) < 0.10, encoder_params
    assert abs(decoder_params / paper_decoder - 1) < 0.10, decoder_params
    assert params["quantizer"]["codebook"].shape == (8192, 32)


def test_train_export_reconstruct_and_tokenize(tmp_path, tiny_data_dir, capsys):
    from t2i.cli import main
    from t2i.data.token_grids import TokenGridSource
    from t2i.model_files import load_model
    from t2i.train.trainer import train

    config = load_config(CONFIG + ":tiny", [f"data.data_dir={tiny_data_dir}"])
    workdir = str(tmp_path / "run")
    result = train(config, workdir, progress=False)
    assert int(result.state.step) == 6
    assert int(result.state.model_state["codebook"]["step"]) == 6  # the codebook state went through every step
    assert {"d_loss", "codebook_usage", "psnr"} <= set(result.history[-1])
    assert result.history[0]["d_loss"] == 0.0 and result.history[-1]["d_loss"] > 0.0  # warm-up, then on

    # Stage 2 (how the committed Shapes tokenizer was trained on): warm-started from the
    # first run's last step, the discriminator carried along and never switched on.
    stage2 = load_config(CONFIG + f":tiny,stage=2,from={workdir}", [f"data.data_dir={tiny_data_dir}"])
    second = train(stage2, str(tmp_path / "stage2"), progress=False)
    assert int(second.state.step) == 3 and all(m["d_loss"] == 0.0 for m in second.history)
    first_params = jax.device_get(result.state.ema_params["discriminator"])  # warm starts load EMA params
    jax.tree.map(np.testing.assert_array_equal, first_params, jax.device_get(second.state.params["discriminator"]))
    with pytest.raises(UsageError, match="unknown stage .5.; stages are 1, 2, 3, 4$"):
        load_config(CONFIG + ":stage=5")

    export = str(tmp_path / "tok.npz")
    assert main(["export", "--workdir", workdir, "--out", export]) == 0
    with np.load(export) as data:
        assert not [k for k in data.files if k.startswith("discriminator")]
    stage = load_model(export, family="vit_vqgan")

    out = tmp_path / "recon"
    args = ["reconstruct", "--checkpoint", export, "--split", "test", "--num", "10", "--out", str(out)]
    assert main(args + ["--data_dir", tiny_data_dir, "--batch_size", "4"]) == 0
    lines = [json.loads(line) for line in open(out / "manifest.jsonl")]
    assert len(lines) == 10 and all((out / line["image"]).is_file() for line in lines)
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["num_images"] == 10 and 0 < metrics["codebook_usage"] <= 1 and metrics["psnr"] > 0
    assert (out / "grid.png").is_file()
    capsys.readouterr()
    code = main(args + ["--data_dir", tiny_data_dir])  # the folder is not empty now
    err = capsys.readouterr().err.strip()
    assert code == 2 and "exists and is not empty" in err and len(os.listdir(out)) == 13

    assert main(["tokenize", "--checkpoint", export, "--splits", "test,heldout", "--data_dir", tiny_data_dir]) == 0
    data = ml_collections.ConfigDict(dict(builder_config="tiny", data_dir=tiny_data_dir))
    from t2i.data import pipeline

    directory = os.path.join(pipeline.build_dir(data), "image_tokens", "vit_vqgan")
    source = TokenGridSource(directory, "test")
    split = pipeline.data_source(data, "test")
    assert len(source) == len(split) and source.info["grid"] == 4
    example = pipeline.to_arrays(split[5])
    record = source[5]
    assert record["caption"] == example["caption"]
    np.testing.assert_array_equal(record["color"], example["color"])
    expected = stage.task.tokenize(stage.params, example["image_32"][None])[0]
    np.testing.assert_array_equal(record["image_tokens"], expected)
    capsys.readouterr()
    code = main(["tokenize", "--checkpoint", export, "--splits", "test", "--data_dir", tiny_data_dir])
    assert code == 2 and "--overwrite" in capsys.readouterr().err
