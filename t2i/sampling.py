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

import json
import os
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from t2i.data import shapes
from t2i.errors import UsageError
from t2i.io import atomic_dir, check_empty_or_missing

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


def pipeline_names() -> list[str]:
    from t2i.families import pipelines

    return sorted(["oracle", *pipelines()])


def get_pipeline(name: str) -> Pipeline:
    """`oracle`, or the pipeline of the family registered under `name`."""
    from t2i.families import pipelines, resolve

    if name == "oracle":
        return oracle_pipeline
    if name not in pipelines():
        raise UsageError(f"unknown sampling pipeline '{name}' (known: {', '.join(pipeline_names())})")
    return resolve(pipelines()[name])


def parse_option(options: dict, flag: str, kind):
    """options[flag] (a command-line string, or already a value) as `kind`; None when
    not given; a one-line error naming the flag when it does not parse."""
    value = options.get(flag)
    if value is None or not isinstance(value, str):
        return value
    try:
        return kind(value)
    except ValueError as error:
        raise UsageError(f"bad value for --{flag}: {value!r} ({error})") from None


def run_pipeline(name: str, prompts: Sequence[str], out_dir: str, seed: int = 0, options: dict | None = None) -> str:
    """Samples one image per prompt into `out_dir`; returns the manifest path."""
    pipeline = get_pipeline(name)
    check_empty_or_missing(out_dir)
    images, settings = pipeline(prompts, seed, dict(options or {}))
    with atomic_dir(out_dir) as staging:
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
    return os.path.join(out_dir, "manifest.jsonl")
