"""CLIP (issue 28, item 5): shapes and unit norm, the loss against numpy, padding and
causality of the text tower, the clipped scale, a trainer step, retrieval metrics and
the scorer's plumbing."""

import functools
import json
import os
from types import SimpleNamespace

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO

from t2i.clip import model as clip_model
from t2i.clip.scorer import CLIPScorer, ImageTextScorer
from t2i.clip.task import CLIPTask, retrieval_metrics, strip_prefix, top_k_hits
from t2i.config import load_config
from t2i.errors import UsageError
from t2i.families import get_task
from t2i.parallel.partitioning import strip_boxes
from t2i.text.tokenizer import default_shapes_tokenizer

CONFIG = os.path.join(REPO, "configs/clip.py")


@pytest.fixture(scope="module")
def tiny():
    """The tiny variant, randomly initialised (no data needed), with its functions jitted
    once for every test of the module."""
    task = get_task(load_config(CONFIG + ":tiny"))
    return SimpleNamespace(
        task=task,
        params=strip_boxes(jax.jit(task.init)(jax.random.key(0))),
        embed_images=jax.jit(task.embed_images),
        embed_texts=jax.jit(task.embed_texts),
        loss=jax.jit(lambda params, batch: task.loss(params, batch, None)),
        grad=jax.jit(jax.grad(lambda params, batch: task.loss(params, batch, None)[0])),
        logit_scale=jax.jit(task.logit_scale),
    )


