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
import json
import os
import sys
import time

from t2i.errors import UsageError
from t2i.evaluation.sweeps import percent, training_minutes, values


def markdown_table(path: str) -> str:
    rows = [json.loads(line) for line in open(path) if line.strip()]
    attributes = ("color", "shape", "size", "position", "relation", "count")
    head = ["step", "train min", "w", "T", "top-k", "top-p", "N", "prompts", "split", "n", "overall"]
    head += ["single", "pair", "count (kind)"] + list(attributes) + ["s/image"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        d = r["decode"]
        cells = [r["step"], r.get("training_minutes") or "-", f"{d['guidance_weight']:g}", f"{d['temperature']:g}"]
        cells += [
            d["top_k"] or "-",
            f"{d['top_p']:g}",
            r["num_candidates"],
            "paraphrased" if r["paraphrase"] else "captions",
        ]
        cells += [r["split"], r["num"], f"**{percent(r['overall'])}**"]
        cells += [f"{r['per_kind'].get(k, 0):.0%}" for k in ("single", "pair", "count")]
        cells += [f"{r['per_attribute'][a]:.0%}" if a in r["per_attribute"] else "-" for a in attributes]
        cells.append(f"{r['seconds'] / r['num']:.2f}")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "table":  # python -m t2i.parti.sweep table FILE.jsonl
        print(markdown_table(argv[1]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="training workdir or exported .npz")
    parser.add_argument("--steps", default="", help="checkpoint steps of a --model workdir (default: newest)")
    parser.add_argument("--image_tokenizer", help="ViT-VQGAN (default: the model's)")
    parser.add_argument("--reranker", help="CLIP for --num_candidates > 1 (default: the committed Shapes CLIP)")
    parser.add_argument("--splits", default="test,heldout")
    parser.add_argument("--num", type=int, default=200, help="captions per split, from the first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--guidance", help="guidance weight(s) on the logits")
    parser.add_argument("--temperature", help="temperature(s), 0 = greedy")
    parser.add_argument("--top_k", help="top-k value(s), 0 = off")
    parser.add_argument("--top_p", help="top-p value(s) in (0, 1]")
    parser.add_argument("--num_candidates", default="1", help="samples per prompt, best by the reranker")
    parser.add_argument("--paraphrase", action="store_true", help="prompts rephrased with unseen synonyms")
    parser.add_argument("--out", required=True, help="JSON lines are appended here")
    parser.add_argument("--grid_dir", default="", help="save the first 32 images of each run here")
    args = parser.parse_args(argv)
    try:
        return _sweep(args)
    except (UsageError, ValueError) as error:
        print(f"parti_sweep: error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2


def _sweep(args) -> int:
    import numpy as np

    from t2i.cli import split_prompts
    from t2i.evaluation import shapes_eval
    from t2i.evaluation.paraphrase import paraphrase
    from t2i.model_files import load_model
    from t2i.parti.pipeline import generate, load_image_tokenizer, load_scorer
    from t2i.parti.sampling import DecodeSettings
    from t2i.train.logging import save_grid

    splits = args.splits.split(",")
    captions = {split: split_prompts(split, args.num) for split in splits}
    steps = values(args.steps, int) if args.steps else [None]
    if args.steps and args.model.endswith(".npz"):
        raise UsageError("--steps needs a training workdir; an exported .npz holds one step")
    candidates = values(args.num_candidates, int)
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
    if min(candidates) < 1:
        raise UsageError(f"--num_candidates must be at least 1, got {min(candidates)}")
    scorer = load_scorer(args.reranker) if max(candidates) > 1 else None
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
            candidates,
        )
        minutes = None if args.model.endswith(".npz") else training_minutes(args.model, model.step)
        for guidance, temperature, top_k, top_p, num_candidates in grid:
            settings = DecodeSettings(guidance, temperature, top_k, top_p).check()
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
                with open(args.out, "a") as f:
                    f.write(json.dumps(record, sort_keys=True) + "\n")
                print(
                    f"step {model.step} w={guidance:g} T={temperature:g} k={top_k} p={top_p:g} N={num_candidates} "
                    f"{split}: overall {record['overall']:.3f} ({seconds:.0f} s)",
                    flush=True,
                )
                if args.grid_dir:
                    name = f"step{model.step}_w{guidance:g}_T{temperature:g}_k{top_k}_p{top_p:g}_N{num_candidates}"
                    name += ("_paraphrased" if args.paraphrase else "") + f"_{split}.png"
                    os.makedirs(args.grid_dir, exist_ok=True)
                    save_grid(os.path.join(args.grid_dir, name), np.asarray(images[:32]), prompts[:32])
    return 0


if __name__ == "__main__":
    sys.exit(main())
