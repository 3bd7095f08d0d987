"""Parti: the encoder-decoder, its cached and guided decoding, its training task, its
sharded loss and gradients, and the paper sizes."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO

from t2i.config import load_config
from t2i.errors import UsageError
from t2i.parti.model import PAPER_TEXT_VOCAB, VARIANTS, Parti, PartiSize
from t2i.parti.sampling import DecodeSettings, filter_logits, sample_tokens, sample_tokens_uncached

CONFIG = os.path.join(REPO, "configs/parti.py")
TINY = PartiSize(encoder_layers=1, decoder_layers=2, width=32, heads=2, mlp_dim=64)


def _model(scan=False, tie=True, grid=3):
    return Parti(TINY, text_vocab=50, text_length=6, num_codes=16, grid=grid, scan=scan, tie_embeddings=tie)


def _inputs(batch=3):
    tokens = jax.random.randint(jax.random.key(1), (batch, 6), 0, 50)
    lengths = jnp.array([6, 3, 1, 4, 2, 5][:batch])[:, None]
    return tokens, jnp.arange(6)[None] < lengths


def _init(model, tokens, mask):
    image = jnp.zeros((tokens.shape[0], model.grid * model.grid), jnp.int32)
    return nn.meta.unbox(model.init(jax.random.key(0), tokens, mask, image))


def _sample(model, params, tokens, mask, keys, settings, cached=True, **kw):
    fn = sample_tokens if cached else sample_tokens_uncached
    return np.asarray(jax.jit(lambda p: fn(model, p, tokens, mask, keys, settings, **kw))(params))


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_cached_decoding_equals_uncached_at_temperature_zero(scan, guidance):
    model = _model(scan=scan)
    tokens, mask = _inputs()
    params = _init(model, tokens, mask)
    keys = jax.random.split(jax.random.key(5), 3)
    settings = DecodeSettings(guidance_weight=guidance, temperature=0.0)
    cached = _sample(model, params, tokens, mask, keys, settings)
    uncached = _sample(model, params, tokens, mask, keys, settings, cached=False)
    np.testing.assert_array_equal(cached, uncached)
    assert len(np.unique(cached)) > 1  # not a degenerate constant sequence


def test_cached_step_logits_equal_teacher_forced_logits():
    """Feeding a fixed sequence through the cache one token at a time gives the logits
    of one teacher-forced pass (to float32 rounding)."""
    model = _model()
    tokens, mask = _inputs()
    params = _init(model, tokens, mask)
    image = jax.random.randint(jax.random.key(2), (3, 9), 0, 16)
    full = model.apply(params, tokens, mask, image)
    from t2i.parti.sampling import init_cache

    decoder = model.clone(decode=True)
    encoded = model.apply(params, tokens, mask, method=Parti.encode)
    cache = init_cache(model, params, tokens, mask)
    inputs = jnp.concatenate([jnp.full((3, 1), model.bos), image[:, :-1]], axis=1)
    steps = []
    for position in range(9):
        logits, updated = decoder.apply(
            {**params, "cache": cache},
            inputs[:, position : position + 1],
            jnp.array([position]),
            encoded if position == 0 else None,
            mask,
            method=Parti.decode_tokens,
            mutable=["cache"],
        )
        cache = updated["cache"]
        steps.append(logits[:, 0])
    np.testing.assert_allclose(np.stack(steps, axis=1), full, rtol=1e-5, atol=1e-5)


def test_teacher_forced_logits_are_causal():
    model = _model()
    tokens, mask = _inputs()
    params = _init(model, tokens, mask)
    image = jax.random.randint(jax.random.key(2), (3, 9), 0, 16)
    changed = image.at[:, 4].set((image[:, 4] + 1) % 16)
    a, b = model.apply(params, tokens, mask, image), model.apply(params, tokens, mask, changed)
    np.testing.assert_array_equal(a[:, :5], b[:, :5])  # position 4 is predicted before token 4 is seen
    assert not np.allclose(a[:, 5:], b[:, 5:])


def test_padding_tokens_do_not_matter_and_the_empty_prompt_sees_nothing():
    model = _model()
    tokens, mask = _inputs()
    params = _init(model, tokens, mask)
    image = jax.random.randint(jax.random.key(2), (3, 9), 0, 16)
    scrambled = jnp.where(mask, tokens, (tokens + 7) % 50)
    np.testing.assert_allclose(
        model.apply(params, tokens, mask, image), model.apply(params, scrambled, mask, image), rtol=1e-6, atol=1e-6
    )
    none = jnp.zeros_like(mask)
    np.testing.assert_allclose(
        model.apply(params, tokens, none, image), model.apply(params, scrambled, none, image), rtol=1e-6, atol=1e-6
    )


def test_top_k_one_equals_greedy():
    model = _model()
    tokens, mask = _inputs()
    params = _init(model, tokens, mask)
    keys = jax.random.split(jax.random.key(5), 3)
    greedy = _sample(model, params, tokens, mask, keys, DecodeSettings(guidance_weight=2.0, temperature=0.0))
    top1 = _sample(model, params, tokens, mask, keys, DecodeSettings(guidance_weight=2.0, temperature=1.0, top_k=1))
    np.testing.assert_array_equal(greedy, top1)


def test_guidance_weight_one_equals_the_conditional_model():
    """null + 1 * (cond - null) is the conditional prediction: the guided two-row batch
    at weight 1 samples what the conditional rows alone sample."""
    model = _model()
    tokens, mask = _inputs()
    params = _init(model, tokens, mask)
    keys = jax.random.split(jax.random.key(5), 3)
    settings = DecodeSettings(guidance_weight=1.0, temperature=0.0)
    alone = _sample(model, params, tokens, mask, keys, settings)
    with_null_rows = _sample(model, params, tokens, mask, keys, settings, force_null_rows=True)
    np.testing.assert_array_equal(alone, with_null_rows)
    guided = _sample(model, params, tokens, mask, keys, DecodeSettings(guidance_weight=5.0, temperature=0.0))
    assert not np.array_equal(alone, guided)


def test_a_prompts_samples_do_not_depend_on_the_rest_of_its_batch():
    model = _model()
    tokens, mask = _inputs(batch=4)
    params = _init(model, tokens, mask)
    keys = jax.random.split(jax.random.key(5), 4)
    settings = DecodeSettings(guidance_weight=2.0, temperature=1.0, top_p=0.9)
    first = _sample(model, params, tokens[:2], mask[:2], keys[:2], settings)
    other = _sample(
        model, params, tokens[jnp.array([0, 3])], mask[jnp.array([0, 3])], keys[jnp.array([0, 3])], settings
    )
    np.testing.assert_array_equal(first[0], other[0])
    # The rows differ from each other (different keys and prompts).
    assert not np.array_equal(first[0], first[1])


def test_filter_logits_keeps_top_k_and_the_nucleus():
    logits = jnp.log(jnp.array([[0.5, 0.25, 0.15, 0.1]]))
    np.testing.assert_array_equal(np.isfinite(filter_logits(logits, top_k=2)), [[True, True, False, False]])
    # 0.5 + 0.25 = 0.75 < 0.8: the third token is needed to reach 0.8.
    np.testing.assert_array_equal(np.isfinite(filter_logits(logits, top_p=0.8)), [[True, True, True, False]])
    np.testing.assert_array_equal(np.isfinite(filter_logits(logits, top_p=0.5)), [[True, False, False, False]])
    np.testing.assert_array_equal(np.isfinite(filter_logits(logits[:, ::-1], top_p=0.3)), [[False, False, False, True]])


def test_bad_decode_settings_are_one_line_errors():
    with pytest.raises(UsageError, match="--top_p must be in"):
        DecodeSettings(top_p=0.0).check()
    with pytest.raises(UsageError, match="--top_p must be in"):
        DecodeSettings(top_p=1.5).check()
    with pytest.raises(UsageError, match="--temperature must be at least 0"):
        DecodeSettings(temperature=-0.5).check()


def test_untied_output_and_scan_layout():
    model = _model(tie=False, scan=True)
    tokens, mask = _inputs()
    params = _init(model, tokens, mask)["params"]
    assert "output" in params and params["decoder"]["layers"]["self_attention"]["query"]["kernel"].shape[0] == 2
    assert "block_0" not in params["decoder"]


def test_scanned_and_looped_layers_compute_the_same():
    looped, scanned = _model(scan=False), _model(scan=True)
    tokens, mask = _inputs()
    params = _init(looped, tokens, mask)
    image = jax.random.randint(jax.random.key(2), (3, 9), 0, 16)

    def stack(tree, count):
        return jax.tree.map(lambda *xs: jnp.stack(xs), *[tree[f"block_{i}"] for i in range(count)])

    inner = dict(params["params"])
    for name, count in (("encoder", TINY.encoder_layers), ("decoder", TINY.decoder_layers)):
        part = dict(inner[name])
        blocks = {k: part.pop(k) for k in list(part) if k.startswith("block_")}
        inner[name] = {**part, "layers": stack(blocks, count)}
    np.testing.assert_allclose(
        looped.apply(params, tokens, mask, image),
        scanned.apply({"params": inner}, tokens, mask, image),
        rtol=1e-5,
        atol=1e-5,
    )


# The paper's sizes (table 1) and parameter counts, with its 16k text vocabulary.
PAPER_COUNTS = {"350M": 350e6, "750M": 750e6, "3B": 3e9, "20B": 20e9}


@pytest.mark.parametrize("size", list(PAPER_COUNTS))
def test_paper_parameter_counts(size):
    config = load_config(CONFIG + f":size={size}")
    model = Parti(
        VARIANTS[size],
        text_vocab=PAPER_TEXT_VOCAB,
        text_length=config.data.max_text_length,
        num_codes=config.model.num_codes,
        grid=config.model.grid,
        scan=True,
    )
    length = config.data.max_text_length
    shapes = jax.eval_shape(
        lambda: model.init(
            jax.random.key(0),
            jnp.zeros((1, length), jnp.int32),
            jnp.ones((1, length), bool),
            jnp.zeros((1, 1024), jnp.int32),
        )
    )
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    assert abs(count / PAPER_COUNTS[size] - 1) < 0.10, count
    assert config.data.max_text_length == 128 and config.model.grid == 32 and config.model.num_codes == 8192


# ------------------------------------------------------------------- task and data
def _write_token_grids(data_dir, grid=4, num_codes=16):
    """Token grids for the tiny build (random codes; the trainer only needs their shape)."""
    import ml_collections
    from array_record.python.array_record_module import ArrayRecordWriter

    from t2i.data import pipeline
    from t2i.data.token_grids import SCENE_KEYS, encode_record, tokens_dir

    data = ml_collections.ConfigDict(dict(builder_config="tiny", data_dir=data_dir))
    out = tokens_dir(pipeline.build_dir(data), "random")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(0)
    counts = {}
    for split in ("train", "validation", "test"):
        source = pipeline.data_source(data, split)
        writer = ArrayRecordWriter(os.path.join(out, f"{split}.array_record"), "group_size:1")
        for index in range(len(source)):
            example = pipeline.to_arrays(source[index])
            tokens = rng.integers(0, num_codes, (grid, grid))
            writer.write(encode_record(tokens, example["caption"], {k: example[k] for k in SCENE_KEYS}))
        writer.close()
        counts[split] = len(source)
    with open(os.path.join(out, "info.json"), "w") as f:
        json.dump(dict(grid=grid, num_codes=num_codes, splits=counts), f)
    return "random"


@pytest.fixture(scope="module")
def tiny_tokens(tiny_data_dir):
    return _write_token_grids(tiny_data_dir)


def test_pipeline_reads_token_grids_with_captions(tiny_data_dir, tiny_tokens):
    from t2i.data import pipeline

    config = load_config(CONFIG + ":tiny", [f"data.data_dir={tiny_data_dir}", f"data.image_tokens={tiny_tokens}"])
    batch = next(pipeline.eval_batches(config.data, "test", 8))
    assert batch["image_tokens"].shape == (8, 4, 4) and batch["tokens"].shape == (8, 24)
    source = pipeline.data_source(config.data, "test")
    assert batch["caption"][3] == source[3]["caption"]


def test_trains_through_the_generic_trainer_and_exports(tmp_path, tiny_data_dir, tiny_tokens, capsys):
    from t2i.model_files import export_model, load_model
    from t2i.train.trainer import train

    overrides = [f"data.data_dir={tiny_data_dir}", f"data.image_tokens={tiny_tokens}", "train.eval_every=2"]
    config = load_config(CONFIG + ":tiny", overrides)
    workdir = str(tmp_path / "run")
    result = train(config, workdir, progress=False)
    assert int(result.state.step) == 4
    assert {"nll", "token_accuracy", "loss", "grad_norm"} <= set(result.history[-1])
    assert 0 <= result.eval_metrics["token_accuracy"] <= 1 and result.eval_metrics["nll"] > 0
    path = export_model(workdir, str(tmp_path / "parti.npz"))
    model = load_model(path, family="parti")
    assert model.task.grid == 4 and model.step == 4
    with pytest.raises(UsageError, match="holds a parti model, not imagen"):
        load_model(path, family="imagen")

    # The sweep's best setting, stored as the exported model's own sampling defaults.
    from t2i.cli import main

    tuned = str(tmp_path / "tuned.npz")
    argv = ["export", "--workdir", workdir, "--out", tuned, "--sampling", "num_candidates=4"]
    assert main(argv + ["--sampling", "guidance_weight=5"]) == 0
    stored = load_model(tuned, family="parti").config.sampling
    assert stored.num_candidates == 4 and stored.guidance_weight == 5.0 and stored.top_p == config.sampling.top_p
    for bad, message in (
        ("guidance=5", "KEY one of guidance_weight, temperature, top_k, top_p, num_candidates for parti"),
        ("top_k=x", "bad value for --sampling top_k"),
        ("top_p=1.5", "bad value for --sampling top_p: must be in (0, 1], got 1.5"),
    ):
        out = str(tmp_path / "bad.npz")
        assert main(["export", "--workdir", workdir, "--out", out, "--sampling", bad]) == 2
        assert not os.path.exists(out)
        assert message in capsys.readouterr().err


def test_token_grids_of_another_shape_are_refused(tiny_data_dir, tiny_tokens):
    from t2i.families import get_task

    config = load_config(CONFIG + ":tiny", [f"data.data_dir={tiny_data_dir}"])
    config.model.grid = 5
    task = get_task(config)
    with pytest.raises(UsageError, match="token grids of 4x4 over 16 codes"):
        task.check_token_grids(dict(grid=4, num_codes=16))


# ------------------------------------------------------------------------ sharding
def _loss_and_grads(mesh_axes):
    """Loss and gradients of one fixed batch under a mesh layout (dropout and caption
    dropping off, so the comparison is exact up to float reduction order)."""
    from t2i.families import get_task
    from t2i.parallel.mesh import LOGICAL_AXIS_RULES, create_mesh
    from t2i.parallel.partitioning import batch_sharding, sharded_init

    config = load_config(CONFIG + ":tiny")
    config.loss.cond_drop_prob = 0.0
    config.model.size = "tiny"
    task = get_task(config)
    devices = jax.devices() if mesh_axes else jax.devices()[:1]
    mesh = create_mesh(mesh_axes or {"data": 1}, devices)
    rng = np.random.default_rng(0)
    batch = dict(
        tokens=rng.integers(0, 50, (8, 24)).astype(np.int32),
        text_mask=np.arange(24)[None] < rng.integers(1, 24, (8, 1)),
        image_tokens=rng.integers(0, 16, (8, 4, 4)).astype(np.int32),
    )
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
        params, shardings = sharded_init(task.init, mesh, jax.random.key(0))
        batch = {k: jax.device_put(v, batch_sharding(mesh, v.ndim)) for k, v in batch.items()}
        fn = jax.jit(
            jax.value_and_grad(lambda p, b: task.loss(p, b, jax.random.key(1))[0]), out_shardings=(None, shardings)
        )
        loss, grads = fn(params, batch)
        specs = [leaf.sharding.spec for leaf in jax.tree.leaves(grads)]
    return float(loss), jax.device_get(grads), specs


@pytest.fixture(scope="module")
def one_device_loss_and_grads():
    return _loss_and_grads(None)


@pytest.mark.parametrize(
    "layout, sharded_axis",
    [({"data": 8}, None), ({"fsdp": 8}, "fsdp"), ({"data": 2, "tensor": 4}, "tensor")],
)
def test_sharded_loss_and_gradients_match_one_device(one_device_loss_and_grads, layout, sharded_axis):
    reference_loss, reference_grads, _ = one_device_loss_and_grads
    loss, grads, specs = _loss_and_grads(layout)
    assert np.isclose(loss, reference_loss, rtol=1e-6), (loss, reference_loss)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads, reference_grads)
    if sharded_axis:
        assert any(sharded_axis in str(spec) for spec in specs), specs


# ------------------------------------------------------------------------ pipeline
@pytest.fixture(scope="module")
def tiny_exports(tmp_path_factory):
    """A tiny Parti and a tiny ViT-VQGAN (4x4 grid of 16 codes) as export files,
    untrained: the pipeline's plumbing does not need a good model."""
    from t2i.config import to_json
    from t2i.families import get_task
    from t2i.model_files import write_export
    from t2i.parallel.partitioning import strip_boxes

    out = tmp_path_factory.mktemp("exports")
    paths = {}
    for name, spec in (("parti", CONFIG + ":tiny"), ("vit_vqgan", os.path.join(REPO, "configs/vit_vqgan.py:tiny"))):
        config = load_config(spec)
        if name == "vit_vqgan":
            config.loss.adversarial_weight = 0.0
        task = get_task(config)
        params = task.inference_params(strip_boxes(task.init(jax.random.key(0))))
        paths[name] = write_export(params, to_json(config), 0, str(out / f"{name}.npz"))
    return paths


