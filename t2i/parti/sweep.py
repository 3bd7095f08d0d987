"""Score a Parti model on Shapes prompts over a grid of decode settings.

  python -m t2i.parti.sweep --model runs/parti.npz --splits test,heldout --num 200 \
      --guidance 1,3,5 --out docs/results/parti_guidance.jsonl

Settings left unset are the model's own (its config's `sampling` block), the ones
`t2i sample --pipeline parti` uses. Every combination of the comma-separated settings
(`--guidance`, `--temperature`, `--top_k`, `--top_p`, `--num_candidates`; and
`--steps`, checkpoints of a training workdir: a learning curve) samples the first
`--num` captions of each split and is scored by the Shapes evaluator. With
`--num_candidates N` > 1 the reranker (default: the committed Shapes CLIP) keeps the
best of N. `--paraphrase` rewrites each prompt with synonyms the training captions
never use (`t2i.evaluation.paraphrase`) and scores the image against the original
caption. One JSON line per (setting, split) is appended to `--out`; `... table FILE`
prints a sweep file as a Markdown table.
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


def _setting_cells(r: dict) -> list:
    d = r["decode"]
    cells = [r["step"], r.get("training_minutes") or "-", f"{d['guidance_weight']:g}", f"{d['temperature']:g}"]
    cells += [d["top_k"] or "-", f"{d['top_p']:g}", r["num_candidates"]]
    cells += ["paraphrased" if r["paraphrase"] else "captions", r["split"], r["num"]]
    return cells


def markdown_table(path: str) -> str:
    head = ["step", "train min", "w", "T", "top-k", "top-p", "N", "prompts", "split", "n"]
    return markdown_rows(path, head, _setting_cells)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="training workdir or exported .npz")
    parser.add_argument("--steps", default="", help="checkpoint steps of a --model workdir (default: newest)")
    parser.add_argument("--image_tokenizer", help="ViT-VQGAN (default: the model's)")
    parser.add_argument("--reranker", help="CLIP for --num_candidates > 1 (default: the committed Shapes CLIP)")
    add_common_flags(parser, batch_size=64)
    parser.add_argument("--guidance", help="guidance weight(s) on the logits")
    parser.add_argument("--temperature", help="temperature(s), 0 = greedy")
    parser.add_argument("--top_k", help="top-k value(s), 0 = off")
    parser.add_argument("--top_p", help="top-p value(s) in (0, 1]")
    parser.add_argument("--num_candidates", help="samples per prompt, best by the reranker (default: the model's)")
    parser.add_argument("--paraphrase", action="store_true", help="prompts rephrased with unseen synonyms")
    return sweep_main("parti_sweep", argv, parser, _sweep, markdown_table)


def _sweep(args) -> int:
    from t2i.cli import split_prompts
    from t2i.evaluation import shapes_eval
    from t2i.evaluation.paraphrase import paraphrase
    from t2i.model_files import load_model
    from t2i.parti.pipeline import generate, load_image_tokenizer, load_scorer
    from t2i.parti.sampling import DecodeSettings

    splits = args.splits.split(",")
    captions = {split: split_prompts(split, args.num) for split in splits}
    steps = values(args.steps, int) if args.steps else [None]
    if args.steps and args.model.endswith(".npz"):
        raise UsageError("--steps needs a training workdir; an exported .npz holds one step")
    candidates = values(args.num_candidates, int) if args.num_candidates is not None else None
    # Bad values fail now, before anything loads or compiles.
    probe = DecodeSettings()
    for field, text, kind in (
        ("guidance_weight", args.guidance, float),
        ("temperature", args.temperature, float),
        ("top_k", args.top_k, int),
        ("top_p", args.top_p, float),
    ):
        for value in values(text, kind) if text is not None else []:
            dataclasses.replace(probe, **{field: value}).check()
    if candidates and min(candidates) < 1:
        raise UsageError(f"--num_candidates must be at least 1, got {min(candidates)}")
    scorer = None
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    for step in steps:
        model = load_model(args.model, step, family="parti")
        tokenizer = load_image_tokenizer(args.image_tokenizer or model.config.model.get("image_tokenizer") or None)
        own = model.task.default_decode_settings()

        def given_or(text, kind, default):
            return values(text, kind) if text is not None else [default]

        grid = itertools.product(
            given_or(args.guidance, float, own.guidance_weight),
            given_or(args.temperature, float, own.temperature),
            given_or(args.top_k, int, own.top_k),
            given_or(args.top_p, float, own.top_p),
            candidates or [int(model.config.sampling.get("num_candidates", 1))],
        )
        minutes = None if args.model.endswith(".npz") else training_minutes(args.model, model.step)
        for guidance, temperature, top_k, top_p, num_candidates in grid:
            settings = DecodeSettings(guidance, temperature, top_k, top_p).check()
            if num_candidates > 1 and scorer is None:
                scorer = load_scorer(args.reranker)
            for split in splits:
                prompts = [paraphrase(c) for c in captions[split]] if args.paraphrase else captions[split]
                start = time.perf_counter()
                images, _ = generate(
                    model,
                    tokenizer,
                    prompts,
                    args.seed,
                    settings,
                    num_candidates=num_candidates,
                    scorer=scorer,
                    batch_size=args.batch_size,
                )
                seconds = time.perf_counter() - start
                report = shapes_eval.evaluate(zip(captions[split], images))  # judged against the caption
                record = dict(
                    split=split,
                    num=len(images),
                    step=model.step,
                    training_minutes=minutes,
                    decode=dataclasses.asdict(settings),
                    num_candidates=num_candidates,
                    reranker=getattr(scorer, "source", None) if num_candidates > 1 else None,
                    paraphrase=args.paraphrase,
                    image_tokenizer=tokenizer.source,
                    seed=args.seed,
                    seconds=round(seconds, 1),
                    **shapes_eval.report_to_json(report),
                )
                print(
                    f"step {model.step} w={guidance:g} T={temperature:g} k={top_k} p={top_p:g} N={num_candidates} "
                    f"{split}: overall {record['overall']:.3f} ({seconds:.0f} s)",
                    flush=True,
                )
                name = f"step{model.step}_w{guidance:g}_T{temperature:g}_k{top_k}_p{top_p:g}_N{num_candidates}"
                name += ("_paraphrased" if args.paraphrase else "") + f"_{split}.png"
                record_run(args, record, images, prompts, name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
