"""Parti decoding speed: the KV-cached sampler against a full forward pass per token.

  JAX_PLATFORMS=cpu python benchmarks/parti_decode.py [--size shapes] [--grids 8,32] [--batch 1]
      [--repeats 3] [--uncached_steps 64] [--out results.jsonl]

What is measured, per token grid (default 8x8 = 64 image tokens and 32x32 = 1,024):
- "cached": `t2i.parti.sampling.sample_tokens`, the sampler t2i uses (prompt encoding,
  a prefill of the decoder's KV cache, then a `lax.scan` of one-token steps), jitted
  as one call;
- "uncached": `t2i.parti.sampling.sample_tokens_uncached`, the same loop without a
  cache (every step runs the decoder over all grid * grid positions, the later ones
  masked off by causality: O(N^2) work), jitted as one call.
Each function is compiled once (compilation not timed), called once to warm up, then
timed over `--repeats` calls (`block_until_ready`); the tables give medians and
image tokens per second (batch * grid * grid / seconds) and the ratio cached / uncached.
The two sides alternate call by call, so a drifting machine slows both alike.

The uncached loop at 1,024 tokens takes minutes on a CPU. `--uncached_steps N` (default
64; 0 = always the whole loop) times, where the grid has more than N positions, the same
loop body for only the first N positions, and once more with none (encoding and setup
only), and extrapolates: total = t(0) + (t(N) - t(0)) * grid^2 / N. That is exact up to
noise, because every step of the uncached loop is the same full forward pass over all
positions whatever the position (fixed shapes), but it is an extrapolation, and the
output says so (`"uncached_extrapolated": true` and "(extrapolated from N steps)").
Before timing, the truncated loop's first tokens are checked against
`sample_tokens_uncached`'s on a 4x4 grid of the same shape (the same computation).

The model is `t2i.parti.model.Parti` with freshly initialised weights (speed does not
depend on them) in the `VARIANTS[--size]` shape (default: the Shapes config's
"shapes"), `--text_length` text tokens (all real), `--num_codes` codes, `--dtype`.
Sampling settings: `--temperature` (default 1; 0 = greedy), `--guidance` (default 1:
no unconditional rows; another weight doubles the decoder's batch). Results go in
docs/benchmarks.md (section "Parti"), measured on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from rows import run_rows  # benchmarks/rows.py (the script's own folder is on the path)

from t2i.parti import sampling
from t2i.parti.model import VARIANTS, Parti, parti_size


def build_model(size: str, grid: int, text_length: int, num_codes: int, text_vocab: int, dtype: str) -> Parti:
    return Parti(
        size=parti_size(size),
        text_vocab=text_vocab,
        text_length=text_length,
        num_codes=num_codes,
        grid=grid,
        dtype=jnp.dtype(dtype),
    )


def init_params(model: Parti, text_length: int) -> dict:
    import flax.linen as nn

    length = model.grid * model.grid
    text = jnp.zeros((1, text_length), jnp.int32)
    image = jnp.zeros((1, length), jnp.int32)
    return nn.unbox(jax.jit(model.init)(jax.random.key(0), text, jnp.ones((1, text_length), bool), image))


def uncached_first_steps(model: Parti, params, text_tokens, text_mask, row_keys, settings, steps: int) -> jax.Array:
    """`sampling.sample_tokens_uncached` for the first `steps` positions only (tokens
    after them stay 0): every step is a full decoder pass over all grid * grid positions."""
    return sampling.sample_tokens_uncached(model, params, text_tokens, text_mask, row_keys, settings, steps)


def time_alternating(fns: dict, args: tuple, repeats: int) -> dict:
    """{name: compiled fn} -> {name: [seconds]}: one warm-up call each, then `repeats`
    rounds, each calling every function once."""
    for fn in fns.values():
        jax.block_until_ready(fn(*args))
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
    return times


def check_truncated_loop(args) -> None:
    """The truncated loop must be the uncached sampler's first steps: compared token for
    token on a 4x4 grid of the same model shape (cheap)."""
    grid, steps = 4, 8
    model = build_model(args.size, grid, args.text_length, args.num_codes, args.text_vocab, args.dtype)
    params = init_params(model, args.text_length)
    text = jnp.asarray(np.random.default_rng(0).integers(1, args.text_vocab, (2, args.text_length)), jnp.int32)
    mask = jnp.ones(text.shape, bool)
    keys = jax.random.split(jax.random.key(1), 2)
    settings = sampling.DecodeSettings(guidance_weight=args.guidance, temperature=args.temperature).check()
    full = jax.jit(lambda *a: sampling.sample_tokens_uncached(model, *a, settings))(params, text, mask, keys)
    part = jax.jit(lambda *a: uncached_first_steps(model, *a, settings, steps))(params, text, mask, keys)
    if not np.array_equal(np.asarray(full)[:, :steps], np.asarray(part)[:, :steps]):
        raise AssertionError("the truncated uncached loop does not reproduce sample_tokens_uncached")


def run_grid(args, grid: int) -> dict:
    model = build_model(args.size, grid, args.text_length, args.num_codes, args.text_vocab, args.dtype)
    params = init_params(model, args.text_length)
    length = grid * grid
    rng = np.random.default_rng(0)
    text = jnp.asarray(rng.integers(1, args.text_vocab, (args.batch, args.text_length)), jnp.int32)
    mask = jnp.ones((args.batch, args.text_length), bool)
    keys = jax.random.split(jax.random.key(1), args.batch)
    settings = sampling.DecodeSettings(guidance_weight=args.guidance, temperature=args.temperature).check()
    call_args = (params, text, mask, keys)

    def compile_fn(fn):
        start = time.perf_counter()
        compiled = jax.jit(lambda p, t, m, k: fn(model, p, t, m, k, settings)).lower(*call_args).compile()
        return compiled, time.perf_counter() - start

    fns, compile_seconds = {}, {}
    fns["cached"], compile_seconds["cached"] = compile_fn(sampling.sample_tokens)
    steps = args.uncached_steps
    extrapolated = 0 < steps < length
    if extrapolated:
        for name, n in (("uncached_first", steps), ("uncached_setup", 0)):

            def partial(m, p, t, mk, k, s, n=n):
                return uncached_first_steps(m, p, t, mk, k, s, n)

            fns[name], compile_seconds[name] = compile_fn(partial)
    else:
        fns["uncached"], compile_seconds["uncached"] = compile_fn(sampling.sample_tokens_uncached)

    times = time_alternating(fns, call_args, args.repeats)
    medians = {name: statistics.median(t) for name, t in times.items()}
    if extrapolated:
        setup, first = medians["uncached_setup"], medians["uncached_first"]
        uncached_seconds = setup + (first - setup) * length / steps
    else:
        uncached_seconds = medians["uncached"]
    cached_seconds = medians["cached"]
    return {
        "benchmark": "parti_decode",
        "device": jax.devices()[0].device_kind,
        "size": args.size,
        "shape": dict(parti_size(args.size)._asdict()),
        "grid": grid,
        "image_tokens": length,
        "batch": args.batch,
        "text_length": args.text_length,
        "num_codes": args.num_codes,
        "dtype": args.dtype,
        "temperature": args.temperature,
        "guidance": args.guidance,
        "repeats": args.repeats,
        "cached_seconds": cached_seconds,
        "uncached_seconds": uncached_seconds,
        "uncached_extrapolated": extrapolated,
        "uncached_timed_steps": steps if extrapolated else length,
        "cached_tokens_per_second": args.batch * length / cached_seconds,
        "uncached_tokens_per_second": args.batch * length / uncached_seconds,
        "ratio": uncached_seconds / cached_seconds,
        "seconds": times,
        "compile_seconds": compile_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="shapes", choices=list(VARIANTS))
    parser.add_argument("--grids", default="8,32", help="token grids, comma-separated (8: 64 tokens, 32: 1,024)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--uncached_steps",
        type=int,
        default=64,
        help="time the uncached loop's first N positions and extrapolate where the grid has more (0: never)",
    )
    parser.add_argument("--text_length", type=int, default=24, help="text tokens (the Shapes config's 24)")
    parser.add_argument("--num_codes", type=int, default=1024, help="image codes (the Shapes config's 1,024)")
    parser.add_argument("--text_vocab", type=int, default=1000)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--out", default="", help="also append the JSON lines to this file")
    args = parser.parse_args()
    grids = [int(g) for g in args.grids.split(",")]

    if any(0 < args.uncached_steps < g * g for g in grids):
        check_truncated_loop(args)
    rows = run_rows(grids, lambda grid: run_grid(args, grid), args.out)

    print()
    print(
        f"Parti {args.size} {dict(parti_size(args.size)._asdict())}, batch {args.batch}, {args.dtype}, "
        f"{rows[0]['device']}; medians of {args.repeats} calls"
    )
    print(f"{'tokens':>7} {'cached s':>10} {'cached tok/s':>13} {'uncached s':>11} {'uncached tok/s':>15} {'ratio':>8}")
    for row in rows:
        note = (
            f"  (uncached extrapolated from {row['uncached_timed_steps']} steps)"
            if row["uncached_extrapolated"]
            else ""
        )
        print(
            f"{row['image_tokens']:>7} {row['cached_seconds']:>10.3f} {row['cached_tokens_per_second']:>13.1f} "
            f"{row['uncached_seconds']:>11.3f} {row['uncached_tokens_per_second']:>15.1f} {row['ratio']:>7.1f}x{note}"
        )


if __name__ == "__main__":
    main()
