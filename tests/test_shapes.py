"""Tests of the Shapes sampler, captioner and renderer against docs/shapes.md."""

import collections
import json
import re
import time

import numpy as np
import pytest
from PIL import Image

from t2i.data import shapes
from t2i.data.preview import write_preview
from t2i.data.shapes import (
    BACKGROUND,
    HELDOUT_PAIRS,
    PALETTE,
    SIZES,
    Scene,
    ShapeObject,
    position_cell,
    relation_holds,
    render,
    sample_scene,
    scene_for,
)


@pytest.fixture(scope="module")
def split_scenes():
    return {split: [scene_for(split, i) for i in range(600)] for split in shapes.SPLIT_SEEDS}


@pytest.fixture(scope="module")
def random_scenes():
    rng = np.random.default_rng(0)
    return [sample_scene(rng) for _ in range(2000)]


def test_scene_for_is_deterministic_and_random_access():
    later_first = [scene_for("train", i) for i in (7, 3, 5)]
    assert later_first == [scene_for("train", i) for i in (7, 3, 5)]
    assert scene_for("test", 3) == scene_for("test", 3)
    assert np.array_equal(render(scene_for("train", 3), 32), render(scene_for("train", 3), 32))


def test_splits_and_indices_differ(split_scenes):
    captions = {split: [s.caption for s in scenes] for split, scenes in split_scenes.items()}
    for split, other in [("train", "validation"), ("validation", "test"), ("train", "test")]:
        assert captions[split][:50] != captions[other][:50]
        assert split_scenes[split][0].objects != split_scenes[other][0].objects
    assert len({s.objects for s in split_scenes["train"]}) == len(split_scenes["train"])


def test_unknown_split_and_kind():
    with pytest.raises(ValueError, match="unknown split"):
        scene_for("dev", 0)
    with pytest.raises(ValueError, match="unknown scene kind"):
        sample_scene(np.random.default_rng(0), kind="triple")


def test_heldout_pairs_only_in_heldout_split(split_scenes):
    for split, scenes in split_scenes.items():
        for scene in scenes:
            held = {(o.color, o.shape) for o in scene.objects} & HELDOUT_PAIRS
            assert bool(held) == (split == "heldout"), (split, scene.caption)
    kinds = collections.Counter(s.kind for s in split_scenes["heldout"])
    assert set(kinds) == set(shapes.KINDS)


def check_invariants(scene: Scene):
    for o in scene.objects:
        assert o.color in PALETTE and o.shape in shapes.SHAPES and o.r == SIZES[o.size]
        assert 0.02 <= o.cx - o.r and o.cx + o.r <= 0.98
        assert 0.02 <= o.cy - o.r and o.cy + o.r <= 0.98
    for i, a in enumerate(scene.objects):
        for b in scene.objects[i + 1 :]:
            assert max(abs(a.cx - b.cx), abs(a.cy - b.cy)) >= a.r + b.r + 0.06
    identities = [(o.color, o.shape) for o in scene.objects]
    if scene.kind == "single":
        assert len(identities) == 1 and not scene.relation
        if scene.position:
            o = scene.objects[0]
            assert position_cell(o.cx, o.cy) == scene.position
            for coordinate in (o.cx, o.cy):  # at least 0.04 from the cell's borders
                offset = coordinate * 3 - np.floor(coordinate * 3)
                assert 0.12 - 1e-9 <= offset <= 0.88 + 1e-9
    elif scene.kind == "pair":
        a, b = scene.objects
        assert len(set(identities)) == 2 and scene.relation in shapes.RELATIONS
        assert relation_holds(a, b, scene.relation, threshold=0.20, dominance=1.5)
        assert not scene.position and not scene.size_named
    else:
        assert scene.kind == "count" and len(identities) in (2, 3) and len(set(identities)) == 1


def test_invariants(random_scenes, split_scenes):
    for scene in random_scenes + split_scenes["heldout"]:
        check_invariants(scene)


