"""Parti's training step: seconds per step and achieved FLOP/s against this machine's
float32 matmul peak, measured in the same run.

  JAX_PLATFORMS=cpu python benchmarks/parti_train_flops.py [--configs shapes,block] [--steps 10]
      [--block_batch 2] [--out results.jsonl]

Configurations:
- "shapes": the Shapes config (`configs/parti.py`, or `--config`), its model, batch
  size (`--batch` overrides), text length, grid, optimizer (Adafactor) and dropout.
- "block": one 350M-shaped block pair: Parti's 350M config (`configs/parti.py:size=350M`:
  128 text tokens, a 32x32 grid = 1,024 image tokens, 8,192 codes) with the model cut
  to one encoder and one decoder layer of width 1,024, 16 heads, MLP 4,096
  (`--block_*` flags change these), float32, neither scanned nor rematerialised (so
  that every FLOP counted is one the model needs), batch `--block_batch` (default 2,
  small enough for a CPU). The text vocabulary is the Shapes tokenizer's (the
  embedding lookups do no matmul work, so this changes no FLOPs that are counted).

The step is the trainer's own: `t2i.train.state.make_train_step` (loss, gradients,
optimizer, EMA, the non-finite guard) compiled by `t2i.train.trainer.compile_train_step`
(jit with the state's shardings, donated), on a synthetic batch of the config's shapes
(random caption tokens, all-real masks, random image token grids). It is compiled once,
run `--warmup` times, then timed `--steps` times (`block_until_ready` on the metrics).

FLOPs per step, two counts: XLA's cost analysis of the compiled step ("xla", what
`t2i.train.trainer.describe_compiled` prints), and the analytic
6 * (encoder params * text tokens + (decoder params + output matrix) * image tokens)
* batch ("6PT": a forward and a backward pass through every matmul weight once per
token; attention scores, norms and the optimizer left out; the tied output matrix
num_codes x width counted once). Achieved FLOP/s = FLOPs / median step seconds.

Peak: a jitted `--peak_size`^3 float32 matmul (default 2048, 2 * n^3 FLOPs), timed in
the same rounds as the steps (one matmul call, then one step, round after round) so
that both see the same machine; its median gives the peak FLOP/s, and the report is
the fraction of that peak each step achieves. Results go in docs/benchmarks.md
(section "Parti"), measured on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from rows import run_rows  # benchmarks/rows.py (the script's own folder is on the path)

from t2i.config import load_config
from t2i.parallel.mesh import LOGICAL_AXIS_RULES, create_mesh
from t2i.parti.model import PartiSize
from t2i.parti.task import PartiTask
from t2i.train.optim import make_optimizer
from t2i.train.state import make_train_step
from t2i.train.trainer import abstract_train_state, compile_train_step, init_train_state


def block_config(args):
    config = load_config("configs/parti.py:size=350M")
    with config.unlocked():
        config.data.tokenizer = "shapes"
        config.data.batch_size = args.block_batch
        config.data.max_text_length = args.block_text_length
        config.model.grid = args.block_grid
        config.model.num_codes = args.block_codes
        config.model.scan = False
        config.model.remat = "none"
        config.model.dtype = "float32"
        config.mesh.data = -1
        config.mesh.fsdp = 1
        config.mesh.tensor = 1
    size = PartiSize(1, 1, args.block_width, args.block_heads, args.block_mlp)
    return config, size


def make_task(name: str, args):
    if name == "shapes":
        config = load_config(args.config)
        if args.batch:
            with config.unlocked():
                config.data.batch_size = args.batch
        return config, PartiTask(config)
    if name == "block":
        config, size = block_config(args)
        task = PartiTask(config)
        task.model = task.model.clone(size=size)
        return config, task
    raise SystemExit(f"unknown configuration {name!r} (shapes, block)")


def analytic_flops(params, model, batch: int, text_length: int) -> float:
    """6 * (encoder params * text tokens + (decoder params + output matrix) * image tokens) * batch."""
    encoder = decoder = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = [getattr(k, "key", "") for k in path]
        if "encoder" in keys:
            encoder += int(np.prod(leaf.shape))
        elif "decoder" in keys or "output" in keys:
            decoder += int(np.prod(leaf.shape))
    if model.tie_embeddings:
        decoder += model.num_codes * model.size.width
    image_tokens = model.grid * model.grid
    return 6.0 * (encoder * text_length + decoder * image_tokens) * batch


def run_config(name: str, args, peak_fn, peak_args, peak_flops: float) -> dict:
    config, task = make_task(name, args)
    batch_size = int(config.data.batch_size)
    text_length = int(config.data.max_text_length)
    grid, num_codes = task.grid, task.num_codes
    tx, schedule = make_optimizer(config.optimizer, int(config.train.num_steps))
    mesh = create_mesh(dict(config.mesh))
    rng = np.random.default_rng(0)
    host_batch = {
        "tokens": rng.integers(1, task.model.text_vocab, (batch_size, text_length)).astype(np.int32),
        "text_mask": np.ones((batch_size, text_length), bool),
        "image_tokens": rng.integers(0, num_codes, (batch_size, grid, grid)).astype(np.int32),
    }
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
        init_rng, train_rng = jax.random.split(jax.random.key(0))
        _, shardings = abstract_train_state(task, tx, mesh, init_rng)
        state = init_train_state(task, tx, shardings, init_rng)
        batch = {k: jnp.asarray(v) for k, v in host_batch.items()}
        step_fn = make_train_step(task.loss, tx, schedule, float(config.train.ema_decay), task.update_model_state)
        start = time.perf_counter()
        compiled = compile_train_step(step_fn, shardings, mesh, state, batch, train_rng)
        compile_seconds = time.perf_counter() - start
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        xla_flops = float(cost["flops"]) if cost and "flops" in cost else float("nan")
        params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(state.params)))
        sixpt = analytic_flops(state.params, task.model, batch_size, text_length)

        for _ in range(args.warmup):
            state, metrics = compiled(state, batch, train_rng)
            jax.block_until_ready(metrics)
        step_times, peak_times = [], []
        for _ in range(args.steps):
            start = time.perf_counter()
            jax.block_until_ready(peak_fn(*peak_args))
            peak_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            state, metrics = compiled(state, batch, train_rng)
            jax.block_until_ready(metrics)
            step_times.append(time.perf_counter() - start)
        loss = float(metrics["loss"])
    step_seconds = statistics.median(step_times)
    peak = peak_flops / statistics.median(peak_times)
    size = task.model.size
    return {
        "benchmark": "parti_train_flops",
        "configuration": name,
        "device": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "shape": dict(size._asdict()),
        "batch": batch_size,
        "text_length": text_length,
        "image_tokens": grid * grid,
        "num_codes": num_codes,
        "dtype": str(config.model.dtype),
        "parameters": params,
        "compile_seconds": compile_seconds,
        "median_step_seconds": step_seconds,
        "steps_per_second": 1.0 / step_seconds,
        "xla_gflop_per_step": xla_flops / 1e9,
        "analytic_6pt_gflop_per_step": sixpt / 1e9,
        "xla_gflops_achieved": xla_flops / step_seconds / 1e9,
        "analytic_gflops_achieved": sixpt / step_seconds / 1e9,
        "peak_gflops": peak / 1e9,
        "xla_fraction_of_peak": xla_flops / step_seconds / peak,
        "analytic_fraction_of_peak": sixpt / step_seconds / peak,
        "last_loss": loss,
        "step_seconds": step_times,
        "peak_seconds": peak_times,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="shapes,block", help="comma-separated: shapes, block")
    parser.add_argument("--config", default="configs/parti.py", help="the Shapes configuration")
    parser.add_argument("--batch", type=int, default=0, help="the Shapes configuration's batch (0: the config's)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (and timed peak matmuls)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--peak_size", type=int, default=2048, help="n of the n x n x n f32 peak matmul")
    parser.add_argument("--block_batch", type=int, default=2)
    parser.add_argument("--block_width", type=int, default=1024)
    parser.add_argument("--block_heads", type=int, default=16)
    parser.add_argument("--block_mlp", type=int, default=4096)
    parser.add_argument("--block_grid", type=int, default=32, help="image grid (32: 1,024 tokens)")
    parser.add_argument("--block_text_length", type=int, default=128)
    parser.add_argument("--block_codes", type=int, default=8192)
    parser.add_argument("--out", default="", help="also append the JSON lines to this file")
    args = parser.parse_args()

    n = args.peak_size
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    peak_fn = jax.jit(jnp.matmul).lower(a, b).compile()
    for _ in range(3):
        jax.block_until_ready(peak_fn(a, b))

    rows = run_rows(args.configs.split(","), lambda name: run_config(name, args, peak_fn, (a, b), 2.0 * n**3), args.out)

    print()
    print(
        f"Parti training step against a {n}^3 f32 matmul's peak, {rows[0]['device']} x {rows[0]['devices']}, "
        f"jax {jax.__version__}; medians of {args.steps} steps (matmul calls interleaved)"
    )
    print(
        f"{'config':<8} {'batch':>5} {'params':>8} {'step s':>8} {'XLA GFLOP':>10} {'6PT GFLOP':>10} "
        f"{'XLA GFLOP/s':>12} {'6PT GFLOP/s':>12} {'peak GFLOP/s':>13} {'XLA/peak':>9} {'6PT/peak':>9}"
    )
    for row in rows:
        print(
            f"{row['configuration']:<8} {row['batch']:>5} {row['parameters'] / 1e6:>7.1f}M "
            f"{row['median_step_seconds']:>8.3f} {row['xla_gflop_per_step']:>10.1f} "
            f"{row['analytic_6pt_gflop_per_step']:>10.1f} {row['xla_gflops_achieved']:>12.1f} "
            f"{row['analytic_gflops_achieved']:>12.1f} {row['peak_gflops']:>13.1f} "
            f"{row['xla_fraction_of_peak']:>8.1%} {row['analytic_fraction_of_peak']:>8.1%}"
        )


if __name__ == "__main__":
    main()
