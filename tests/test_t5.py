"""The Flax T5 encoder against Hugging Face goldens, T5X checkpoints, and at XXL scale.

The goldens (`tests/fixtures/t5/*/golden.npz`) come from transformers' `T5EncoderModel`
on random weights (`tests/fixtures/t5/make_fixtures.py`); these tests need neither
torch nor transformers.
"""

import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import PartitionSpec
from safetensors.numpy import load_file, save_file

from t2i.parallel.mesh import LOGICAL_AXIS_RULES, create_mesh
from t2i.parallel.partitioning import batch_sharding, strip_boxes, tree_shardings
from t2i.text.t5 import (
    T5_SIZES,
    T5CheckpointError,
    T5Config,
    T5Encoder,
    T5EncoderModule,
    abstract_params,
    convert_hf_params,
    load_hf_params,
    relative_position_bucket,
    restore_t5x_tree,
)
from t2i.text.tokenizer import default_shapes_tokenizer

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "t5")
VARIANTS = ("v1_0", "v1_1")
TOLERANCE = 1e-4
QKV = ("query", "key", "value")
AXIS_NAMES = {"embed", "mlp", "heads", "kv", "vocab", "norm", None}


def _golden(name):
    return dict(np.load(os.path.join(FIXTURES, name, "golden.npz")))


def _check_against_golden(out, golden, tolerance=TOLERANCE):
    out = np.asarray(out)
    mask = golden["mask"]
    assert out.shape == golden["last_hidden_state"].shape and out.dtype == np.float32
    assert np.isfinite(out).all()
    diff = np.abs(out - golden["last_hidden_state"])[mask]
    assert diff.max() < tolerance, f"max abs difference {diff.max():.3g}"
    assert (out[~mask] == 0).all()  # padding (and the empty prompt) encodes to zeros
    return float(diff.max())


@pytest.fixture(scope="module", params=VARIANTS)
def hf_encoder(request):
    return request.param, T5Encoder.from_pretrained_hf(os.path.join(FIXTURES, request.param), max_length=40)


def test_matches_hugging_face(hf_encoder):
    name, encoder = hf_encoder
    golden = _golden(name)
    assert encoder.config.is_gated == (name == "v1_1")
    max_diff = _check_against_golden(encoder.encode_ids(golden["ids"], golden["mask"]), golden)
    print(f"{name}: max abs difference to transformers {max_diff:.3g}")


def _to_t5x_tree(params):
    """Our tree -> T5X's layout: flat attention kernels, [heads, buckets] table."""
    encoder = {
        "relpos_bias": {"rel_embedding": params["relpos_bias"]["embedding"].T},
        "encoder_norm": params["encoder_norm"],
    }
    for key, layer in params.items():
        if key.startswith("layers_"):
            kernels = {name: value["kernel"] for name, value in layer["attention"].items()}
            attention = {name: {"kernel": kernels[name].reshape(kernels[name].shape[0], -1)} for name in QKV}
            attention["out"] = {"kernel": kernels["out"].reshape(-1, kernels["out"].shape[-1])}
            encoder[key] = {**layer, "attention": attention}
    decoder = {"decoder_norm": {"scale": np.ones(3, np.float32)}}  # neither restored nor used
    target = {"token_embedder": params["token_embedder"], "encoder": encoder, "decoder": decoder}
    return {"target": target, "state": {"step": np.int32(7)}}


@pytest.mark.parametrize("name", VARIANTS)
def test_t5x_orbax_checkpoint_gives_the_same_outputs(name, tmp_path):
    config = T5Config.from_hf(os.path.join(FIXTURES, name))
    params = load_hf_params(os.path.join(FIXTURES, name), config)
    path = str(tmp_path / "t5x")
    ocp.PyTreeCheckpointer().save(path, _to_t5x_tree(params))
    assert set(restore_t5x_tree(path)["target"]) == {"token_embedder", "encoder"}
    encoder = T5Encoder.from_t5x(path, config, max_length=40)
    golden = _golden(name)
    _check_against_golden(encoder.encode_ids(golden["ids"], golden["mask"]), golden)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(encoder.params), params)


