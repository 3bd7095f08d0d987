"""`t2i sample`: prompts in, PNGs and a manifest out, for any sampling pipeline.

Pipelines map a batch of prompts and a seed to uint8 images. The one that exists
before the generative families land is `oracle`: it parses each Shapes prompt and
renders a fresh scene that satisfies it. It is the evaluator's upper bound (what a
perfect model would score) and a check of the whole sample -> eval path; model
families register their own pipelines here.

Outputs are written into a temporary folder beside `--out` and moved into place only
when every image is done, so a failure leaves no half-written output.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from t2i.data import shapes
from t2i.errors import UsageError

# pipeline(prompts, seed, options) -> (uint8 images [N, S, S, 3], settings for the manifest)
Pipeline = Callable[[Sequence[str], int, dict], tuple[np.ndarray, dict]]


def _random_size(rng: np.random.Generator) -> str:
    return tuple(shapes.SIZES)[rng.integers(len(shapes.SIZES))]


def oracle_pipeline(prompts: Sequence[str], seed: int, options: dict) -> tuple[np.ndarray, dict]:
    """Renders, for each prompt, a random scene that satisfies it."""
    from t2i.evaluation.shapes_eval import parse_caption

    size = int(options.get("size", 64))
    if size < 16:
        raise UsageError(f"--size must be at least 16, got {size}")
    images = []
    for index, prompt in enumerate(prompts):
        request = parse_caption(prompt)
        rng = np.random.default_rng([seed, index])
        if request.kind == "single":
            ((color, shape, size_name),) = request.objects
            sizes = [size_name or _random_size(rng)]
            identities = [(color, shape)]
        elif request.kind == "pair":
            identities = [(c, s) for c, s, _ in request.objects]
            sizes = [_random_size(rng) for _ in identities]
        else:
            ((color, shape, _),) = request.objects
            identities = [(color, shape)] * request.count
            sizes = [_random_size(rng) for _ in identities]
        objects = shapes.layout(rng, identities, sizes, position=request.position, relation=request.relation)
        images.append(shapes.render(objects, size))
    return np.stack(images), {"pipeline": "oracle", "size": size}


def imagen_pipeline(prompts: Sequence[str], seed: int, options: dict) -> tuple[np.ndarray, dict]:
    """The Imagen cascade from training workdirs or exported stages (`--checkpoint`,
    base first); without any, the committed Shapes reference cascade."""
    from t2i.cascade import REFERENCE_STAGES, default_settings, load_stage, run_cascade

    sources = options.get("checkpoints") or list(REFERENCE_STAGES)
    stages = [load_stage(source) for source in sources]
    per_stage = stage_options(options, len(stages))
    settings = [default_settings(stage, **given) for stage, given in zip(stages, per_stage)]
    images = run_cascade(stages, settings, prompts, seed, batch_size=int(options.get("batch_size", 16)))
    described = [
        dict(source=stage.source, step=stage.step, **dataclasses.asdict(setting))
        for stage, setting in zip(stages, settings)
    ]
    return images, {"pipeline": "imagen", "stages": described}


def _interval(text: str) -> tuple[float | None, float | None]:
    from t2i.diffusion.samplers import parse_interval

    return parse_interval(text)


STAGE_OPTIONS = {
    "sampler": str,
    "steps": int,
    "guidance_weight": float,
    "thresholding": str,
    "percentile": float,
    "noise_aug_level": float,
    "guidance_interval": _interval,  # LO:HI in log-SNR, e.g. "-6:2,:" (base -6..2, SR every step)
}


# The command-line flag of each stage option whose flag is named differently.
_FLAGS = {"guidance_weight": "guidance", "noise_aug_level": "aug_level"}


def stage_options(options: dict, num_stages: int) -> list[dict]:
    """Per-stage settings from comma-separated option strings ("5,3": base 5, SR 3;
    one value serves every stage)."""
    per_stage = [dict() for _ in range(num_stages)]
    for name, kind in STAGE_OPTIONS.items():
        text = options.get(name)
        if text is None:
            continue
        flag = "--" + _FLAGS.get(name, name)
        values = str(text).split(",")
        if len(values) not in (1, num_stages):
            raise UsageError(f"{flag} has {len(values)} values for {num_stages} stages")
        for index in range(num_stages):
            try:
                per_stage[index][name] = kind(values[index if len(values) > 1 else 0])
            except ValueError as error:
                raise UsageError(f"bad value for {flag}: {text!r} ({error})") from None
    return per_stage


PIPELINES: dict[str, Pipeline] = {"oracle": oracle_pipeline, "imagen": imagen_pipeline}


def run_pipeline(name: str, prompts: Sequence[str], out_dir: str, seed: int = 0, options: dict | None = None) -> str:
    """Samples one image per prompt into `out_dir`; returns the manifest path."""
    if name not in PIPELINES:
        raise UsageError(f"unknown sampling pipeline '{name}' (known: {', '.join(sorted(PIPELINES))})")
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise UsageError(f"output folder {out_dir} exists and is not empty")
    images, settings = PIPELINES[name](prompts, seed, dict(options or {}))
    parent = os.path.dirname(os.path.abspath(out_dir))
    staging = tempfile.mkdtemp(prefix=".t2i_sample_", dir=parent)
    try:
        with open(os.path.join(staging, "manifest.jsonl"), "w") as manifest:
            for index, (prompt, image) in enumerate(zip(prompts, images)):
                filename = f"{index:05d}.png"
                Image.fromarray(image).save(os.path.join(staging, filename))
                manifest.write(
                    json.dumps(
                        {"prompt": prompt, "image": filename, "seed": seed, "index": index, "settings": settings}
                    )
                    + "\n"
                )
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty, checked above
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return os.path.join(out_dir, "manifest.jsonl")