class _CountingScorer:
    """Stands in for CLIP: prefers the candidate whose image is darkest."""

    source = "counting"

    def score(self, images, prompts):
        assert len(images) == len(prompts)
        return -np.asarray(images, np.float64).mean(axis=(1, 2, 3))


def test_generate_keeps_the_best_candidate_and_is_reproducible(tiny_exports):
    from t2i.model_files import load_model
    from t2i.parti.pipeline import generate

    model = load_model(tiny_exports["parti"], family="parti")
    tokenizer = load_model(tiny_exports["vit_vqgan"], family="vit_vqgan")
    settings = DecodeSettings(guidance_weight=2.0, temperature=1.0)
    prompts = ["a red circle", "two blue squares", "a green triangle"]
    one, none = generate(model, tokenizer, prompts, 3, settings, batch_size=2)
    assert one.shape == (3, 32, 32, 3) and one.dtype == np.uint8 and none is None
    best, scores = generate(
        model, tokenizer, prompts, 3, settings, num_candidates=4, scorer=_CountingScorer(), batch_size=5
    )
    assert scores.shape == (3, 4)
    np.testing.assert_array_equal(best.mean(axis=(1, 2, 3)), -scores.max(axis=1))
    # Candidate 0 of each prompt is the single sample: same key, whatever the batching.
    unranked, _ = generate(model, tokenizer, prompts, 3, settings, num_candidates=4, batch_size=3)
    np.testing.assert_array_equal(unranked, one)