def _inputs(n=4, size=32, length=24, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    tokens = rng.integers(3, 128, (n, length)).astype(np.int32)
    lengths = rng.integers(1, length, n)
    mask = np.arange(length)[None] < lengths[:, None]
    return images, np.where(mask, tokens, 0), mask


def test_embeddings_have_the_right_shape_and_unit_norm(tiny):
    params = tiny.params
    images, tokens, mask = _inputs()
    image_embeddings = tiny.embed_images(params, images)
    text_embeddings = tiny.embed_texts(params, tokens, mask)
    assert image_embeddings.shape == text_embeddings.shape == (4, 16)
    assert image_embeddings.dtype == text_embeddings.dtype == jnp.float32
    np.testing.assert_allclose(np.linalg.norm(image_embeddings, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(text_embeddings, axis=1), 1.0, rtol=1e-5)
    assert float(np.std(np.asarray(image_embeddings), axis=0).mean()) > 1e-3  # not one constant vector


def test_every_weight_is_named_and_the_reference_layout_is_openais():
    boxed = jax.eval_shape(get_task(load_config(CONFIG + ":tiny,variant=shapes")).init, jax.random.key(0))
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
    specs = nn.get_partition_spec(boxed)["params"]
    assert tuple(specs["image"]["patch_embed"]["Dense_0"]["kernel"]) == ("patch_pixels", "embed")
    assert tuple(specs["text"]["token_embedding"]) == ("vocab", "embed")
    assert tuple(specs["text"]["projection"]["Dense_0"]["kernel"]) == ("embed", "joint_embed")

    # OpenAI's ViT-B/32 has 151,277,313 parameters; this layout lacks its class token and
    # that token's position (mean pooling), and its pre-LayerNorm, and has a patch bias.
    config = load_config(CONFIG + ":variant=vit-b/32", ["model.vocab_size=49408", "data.max_text_length=77"])
    params = strip_boxes(jax.eval_shape(get_task(config).init, jax.random.key(0)))
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    assert count == 151_277_313 - 768 - 768 - 2 * 768 + 768
    with pytest.raises(ValueError, match="unknown CLIP variant 'huge'"):
        clip_model.clip_size("huge")


def _numpy_symmetric_cross_entropy(images, texts, scale):
    logits = scale * images.astype(np.float64) @ texts.astype(np.float64).T

    def cross_entropy(rows):  # the diagonal is each row's label
        shifted = rows - rows.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return -np.mean(np.diag(log_probs))

    return 0.5 * (cross_entropy(logits) + cross_entropy(logits.T))


def test_loss_is_the_symmetric_cross_entropy(tiny):
    params = tiny.params
    images, tokens, mask = _inputs(n=6)
    batch = {"image_32": images, "tokens": tokens, "text_mask": mask}
    loss, metrics = tiny.loss(params, batch)
    image_embeddings = np.asarray(tiny.embed_images(params, images))
    text_embeddings = np.asarray(tiny.embed_texts(params, tokens, mask))
    scale = float(tiny.logit_scale(params))
    np.testing.assert_allclose(scale, 1 / 0.07, rtol=1e-5)  # CLIP's initial temperature
    np.testing.assert_allclose(metrics["logit_scale"], scale, rtol=1e-6)
    expected = _numpy_symmetric_cross_entropy(image_embeddings, text_embeddings, scale)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    # The pairing matters: the texts in reverse order give another loss.
    swapped = {**batch, "tokens": tokens[::-1], "text_mask": mask[::-1]}
    assert abs(float(tiny.loss(params, swapped)[0]) - float(loss)) > 1e-3
    logits = image_embeddings @ text_embeddings.T
    np.testing.assert_allclose(metrics["image_to_text_accuracy"], np.mean(logits.argmax(1) == np.arange(6)), atol=1e-6)
    np.testing.assert_allclose(metrics["text_to_image_accuracy"], np.mean(logits.argmax(0) == np.arange(6)), atol=1e-6)


def test_eval_step_ignores_padded_rows(tiny):
    params = tiny.params
    images, tokens, mask = _inputs(n=6)
    valid = np.array([True] * 4 + [False] * 2)
    batch = {"image_32": images, "tokens": tokens, "text_mask": mask, "valid": valid}
    sums = jax.jit(tiny.task.eval_step)(params, batch)
    assert {float(den) for _, den in sums.values()} == {4.0}
    real = {"image_32": images[:4], "tokens": tokens[:4], "text_mask": mask[:4]}
    loss, metrics = tiny.loss(params, real)
    np.testing.assert_allclose(float(sums["loss"][0]) / 4, float(loss), rtol=1e-5)
    np.testing.assert_allclose(float(sums["image_to_text_accuracy"][0]) / 4, metrics["image_to_text_accuracy"])


def test_text_embedding_ignores_padding(tiny):
    params = tiny.params
    _, tokens, mask = _inputs(n=4)
    base = np.asarray(tiny.embed_texts(params, tokens, mask))
    changed = np.where(mask, tokens, np.random.default_rng(1).integers(3, 128, tokens.shape)).astype(np.int32)
    assert (changed != tokens).any()
    np.testing.assert_allclose(tiny.embed_texts(params, changed, mask), base, atol=1e-6)
    # A real token does count, and so does the length (the pooled position).
    changed = tokens.copy()
    changed[:, 0] = (changed[:, 0] + 5) % 128
    assert np.abs(np.asarray(tiny.embed_texts(params, changed, mask)) - base).max() > 1e-3
    shorter = mask & (np.arange(24)[None] < mask.sum(1, keepdims=True) - 1)
    assert np.abs(np.asarray(tiny.embed_texts(params, tokens, shorter)) - base).max() > 1e-3


def _text_hidden_states(params, tokens, mask):
    """The text tower's final-LayerNorm output [B, L, W]: the features at every position."""
    tower = clip_model.TextTower(clip_model.clip_size("tiny"), 128, 24)
    _, state = jax.jit(
        functools.partial(tower.apply, capture_intermediates=lambda module, _: module.name == "final_norm")
    )({"params": params["params"]["text"]}, tokens, mask)
    return np.asarray(state["intermediates"]["final_norm"]["__call__"][0])


def test_text_tower_is_causal(tiny):
    """Every position real: the features at t change when a token at or before t does,
    never when a later one does."""
    params = tiny.params
    tokens = np.random.default_rng(3).integers(3, 128, (2, 24)).astype(np.int32)
    mask = np.ones((2, 24), bool)
    base = _text_hidden_states(params, tokens, mask)
    later = tokens.copy()
    later[:, 10:] = (later[:, 10:] + 7) % 128
    hidden = _text_hidden_states(params, later, mask)
    np.testing.assert_allclose(hidden[:, :10], base[:, :10], atol=1e-6)
    assert np.abs(hidden[:, 10:] - base[:, 10:]).min(axis=-1).max() > 0  # the later positions did change
    earlier = tokens.copy()
    earlier[:, 3] = (earlier[:, 3] + 7) % 128
    hidden = _text_hidden_states(params, earlier, mask)
    np.testing.assert_allclose(hidden[:, :3], base[:, :3], atol=1e-6)
    assert (np.abs(hidden[:, 3:] - base[:, 3:]).max(axis=-1) > 1e-4).all()  # every later position saw it


def test_logit_scale_is_clipped_at_100(tiny):
    params = tiny.params
    big = jax.tree.map(lambda x: x, params)
    big["params"] = dict(big["params"], log_logit_scale=jnp.asarray(np.log(1000.0), jnp.float32))
    assert float(tiny.logit_scale(big)) == pytest.approx(100.0)
    images, tokens, mask = _inputs(n=4)
    batch = {"image_32": images, "tokens": tokens, "text_mask": mask}
    grads = tiny.grad(big, batch)
    assert float(grads["params"]["log_logit_scale"]) == 0.0  # beyond the ceiling: no gradient
    grads = tiny.grad(params, batch)
    assert float(grads["params"]["log_logit_scale"]) != 0.0


def test_one_training_step_through_the_trainer(tiny_data_dir, tmp_path):
    from t2i.train.trainer import train

    config = load_config(CONFIG + ":tiny", [f"data.data_dir={tiny_data_dir}", "train.num_steps=2"])
    config.train.eval_every = 1
    result = train(config, str(tmp_path / "run"), progress=False)
    assert int(result.state.step) == 2
    row = result.history[-1]
    assert {"loss", "logit_scale", "image_to_text_accuracy", "text_to_image_accuracy"} <= set(row)
    assert np.isfinite(row["loss"]) and 0 < row["loss"] < 2 * np.log(8) + 1
    assert set(result.eval_metrics) == {"loss", "image_to_text_accuracy", "text_to_image_accuracy"}
    assert all(0 <= v <= 1 for k, v in result.eval_metrics.items() if k.endswith("accuracy"))


def test_top_k_and_retrieval_metrics_on_a_hand_built_matrix():
    # 4 pairs; rows are images, columns texts.
    similarity = np.array(
        [
            [0.9, 0.1, 0.0, 0.2],  # image 0 ranks texts 0, 3, 1, 2: its own first
            [0.8, 0.7, 0.1, 0.0],  # image 1: 0, 1, ...: its own second
            [0.1, 0.5, 0.3, 0.9],  # image 2: 3, 1, 2, 0: its own third
            [0.0, 0.1, 0.4, 0.3],  # image 3: 2, 3, ...: its own second
        ]
    )
    assert top_k_hits(similarity, np.arange(4), np.arange(4), ks=(1, 2, 3)) == {1: 0.25, 2: 0.75, 3: 1.0}
    # Texts rank images: text 0 -> 0; text 1 -> 1; text 2 -> 3, 2; text 3 -> 2, 3.
    assert top_k_hits(similarity.T, np.arange(4), np.arange(4), ks=(1, 2)) == {1: 0.5, 2: 1.0}

    # Pairs 0 and 1 have identical captions; pairs 2 and 3 the same description under
    # different prefixes.
    captions = ["a red circle", "a red circle", "an image of a green triangle", "a green triangle"]
    metrics = retrieval_metrics(similarity, captions, ks=(1, 5))
    assert metrics["image_to_text_index_top1"] == 0.25
    assert metrics["image_to_text_caption_top1"] == 0.5  # image 1 -> text 0, the same caption
    assert metrics["image_to_text_description_top1"] == 1.0  # images 2 and 3 -> each other's text
    assert metrics["image_to_text_index_top5"] == 1.0  # k beyond N: every item retrieved
    assert metrics["text_to_image_index_top1"] == 0.5
    assert metrics["text_to_image_caption_top1"] == 0.5
    assert metrics["text_to_image_description_top1"] == 1.0
    assert set(retrieval_metrics(similarity)) == {
        f"{d}_index_top{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5)
    }
    assert strip_prefix("a drawing of three red circles") == "three red circles"
    assert strip_prefix("an image of a red circle") == "a red circle"
    assert strip_prefix("a red circle") == "a red circle"
    with pytest.raises(ValueError, match="square"):
        retrieval_metrics(similarity[:3])


def test_true_criterion_asks_the_shapes_evaluator():
    from t2i.data import shapes

    def image(*objects):
        return shapes.render([shapes.ShapeObject(*o) for o in objects], 32)

    images = np.stack(
        [
            image(("red", "circle", "large", 0.2, 0.2, shapes.SIZES["large"])),
            image(("red", "circle", "small", 0.8, 0.8, shapes.SIZES["small"])),
            image(("blue", "square", "small", 0.5, 0.5, shapes.SIZES["small"])),
        ]
    )
    captions = ["a large red circle in the top left", "a photo of a red circle", "a blue square"]
    similarity = np.array(
        [
            [0.1, 0.9, 0.0],  # image 0 -> "a red circle": true of it, not its description
            [0.9, 0.1, 0.0],  # image 1 -> "a large red circle in the top left": false of it
            [0.0, 0.1, 0.9],  # image 2 -> its own caption
        ]
    )
    metrics = retrieval_metrics(similarity, captions, images, ks=(1, 2))
    assert metrics["image_to_text_description_top1"] == pytest.approx(1 / 3)
    assert metrics["image_to_text_true_top1"] == pytest.approx(2 / 3)
    assert metrics["image_to_text_true_top2"] == 1.0
    # Texts rank images: "a large red circle in the top left" -> image 1 (false), then 0;
    # "a red circle" -> image 0 (true); "a blue square" -> image 2 (true).
    assert metrics["text_to_image_true_top1"] == pytest.approx(2 / 3)
    assert metrics["text_to_image_index_top1"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="needs the N captions"):
        retrieval_metrics(similarity, None, images)


def test_ties_go_to_the_lower_index():
    similarity = np.array([[0.5, 0.5], [0.5, 0.5]])
    assert top_k_hits(similarity, np.arange(2), np.arange(2), ks=(1,)) == {1: 0.5}


class _Loaded:
    def __init__(self, task, params, config):
        self.task, self.params, self.config = task, params, config


def test_scorer_plumbing(tiny):
    params = tiny.params
    task = tiny.task
    scorer = CLIPScorer(_Loaded(task, params, task.config), batch_size=4)
    assert isinstance(scorer, ImageTextScorer)
    prompts = ["a red circle", "two blue squares", "a photo of a green triangle above a red square", "", "x", "y"]
    images = _inputs(n=6, size=32)[0]
    scores = scorer.score(images, prompts)
    assert scores.shape == (6,) and scores.dtype == np.float32
    tokens, mask = default_shapes_tokenizer(24).encode(prompts)
    cosine = np.sum(
        np.asarray(tiny.embed_images(params, images)) * np.asarray(tiny.embed_texts(params, tokens, mask)), 1
    )
    np.testing.assert_allclose(scores, cosine, atol=1e-5)  # 6 inputs in batches of 4: padding dropped

    # Another resolution: resized (in [-1, 1]) to the model's 32 px first.
    big = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)  # 64 px, each pixel doubled
    resized = jax.image.resize(big.astype(np.float32) / 127.5 - 1.0, (6, 32, 32, 3), method="linear")
    expected = np.sum(
        np.asarray(task.model.apply(params, resized, method=clip_model.CLIP.encode_image))
        * np.asarray(tiny.embed_texts(params, tokens, mask)),
        1,
    )
    np.testing.assert_allclose(scorer.score(big, prompts), expected, atol=1e-5)
    assert scorer.score(images[:0], []).shape == (0,)
    with pytest.raises(ValueError, match="one prompt per image"):
        scorer.score(images, prompts[:2])
    with pytest.raises(ValueError, match="uint8"):
        scorer.score(images.astype(np.float32), prompts)
    not_clip = _Loaded(object(), params, task.config)
    with pytest.raises(UsageError, match="not a CLIP"):
        CLIPScorer(not_clip)


def test_scorer_loads_an_export(tiny_data_dir, tmp_path):
    from t2i.config import to_json
    from t2i.model_files import write_export

    config = load_config(CONFIG + ":tiny", [f"data.data_dir={tiny_data_dir}"])
    task = get_task(config)
    params = strip_boxes(jax.jit(task.init)(jax.random.key(1)))
    path = write_export(params, to_json(config), 0, str(tmp_path / "clip.npz"))
    scorer = CLIPScorer.from_file(path)
    assert scorer.source == path
    assert isinstance(scorer.task, CLIPTask)
    images = _inputs(n=2)[0]
    exported = jax.tree.map(lambda x: jnp.asarray(np.asarray(x, np.float16), jnp.float32), params)
    direct = CLIPScorer(_Loaded(task, exported, config)).score(images, ["a red circle", "two blue squares"])
    np.testing.assert_allclose(scorer.score(images, ["a red circle", "two blue squares"]), direct, atol=1e-5)

    # Retrieval over a split, from the command line (padding of the last batch dropped).
    from t2i.clip.__main__ import main

    out = tmp_path / "retrieval.json"
    args = ["--checkpoint", path, "--num", "20", "--data_dir", tiny_data_dir, "--batch_size", "8", "--json", str(out)]
    assert main(args) == 0
    metrics = json.load(open(out))
    assert metrics["num_examples"] == 20 and metrics["split"] == "test"
    for direction in ("image_to_text", "text_to_image"):
        for k in (1, 5):
            rates = [metrics[f"{direction}_{c}_top{k}"] for c in ("index", "caption", "description", "true")]
            assert 0 <= rates[0] and rates == sorted(rates) and rates[-1] <= 1  # each looser than the one before
        assert metrics[f"{direction}_index_top1"] <= metrics[f"{direction}_index_top5"]
    assert main(["--checkpoint", str(tmp_path / "missing.npz")]) == 2
