"""How fast the Shapes data path is, and what the evaluator scores on ground truth.

  python benchmarks/data_throughput.py [--data_dir data/tfds --builder_config small]

Prints medians over repeats (this machine is shared and noisy): render and detect time
per image at 32 and 64 px, the grain pipeline's batches per second on the built data
set (batch 64, the classifier's), and the evaluator's score on 1,000 ground-truth
renders of every kind. Results go in docs/results.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import ml_collections
import numpy as np

from t2i.data import pipeline, shapes
from t2i.evaluation import shapes_eval


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data_dir", default="data/tfds")
    parser.add_argument("--builder_config", default="small")
    parser.add_argument("--per_kind", type=int, default=1000)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    scenes = [shapes.sample_scene(rng) for _ in range(200)]
    for size in (32, 64):
        render = _median_seconds(lambda: [shapes.render(s, size) for s in scenes], 5) / len(scenes)
        images = [shapes.render(s, size) for s in scenes]
        detect = _median_seconds(lambda: [shapes_eval.detect(im) for im in images], 5) / len(images)
        print(f"S={size}: render {render * 1e3:.2f} ms/image, detect {detect * 1e3:.2f} ms/image")

    data = ml_collections.ConfigDict(
        dict(
            builder_config=args.builder_config,
            data_dir=args.data_dir,
            split="train",
            num_threads=2,
            prefetch=4,
            tokenizer="",
            max_text_length=24,
        )
    )
    iterator = pipeline.train_iterator(data, 64, seed=0)
    next(iterator)
    per_batch = _median_seconds(lambda: [next(iterator) for _ in range(20)], 5) / 20
    print(f"pipeline ({args.builder_config}, batch 64): {1 / per_batch:.1f} batches/s, {64 / per_batch:.0f} examples/s")

    for size in (32, 64):
        items = []
        for kind in shapes.KINDS:
            for _ in range(args.per_kind):
                scene = shapes.sample_scene(rng, kind=kind)
                items.append((scene.caption, shapes.render(scene, size)))
        report = shapes_eval.evaluate(items)
        per_kind = ", ".join(f"{k} {v:.1%}" for k, v in report.per_kind.items())
        print(f"evaluator on ground truth, S={size}: overall {report.overall:.2%} ({per_kind})")
        noise = [(p, rng.integers(0, 256, im.shape, dtype=np.uint8)) for p, im in items[::10]]
        blank = [(p, np.full_like(im, 232)) for p, im in items[::10]]
        noise_score, blank_score = shapes_eval.evaluate(noise).overall, shapes_eval.evaluate(blank).overall
        print(f"  uniform noise {noise_score:.2%}, blank {blank_score:.2%}")


if __name__ == "__main__":
    main()
