"""Imagen: the Efficient U-Net, the stage task through the trainer, paper-scale sizes."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from t2i.config import load_config
from t2i.data import pipeline
from t2i.errors import UsageError
from t2i.families import get_task
from t2i.train.trainer import train

PAPER = os.path.join(REPO, "configs/imagen_paper.py")
SHAPES = os.path.join(REPO, "configs/imagen_shapes.py")


@pytest.mark.parametrize("stage, expected", [("base64", 2.0e9), ("sr256", 600e6), ("sr1024", 400e6)])
def test_paper_parameter_counts(stage, expected):
    """Counted from shapes alone (jax.eval_shape): nothing is allocated."""
    task = get_task(load_config(f"{PAPER}:stage={stage}"))
    abstract = jax.eval_shape(task.init, jax.random.key(0))
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract))
    assert abs(count - expected) / expected < 0.10, f"{stage}: {count / 1e6:.0f}M vs {expected / 1e6:.0f}M"
    specs = jax.tree.leaves(
        nn.get_partition_spec(abstract), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
    )
    assert all(len(spec) > 0 for spec in specs)  # every weight carries logical axis names


def _config(arg, data_dir, *overrides):
    return load_config(f"{SHAPES}:{arg},tiny", [f"data.data_dir={data_dir}", *overrides])


def test_precomputed_minilm_embeddings_reach_the_batch(tiny_embeddings):
    from t2i.text.minilm import MiniLMEncoder

    config = _config("stage=base", tiny_embeddings)
    batch = next(pipeline.eval_batches(config.data, "test", 4, limit=4))
    assert batch["text_embeddings"].shape == (4, 24, 384) and batch["text_embeddings"].dtype == np.float32
    expected, mask = MiniLMEncoder.from_package(max_length=24).encode(list(batch["caption"]))
    np.testing.assert_array_equal(batch["text_mask"], mask)
    np.testing.assert_allclose(batch["text_embeddings"], np.asarray(expected), atol=2e-3)  # stored as fp16


@pytest.fixture(scope="module")
def trained_stages(tiny_embeddings, tmp_path_factory):
    """A tiny base and SR stage, two steps each, through the generic trainer."""
    runs = {}
    for stage in ("base", "sr"):
        workdir = str(tmp_path_factory.mktemp(f"imagen_{stage}"))
        config = _config(f"stage={stage}", tiny_embeddings, "train.num_steps=2", "train.checkpoint_every=2")
        runs[stage] = (workdir, train(config, workdir, progress=False))
    return runs


def test_stages_train_through_the_generic_trainer(trained_stages):
    for stage, (_, result) in trained_stages.items():
        losses = [row["loss"] for row in result.history]
        assert len(losses) == 2 and all(np.isfinite(losses)) and 0.05 < losses[0] < 5.0, (stage, losses)


def test_cascade_sample_command_writes_a_manifest_eval_reads(trained_stages, tmp_path, capsys):
    from t2i.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\ntwo blue squares\na green triangle above a purple square\n")
    base, sr = trained_stages["base"][0], trained_stages["sr"][0]
    argv = [
        "sample",
        "--pipeline",
        "imagen",
        "--checkpoint",
        base,
        "--checkpoint",
        sr,
        "--prompts",
        str(prompts),
        "--out",
        str(tmp_path / "out"),
        "--steps",
        "3,2",
        "--guidance",
        "4,2",
        "--guidance_interval=-6:2,:",
        "--batch_size",
        "2",
    ]
    assert main(argv) == 0
    rows = [json.loads(line) for line in open(tmp_path / "out/manifest.jsonl")]
    assert [row["prompt"] for row in rows] == [
        "a red circle",
        "two blue squares",
        "a green triangle above a purple square",
    ]
    stages = rows[0]["settings"]["stages"]
    assert [s["steps"] for s in stages] == [3, 2] and [s["guidance_weight"] for s in stages] == [4.0, 2.0]
    assert [s["guidance_interval"] for s in stages] == [[-6.0, 2.0], [None, None]]
    assert np.asarray(Image.open(tmp_path / "out" / rows[0]["image"])).shape == (64, 64, 3)
    capsys.readouterr()
    assert main(["eval", "shapes", str(tmp_path / "out")]) == 0  # the evaluator reads it
    bad = argv[: argv.index("--out")] + ["--out", str(tmp_path / "out2"), "--steps", "1,2,3"]
    assert main(bad) == 2
    assert "--steps has 3 values for 2 stages" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()


def test_base_sampling_with_guidance_and_thresholding(tiny_data_dir):
    config = _config(
        "stage=base,text=tokens", tiny_data_dir, "sampling.guidance_weight=3.0", "sampling.thresholding=dynamic"
    )
    task = get_task(config)
    params = nn.unbox(task.init(jax.random.key(0)))
    host = next(pipeline.eval_batches(config.data, "test", 4, limit=4))
    batch = {k: jnp.asarray(v) for k, v in host.items() if k in ("tokens", "text_mask")}
    sample = jax.jit(lambda p, b, r: task.sample(p, b, r))
    images = sample(params, batch, jax.random.key(1))
    assert images.shape == (4, 32, 32, 3) and images.dtype == jnp.uint8
    np.testing.assert_array_equal(images, sample(params, batch, jax.random.key(1)))  # seeded
    assert not np.array_equal(images, sample(params, batch, jax.random.key(2)))
    # The empty prompt (all text masked) is a valid input: the null key/value keeps it finite.
    empty = dict(batch, text_mask=jnp.zeros_like(batch["text_mask"]))
    out = jax.jit(task.model.apply)(
        params, jnp.zeros((4, 32, 32, 3)), jnp.zeros(4), empty["tokens"], empty["text_mask"]
    )
    assert bool(jnp.all(jnp.isfinite(out)))

    # config.sampling.guidance_interval reaches the sampler: an interval no step falls
    # in samples exactly what guidance 1 does. (Perturbed weights: at initialisation the
    # zero-initialised output projections make the text, and so guidance, a no-op.)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(3), len(leaves))
    noisy = treedef.unflatten([x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])

    def sampled(*overrides):  # dynamic thresholding as above, so `sample` is the guided case
        other = get_task(_config("stage=base,text=tokens", tiny_data_dir, "sampling.thresholding=dynamic", *overrides))
        return jax.jit(lambda p, b, r: other.sample(p, b, r))(noisy, batch, jax.random.key(1))

    unguided = sampled("sampling.guidance_weight=1.0")
    outside = sampled("sampling.guidance_weight=3.0", "sampling.guidance_interval=(50.0,60.0)")
    # Equal but for float rounding: the guided program runs the model on twice the
    # batch, and the CPU convolutions' batched products (t2i/nn/winograd.py) may
    # sum in another order at another batch size: a pixel here and there one level off.
    off = np.abs(np.asarray(outside, np.int32) - np.asarray(unguided, np.int32))
    assert off.max() <= 1 and (off > 0).mean() < 1e-3
    assert not np.array_equal(sample(noisy, batch, jax.random.key(1)), unguided)


def test_sr_crops_cut_the_same_window_from_image_and_condition():
    from t2i.imagen.task import random_crop

    images = jnp.arange(2 * 8 * 8 * 3, dtype=jnp.float32).reshape(2, 8, 8, 3)
    crop_a, crop_b = random_crop(jax.random.key(3), [images, images * 2.0], 4)
    assert crop_a.shape == (2, 4, 4, 3)
    np.testing.assert_array_equal(np.asarray(crop_b), 2.0 * np.asarray(crop_a))
    for example in range(2):  # a contiguous window of the example itself
        top, left = np.argwhere(np.asarray(images[example, ..., 0]) == float(crop_a[example, 0, 0, 0]))[0]
        np.testing.assert_array_equal(crop_a[example], images[example, top : top + 4, left : left + 4])
    with pytest.raises(ValueError, match="train_crop=32 needs a super-resolution stage"):
        get_task(load_config(f"{SHAPES}:stage=base,tiny", ["model.train_crop=32"]))


def test_export_keeps_the_ema_params_in_float16_and_loads_for_sampling(trained_stages, tmp_path, capsys):
    from t2i.cli import main
    from t2i.imagen.cascade import load_stage

    base = trained_stages["base"][0]
    out = tmp_path / "ref" / "base.npz"
    assert main(["export", "--workdir", base, "--out", str(out)]) == 0
    exported, original = load_stage(str(out)), load_stage(base)
    assert exported.step == original.step == 2 and exported.config.to_dict() == original.config.to_dict()
    with np.load(out) as data:
        assert all(data[k].dtype == np.float16 for k in data.files if not k.startswith("__"))
    for a, b in zip(jax.tree.leaves(exported.params), jax.tree.leaves(original.params)):
        assert a.dtype == jnp.float32 and a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    capsys.readouterr()
    assert main(["export", "--workdir", base, "--out", str(tmp_path / "base.msgpack")]) == 2
    assert "must end in .npz" in capsys.readouterr().err
    assert main(["export", "--workdir", base, "--out", str(tmp_path / "x.npz"), "--step", "7"]) == 2
    assert "no checkpoint at step 7 (it has 2)" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()
    np.savez(tmp_path / "junk.npz", a=np.zeros(2))
    assert (
        main(
            [
                "sample",
                "--pipeline",
                "imagen",
                "--checkpoint",
                str(tmp_path / "junk.npz"),
                "--prompt",
                "a red circle",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "not a t2i model file" in capsys.readouterr().err


def test_split_prompts_are_the_captions_of_the_split(capsys):
    from t2i.cli import main, split_prompts
    from t2i.data import shapes

    assert split_prompts("heldout", 3) == [shapes.scene_for("heldout", i).caption for i in range(3)]
    assert main(["sample", "--split", "nope", "--out", "/tmp/unused_t2i_out"]) == 2
    assert "unknown split 'nope'" in capsys.readouterr().err
    assert main(["sample", "--split", "test", "--prompt", "a red circle", "--out", "/tmp/unused_t2i_out"]) == 2
    assert "exactly one of" in capsys.readouterr().err


def test_sample_without_checkpoints_uses_the_committed_reference(tmp_path):
    """The reference cascade ships in the package (t2i/assets/imagen_shapes/): the
    exported files load, match their configs, and sample at 64 px."""
    from t2i.cli import main
    from t2i.imagen.cascade import REFERENCE_STAGES

    for path in REFERENCE_STAGES:
        assert os.path.getsize(path) < 15 * 2**20  # the budget: 30 MB for both
    out = tmp_path / "out"
    argv = ["sample", "--pipeline", "imagen", "--split", "test", "--num", "2", "--out", str(out)]
    assert main([*argv, "--steps", "2,2", "--batch_size", "2"]) == 0
    rows = [json.loads(line) for line in open(out / "manifest.jsonl")]
    stages = rows[0]["settings"]["stages"]
    assert [s["source"] for s in stages] == list(REFERENCE_STAGES)
    # unnamed settings are each stage's defaults: the reference's best measured setting
    assert [(s["sampler"], s["steps"], s["guidance_weight"], s["thresholding"]) for s in stages] == [
        ("ddpm", 2, 4.0, "none"),
        ("ddim", 2, 1.0, "none"),
    ]
    assert [s["guidance_interval"] for s in stages] == [[-4.0, 2.0], [None, None]]
    assert stages[1]["noise_aug_level"] == 0.1
    assert np.asarray(Image.open(out / rows[1]["image"])).shape == (64, 64, 3)


def test_sweep_scores_each_setting_and_split_and_tabulates(trained_stages, tmp_path, capsys):
    from t2i.imagen import sweep as imagen_sweep

    base, sr = trained_stages["base"][0], trained_stages["sr"][0]
    out = tmp_path / "sweep.jsonl"
    argv = ["--base", base, "--sr", sr, "--splits", "test,heldout", "--num", "2", "--batch_size", "2"]
    argv += ["--steps", "2", "--sr_steps", "2", "--guidance", "3", "--guidance_interval=:,-4:"]
    argv += ["--thresholding", "none", "--grid_dir", str(tmp_path / "grids"), "--out", str(out)]
    assert imagen_sweep.main(argv) == 0
    assert sorted(os.listdir(tmp_path / "grids")) == [
        "step2_ddpm2_w3_at-4__none_heldout.png",
        "step2_ddpm2_w3_at-4__none_test.png",
        "step2_ddpm2_w3_none_heldout.png",
        "step2_ddpm2_w3_none_test.png",
    ]
    rows = [json.loads(line) for line in open(out)]
    assert [(r["base"]["guidance_weight"], r["base"]["guidance_interval"], r["split"]) for r in rows] == [
        (3.0, [None, None], "test"),
        (3.0, [None, None], "heldout"),
        (3.0, [-4.0, None], "test"),
        (3.0, [-4.0, None], "heldout"),
    ]
    assert all(r["num"] == 2 and r["base_step"] == 2 and 0.0 <= r["overall"] <= 1.0 for r in rows)
    # Settings not given are the stages' own (saved in their configs): the sweep scores
    # what `t2i sample` draws.
    from t2i.imagen.cascade import default_settings, load_stage

    base_defaults, sr_defaults = default_settings(load_stage(base)), default_settings(load_stage(sr))
    assert {r["base"]["sampler"] for r in rows} == {base_defaults.sampler} == {"ddpm"}
    assert {r["base"]["percentile"] for r in rows} == {base_defaults.percentile}
    assert (
        {(r["sr"]["sampler"], r["sr"]["noise_aug_level"], r["sr"]["guidance_weight"]) for r in rows}
        == {(sr_defaults.sampler, sr_defaults.noise_aug_level, sr_defaults.guidance_weight)}
        == {("ddim", 0.1, 1.0)}
    )
    table = imagen_sweep.markdown_table(str(out))
    assert len(table.splitlines()) == 2 + len(rows) and "| heldout |" in table
    assert "| 3 | none |" in table and "| 3 @ -4.. | none |" in table
    assert all(r["offset"] == 0 for r in rows)
    shifted = tmp_path / "shifted.jsonl"
    shifted.write_text(json.dumps(dict(rows[0], offset=100, num=2)) + "\n")
    assert "| test [100:102] | 2 |" in imagen_sweep.markdown_table(str(shifted))
    shifted.write_text(json.dumps(dict(rows[0], overall=0.825)) + "\n")
    assert "| **82.5%** |" in imagen_sweep.markdown_table(str(shifted))
    shifted.write_text(json.dumps(dict(rows[0], overall=0.88)) + "\n")
    assert "| **88%** |" in imagen_sweep.markdown_table(str(shifted))
    capsys.readouterr()
    assert imagen_sweep.main([*argv[:-1], str(tmp_path / "z.jsonl"), "--offset", "-1"]) == 2
    assert "--offset must be at least 0" in capsys.readouterr().err
    capsys.readouterr()
    assert imagen_sweep.main([*argv[:-1], str(tmp_path / "x.jsonl"), "--guidance", "1,x"]) == 2
    assert "bad list '1,x'" in capsys.readouterr().err
    assert imagen_sweep.main([*argv[:-1], str(tmp_path / "p.jsonl"), "--percentile", "99.5"]) == 2
    assert "percentile must be in (0, 1], got 99.5" in capsys.readouterr().err
    assert not (tmp_path / "p.jsonl").exists()
    # Checked before the stages load: a missing --base would otherwise be the error.
    bad = ["--base", str(tmp_path / "missing"), "--sr", sr, "--out", str(tmp_path / "s.jsonl")]
    assert imagen_sweep.main([*bad, "--sampler", "ddim,euler"]) == 2
    assert "unknown sampler 'euler' (choose from ddpm, ddim, dpmpp_2m)" in capsys.readouterr().err
    assert imagen_sweep.main([*bad, "--thresholding", "clip"]) == 2
    assert "unknown thresholding 'clip'" in capsys.readouterr().err
    assert not (tmp_path / "s.jsonl").exists()
    from t2i.imagen.cascade import REFERENCE_STAGES

    npz = ["--base", REFERENCE_STAGES[0], "--sr", sr, "--base_steps", "2", "--out", str(tmp_path / "y.jsonl")]
    assert imagen_sweep.main(npz) == 2
    assert "--base_steps needs a training workdir" in capsys.readouterr().err


def test_training_minutes_leave_out_the_time_a_stopped_run_sat_idle(tmp_path):
    """The sweep's "train min": interval steps over the logged rate, so an hour between
    a stop at step 100 and the resume is not counted, and a step inside an interval is
    interpolated at that interval's rate."""
    from t2i.evaluation.sweeps import training_minutes as _training_minutes

    rows = [(50, 0.0, 0.5), (100, 100.0, 0.5), (150, 3900.0, 0.25)]  # resumed at 100 an hour later
    with open(tmp_path / "metrics.jsonl", "w") as f:
        f.write(json.dumps({"step": 0, "split": "test", "time": 0.0, "loss": 1.0}) + "\n")
        for step, time_, rate in rows:
            f.write(json.dumps({"step": step, "split": "train", "time": time_, "steps_per_second": rate}) + "\n")
    assert _training_minutes(str(tmp_path), 100) == round(200 / 60, 1)  # 100 steps at 2 s
    assert _training_minutes(str(tmp_path), 150) == round(400 / 60, 1)  # + 50 steps at 4 s
    assert _training_minutes(str(tmp_path), 125) == round(300 / 60, 1)
    assert _training_minutes(str(tmp_path / "missing"), 100) is None


