"""Tests of the GenEval-style Shapes evaluator against docs/shapes.md."""

import json

import numpy as np
import pytest
from scipy import ndimage

from t2i.data import shapes
from t2i.data.preview import write_preview
from t2i.data.shapes import ShapeObject, render, sample_scene
from t2i.evaluation.shapes_eval import (
    Detection,
    Request,
    detect,
    evaluate,
    evaluate_manifest,
    format_table,
    judge,
    parse_caption,
    report_to_json,
    request_for_scene,
)

SCENES_PER_KIND = 1000


@pytest.fixture(scope="module")
def scenes():
    """1,000 scenes of every kind, the held-out split's pairs included."""
    rng = np.random.default_rng(2024)
    return [sample_scene(rng, heldout=i % 10 == 0, kind=kind) for kind in shapes.KINDS for i in range(SCENES_PER_KIND)]


def test_parse_caption_round_trip(scenes):
    for scene in scenes:
        assert parse_caption(scene.caption) == request_for_scene(scene), scene.caption


def test_parse_caption_examples_and_prefixes():
    for prefix in shapes.PREFIXES:
        assert parse_caption(prefix + "a large orange circle in the top left") == Request(
            "single", (("orange", "circle", "large"),), position="top left"
        )
        assert parse_caption(prefix + "an orange circle") == Request("single", (("orange", "circle", None),))
        assert parse_caption(prefix + "a red square to the left of an orange triangle") == Request(
            "pair", (("red", "square", None), ("orange", "triangle", None)), relation="to the left of", count=2
        )
        assert parse_caption(prefix + "three blue triangles") == Request(
            "count", (("blue", "triangle", None),), count=3
        )


@pytest.mark.parametrize(
    "caption",
    [
        "",
        "a red circle.",
        "A red circle",
        "a orange circle",
        "an red circle",
        "an large orange circle",
        "a red hexagon",
        "a pink circle",
        "two red circle",
        "four red circles",
        "one red circle",
        "a red circle in the middle",
        "a red circle in the top middle",
        "a small red circle above a blue square",
        "a red circle above a red circle",
        "a red circle near a blue square",
        "a photo of a photo of a red circle",
        "a photograph of a red circle",
        "a red circle\nin the top",
    ],
)
def test_parse_caption_rejects_text_outside_the_grammar(caption):
    with pytest.raises(ValueError, match="^cannot parse caption: ") as error:
        parse_caption(caption)
    assert "\n" not in str(error.value)


def scores(items):
    report = evaluate(items)
    print(format_table(report))
    return report


@pytest.mark.parametrize("side", [32, 64])
def test_ground_truth_renders_score_at_least_99_percent(scenes, side):
    report = scores((scene.caption, render(scene, side)) for scene in scenes)
    assert report.num_images == 3 * SCENES_PER_KIND
    assert report.kind_counts == {kind: SCENES_PER_KIND for kind in shapes.KINDS}
    assert set(report.per_attribute) == {"color", "shape", "size", "position", "relation", "count"}
    assert report.overall >= 0.99
    for kind, score in report.per_kind.items():
        assert score >= 0.99, (kind, score)
    for attribute, score in report.per_attribute.items():
        assert score >= 0.99, (attribute, score)


@pytest.mark.parametrize("side", [32, 64])
def test_noise_and_blank_images_score_near_zero(scenes, side):
    rng = np.random.default_rng(side)
    noise = scores((scene.caption, rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for scene in scenes)
    assert noise.overall <= 0.02 and max(noise.per_kind.values()) <= 0.02
    blank = detect(np.full((side, side, 3), shapes.BACKGROUND, np.uint8))
    assert blank == []
    assert not any(judge(parse_caption(scene.caption), blank)["overall"] for scene in scenes)


def test_mildly_blurred_renders_still_score(scenes):
    """Generated images are soft; blur must not turn triangles into circles."""
    blurred = (
        (
            scene.caption,
            np.clip(ndimage.gaussian_filter(render(scene, 32).astype(float), (0.7, 0.7, 0)), 0, 255)
            .round()
            .astype(np.uint8),
        )
        for scene in scenes[::5]
    )
    assert scores(blurred).overall >= 0.97


def test_mismatched_prompts_score_low(scenes):
    """Ground-truth images under another scene's prompt: the judge must notice."""
    rng = np.random.default_rng(0)
    picks = rng.choice(len(scenes), 600, replace=False)
    shuffled = np.roll(picks, 1)
    report = scores((scenes[i].caption, render(scenes[j], 32)) for i, j in zip(picks, shuffled))
    assert report.overall < 0.1


def test_scene_prompts_are_judged_by_structure(scenes):
    items = [(scene, render(scene, 32)) for scene in scenes[::50]]
    by_scene = evaluate(items)
    by_caption = evaluate((scene.caption, image) for scene, image in items)
    assert report_to_json(by_scene) == report_to_json(by_caption)


def test_detect_measures_each_object():
    objects = [
        ShapeObject("orange", "triangle", "large", 0.25, 0.27, 0.17),
        ShapeObject("purple", "circle", "small", 0.72, 0.3, 0.11),
        ShapeObject("orange", "square", "small", 0.7, 0.74, 0.11),
        ShapeObject("yellow", "circle", "large", 0.24, 0.74, 0.17),
    ]
    for side in (32, 64, 128):
        found = sorted(detect(render(objects, side)), key=lambda d: (d.cy > 0.5, d.cx))
        objects.sort(key=lambda o: (o.cy > 0.5, o.cx))
        assert [(d.color, d.shape, d.size) for d in found] == [(o.color, o.shape, o.size) for o in objects]
        for d, o in zip(found, objects):
            assert abs(d.cx - o.cx) <= 1 / side and abs(d.cy - o.cy) <= 1 / side
            fill = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}[o.shape]
            assert abs(d.area - fill * (2 * o.r) ** 2) < 0.1 * (2 * o.r) ** 2