def test_sample_scene_kind_argument():
    rng = np.random.default_rng(1)
    for kind in shapes.KINDS:
        scenes = [sample_scene(rng, kind=kind) for _ in range(100)]
        assert {s.kind for s in scenes} == {kind}
        for scene in scenes:
            check_invariants(scene)
    counts = collections.Counter(len(sample_scene(rng, kind="count").objects) for _ in range(400))
    assert 150 < counts[2] < 250 and 150 < counts[3] < 250


def test_kind_frequencies(random_scenes):
    counts = collections.Counter(s.kind for s in random_scenes)
    n = len(random_scenes)
    for kind, p in zip(shapes.KINDS, (0.4, 0.4, 0.2)):
        assert abs(counts[kind] / n - p) < 0.03, counts


def test_single_caption_options_are_balanced(random_scenes):
    singles = [s for s in random_scenes if s.kind == "single"]
    assert abs(np.mean([s.size_named for s in singles]) - 0.5) < 0.06
    assert abs(np.mean([bool(s.position) for s in singles]) - 0.5) < 0.06
    positions = collections.Counter(s.position for s in singles if s.position)
    assert set(positions) == set(shapes.POSITIONS)
    sizes = collections.Counter(o.size for s in random_scenes for o in s.objects)
    assert abs(sizes["small"] / sum(sizes.values()) - 0.5) < 0.04


def test_prefixes_uniform(random_scenes):
    counts = collections.Counter()
    for scene in random_scenes:
        counts[next((p for p in shapes.PREFIXES[1:] if scene.caption.startswith(p)), "")] += 1
    assert set(counts) == set(shapes.PREFIXES)
    for count in counts.values():
        assert abs(count / len(random_scenes) - 0.2) < 0.04, counts


def test_caption_form_and_article_rule(random_scenes):
    for scene in random_scenes:
        caption = scene.caption
        assert caption == caption.lower() and caption == caption.strip()
        assert not caption.endswith(".")
        assert not re.search(r"\ba [aeiou]", caption), caption
        assert not re.search(r"\ban [^aeiou]", caption), caption
        o = scene.objects[0]
        assert o.color in caption and o.shape in caption
        if scene.kind == "single":
            assert (o.size in caption.split()) == scene.size_named
            assert caption.endswith(f" in the {scene.position}") == bool(scene.position)
        elif scene.kind == "count":
            assert caption.endswith(f"{['two', 'three'][len(scene.objects) - 2]} {o.color} {o.shape}s")
        else:
            assert f" {scene.relation} " in caption
    captions = {s.caption for s in random_scenes}
    assert any(c.endswith("an orange circle") for c in captions)
    assert any("a large orange" in c for c in captions)


def test_json_round_trip(random_scenes):
    for scene in random_scenes[:200]:
        assert Scene.from_json(json.loads(json.dumps(scene.to_json()))) == scene


def test_position_cell_and_relations():
    assert position_cell(0.1, 0.1) == "top left"
    assert position_cell(0.5, 0.1) == "top"
    assert position_cell(0.5, 0.5) == "center"
    assert position_cell(0.9, 0.5) == "right"
    assert position_cell(0.2, 0.9) == "bottom left"
    assert position_cell(1.0, 1.0) == "bottom right"

    def at(cx, cy):
        return ShapeObject("red", "circle", "small", cx, cy, 0.11)

    a = at(0.3, 0.5)
    assert relation_holds(a, at(0.45, 0.55), "to the left of")
    assert not relation_holds(a, at(0.38, 0.5), "to the left of")  # dx under 0.10
    assert not relation_holds(a, at(0.45, 0.7), "to the left of")  # |dy| > |dx|
    assert relation_holds(at(0.45, 0.55), a, "to the right of")
    assert relation_holds(a, at(0.3, 0.8), "above")
    assert relation_holds(at(0.3, 0.8), a, "below")
    assert not relation_holds(a, at(0.3, 0.8), "below")
    assert not relation_holds(a, at(0.45, 0.55), "to the left of", threshold=0.2)
    assert not relation_holds(a, at(0.6, 0.75), "to the left of", dominance=1.5)