def _without_coordinates(export: str, out: str) -> str:
    """A copy of a base export as a model without pixel coordinates: its other trained
    weights, its `coord_proj` (if any) dropped and `model.coord_channels` off. The
    token attention loss (the reference base was fine-tuned with it) is turned off too:
    its loss is then the diffusion loss alone, which a batch without word tokens can
    compute."""
    with np.load(export) as data:
        arrays = {key: data[key] for key in data.files if "coord_proj" not in key}
    config = json.loads(str(arrays["__config__"]))
    config["model"]["coord_channels"] = False
    config["diffusion"]["attention_loss_weight"] = 0.0
    arrays["__config__"] = np.asarray(json.dumps(config, sort_keys=True))
    np.savez(out, **arrays)
    return out


def test_warm_start_adds_coordinates_to_a_trained_base_without_changing_its_output(tiny_embeddings, tmp_path):
    """`train.init_from`: a trained base without pixel coordinates (the committed
    reference's weights, less its coordinate projection) starts a run with them; the new,
    zero-initialised projection leaves the loss exactly as it was but gets a gradient,
    and a source that does not fit the model is a one-line error."""
    from t2i.errors import UsageError
    from t2i.imagen.cascade import REFERENCE_STAGES, load_stage
    from t2i.parallel.mesh import LOGICAL_AXIS_RULES, create_mesh
    from t2i.train.optim import make_optimizer
    from t2i.train.trainer import abstract_train_state, init_train_state, warm_start

    reference = _without_coordinates(REFERENCE_STAGES[0], str(tmp_path / "base.npz"))
    source = load_stage(reference)
    assert not source.config.model.coord_channels

    def fresh_state(*overrides, allocate=True):
        config = load_config(
            f"{SHAPES}:stage=base", [f"data.data_dir={tiny_embeddings}", "data.builder_config=tiny", *overrides]
        )
        task = get_task(config)
        tx, _ = make_optimizer(config.optimizer, 10)
        mesh = create_mesh({"data": 1}, jax.devices()[:1])
        with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
            abstract, shardings = abstract_train_state(task, tx, mesh, jax.random.key(1))
            if not allocate:  # shapes are all a mismatch check reads
                return config, task, abstract
            return config, task, init_train_state(task, tx, shardings, jax.random.key(1))

    config, task, state = fresh_state("model.coord_channels=True")
    batch = next(pipeline.eval_batches(config.data, "test", 4, task.transform, limit=4))
    batch = {k: jnp.asarray(v) for k, v in batch.items() if np.asarray(v).dtype.kind in "biuf"}
    rng = jax.random.key(7)
    # Jitted: one compilation of the full-size U-Net is cheaper than running it op by op.
    source_loss, _ = jax.jit(source.task.loss)(source.params, batch, rng)

    state = warm_start(state, reference)
    kernel = state.params["params"]["unet"]["coord_proj"]["Conv_0"]["kernel"]
    assert kernel.shape == (1, 1, 2, 32) and not np.any(np.asarray(kernel))
    np.testing.assert_array_equal(
        np.asarray(state.params["params"]["unet"]["Conv_0"]["Conv_0"]["kernel"]),
        np.asarray(source.params["params"]["unet"]["Conv_0"]["Conv_0"]["kernel"]),
    )
    warm_loss, grads = jax.jit(jax.value_and_grad(lambda p: task.loss(p, batch, rng)[0]))(state.params)
    np.testing.assert_allclose(float(warm_loss), float(source_loss), rtol=1e-6)
    # The zero projection still gets a gradient, so the run learns to use the coordinates.
    coord_grad = np.asarray(grads["params"]["unet"]["coord_proj"]["Conv_0"]["kernel"])
    assert np.all(np.isfinite(coord_grad)) and np.abs(coord_grad).max() > 0

    _, _, tiny = fresh_state(
        "model.channel_mults=(1, 2)",
        "model.num_res_blocks=(1, 1)",
        "model.self_attention_levels=(False, True)",
        "model.cross_attention_levels=(False, True)",
        allocate=False,
    )
    with pytest.raises(
        UsageError, match=r"init_from=.*base.npz: \d+ of its params have no place in this model, e\.g\."
    ):
        warm_start(tiny, reference)
    with pytest.raises(ValueError, match="coord_channels cannot be combined with model.train_crop"):
        get_task(_config("stage=sr", tiny_embeddings, "model.coord_channels=True"))


