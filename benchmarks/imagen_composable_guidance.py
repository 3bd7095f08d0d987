"""Composable guidance per object on pair prompts: a tried-and-not-kept experiment.

Heldout pair prompts ("a purple triangle below a red circle") come out with the shapes
swapped between the two objects, while each novel pair alone ("a purple triangle") is
drawn right. Composable diffusion (Liu et al. 2022, "Compositional Visual Generation
with Composable Diffusion Models") adds one guidance term per component prompt:

  out = u + w (c - u) + w_c * sum_i (c_i - u)

with u unconditional, c the full prompt and c_i each object's noun phrase ("a purple
triangle", "a red circle", cut out of the caption with the Shapes parser). This script
samples the committed base that way (DDPM 50, w at log-SNR -4..2, the component terms
from log-SNR `--component_from`), upsamples through the committed SR stage at its
default setting and scores the 64 px images. Only pair prompts are sampled (the others
have no components). w_c = 0 reproduces the default cascade on the same prompts.

  python benchmarks/imagen_composable_guidance.py --split heldout --num 200 --component_weight 0,1,3
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", default="heldout")
    parser.add_argument("--num", type=int, default=200, help="pair prompts among the first NUM captions")
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--component_weight", default="0,1,3")
    parser.add_argument("--component_from", type=float, default=-99.0, help="component terms at log-SNR >= this")
    parser.add_argument("--base", default="", help="base stage (default: the committed one)")
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp

    from t2i.cli import split_prompts
    from t2i.data import shapes
    from t2i.diffusion import samplers, schedules
    from t2i.evaluation import shapes_eval
    from t2i.evaluation.shapes_eval import parse_caption
    from t2i.imagen.cascade import REFERENCE_STAGES, _compiled_sampler, default_settings, load_stage, text_front_end
    from t2i.imagen.task import to_uint8

    base = load_stage(args.base or REFERENCE_STAGES[0])
    sr = load_stage(REFERENCE_STAGES[1])
    setting = default_settings(base)
    lo, hi = setting.guidance_interval
    prompts = [p for p in split_prompts(args.split, args.num) if parse_caption(p).kind == "pair"]

    def noun_phrases(prompt):  # worded as the Shapes captions word an object
        return [shapes._noun_phrase(colour, shape, size or "") for colour, shape, size in parse_caption(prompt).objects]

    task, front = base.task, text_front_end(base.config)

    def make_sampler(w, w_c):
        @jax.jit
        def sample(params, texts, masks, rng):
            """texts [3, B, L, D]: the caption and its two noun phrases."""
            batch = texts.shape[1]
            all_text = jnp.concatenate([texts[0], texts[1], texts[2], texts[0]])
            all_mask = jnp.concatenate([masks[0], masks[1], masks[2], jnp.zeros_like(masks[0])])

            def model_fn(x, logsnr, _):
                def guided(x, logsnr):
                    out = task.model.apply(params, jnp.concatenate([x] * 4), jnp.tile(logsnr, 4), all_text, all_mask)
                    full, first, second, uncond = jnp.split(out, 4)
                    composed = w_c * (logsnr[0] >= args.component_from)
                    return uncond + w * (full - uncond) + composed * ((first - uncond) + (second - uncond))

                def plain(x, logsnr):
                    return task.model.apply(params, x, logsnr, texts[0], masks[0])

                return jax.lax.cond((logsnr[0] >= lo) & (logsnr[0] <= hi), guided, plain, x, logsnr)

            # the cascade's use of the stage's key (t2i/imagen/task.py: init, aug, sample)
            init_rng, _, sample_rng = jax.random.split(rng, 3)
            x = jax.random.normal(init_rng, (batch, task.resolution, task.resolution, 3))
            grid = schedules.sampling_grid(task.schedule, setting.steps)
            x = samplers.sample(
                model_fn, x, grid, sample_rng, sampler=setting.sampler, parametrization=task.parametrization
            )
            return to_uint8(x)

        return sample

    sr_sample = _compiled_sampler(sr.task, default_settings(sr))
    sr_front = text_front_end(sr.config)
    for w_c in (float(v) for v in args.component_weight.split(",")):
        sample = make_sampler(args.guidance, w_c)
        start_time, images = time.perf_counter(), []
        for start in range(0, len(prompts), 50):
            chunk = prompts[start : start + 50]
            encoded = [front(chunk)] + [front([noun_phrases(p)[i] for p in chunk]) for i in (0, 1)]
            texts = jnp.stack([e["text_embeddings"] for e in encoded])
            masks = jnp.stack([e["text_mask"] for e in encoded])
            rng = jax.random.fold_in(jax.random.key(0), start)
            low = sample(base.params, texts, masks, jax.random.fold_in(rng, 0))
            batch = dict(sr_front(chunk), image_32=low)
            images.append(np.asarray(sr_sample(sr.params, batch, jax.random.fold_in(rng, 1))))
        report = shapes_eval.report_to_json(shapes_eval.evaluate(zip(prompts, np.concatenate(images))))
        row = dict(
            split=args.split,
            pairs=len(prompts),
            w=args.guidance,
            component_weight=w_c,
            component_from=args.component_from,
            overall=report["overall"],
            **{k: round(v, 4) for k, v in report["per_attribute"].items()},
            seconds=round(time.perf_counter() - start_time),
        )
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
