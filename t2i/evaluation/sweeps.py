"""What every family's score sweep shares: comma-separated setting lists, scores as
percentages, and the training minutes behind a checkpoint."""

from __future__ import annotations

import json
import os
import sys

from t2i.errors import UsageError
from t2i.evaluation.shapes_eval import ATTRIBUTES


def values(text: str, kind) -> list:
    """ "1,3,5" -> [1.0, 3.0, 5.0] for kind float; a one-line error for a bad entry."""
    try:
        return [kind(value) for value in text.split(",")]
    except ValueError as error:
        raise UsageError(f"bad list {text!r}: {error}") from None


def percent(fraction: float) -> str:
    """A score as a percentage, with its tenth where it has one: 200 captions move the
    score in half points, and "82%" for 0.825 would hide the one caption that separates
    two settings."""
    tenths = round(fraction * 1000)
    return f"{tenths // 10}%" if tenths % 10 == 0 else f"{tenths / 10:.1f}%"


def training_minutes(workdir: str, step: int) -> float | None:
    """Minutes the run spent training up to `step`, from its metrics log (None without one).

    Each train record carries its interval's `steps_per_second` (measured from the
    previous record, or from the process start after a resume), so summing
    interval steps / rate counts compilation, checkpoints and evaluations but not the
    time a stopped run sat idle before it was resumed, which wall-clock stamps would.
    """
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        return None
    records = [json.loads(line) for line in open(path) if line.strip()]
    records = [r for r in records if r.get("split") == "train" and r.get("steps_per_second")]
    if not records or records[0]["step"] > step:
        return None
    seconds, previous = 0.0, 0
    for record in records:
        if record["step"] > step:
            # Part of an interval: its rate times the steps up to `step`.
            seconds += (step - previous) / record["steps_per_second"]
            break
        seconds += max(record["step"] - previous, 0) / record["steps_per_second"]
        previous = record["step"]
    return round(seconds / 60.0, 1)


# The score columns every sweep table ends with, after its own setting columns.
SCORE_HEAD = ["overall", "single", "pair", "count (kind)", *ATTRIBUTES, "s/image"]


def score_cells(record: dict) -> list[str]:
    """A sweep record's scores in SCORE_HEAD's order."""
    cells = [f"**{percent(record['overall'])}**"]
    cells += [f"{record['per_kind'].get(k, 0):.0%}" for k in ("single", "pair", "count")]
    cells += [f"{record['per_attribute'][a]:.0%}" if a in record["per_attribute"] else "-" for a in ATTRIBUTES]
    cells.append(f"{record['seconds'] / record['num']:.2f}")
    return cells


def markdown_rows(path: str, head: list[str], setting_cells) -> str:
    """A sweep file as a Markdown table: `head` then SCORE_HEAD, one row per record;
    `setting_cells(record)` gives the cells under `head`."""
    records = [json.loads(line) for line in open(path) if line.strip()]
    columns = head + SCORE_HEAD
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for record in records:
        cells = list(setting_cells(record)) + score_cells(record)
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def add_common_flags(parser, batch_size: int) -> None:
    """The flags every sweep takes: which captions, the seed, the batch, where to write."""
    parser.add_argument("--splits", default="test,heldout")
    parser.add_argument("--num", type=int, default=200, help="captions per split, from the first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=batch_size)
    parser.add_argument("--out", required=True, help="JSON lines are appended here")
    parser.add_argument("--grid_dir", default="", help="save the first 32 images of each run here")


def sweep_main(name: str, argv, parser, sweep, markdown_table) -> int:
    """`python -m ... table FILE` prints a sweep file; otherwise parse and run `sweep`,
    a bad setting being one line on stderr and exit 2."""
    if argv and argv[0] == "table":
        print(markdown_table(argv[1]))
        return 0
    args = parser.parse_args(argv)
    try:
        return sweep(args)
    except (UsageError, ValueError) as error:
        print(f"{name}: error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2


def record_run(args, record: dict, images, prompts, grid_name: str) -> None:
    """Append a run's record to `--out`; with `--grid_dir`, save its first 32 images."""
    with open(args.out, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
    if args.grid_dir:
        import numpy as np

        from t2i.train.logging import save_grid

        os.makedirs(args.grid_dir, exist_ok=True)
        save_grid(os.path.join(args.grid_dir, grid_name), np.asarray(images[:32]), list(prompts[:32]))
