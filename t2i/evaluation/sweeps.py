"""What every family's score sweep shares: comma-separated setting lists, scores as
percentages, and the training minutes behind a checkpoint."""

from __future__ import annotations

import json
import os

from t2i.errors import UsageError


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