def test_prompt_sensitivity_of_the_reference_base():
    """The committed base draws the colour it is told (a large x0 difference between
    colour-swapped prompts), and the probe reads exactly zero for identical prompts."""
    from t2i.imagen.cascade import REFERENCE_STAGES, load_stage
    from t2i.imagen.prompt_sensitivity import prompt_sensitivity

    stage = load_stage(REFERENCE_STAGES[0])
    scores = prompt_sensitivity(stage, logsnr=-4.0)
    assert set(scores) == {"position", "relation", "colour", "shape"}
    assert scores["colour"] > 0.05 and all(value > 0 for value in scores.values())
    same = {"same": [("a red circle", "a red circle")], "colour": [("a red circle", "a blue circle")]}
    again = prompt_sensitivity(stage, logsnr=-4.0, pairs_by_attribute=same)
    assert again["same"] == 0.0 and again["colour"] > 0.05
    with pytest.raises(ValueError, match="defined for a base stage"):
        prompt_sensitivity(load_stage(REFERENCE_STAGES[1]), logsnr=0.0)


def test_stage_options_split_per_stage_and_name_the_flag_in_errors():
    from t2i.imagen.cascade import stage_options

    per_stage = stage_options({"guidance": "5,1", "guidance_interval": "-4:2,:", "steps": "50"}, 2)
    assert per_stage == [
        {"steps": 50, "guidance_weight": 5.0, "guidance_interval": (-4.0, 2.0)},
        {"steps": 50, "guidance_weight": 1.0, "guidance_interval": (None, None)},
    ]
    with pytest.raises(UsageError, match="--guidance has 3 values for 2 stages"):
        stage_options({"guidance": "1,2,3"}, 2)
    with pytest.raises(UsageError, match=r"bad value for --aug_level: 'x'"):
        stage_options({"aug_level": "x"}, 2)
    with pytest.raises(UsageError, match=r"bad value for --guidance_interval: '2:1,:' \(.*low end above"):
        stage_options({"guidance_interval": "2:1,:"}, 2)


