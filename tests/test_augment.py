"""The recolour augmentation (t2i.data.augment) the image tokenizer trains with: exact
renders of valid recoloured scenes at every resolution, geometry kept, seeded, the
identity at probability 0, and hooked into the ViT-VQGAN task's training pipeline; the
Shapes classifier's independent colours."""

import itertools
import os

import numpy as np
import pytest
from conftest import REPO

from t2i.config import load_config
from t2i.data import pipeline, shapes
from t2i.data.augment import recolor, scene_objects
from t2i.evaluation import shapes_eval
from t2i.families import get_task

RESOLUTIONS = (16, 32, 64)
GEOMETRY = ("kind", "num_objects", "shape", "size", "cx", "cy", "r")


def flat(scene: shapes.Scene) -> dict:
    """The pipeline's flat example of a scene, through `to_arrays` as a TFDS read gives it."""
    objects = scene.objects
    return pipeline.to_arrays(
        {
            **{f"image_{s}": shapes.render(scene, s) for s in RESOLUTIONS},
            "caption": scene.caption.encode(),
            "kind": shapes.KINDS.index(scene.kind),
            "objects": {
                "color": [shapes.COLORS.index(o.color) for o in objects],
                "shape": [shapes.SHAPES.index(o.shape) for o in objects],
                "size": [tuple(shapes.SIZES).index(o.size) for o in objects],
                "cx": np.asarray([o.cx for o in objects], np.float32),
                "cy": np.asarray([o.cy for o in objects], np.float32),
                "r": np.asarray([o.r for o in objects], np.float32),
            },
        }
    )


def scenes(kind=None, count=60, split="train"):
    found = (shapes.scene_for(split, i) for i in itertools.count())
    return list(itertools.islice((scene for scene in found if kind is None or scene.kind == kind), count))


def test_recolored_images_are_exact_renders_of_the_recolored_scene():
    changed = 0
    for i, scene in enumerate(scenes()):
        example = flat(scene)
        out = recolor(example, np.random.default_rng(i), prob=1.0)
        objects = scene_objects(out)
        for s in RESOLUTIONS:
            assert out[f"image_{s}"].shape == (s, s, 3) and out[f"image_{s}"].dtype == np.uint8
            np.testing.assert_array_equal(out[f"image_{s}"], shapes.render(objects, s))
        changed += not np.array_equal(out["color"], example["color"])
        if not np.array_equal(out["color"], example["color"]):
            assert not np.array_equal(out["image_64"], example["image_64"])
    assert changed > 40  # 60 scenes; a redraw keeps all colours with probability 1/6 or less


def test_geometry_and_padding_untouched_and_input_not_modified():
    for i, scene in enumerate(scenes()):
        example = {**flat(scene), "image_tokens": np.arange(64, dtype=np.int16).reshape(8, 8)}  # not an image
        before = {key: np.array(value, copy=True) for key, value in example.items()}
        out = recolor(example, np.random.default_rng(i), prob=1.0)
        for key in GEOMETRY + ("image_tokens",):
            np.testing.assert_array_equal(out[key], example[key])
        n = int(example["num_objects"])
        assert (out["color"][n:] == -1).all() and (out["color"][:n] >= 0).all()
        assert out["color"].dtype == example["color"].dtype
        for key, value in before.items():
            np.testing.assert_array_equal(example[key], value)


def test_pairs_keep_two_identities_and_counts_one_colour():
    same_shape = [s for s in scenes("pair", 500) if s.objects[0].shape == s.objects[1].shape][:5]
    assert same_shape  # pairs of one shape in two colours are the case that can break
    for scene in same_shape:
        colors = [recolor(flat(scene), np.random.default_rng(seed), 1.0)["color"][:2] for seed in range(200)]
        assert all(a != b for a, b in colors)
        assert len({tuple(c) for c in colors}) > 20  # 30 valid assignments, all reachable
    for scene in scenes("count", 10):
        n = len(scene.objects)
        drawn = set()
        for seed in range(60):
            color = recolor(flat(scene), np.random.default_rng(seed), 1.0)["color"][:n]
            assert len(set(color.tolist())) == 1
            drawn.add(int(color[0]))
        assert drawn == set(range(len(shapes.COLORS)))