def test_relative_position_buckets():
    rp = np.array([0, -1, 1, -7, -8, -15, -16, -127, -128, -1000, 7, 8, 16, 1000])
    # 32 buckets: 0-15 keys at/before the query, 16-31 after; 8 exact, then
    # 8 + int(log(d / 8) / log(16) * 8), e.g. d=15 -> 8 + int(1.81) = 9, capped at 15.
    expected = [0, 1, 17, 7, 8, 9, 10, 15, 15, 15, 23, 24, 26, 31]
    np.testing.assert_array_equal(relative_position_bucket(rp, True, 32, 128), expected)
    # Unidirectional (decoder) form: keys after the query all share bucket 0.
    np.testing.assert_array_equal(relative_position_bucket(np.array([-3, 0, 5, -20]), False, 32, 128), [3, 0, 0, 17])
    for name in VARIANTS:  # against transformers' own buckets for -300..300
        golden, config = _golden(name), T5Config.from_hf(os.path.join(FIXTURES, name))
        np.testing.assert_array_equal(
            relative_position_bucket(
                golden["relative_position"],
                True,
                config.relative_attention_num_buckets,
                config.relative_attention_max_distance,
            ),
            golden["bucket"],
        )


def test_config_from_names_and_hf_json():
    assert T5Config.from_name("xxl").d_ff == 10240 and T5Config.from_name("v1_0-11b").num_heads == 128
    # The original t5-* config.json files have no feed_forward_proj: they mean ReLU (v1.0).
    old_style = {"d_model": 512, "d_ff": 2048, "num_heads": 8, "num_layers": 6, "vocab_size": 32128}
    assert T5Config.from_hf(old_style) == T5Config.from_name("v1_0-small")
    with pytest.raises(ValueError, match="unknown T5 size 'huge'"):
        T5Config.from_name("huge")


def _count(tree):
    leaves = jax.tree.leaves(tree)
    assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in leaves)  # nothing allocated
    return sum(leaf.size for leaf in leaves)


def test_parameter_counts():
    # Published: google/t5-v1_1-xxl's T5EncoderModel has 4,762,310,656 parameters
    # (embedding 131.6M + 24 x 192.9M); Imagen's "4.6B" counts the blocks only.
    xxl = _count(abstract_params(T5Config.from_name("xxl")))
    assert abs(xxl - 4.762e9) / 4.762e9 < 0.02
    assert xxl == 4_762_310_656
    # v1.1 small: 32128 x 512 embedding + 8 x (4 x 512 x 384 + 3 x 512 x 1024 + 2 x 512) + 32 x 6 + 512.
    assert _count(abstract_params(T5Config.from_name("small"))) == 35_332_800


def test_every_weight_has_logical_axis_names():
    for name in ("small", "v1_0-small"):
        abstract = abstract_params(T5Config.from_name(name))
        boxes = jax.tree.leaves(abstract, is_leaf=lambda x: isinstance(x, nn.Partitioned))
        for box in boxes:
            assert isinstance(box, nn.Partitioned)
            assert len(box.names) == box.value.ndim and set(box.names) <= AXIS_NAMES, box.names


def test_xxl_shards_every_large_weight():
    size = T5_SIZES["xxl"]
    for dim in (size["d_model"], size["d_ff"], size["num_heads"], T5Config().vocab_size):
        assert dim % 8 == 0
    mesh = create_mesh({"fsdp": 4, "tensor": 2})
    abstract = abstract_params(T5Config.from_name("xxl"))
    shardings = tree_shardings(abstract, mesh)
    leaves = jax.tree.leaves(strip_boxes(abstract))
    large = 0
    for leaf, sharding in zip(leaves, jax.tree.leaves(shardings)):
        if leaf.size * 4 > 4 * 2**20:  # above 4 MiB in f32: split over all 8 devices
            assert np.prod(sharding.shard_shape(leaf.shape)) * 8 == leaf.size, (leaf.shape, sharding.spec)
            large += 1
    assert large == 1 + 24 * 7  # the embedding, and q, k, v, o, wi_0, wi_1, wo per layer