def test_num_candidates_defaults_to_the_models_own():
    import ml_collections

    from t2i.parti.pipeline import default_num_candidates

    stored = ml_collections.ConfigDict(dict(sampling=dict(guidance_weight=3.0, num_candidates=8)))
    older = ml_collections.ConfigDict(dict(sampling=dict(guidance_weight=3.0)))  # saved before the field
    assert default_num_candidates(stored, {}) == 8
    assert default_num_candidates(stored, {"num_candidates": "2"}) == 2  # the flag wins
    assert default_num_candidates(older, {"num_candidates": None}) == 1


def test_sample_command_writes_a_manifest_and_refuses_bad_input(tmp_path, tiny_exports, capsys):
    from t2i.cli import main

    base = ["sample", "--pipeline", "parti", "--checkpoint", tiny_exports["parti"]]
    base += ["--image_tokenizer", tiny_exports["vit_vqgan"], "--batch_size", "2"]
    out = tmp_path / "samples"
    assert main(base + ["--prompt", "a red circle", "--out", str(out), "--top_k", "5", "--guidance", "2"]) == 0
    line = json.loads(open(out / "manifest.jsonl").read())
    settings = line["settings"]
    assert settings["pipeline"] == "parti" and settings["top_k"] == 5 and settings["guidance_weight"] == 2.0
    assert settings["temperature"] == 0.7  # the model's own default, from its config
    assert (out / line["image"]).is_file()

    cases = [
        (["--prompt", "a red circle", "--top_p", "0"], "--top_p must be in (0, 1]"),
        (["--prompt", "a red circle", "--temperature=-1"], "--temperature must be at least 0"),
        (["--prompt", "a red circle", "--top_k", "x"], "bad value for --top_k: 'x'"),
        (["--prompt", "  "], "prompt 1 is empty"),
        (["--prompt", "a red circle", "--steps", "5"], "--steps does not apply to --pipeline parti"),
    ]
    for extra, message in cases:
        capsys.readouterr()
        target = tmp_path / "never"
        assert main(base + extra + ["--out", str(target)]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert err.startswith("t2i: error: ") and message in err and len(err.splitlines()) == 1, err
        assert not target.exists()

    capsys.readouterr()
    wrong = ["sample", "--pipeline", "parti", "--checkpoint", tiny_exports["vit_vqgan"], "--prompt", "a red circle"]
    assert main(wrong + ["--out", str(tmp_path / "never")]) == 2
    assert "holds a vit_vqgan model, not parti" in capsys.readouterr().err

    long_prompt = " ".join(["a red circle to the left of a blue square"] * 5)
    assert main(base + ["--prompt", long_prompt, "--out", str(tmp_path / "long")]) == 0
    assert "the model reads the first 24" in capsys.readouterr().err


@pytest.mark.parametrize("layout", [{"data": 8}, {"data": 2, "tensor": 4}, {"fsdp": 4, "tensor": 2}])
def test_sharded_sampling_matches_one_device(layout):
    """Batch over data/fsdp, weights and KV caches over tensor/fsdp: the same tokens as
    one device (greedy, guided)."""
    from t2i.parallel.mesh import LOGICAL_AXIS_RULES, create_mesh
    from t2i.parallel.partitioning import batch_sharding, tree_shardings

    model = Parti(PartiSize(1, 2, 32, 4, 64), text_vocab=50, text_length=6, num_codes=16, grid=3)
    tokens = jax.random.randint(jax.random.key(1), (8, 6), 0, 50)
    mask = jnp.arange(6)[None] < jax.random.randint(jax.random.key(3), (8, 1), 1, 7)
    image = jnp.zeros((8, 9), jnp.int32)
    boxed = model.init(jax.random.key(0), tokens, mask, image)
    params = nn.meta.unbox(boxed)
    keys = jax.random.split(jax.random.key(5), 8)
    settings = DecodeSettings(guidance_weight=3.0, temperature=0.0)
    reference = _sample(model, params, tokens, mask, keys, settings)
    mesh = create_mesh(layout)
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
        shardings = tree_shardings(boxed, mesh)
        sharded = jax.tree.map(jax.device_put, params, shardings)
        rows = batch_sharding(mesh, 2)
        out = jax.jit(lambda p, t, m, k: sample_tokens(model, p, t, m, k, settings))(
            sharded, jax.device_put(tokens, rows), jax.device_put(mask, rows), keys
        )
        specs = {str(leaf.sharding.spec) for leaf in jax.tree.leaves(sharded)}
    np.testing.assert_array_equal(np.asarray(out), reference)
    if "tensor" in layout:
        assert any("tensor" in spec for spec in specs), specs


def test_sample_without_a_checkpoint_uses_the_committed_reference(tmp_path):
    """The reference Parti ships in the package (t2i/assets/parti_shapes.npz) with its
    decode settings, chosen on validation captions, and draws what it is asked."""
    from t2i.cli import main
    from t2i.evaluation import shapes_eval
    from t2i.parti.pipeline import REFERENCE_CLIP, REFERENCE_PARTI

    # The budget: Parti and CLIP together at most 25 MB.
    assert os.path.getsize(REFERENCE_PARTI) + os.path.getsize(REFERENCE_CLIP) <= 25e6
    out = tmp_path / "out"
    assert main(["sample", "--pipeline", "parti", "--split", "test", "--num", "16", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in open(out / "manifest.jsonl")]
    settings = rows[0]["settings"]
    assert settings["checkpoint"] == REFERENCE_PARTI and settings["step"] == 10_000
    assert (settings["guidance_weight"], settings["temperature"], settings["num_candidates"]) == (1.5, 0.7, 8)
    assert settings["reranker"] == REFERENCE_CLIP
    # The default setting's score on 200 test captions is in docs/parti.md; 16 captions
    # leave room for noise but not for a broken model, tokenizer or reranker.
    assert shapes_eval.evaluate_manifest(str(out / "manifest.jsonl")).overall >= 0.7


def test_sweep_scores_settings_and_paraphrases(tmp_path, tiny_exports, capsys):
    from t2i.evaluation.paraphrase import paraphrase
    from t2i.evaluation.shapes_eval import parse_caption
    from t2i.parti import sweep

    caption = "a photo of a large purple square to the left of a small red circle"
    rephrased = paraphrase(caption)
    assert rephrased == "a photograph of a big violet square left of a tiny red circle"
    with pytest.raises(ValueError):
        parse_caption(rephrased)  # outside the grammar: only the original caption judges
    out = tmp_path / "sweep.jsonl"
    argv = ["--model", tiny_exports["parti"], "--image_tokenizer", tiny_exports["vit_vqgan"], "--splits", "test"]
    argv += ["--num", "2", "--batch_size", "2", "--out", str(out)]
    assert sweep.main([*argv, "--guidance", "1,2"]) == 0
    assert sweep.main([*argv, "--paraphrase", "--temperature", "0"]) == 0
    rows = [json.loads(line) for line in open(out)]
    assert [(r["decode"]["guidance_weight"], r["paraphrase"]) for r in rows] == [
        (1.0, False),
        (2.0, False),
        (1.5, True),  # unset: the model's own guidance (configs/parti.py)
    ]
    assert rows[2]["decode"]["temperature"] == 0.0 and all(r["num"] == 2 and 0 <= r["overall"] <= 1 for r in rows)
    table = sweep.markdown_table(str(out))
    assert len(table.splitlines()) == 2 + len(rows) and "paraphrased" in table
    capsys.readouterr()
    bad = ["--model", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "bad.jsonl"), "--top_p", "1.5"]
    assert sweep.main(bad) == 2  # checked before the (missing) model loads
    assert "--top_p must be in (0, 1]" in capsys.readouterr().err and not (tmp_path / "bad.jsonl").exists()


def test_uncached_sampler_can_stop_after_a_prefix():
    model = _model()
    tokens, mask = _inputs()
    params = _init(model, tokens, mask)
    keys = jax.random.split(jax.random.key(5), 3)
    settings = DecodeSettings(guidance_weight=2.0, temperature=1.0)
    full = _sample(model, params, tokens, mask, keys, settings, cached=False)
    part = np.asarray(jax.jit(lambda p: sample_tokens_uncached(model, p, tokens, mask, keys, settings, 4))(params))
    np.testing.assert_array_equal(part[:, :4], full[:, :4])
    assert not part[:, 4:].any()