@pytest.mark.parametrize("pooled_text", [True, False])
def test_pooled_text_switch_decides_whether_text_reaches_a_unet_without_cross_attention(pooled_text):
    """With cross-attention off everywhere, the pooled embedding is the text's only way
    in: on, two prompts give different outputs; off, the output ignores the text and
    the pooled projection has no parameters."""
    from flax import traverse_util

    from t2i.imagen.unet import EfficientUNet

    unet = EfficientUNet(
        base_channels=8,
        channel_mults=(1, 2),
        num_res_blocks=(1, 1),
        self_attention_levels=(False, False),
        cross_attention_levels=(False, False),
        embed_dim=16,
        pooled_text=pooled_text,
    )
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    logsnr = jnp.zeros((2,))
    mask = jnp.ones((2, 5), bool)
    text_a, text_b = jax.random.normal(jax.random.key(1), (2, 2, 5, 12))
    params = nn.unbox(jax.jit(unet.init)(jax.random.key(2), x, logsnr, text_a, mask))  # jit: eager is ~1 min
    # nudge every weight off its init: the zero-initialised output convolution would
    # otherwise make every output 0
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(3), len(leaves))
    params = treedef.unflatten([v + 0.1 * jax.random.normal(k, v.shape) for v, k in zip(leaves, keys)])
    apply = jax.jit(unet.apply)
    out_a = apply(params, x, logsnr, text_a, mask)
    out_b = apply(params, x, logsnr, text_b, mask)
    difference = float(jnp.max(jnp.abs(out_a - out_b)))
    flat = traverse_util.flatten_dict(params["params"])
    # the pooled projection is the one kernel that reads the 12-wide text
    reads_text = [k for k, v in flat.items() if k[-1] == "kernel" and v.shape[0] == 12]
    if pooled_text:
        assert difference > 1e-4 and len(reads_text) == 1
    else:
        assert difference == 0.0 and not reads_text