def test_render_palette_interior_and_background_exact():
    for color, rgb in PALETTE.items():
        image = render([ShapeObject(color, "square", "large", 0.503, 0.497, 0.17)], 64)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert (image[24:40, 24:40] == rgb).all()
        assert (image[:8] == BACKGROUND).all() and (image[:, -8:] == BACKGROUND).all()
        assert len(np.unique(image.reshape(-1, 3), axis=0)) > 2  # anti-aliased edges


def coverage_map(image, color):
    """Per-pixel coverage recovered by inverting the background-colour mixture."""
    offset = image.astype(np.float64) - BACKGROUND
    direction = np.subtract(PALETTE[color], BACKGROUND)
    return offset @ direction / (direction @ direction)


@pytest.mark.parametrize("shape,fill", [("circle", np.pi / 4), ("square", 1.0), ("triangle", 0.5)])
def test_render_fill_ratios_and_geometry(shape, fill):
    obj = ShapeObject("blue", shape, "large", 0.47, 0.52, 0.17)
    side = 128
    coverage = coverage_map(render([obj], side), "blue")
    assert abs(coverage.sum() / (2 * obj.r * side) ** 2 - fill) < 0.01
    grid = (np.arange(side) + 0.5) / side
    cx = (coverage.sum(0) * grid).sum() / coverage.sum()
    cy = (coverage.sum(1) * grid).sum() / coverage.sum()
    assert abs(cx - obj.cx) < 0.005
    centroid_y = obj.cy + obj.r / 3 if shape == "triangle" else obj.cy  # apex up
    assert abs(cy - centroid_y) < 0.005
    rows = np.flatnonzero(coverage.max(1) > 0.01)
    assert abs((rows[-1] - rows[0] + 1) / side - 2 * obj.r) <= 2 / side


def test_render_accepts_scenes_and_sizes(random_scenes):
    scene = random_scenes[0]
    for side in (16, 32, 64, 128, 256):
        image = render(scene, side)
        assert image.shape == (side, side, 3)
    assert np.array_equal(render(scene, 32), render(scene.objects, 32))


def test_render_is_fast(random_scenes):
    for side, budget_ms in [(32, 5.0), (64, 5.0)]:
        start = time.perf_counter()
        for scene in random_scenes[:200]:
            render(scene, side)
        per_image_ms = (time.perf_counter() - start) / 200 * 1e3
        assert per_image_ms < budget_ms, f"S={side}: {per_image_ms:.2f} ms per image"


def test_write_preview(tmp_path):
    out = tmp_path / "preview"
    manifest = write_preview("validation", 5, 32, out)
    assert manifest == out / "manifest.jsonl"
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [line["image"] for line in lines] == [f"{i:05d}.png" for i in range(5)]
    for i, line in enumerate(lines):
        scene = scene_for("validation", i)
        assert line["prompt"] == scene.caption and Scene.from_json(line["scene"]) == scene
        assert np.array_equal(np.asarray(Image.open(out / line["image"])), render(scene, 32))
    assert write_preview("validation", 2, 32, out) == manifest  # rewrites in place
    assert len(manifest.read_text().splitlines()) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preview"]


def test_write_preview_rejects_bad_arguments(tmp_path):
    for args, message in [(("dev", 1, 32), "unknown split"), (("train", 0, 32), "num"), (("train", 1, 8), "size")]:
        with pytest.raises(ValueError, match=message) as error:
            write_preview(*args, tmp_path / "out")
        assert "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_write_preview_failure_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing_render(scene, size):
        calls.append(scene)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return render(scene, size)

    monkeypatch.setattr("t2i.data.preview.render", failing_render)
    with pytest.raises(RuntimeError):
        write_preview("train", 5, 32, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
