"""Renders the first examples of a Shapes split to PNGs plus a manifest.

The manifest is the evaluator's input format (`t2i.evaluation.shapes_eval.
evaluate_manifest`), so a preview doubles as the ground-truth upper bound of the
benchmark and as a template for a model's sample folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from t2i.data.shapes import SPLIT_SEEDS, render, scene_for
from t2i.io import atomic_dir

MANIFEST = "manifest.jsonl"


def write_preview(split: str, num: int, size: int, out_dir) -> Path:
    """Writes scene_for(split, i) for i < num as out_dir/{i:05d}.png and
    out_dir/manifest.jsonl; returns the manifest's path.

    Everything is written to a temporary folder beside out_dir first and moved in at
    the end (the manifest last), so a failure leaves out_dir as it was.
    """
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split '{split}'; expected one of {', '.join(SPLIT_SEEDS)}")
    if num < 1:
        raise ValueError(f"num must be at least 1, got {num}")
    if size < 16:
        raise ValueError(f"size must be at least 16, got {size}")
    out_dir = Path(out_dir)
    with atomic_dir(str(out_dir), existing="merge") as staging_dir:
        staging = Path(staging_dir)
        lines = []
        for index in range(num):
            scene = scene_for(split, index)
            name = f"{index:05d}.png"
            Image.fromarray(render(scene, size)).save(staging / name)
            lines.append(json.dumps({"prompt": scene.caption, "image": name, "scene": scene.to_json()}))
        (staging / MANIFEST).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out_dir / MANIFEST
