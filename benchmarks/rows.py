"""What the benchmark scripts share: run one measurement per item, print each result as
a JSON line as soon as it exists (a long run shows progress and a killed run keeps what
it had), and append it to `--out` when one is given."""

from __future__ import annotations

import json


def run_rows(items, measure, out: str = "") -> list[dict]:
    """[measure(item) for item in items], each row printed and appended to `out`."""
    rows = []
    for item in items:
        row = measure(item)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if out:
            with open(out, "a") as f:
                f.write(json.dumps(row) + "\n")
    return rows