@pytest.mark.parametrize("rgb", [(0, 0, 0), (255, 255, 255), (128, 128, 128), (0, 255, 255), (120, 80, 40)])
def test_colors_off_the_palette_are_not_objects(rgb):
    image = np.full((64, 64, 3), shapes.BACKGROUND, np.uint8)
    image[10:30, 20:40] = rgb
    assert detect(image) == []


def test_detect_rejects_malformed_images():
    for image in [
        np.zeros((32, 32, 3), np.float32),
        np.zeros((32, 30, 3), np.uint8),
        np.zeros((8, 8, 3), np.uint8),
        np.zeros((32, 32), np.uint8),
    ]:
        with pytest.raises(ValueError, match="expected a uint8 image"):
            detect(image)


def found(color, shape, size="small", cx=0.5, cy=0.5):
    return Detection(color, shape, size, cx, cy, area=0.04, fill=1.0)


def test_judge_single():
    request = parse_caption("a large red circle in the top left")
    right = found("red", "circle", "large", 0.15, 0.2)
    assert judge(request, [right]) == {"overall": True, "color": True, "shape": True, "size": True, "position": True}
    assert judge(request, [right, found("blue", "square")])["overall"] is False
    assert judge(request, [right, found("blue", "square")])["color"] is True
    wrong = judge(request, [found("red", "square", "small", 0.5, 0.5)])
    assert wrong == {"overall": False, "color": True, "shape": False, "size": False, "position": False}
    assert judge(parse_caption("a red circle"), []) == {"overall": False, "color": False, "shape": False}


def test_judge_pair():
    request = parse_caption("a red circle to the left of a blue square")
    left, right = found("red", "circle", cx=0.2), found("blue", "square", cx=0.7)
    assert judge(request, [right, left]) == {"overall": True, "color": True, "shape": True, "relation": True}
    swapped = judge(request, [found("red", "circle", cx=0.7), found("blue", "square", cx=0.2)])
    assert swapped == {"overall": False, "color": True, "shape": True, "relation": False}
    assert judge(request, [left]) == {"overall": False, "color": False, "shape": False, "relation": False}
    extra = judge(request, [left, right, found("green", "triangle")])
    assert extra == {"overall": False, "color": True, "shape": True, "relation": True}


def test_judge_count():
    request = parse_caption("three green triangles")
    three = [found("green", "triangle", cx=x) for x in (0.2, 0.5, 0.8)]
    assert judge(request, three) == {"overall": True, "color": True, "shape": True, "count": True}
    assert judge(request, three[:2]) == {"overall": False, "color": True, "shape": True, "count": False}
    mixed = three[:2] + [found("blue", "triangle")]
    assert judge(request, mixed) == {"overall": False, "color": False, "shape": True, "count": True}
    assert judge(request, []) == {"overall": False, "color": False, "shape": False, "count": False}


def test_report_formats():
    report = evaluate([("two red circles", np.full((32, 32, 3), 232, np.uint8))])
    assert report.per_kind == {"count": 0.0} and report.num_images == 1
    assert json.loads(json.dumps(report_to_json(report)))["overall"] == 0.0
    table = format_table(report)
    assert "count" in table and "color" in table and "1 images" in table
    with pytest.raises(ValueError, match="no"):
        evaluate([])


def test_preview_manifest_round_trip(tmp_path):
    for split in ("test", "heldout"):
        manifest = write_preview(split, 150, 64, tmp_path / split)
        for path in (manifest, manifest.parent, str(manifest.parent)):
            report = evaluate_manifest(path)
            assert report.num_images == 150 and report.overall >= 0.99, format_table(report)


def write_manifest(folder, lines):
    folder.mkdir(exist_ok=True)
    (folder / "manifest.jsonl").write_text("".join(line + "\n" for line in lines))
    return folder / "manifest.jsonl"


def test_manifest_errors_are_one_line(tmp_path):
    image = tmp_path / "ok"
    write_preview("test", 1, 32, image)
    ok = json.dumps({"prompt": "a red circle", "image": "../ok/00000.png"})
    cases = [
        (tmp_path / "nowhere", FileNotFoundError, "manifest not found"),
        (tmp_path / "nowhere" / "manifest.jsonl", FileNotFoundError, "manifest not found"),
        (write_manifest(tmp_path / "empty", ["", "  "]), ValueError, "manifest is empty"),
        (write_manifest(tmp_path / "json", [ok, "{not json"]), ValueError, r"manifest.jsonl:2: invalid JSON"),
        (
            write_manifest(tmp_path / "keys", [ok, json.dumps({"prompt": "a red circle"})]),
            ValueError,
            r"manifest.jsonl:2: expected an object",
        ),
        (
            write_manifest(tmp_path / "image", [ok, json.dumps({"prompt": "a red circle", "image": "x.png"})]),
            FileNotFoundError,
            r"manifest.jsonl:2: image not found: .*x.png",
        ),
        (
            write_manifest(
                tmp_path / "caption", [ok, json.dumps({"prompt": "a red hexagon", "image": "../ok/00000.png"})]
            ),
            ValueError,
            r"manifest.jsonl:2: cannot parse caption: 'a red hexagon'",
        ),
    ]
    for path, error_type, message in cases:
        with pytest.raises(error_type, match=message) as error:
            evaluate_manifest(path)
        assert "\n" not in str(error.value), str(error.value)
    assert evaluate_manifest(write_manifest(tmp_path / "fine", [ok])).num_images == 1
