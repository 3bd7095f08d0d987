"""Atomic outputs: a command's folder or file appears whole or not at all.

Every command that writes (sample, reconstruct, tokenize, embed, preview, export,
convert, grids) writes into a temporary sibling first and renames it into place at
the end, so an error or a kill leaves no half-written output and never a file that
looks finished.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

from t2i.errors import UsageError


def check_empty_or_missing(out_dir: str) -> None:
    """The rule for output folders: they may exist only while empty."""
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise UsageError(f"output folder {out_dir} exists and is not empty")


@contextlib.contextmanager
def atomic_dir(out_dir: str, existing: str = "error") -> Iterator[str]:
    """Yields a staging folder beside `out_dir`; on success it becomes `out_dir`.

    `existing`: what to do when `out_dir` is already there: "error" (unless it is an
    empty folder), "replace" (the old folder is removed once the new one is complete)
    or "merge" (the new files are moved in one by one, a file named `manifest.jsonl`
    last, so a reader never sees a manifest whose images are missing).
    """
    if existing not in ("error", "replace", "merge"):
        raise ValueError(f"existing must be error, replace or merge, got {existing!r}")
    if existing == "error":
        check_empty_or_missing(out_dir)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out_dir))}.tmp_", dir=parent)
    try:
        yield staging
        os.chmod(staging, 0o755)  # mkdtemp's 0700 would outlive the rename
        if existing == "merge" and os.path.isdir(out_dir):
            for name in sorted(os.listdir(staging), key=lambda n: n == "manifest.jsonl"):
                os.replace(os.path.join(staging, name), os.path.join(out_dir, name))
            return
        if os.path.isdir(out_dir):
            if existing == "replace":
                shutil.rmtree(out_dir)
            else:
                os.rmdir(out_dir)  # empty, checked above
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str) -> Iterator[str]:
    """Yields a temporary path beside `path` (same suffix); on success it becomes `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp_", suffix=suffix, dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would outlive the rename
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