def test_attention_loss_pulls_each_objects_words_into_its_box(tiny_embeddings):
    """The pipeline marks each object's colour and shape tokens; a few optimizer steps on
    the attention loss alone move those words' attention into the objects' boxes."""
    import optax

    from t2i.data import shapes
    from t2i.text.minilm import MiniLMEncoder

    overrides = ("diffusion.attention_loss_weight=1.0", "diffusion.cond_drop_prob=0.0")
    config = _config("stage=base", tiny_embeddings, *overrides)
    task = get_task(config)
    batch = next(pipeline.eval_batches(config.data, "train", 8, transform=task.transform, limit=8))
    tokenizer = MiniLMEncoder.from_package(max_length=24).tokenizer
    for i, caption in enumerate(batch["caption"]):
        ids = [tokenizer.cls_id] + tokenizer.tokenize(caption)
        for k in range(int(batch["num_objects"][i])):
            color, shape = shapes.COLORS[batch["color"][i, k]], shapes.SHAPES[batch["shape"][i, k]]
            assert ids[batch["word_tokens"][i, k, 0]] == tokenizer.tokenize(color)[0], caption
            assert ids[batch["word_tokens"][i, k, 1]] in (
                tokenizer.tokenize(shape)[0],
                tokenizer.tokenize(shape + "s")[0],
            )
        assert (batch["word_tokens"][i, int(batch["num_objects"][i]) :] == -1).all()

    device_batch = {k: jnp.asarray(v) for k, v in batch.items() if k != "caption"}
    rng = jax.random.key(1)

    def attention_loss(params):
        return task.loss(params, device_batch, rng)[1]["attention_loss"]

    params = nn.unbox(jax.jit(task.init)(jax.random.key(0)))
    optimizer = optax.adam(1e-2)

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(attention_loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state, losses = optimizer.init(params), []
    for _ in range(15):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0], losses

    with pytest.raises(ValueError, match="attention_loss_weight needs a base stage"):
        get_task(_config("stage=sr", tiny_embeddings, *overrides))
