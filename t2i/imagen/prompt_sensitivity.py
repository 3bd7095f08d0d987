"""How much a base stage's prediction depends on each kind of word in the prompt.

For pairs of prompts that differ in one attribute (position, colour, shape, relation),
feed the same noisy input at a fixed log-SNR and report the RMS difference between the
two predicted clean images (x0, in [-1, 1]). A model that ignores position words scores
near zero on the position pairs however well it draws colours. At high noise (log-SNR
-4) the layout can come from the text alone, so that is where the position and relation
numbers matter.

  python -m t2i.imagen.prompt_sensitivity --stage t2i/assets/imagen_shapes/base.npz
  python -m t2i.imagen.prompt_sensitivity --stage runs/imagen_base --step 2000
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from t2i.diffusion import gaussian

# Each attribute: pairs of prompts that differ only in that attribute.
PAIRS = {
    "position": [
        ("a red circle in the top left", "a red circle in the bottom right"),
        ("a blue square in the top right", "a blue square in the bottom left"),
        ("a green triangle in the left", "a green triangle in the right"),
    ],
    "relation": [
        ("a red circle to the left of a blue square", "a red circle to the right of a blue square"),
        ("a yellow square above an orange circle", "a yellow square below an orange circle"),
    ],
    "colour": [
        ("a red circle in the top left", "a blue circle in the top left"),
        ("a green square", "a purple square"),
    ],
    "shape": [
        ("a red circle in the top left", "a red square in the top left"),
        ("a blue triangle", "a blue circle"),
    ],
}


def prompt_sensitivity(stage, logsnr: float, seed: int = 0, pairs_by_attribute=None) -> dict[str, float]:
    """{attribute: mean over its pairs of the RMS x0 difference} for one base stage
    (`pairs_by_attribute`: like PAIRS, the default)."""
    from t2i.imagen.cascade import text_front_end

    pairs_by_attribute = PAIRS if pairs_by_attribute is None else pairs_by_attribute
    if stage.task.super_resolution:
        raise ValueError("prompt sensitivity is defined for a base stage")
    prompts = [p for pairs in pairs_by_attribute.values() for pair in pairs for p in pair]
    batch = text_front_end(stage.config)(prompts)
    text, mask = stage.task._text(batch)
    size = stage.task.resolution
    noise = jax.random.normal(jax.random.key(seed), (1, size, size, 3))
    x_t = jnp.broadcast_to(noise, (len(prompts), size, size, 3))  # the same noisy input for every prompt
    logsnrs = jnp.full((len(prompts),), logsnr, jnp.float32)
    output = stage.task.model.apply(stage.params, x_t, logsnrs, text, mask)
    x0, _ = gaussian.to_x0_eps(x_t, output, logsnrs, stage.task.parametrization)
    x0 = np.asarray(x0)
    result, index = {}, 0
    for attribute, pairs in pairs_by_attribute.items():
        diffs = []
        for _ in pairs:
            diffs.append(float(np.sqrt(np.mean((x0[index] - x0[index + 1]) ** 2))))
            index += 2
        result[attribute] = float(np.mean(diffs))
    return result


def main(argv=None) -> int:
    from t2i.imagen.cascade import load_stage

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", required=True, help="a base stage: training workdir or exported .npz")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step of a workdir (default: newest)")
    parser.add_argument("--logsnr", default="-4,0", help="comma-separated log-SNR values")
    args = parser.parse_args(argv)
    stage = load_stage(args.stage, args.step)
    print(f"{args.stage} step {stage.step}: RMS x0 difference between prompts differing in one attribute")
    for value in (float(v) for v in args.logsnr.split(",")):
        scores = prompt_sensitivity(stage, value)
        print(f"log-SNR {value:+.0f}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