def test_held_out_pairs_appear_and_captions_name_the_new_colours():
    seen = set()
    for i, scene in enumerate(scenes(count=300)):
        out = recolor(flat(scene), np.random.default_rng(i), prob=1.0)
        objects = scene_objects(out)
        seen |= {(o.color, o.shape) for o in objects}
        request = shapes_eval.parse_caption(out["caption"])  # articles fixed, grammar kept
        assert request.kind == scene.kind
        assert [(c, s) for c, s, _ in request.objects] == [(o.color, o.shape) for o in objects[: len(request.objects)]]
        if i < 60:  # the evaluator reads the recoloured render as its caption asks
            verdict = shapes_eval.judge(request, shapes_eval.detect(out["image_64"]))
            assert verdict["overall"], (out["caption"], verdict)
    assert shapes.HELDOUT_PAIRS <= seen


def test_probability_zero_is_the_identity_and_seeds_reproduce():
    example = flat(scenes(count=1)[0])
    for seed in range(20):
        assert recolor(example, np.random.default_rng(seed), prob=0.0) is example
    rates = [
        recolor(example, np.random.default_rng(seed), prob=0.5)["caption"] != example["caption"] for seed in range(400)
    ]
    assert 0.3 < np.mean(rates) < 0.5  # 0.5 times 5/6: a redraw may keep the colour
    for seed in range(10):
        a = recolor(example, np.random.default_rng(seed), prob=1.0)
        b = recolor(example, np.random.default_rng(seed), prob=1.0)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    outputs = {tuple(recolor(example, np.random.default_rng(s), prob=1.0)["color"]) for s in range(20)}
    assert len(outputs) > 3


def test_independent_colours_for_the_classifier(tiny_data_dir):
    # keep_kind=False: every object's colour drawn on its own, so a count scene can mix
    # colours; the render is still exact, the geometry kept, and no caption describes it.
    mixed = 0
    for i, scene in enumerate(scenes("count", count=40)):
        example = flat(scene)
        out = recolor(example, np.random.default_rng(i), prob=1.0, keep_kind=False)
        n = len(scene.objects)
        mixed += len(set(out["color"][:n].tolist())) > 1
        assert out["caption"] == ""
        for key in GEOMETRY:
            np.testing.assert_array_equal(out[key], example[key])
        for size in RESOLUTIONS:
            np.testing.assert_array_equal(out[f"image_{size}"], shapes.render(scene_objects(out), size))
    assert mixed > 20  # 1 - 1/6 (two objects) or 1 - 1/36 (three) of them

    config = load_config(os.path.join(REPO, "configs/shapes_classifier.py"), [f"data.data_dir={tiny_data_dir}"])
    task = get_task(config)
    assert task.random_transform.keywords == dict(prob=config.model.recolor_probability, keep_kind=False)


def test_text_features_must_come_after_recolouring():
    example = {**flat(scenes(count=1)[0]), "tokens": np.zeros((24,), np.int32)}
    with pytest.raises(ValueError, match="before text features"):
        recolor(example, np.random.default_rng(0), prob=1.0)


def test_vqgan_task_recolours_training_batches_only_when_asked(tiny_data_dir):
    config_path = os.path.join(REPO, "configs/vit_vqgan.py")
    off = get_task(load_config(config_path + ":tiny", [f"data.data_dir={tiny_data_dir}"]))
    assert off.random_transform is None
    assert load_config(config_path + ":stage=4").data.recolor_prob == 0.5
    assert load_config(config_path + ":stage=3").data.recolor_prob == 0.0

    config = load_config(config_path + ":tiny", [f"data.data_dir={tiny_data_dir}", "data.recolor_prob=1.0"])
    task = get_task(config)
    batch = next(pipeline.train_iterator(config.data, 8, 0, task.transform, task.random_transform))
    plain = next(pipeline.train_iterator(config.data, 8, 0, task.transform))
    np.testing.assert_array_equal(batch["shape"], plain["shape"])  # the same examples...
    assert not np.array_equal(batch["color"], plain["color"])  # ...in new colours
    for row in range(8):
        example = {key: value[row] for key, value in batch.items()}
        for s in RESOLUTIONS:
            np.testing.assert_array_equal(example[f"image_{s}"], shapes.render(scene_objects(example), s))
