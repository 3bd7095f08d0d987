"""Sampling seconds per image for each sampler and step count (one jitted scan each).

  python benchmarks/sampling_speed.py [--config configs/imagen_shapes.py:stage=base] [--batch 16]

Uses the stage's architecture with freshly initialised weights (speed does not depend
on the weights), classifier-free guidance on (so each step runs the U-Net on a doubled
batch) and dynamic thresholding, as the cascade samples. Prints the median of 3 timed
runs after compilation. Results go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from t2i.config import load_config
from t2i.diffusion import samplers
from t2i.families import get_task


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/imagen_shapes.py:stage=base")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", default="10,25,50")
    args = parser.parse_args()
    config = load_config(args.config)
    task = get_task(config)
    params = nn.unbox(jax.jit(task.init)(jax.random.key(0)))
    batch_size, length = args.batch, int(config.text.max_length)
    if task.text_source == "tokens":
        batch = {"tokens": jnp.zeros((batch_size, length), jnp.int32)}
    else:
        batch = {"text_embeddings": jax.random.normal(jax.random.key(1), (batch_size, length, int(config.text.dim)))}
    batch["text_mask"] = jnp.ones((batch_size, length), bool)
    if task.super_resolution:
        batch[f"image_{task.low_resolution}"] = jnp.zeros(
            (batch_size, task.low_resolution, task.low_resolution, 3), jnp.uint8
        )
    guidance = samplers.Guidance(weight=3.0, thresholding="dynamic", percentile=0.99)
    print(f"{args.config}: {task.resolution} px, batch {batch_size}, guidance 3 (2x batch per step)")
    for sampler in samplers.SAMPLERS:
        for steps in (int(s) for s in args.steps.split(",")):
            run = jax.jit(
                lambda p, b, r, sampler=sampler, steps=steps: task.sample(
                    p, b, r, steps=steps, sampler=sampler, guidance=guidance
                )
            )
            jax.block_until_ready(run(params, batch, jax.random.key(2)))
            times = []
            for i in range(3):
                start = time.perf_counter()
                jax.block_until_ready(run(params, batch, jax.random.key(3 + i)))
                times.append(time.perf_counter() - start)
            per_image = statistics.median(times) / batch_size
            print(
                f"{sampler:9s} {steps:3d} steps: {per_image:.3f} s/image ({per_image / steps * 1e3:.1f} ms/image/step)"
            )


if __name__ == "__main__":
    main()
