"""Training logs: TensorBoard scalars, a console progress bar, PNG grids with prompts."""

from __future__ import annotations

import json
import math
import os
import textwrap
import time
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from t2i.io import atomic_file


class MetricWriter:
    """TensorBoard event files under `workdir/tensorboard` (`tensorboard --logdir`),
    and the same scalars as JSON lines in `workdir/metrics.jsonl` for scripts and docs."""

    def __init__(self, workdir: str, enabled: bool = True):
        self._writer = None
        self._jsonl = None
        if enabled:
            from tensorboardX import SummaryWriter  # lazy: not needed for sampling or eval

            self._writer = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=30)
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", buffering=1)

    def scalars(self, step: int, values: Mapping[str, float], prefix: str = "train") -> None:
        if self._writer is None:
            return
        for name, value in values.items():
            self._writer.add_scalar(f"{prefix}/{name}", float(value), step)
        row = {"step": int(step), "split": prefix, "time": time.time()}
        row.update({name: float(value) for name, value in values.items()})
        self._jsonl.write(json.dumps(row) + "\n")

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        if self._writer is not None:
            self._writer.add_image(name, image, step, dataformats="HWC")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._jsonl.close()


def make_grid(
    images: np.ndarray,
    texts: Sequence[str] | None = None,
    columns: int | None = None,
    scale: int = 1,
    max_caption_lines: int = 6,
) -> np.ndarray:
    """Tiles uint8 images [N, H, W, 3] into one image, each with its text beneath
    (wrapped, at most `max_caption_lines` lines).

    Small images (Shapes at 32 px) are upscaled by `scale` with nearest neighbour so the
    text fits.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"make_grid wants images [N, H, W, 3], got {images.shape}")
    n, h, w, _ = images.shape
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w = h * scale, w * scale
    columns = columns or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / columns))
    pad = 2
    font = ImageFont.load_default()
    line_height = 11
    chars_per_line = max(8, w // 6)
    wrapped = [textwrap.wrap(str(t), chars_per_line)[:max_caption_lines] for t in texts] if texts is not None else []
    text_height = max((len(lines) for lines in wrapped), default=0) * line_height
    cell_h, cell_w = h + text_height + pad, w + pad
    canvas = Image.new("RGB", (columns * cell_w + pad, rows * cell_h + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        row, col = divmod(i, columns)
        x, y = pad + col * cell_w, pad + row * cell_h
        canvas.paste(Image.fromarray(images[i].astype(np.uint8)), (x, y))
        if texts is not None:
            for k, line in enumerate(wrapped[i]):
                draw.text((x, y + h + k * line_height), line, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def save_grid(path: str, images: np.ndarray, texts: Sequence[str] | None = None, **kwargs) -> str:
    """Writes the grid as a PNG atomically (temp file, then rename)."""
    grid = make_grid(images, texts, **kwargs)
    with atomic_file(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    return path
