"""Attention-map binding at sampling time on pair prompts (SynGen-style): a
tried-and-not-kept experiment (docs/results.md, "Why heldout pairs fail").

Pair prompts come out with colours and shapes swapped between the two objects ("a
yellow circle above a purple square" -> a yellow square and a purple circle), although
the frozen text encoder's states carry which colour goes with which shape (see
benchmarks/text_binding_probe.py). SynGen (Rassin et al. 2023, "Linguistic Binding in
Diffusion Models") and Attend-and-Excite (Chefer et al. 2023) steer the noisy image at
the early sampling steps with the gradient of a loss on the U-Net's cross-attention
maps. Here: each colour word's 16 x 16 attention map (mean over heads and over the
cross-attention layers at that resolution, normalised over pixels) is pulled towards
its own noun's map and pushed away from the other noun's, and the two nouns' maps are
pushed apart:

  loss = sum_i JS(A_colour_i, A_noun_i) - 1/2 sum_{i != j} JS(A_colour_i, A_noun_j)
         - 1/2 JS(A_noun_1, A_noun_2)

At every base sampling step whose log-SNR is at most `--until`, before the step, x_t
moves by `--step_size` times the loss gradient normalised to unit RMS per image. The
rest is the committed cascade at its default setting (base DDPM 50, guidance 5 at
log-SNR -4..2; SR DDIM 16). Only pair prompts are sampled; step size 0 reproduces the
default cascade on them.

  python benchmarks/imagen_attention_binding.py --split heldout --num 200 --step_size 0,0.1,0.3
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
    parser.add_argument("--step_size", default="0,0.1,0.3")
    parser.add_argument("--until", type=float, default=0.0, help="steer the steps at log-SNR <= this")
    parser.add_argument("--resolution", type=int, default=16, help="attention maps at this feature size")
    parser.add_argument("--base", default="", help="base stage (default: the committed one)")
    parser.add_argument("--chunk", type=int, default=40)
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp

    from t2i.cli import split_prompts
    from t2i.data import shapes
    from t2i.diffusion import samplers, schedules
    from t2i.evaluation import shapes_eval
    from t2i.evaluation.shapes_eval import parse_caption
    from t2i.imagen.attention_maps import cross_attention_maps
    from t2i.imagen.cascade import REFERENCE_STAGES, _compiled_sampler, default_settings, load_stage, text_front_end
    from t2i.imagen.task import to_uint8
    from t2i.text.minilm import MiniLMEncoder

    base = load_stage(args.base or REFERENCE_STAGES[0])
    sr = load_stage(REFERENCE_STAGES[1])
    setting = default_settings(base)
    task, front = base.task, text_front_end(base.config)
    tokenizer = MiniLMEncoder.from_package().tokenizer
    prompts = [p for p in split_prompts(args.split, args.num) if parse_caption(p).kind == "pair"]

    def token_indices(prompt):  # [colour 1, noun 1, colour 2, noun 2]
        identities = [(color, shape) for color, shape, _ in parse_caption(prompt).objects]
        starts = tokenizer.word_starts(prompt)
        return [starts[word] for words in shapes.object_word_indices(prompt, "pair", identities) for word in words]

    def maps(params, x, logsnrs, text, mask, idx):
        """[B, 4, Q] attention maps of the four words, normalised over the Q pixels."""
        _, state = task.model.apply(params, x, logsnrs, text, mask, mutable=["intermediates"])
        chosen = [w for w in cross_attention_maps(state["intermediates"]) if w.shape[1] == args.resolution**2]
        if not chosen:
            raise ValueError(f"no cross-attention at {args.resolution} x {args.resolution}")
        weights = jnp.mean(jnp.stack(chosen), axis=0)  # [B, Q, L]
        words = jnp.swapaxes(jnp.take_along_axis(weights, idx[:, None, :], axis=2), 1, 2)
        return words / jnp.sum(words, axis=-1, keepdims=True)

    def js(p, q):
        m = 0.5 * (p + q)
        kl = lambda a, b: jnp.sum(a * (jnp.log(a + 1e-8) - jnp.log(b + 1e-8)), axis=-1)  # noqa: E731
        return 0.5 * (kl(p, m) + kl(q, m))

    def binding_loss(a):
        c1, n1, c2, n2 = a[:, 0], a[:, 1], a[:, 2], a[:, 3]
        return js(c1, n1) + js(c2, n2) - 0.5 * (js(c1, n2) + js(c2, n1)) - 0.5 * js(n1, n2)  # [B]

    def make_sampler(step_size):
        guidance = setting.guidance()

        @jax.jit
        def sample(params, text, mask, idx, rng):
            batch = text.shape[0]
            null = {"text": text, "mask": jnp.zeros_like(mask)}  # the empty prompt, as the task samples it

            def model_fn(x, logsnrs, cond):
                return task.model.apply(params, x, logsnrs, cond["text"], cond["mask"])

            denoise = samplers.make_denoiser(
                model_fn, task.parametrization, guidance, {"text": text, "mask": mask}, null
            )

            def loss_fn(x, logsnr):
                logsnrs = jnp.full((batch,), logsnr, jnp.float32)
                per_image = binding_loss(maps(params, x, logsnrs, text, mask, idx))
                return jnp.sum(per_image), per_image

            def steer(x, logsnr):
                grad, per_image = jax.grad(loss_fn, has_aux=True)(x, logsnr)
                rms = jnp.sqrt(jnp.mean(jnp.square(grad), axis=(1, 2, 3), keepdims=True)) + 1e-12
                return x - step_size * grad / rms, jnp.mean(per_image)

            init_rng, _, sample_rng = jax.random.split(rng, 3)  # the cascade's use of the key
            x = jax.random.normal(init_rng, (batch, task.resolution, task.resolution, 3))
            grid = schedules.sampling_grid(task.schedule, setting.steps)

            def body(x, step):
                logsnr_s = grid[step]
                if step_size:
                    x, loss = jax.lax.cond(logsnr_s <= args.until, steer, lambda x, _: (x, jnp.nan), x, logsnr_s)
                else:
                    loss = jnp.nan
                noise = jax.random.normal(jax.random.fold_in(sample_rng, step), x.shape, jnp.float32)
                x_next, _ = samplers.ddpm_step(denoise, x, logsnr_s, grid[step + 1], noise)
                return x_next, loss

            x, losses = jax.lax.scan(body, x, jnp.arange(grid.shape[0] - 1))
            return to_uint8(x), losses

        return sample

    if setting.sampler != "ddpm":
        raise SystemExit(f"this script steps DDPM; the base's default sampler is {setting.sampler}")
    sr_sample = _compiled_sampler(sr.task, default_settings(sr))
    sr_front = text_front_end(sr.config)
    indices = np.asarray([token_indices(p) for p in prompts], np.int32)
    for step_size in (float(v) for v in args.step_size.split(",")):
        sample = make_sampler(step_size)
        start_time, images, losses = time.perf_counter(), [], []
        for start in range(0, len(prompts), args.chunk):
            chunk = prompts[start : start + args.chunk]
            encoded = front(chunk)
            rng = jax.random.fold_in(jax.random.key(0), start)
            low, loss = sample(
                base.params,
                encoded["text_embeddings"],
                encoded["text_mask"],
                jnp.asarray(indices[start : start + args.chunk]),
                jax.random.fold_in(rng, 0),
            )
            losses.append(np.asarray(loss))
            batch = dict(sr_front(chunk), image_32=low)
            images.append(np.asarray(sr_sample(sr.params, batch, jax.random.fold_in(rng, 1))))
        report = shapes_eval.report_to_json(shapes_eval.evaluate(zip(prompts, np.concatenate(images))))
        curve = np.nanmean(np.stack(losses), axis=0) if step_size else np.array([])
        row = dict(
            split=args.split,
            pairs=len(prompts),
            step_size=step_size,
            until=args.until,
            resolution=args.resolution,
            overall=report["overall"],
            **{k: round(v, 4) for k, v in report["per_attribute"].items()},
            loss_first_last=[round(float(v), 4) for v in curve[np.isfinite(curve)][[0, -1]]] if curve.size else [],
            seconds=round(time.perf_counter() - start_time),
        )
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