def test_xxl_forward_compiles_sharded():
    """The bf16 XXL forward on 8 devices, from shapes only: each holds 1/8 of the weights."""
    mesh = create_mesh({"fsdp": 4, "tensor": 2})
    config = T5Config.from_name("xxl")
    abstract = abstract_params(config, jnp.bfloat16, jnp.bfloat16)
    params = jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        strip_boxes(abstract),
        tree_shardings(abstract, mesh),
    )
    ids = jax.ShapeDtypeStruct((8, 128), jnp.int32, sharding=batch_sharding(mesh, 2))
    mask = jax.ShapeDtypeStruct((8, 128), jnp.bool_, sharding=batch_sharding(mesh, 2))
    module = T5EncoderModule(config, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
        compiled = jax.jit(lambda p, i, m: module.apply({"params": p}, i, m)).lower(params, ids, mask).compile()
    param_bytes = 2 * 4_762_310_656
    assert compiled.memory_analysis().argument_size_in_bytes < param_bytes / 8 * 1.01


def test_sharded_encoder_matches_golden():
    mesh = create_mesh({"fsdp": 4, "tensor": 2})
    encoder = T5Encoder.from_pretrained_hf(os.path.join(FIXTURES, "v1_1"), max_length=40, mesh=mesh)
    assert encoder.params["layers_0"]["mlp"]["wi_0"]["kernel"].sharding.spec == PartitionSpec("fsdp", "tensor")
    golden = _golden("v1_1")
    _check_against_golden(encoder.encode_ids(golden["ids"], golden["mask"]), golden)


def test_sharded_safetensors_checkpoint(tmp_path):
    tensors = load_file(os.path.join(FIXTURES, "v1_0", "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, shard_names in shards.items():
        save_file({n: tensors[n] for n in shard_names}, str(tmp_path / file))
    weight_map = {n: file for file, shard_names in shards.items() for n in shard_names}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (tmp_path / "config.json").write_text(open(os.path.join(FIXTURES, "v1_0", "config.json")).read())
    config = T5Config.from_hf(tmp_path)
    jax.tree.map(
        np.testing.assert_array_equal,
        load_hf_params(str(tmp_path), config),
        load_hf_params(os.path.join(FIXTURES, "v1_0"), config),
    )


def test_checkpoint_errors_name_the_tensor():
    tensors = load_file(os.path.join(FIXTURES, "v1_1", "model.safetensors"))
    config = T5Config.from_hf(os.path.join(FIXTURES, "v1_1"))
    missing = {k: v for k, v in tensors.items() if k != "encoder.block.1.layer.1.DenseReluDense.wi_1.weight"}
    with pytest.raises(T5CheckpointError, match=r"no tensor 'encoder\.block\.1\.layer\.1\.DenseReluDense\.wi_1"):
        convert_hf_params(missing, config)
    with pytest.raises(ValueError, match=r"'encoder\.block\.0\.layer\.1\.DenseReluDense\.wi_0\.weight' has shape"):
        convert_hf_params(tensors, T5Config(**{**config.__dict__, "d_ff": 256}))
    with pytest.raises(ValueError, match=r"no tensor .*DenseReluDense\.wi\.weight"):  # v1.1 read as v1.0
        convert_hf_params(tensors, T5Config(**{**config.__dict__, "feed_forward_proj": "relu"}))
    with pytest.raises(ValueError, match=r"'encoder\.block\.1\..*' is not used"):
        convert_hf_params(tensors, T5Config(**{**config.__dict__, "num_layers": 1}))


def test_encode_texts_with_tokenizer():
    tokenizer = default_shapes_tokenizer(max_length=16)  # T5's id layout: pad 0, eos 1; 128 pieces
    config = T5Config.from_hf(os.path.join(FIXTURES, "v1_0"))
    params = load_hf_params(os.path.join(FIXTURES, "v1_0"), config)
    embedding = params["token_embedder"]["embedding"]  # 100 rows: grow to the tokenizer's 128
    extra = np.random.default_rng(0).normal(size=(128 - config.vocab_size, config.d_model)).astype(np.float32)
    params["token_embedder"]["embedding"] = np.concatenate([embedding, extra])
    with pytest.raises(ValueError, match="tokenizer has 128 pieces"):
        T5Encoder(config, params, max_length=16, tokenizer=tokenizer)
    config = dataclasses.replace(config, vocab_size=128)
    encoder = T5Encoder(config, params, max_length=16, tokenizer=tokenizer)
    embeddings, mask = encoder.encode(["a small red circle", ""])
    assert embeddings.shape == (2, 16, 64) and embeddings.dtype == jnp.float32
    ids, expected_mask = tokenizer.encode(["a small red circle", ""])
    np.testing.assert_array_equal(mask, expected_mask)
    np.testing.assert_array_equal(embeddings, encoder.encode_ids(ids, mask))
    assert mask[0].any() and not mask[1].any() and (np.asarray(embeddings[1]) == 0).all()


def test_bfloat16_compute_stays_close():
    golden = _golden("v1_1")
    encoder = T5Encoder.from_pretrained_hf(os.path.join(FIXTURES, "v1_1"), max_length=40, dtype=jnp.bfloat16)
    out = np.asarray(encoder.encode_ids(golden["ids"], golden["mask"]))
    assert out.dtype == np.float32
    _check_against_golden(out, golden, tolerance=0.1)
