"""Score an Imagen cascade on Shapes prompts over a grid of sampling settings.

  python -m t2i.imagen.sweep --base runs/imagen_base --sr runs/imagen_sr \
      --splits test,heldout --num 200 --guidance 1,3,5,8 --thresholding none,dynamic \
      --out docs/results/imagen_guidance.jsonl

Settings left unset are the stages' own (their configs' `sampling` blocks, saved with
them), the ones `t2i sample --pipeline imagen` uses.

Every combination of the comma-separated base-stage settings (and of `--base_steps`,
checkpoints of the base workdir: a learning curve) samples the first `--num` captions
(after `--offset`: a setting chosen on the first 100 can be checked on the next 100)
of each split through the whole cascade and is scored by the Shapes evaluator on the
64 px output. The stages load and each sampler compiles once for the whole sweep (the
same work as `t2i sample` + `t2i eval shapes` per setting, without reloading). One JSON
line per (setting, split) is appended to `--out`; `--grid_dir` also saves the first
images of each as a PNG grid with their prompts. `... imagen_sweep table FILE` prints a
sweep file as a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys
import time

from t2i.errors import UsageError
from t2i.evaluation.sweeps import add_common_flags, markdown_rows, record_run, sweep_main, training_minutes, values


def _weight_cell(setting: dict) -> str:
    """The guidance weight, with its log-SNR interval where it is limited ("5 @ -6..2")."""
    lo, hi = setting.get("guidance_interval") or (None, None)
    if lo is None and hi is None:
        return f"{setting['guidance_weight']:g}"
    ends = ("" if lo is None else f"{lo:g}", "" if hi is None else f"{hi:g}")
    return f"{setting['guidance_weight']:g} @ {ends[0]}..{ends[1]}"


def _setting_cells(r: dict) -> list:
    base = r["base"]
    offset = r.get("offset", 0)
    split = f"{r['split']} [{offset}:{offset + r['num']}]" if offset else r["split"]
    cells = [r["base_step"], r.get("base_training_minutes") or "-", base["sampler"], base["steps"]]
    return cells + [_weight_cell(base), base["thresholding"], split, r["num"]]


def markdown_table(path: str) -> str:
    """The records of a sweep file as a Markdown table, one row per (setting, split)."""
    head = ["base step", "train min", "sampler", "steps", "w", "thresholding", "split", "n"]
    return markdown_rows(path, head, _setting_cells)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="base stage: training workdir or exported .npz")
    parser.add_argument("--sr", required=True, help="super-resolution stage: training workdir or exported .npz")
    parser.add_argument("--base_steps", default="", help="checkpoint steps of the --base workdir (default: newest)")
    add_common_flags(parser, batch_size=50)
    parser.add_argument("--offset", type=int, default=0, help="skip this many captions of each split first")
    # Unset settings are the stages' own (what `t2i sample --pipeline imagen` and `make
    # demo` use), so a sweep without flags scores what a user of the cascade gets.
    parser.add_argument("--sampler", help="base sampler(s)")
    parser.add_argument("--steps", help="base step count(s)")
    parser.add_argument("--guidance", help="base guidance weight(s)")
    parser.add_argument("--thresholding", help="base thresholding(s): none|static|dynamic")
    parser.add_argument(
        "--percentile", type=float, help="base dynamic thresholding percentile p (used where --thresholding is dynamic)"
    )
    parser.add_argument(
        "--guidance_interval",
        help="base guidance interval(s) in log-SNR, LO:HI (open sides allowed; ':' is every step); "
        "write --guidance_interval=-6:2,-4:",
    )
    parser.add_argument("--sr_sampler")
    parser.add_argument("--sr_steps", type=int)
    parser.add_argument("--sr_guidance", type=float)
    parser.add_argument("--sr_aug_level", type=float)
    return sweep_main("imagen_sweep", argv, parser, _sweep, markdown_table)


def _sweep(args) -> int:
    from t2i.cli import split_prompts
    from t2i.diffusion import samplers
    from t2i.diffusion.samplers import parse_interval
    from t2i.evaluation import shapes_eval
    from t2i.imagen.cascade import default_settings, load_stage, run_cascade

    splits = args.splits.split(",")
    if args.offset < 0:
        raise UsageError(f"--offset must be at least 0, got {args.offset}")
    prompts = {split: split_prompts(split, args.offset + args.num)[args.offset :] for split in splits}
    base_steps = values(args.base_steps, int) if args.base_steps else [None]
    if args.base_steps and args.base.endswith(".npz"):
        raise UsageError("--base_steps needs a training workdir; an exported .npz holds one step")
    # A bad value fails now, in one line, before the stages load and compile.
    given_intervals = values(args.guidance_interval, parse_interval) if args.guidance_interval is not None else []
    for sampler in (values(args.sampler, str) if args.sampler is not None else []) + [args.sr_sampler or "ddim"]:
        samplers.check_sampler(sampler)
    for thresholding in values(args.thresholding, str) if args.thresholding is not None else ["none"]:
        for interval in given_intervals or [(None, None)]:
            samplers.Guidance(1.0, thresholding, args.percentile or 0.99, interval=samplers.interval_bounds(interval))
    # The stages' own settings (their configs), then the flags over them.
    sr = load_stage(args.sr)
    base_defaults = default_settings(load_stage(args.base, base_steps[-1]))
    sr_given = dict(
        sampler=args.sr_sampler,
        steps=args.sr_steps,
        guidance_weight=args.sr_guidance,
        noise_aug_level=args.sr_aug_level,
    )
    sr_setting = default_settings(sr, **{k: v for k, v in sr_given.items() if v is not None})

    def given_or(text, kind, default):
        return values(text, kind) if text is not None else [default]

    grid = list(
        itertools.product(
            given_or(args.sampler, str, base_defaults.sampler),
            given_or(args.steps, int, base_defaults.steps),
            given_or(args.guidance, float, base_defaults.guidance_weight),
            given_or(args.thresholding, str, base_defaults.thresholding),
            given_or(args.guidance_interval, parse_interval, base_defaults.guidance_interval),
        )
    )
    percentile = base_defaults.percentile if args.percentile is None else args.percentile
    settings = [
        dataclasses.replace(
            base_defaults,
            sampler=sampler,
            steps=steps,
            guidance_weight=guidance,
            thresholding=thresholding,
            percentile=percentile,
            guidance_interval=interval,
        )
        for sampler, steps, guidance, thresholding, interval in grid
    ]
    for setting in [*settings, sr_setting]:  # the combined settings, checked before compiling
        setting.guidance()  # thresholding, percentile, interval
        samplers.check_sampler(setting.sampler)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    for base_step in base_steps:
        base = load_stage(args.base, base_step)
        minutes = None if args.base.endswith(".npz") else training_minutes(args.base, base.step)
        for (sampler, steps, guidance, thresholding, interval), setting in zip(grid, settings):
            for split in splits:
                start = time.perf_counter()
                images = run_cascade([base, sr], [setting, sr_setting], prompts[split], args.seed, args.batch_size)
                seconds = time.perf_counter() - start
                report = shapes_eval.evaluate(zip(prompts[split], images))
                record = dict(
                    split=split,
                    offset=args.offset,
                    num=len(images),
                    base_step=base.step,
                    base_training_minutes=minutes,
                    base=dataclasses.asdict(setting),
                    sr=dict(dataclasses.asdict(sr_setting), step=sr.step),
                    seed=args.seed,
                    seconds=round(seconds, 1),
                    **shapes_eval.report_to_json(report),
                )
                print(
                    f"step {base.step} {sampler} {steps} w={_weight_cell(record['base'])} {thresholding} {split}: "
                    f"overall {record['overall']:.3f} ({seconds:.0f} s)",
                    flush=True,
                )
                limited = (
                    ""
                    if interval == (None, None)
                    else "_at" + "_".join("" if v is None else f"{v:g}" for v in interval)
                )
                shifted = f"_from{args.offset}" if args.offset else ""  # no clash with offset 0's grid
                name = f"step{base.step}_{sampler}{steps}_w{guidance:g}{limited}_{thresholding}_{split}{shifted}.png"
                record_run(args, record, images, prompts[split], name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
