"""Parti's cached decoding against Hugging Face transformers' cached `generate` on a T5
encoder-decoder of the same shape, both sides in one process, alternating.

  .venv/bin/pip install torch==2.13.0 transformers   # or: pip install -e .[bench]
  JAX_PLATFORMS=cpu python benchmarks/parti_vs_hf_t5.py [--size shapes] [--grids 8,32] [--batch 1]
      [--rounds 3] [--block 2] [--threads N] [--out results.jsonl]

What is measured, per token grid (default 8x8 = 64 and 32x32 = 1,024 image tokens):
- t2i: `t2i.parti.sampling.sample_tokens` (prompt encoding, KV-cache prefill, a
  `lax.scan` of one-token steps), jitted as one call and compiled before timing;
  greedy (temperature 0), guidance weight 1 (no unconditional rows);
- Hugging Face: `T5ForConditionalGeneration.generate` (its KV cache, `use_cache=True`),
  greedy (`do_sample=False`, one beam), `max_new_tokens` = grid * grid with the end of
  sequence switched off so that every call makes all of them, under
  `torch.inference_mode()`, CPU PyTorch with `torch.set_num_threads(--threads)` (default:
  the cores this process may use, which is what XLA:CPU's thread pool uses).
Both models have random weights (no download) and the same shape: `VARIANTS[--size]`'s
encoder/decoder layers, width (d_model), heads (d_kv = width / heads) and MLP width
(d_ff, GELU, `feed_forward_proj="gelu"`), tied output embeddings scaled by
1/sqrt(width) on both sides, a vocabulary of `--num_codes` + 3 for T5 (its one
vocabulary holds the codes and its pad/EOS/start tokens; Parti's image vocabulary is
`--num_codes` + its begin-of-image token, and its text vocabulary is given the same
size). Not identical: T5 uses RMSNorm, no biases and relative position buckets; Parti
uses LayerNorm, biases and learned (2-d for the image) positions; these change the work
per token by well under a percent.

Timing: `--rounds` rounds, each a block of `--block` t2i calls, then a block of
`--block` Hugging Face calls; the first call of each block is untimed (after the switch:
caches, torch's thread wake-up), and the process sleeps `--pause` seconds between blocks so
that torch's idle OpenMP threads stop spinning before JAX runs. Reported: the median
seconds per call, image tokens per second (batch * grid^2 / seconds) and the ratio t2i /
Hugging Face. Results go in docs/benchmarks.md (section "Parti"), measured on an
otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from rows import run_rows  # benchmarks/rows.py (the script's own folder is on the path)

from t2i.parti import sampling
from t2i.parti.model import VARIANTS, Parti, parti_size

SPECIAL_TOKENS = 3  # T5's pad (also the decoder's start token), EOS, and one unknown


def jax_side(args, grid: int, text: np.ndarray):
    """(compiled sampler, its arguments, parameter count)."""
    import flax.linen as nn

    vocab = args.num_codes + SPECIAL_TOKENS
    model = Parti(
        size=parti_size(args.size),
        text_vocab=vocab,
        text_length=args.text_length,
        num_codes=args.num_codes,
        grid=grid,
        tie_embeddings=True,
    )
    length = grid * grid
    mask = jnp.ones(text.shape, bool)
    params = nn.unbox(
        jax.jit(model.init)(jax.random.key(0), jnp.asarray(text[:1]), mask[:1], jnp.zeros((1, length), jnp.int32))
    )
    settings = sampling.DecodeSettings(guidance_weight=1.0, temperature=0.0)
    keys = jax.random.split(jax.random.key(1), text.shape[0])
    call_args = (params, jnp.asarray(text), mask, keys)
    compiled = (
        jax.jit(lambda p, t, m, k: sampling.sample_tokens(model, p, t, m, k, settings)).lower(*call_args).compile()
    )
    count = int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
    return compiled, call_args, count


def torch_side(args, grid: int, text: np.ndarray):
    """(a function running one `generate` call, parameter count)."""
    import torch
    from transformers import DynamicCache, EncoderDecoderCache, T5Config, T5ForConditionalGeneration

    size = parti_size(args.size)
    config = T5Config(
        vocab_size=args.num_codes + SPECIAL_TOKENS,
        d_model=size.width,
        d_kv=size.width // size.heads,
        d_ff=size.mlp_dim,
        num_layers=size.encoder_layers,
        num_decoder_layers=size.decoder_layers,
        num_heads=size.heads,
        feed_forward_proj="gelu",
        dropout_rate=0.0,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(config).eval()
    length = grid * grid
    input_ids = torch.from_numpy(text.astype(np.int64))
    attention_mask = torch.ones_like(input_ids)
    model.generation_config.eos_token_id = None  # make every call produce all the tokens
    warnings.filterwarnings("ignore", message=".*past_key_values.*", category=FutureWarning)

    def run():
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=length,
                min_new_tokens=length,
                do_sample=False,
                num_beams=1,
                use_cache=True,
                # A fresh cache that grows one layer at a time: the one generate builds
                # from T5's config has `num_layers` (the encoder's) layers, too few when
                # the decoder is deeper (transformers 5.25).
                past_key_values=EncoderDecoderCache(DynamicCache(), DynamicCache()),
            )
        if out.shape[1] != length + 1:  # the decoder's start token, then the image tokens
            raise AssertionError(f"generate made {out.shape[1] - 1} tokens, not {length}")
        return out

    return run, int(sum(p.numel() for p in model.parameters()))


def run_grid(args, grid: int) -> dict:
    rng = np.random.default_rng(0)
    text = rng.integers(SPECIAL_TOKENS, args.num_codes + SPECIAL_TOKENS, (args.batch, args.text_length))
    compiled, call_args, jax_params = jax_side(args, grid, text)
    torch_run, torch_params = torch_side(args, grid, text)
    times: dict[str, list[float]] = {"t2i": [], "hf": []}
    sides = {"t2i": lambda: jax.block_until_ready(compiled(*call_args)), "hf": torch_run}
    for _ in range(args.rounds):
        for name, fn in sides.items():
            for i in range(args.block + 1):
                start = time.perf_counter()
                fn()
                if i:
                    times[name].append(time.perf_counter() - start)
            time.sleep(args.pause)
    length = grid * grid
    medians = {name: statistics.median(t) for name, t in times.items()}
    return {
        "benchmark": "parti_vs_hf_t5",
        "device": jax.devices()[0].device_kind,
        "size": args.size,
        "shape": dict(parti_size(args.size)._asdict()),
        "grid": grid,
        "image_tokens": length,
        "batch": args.batch,
        "text_length": args.text_length,
        "num_codes": args.num_codes,
        "threads": args.threads,
        "t2i_parameters": jax_params,
        "hf_parameters": torch_params,
        "t2i_seconds": medians["t2i"],
        "hf_seconds": medians["hf"],
        "t2i_tokens_per_second": args.batch * length / medians["t2i"],
        "hf_tokens_per_second": args.batch * length / medians["hf"],
        "ratio": medians["hf"] / medians["t2i"],
        "seconds": times,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="shapes", choices=list(VARIANTS))
    parser.add_argument("--grids", default="8,32", help="token grids, comma-separated (8: 64 tokens, 32: 1,024)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of one block per side")
    parser.add_argument("--block", type=int, default=2, help="timed calls per side per round (after one untimed)")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds of sleep after each block")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch's threads")
    parser.add_argument("--text_length", type=int, default=24, help="text tokens (the Shapes config's 24)")
    parser.add_argument("--num_codes", type=int, default=1024, help="image codes (the Shapes config's 1,024)")
    parser.add_argument("--out", default="", help="also append the JSON lines to this file")
    args = parser.parse_args()
    try:
        import torch
        import transformers
    except ImportError as e:
        raise SystemExit(f"needs torch and transformers ({e}): pip install torch==2.13.0 transformers") from e
    torch.set_num_threads(args.threads)

    rows = run_rows([int(g) for g in args.grids.split(",")], lambda grid: run_grid(args, grid), args.out)

    print()
    print(
        f"Parti {args.size} {rows[0]['shape']} against T5ForConditionalGeneration.generate, batch {args.batch}, "
        f"greedy, float32, {rows[0]['device']}; jax {jax.__version__}, torch {torch.__version__} "
        f"({args.threads} threads), transformers {transformers.__version__}; "
        f"medians of {args.rounds * args.block} calls per side, alternating blocks of {args.block}"
    )
    print(f"{'tokens':>7} {'t2i s':>9} {'t2i tok/s':>10} {'HF s':>9} {'HF tok/s':>10} {'t2i / HF':>9}")
    for row in rows:
        print(
            f"{row['image_tokens']:>7} {row['t2i_seconds']:>9.3f} {row['t2i_tokens_per_second']:>10.1f} "
            f"{row['hf_seconds']:>9.3f} {row['hf_tokens_per_second']:>10.1f} {row['ratio']:>8.2f}x"
        )


if __name__ == "__main__":
    main()
