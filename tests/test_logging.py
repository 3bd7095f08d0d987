import json
import os

import numpy as np
import pytest
from PIL import Image

from t2i.train.logging import MetricWriter, make_grid, save_grid


def test_grid_tiles_images_with_captions(tmp_path):
    images = np.stack([np.full((8, 8, 3), 40 * i, np.uint8) for i in range(5)])
    grid = make_grid(images, ["a red circle"] * 5, columns=3, scale=4)
    plain = make_grid(images, None, columns=3, scale=4)
    assert grid.shape[1] == plain.shape[1] == 3 * 34 + 2  # 3 columns of 32 px + padding
    assert grid.shape[0] > plain.shape[0]  # room for the captions
    assert (plain[2:34, 2:34] == 0).all() and (plain[2:34, 36:68] == 40).all()
    path = save_grid(str(tmp_path / "s/g.png"), images, ["x"] * 5)
    assert np.asarray(Image.open(path)).shape[2] == 3
    assert os.listdir(tmp_path / "s") == ["g.png"]
    with pytest.raises(ValueError, match=r"images \[N, H, W, 3\]"):
        make_grid(np.zeros((8, 8, 3)))


def test_metric_writer_writes_tensorboard_and_jsonl(tmp_path):
    writer = MetricWriter(str(tmp_path))
    writer.scalars(3, {"loss": 0.5})
    writer.scalars(3, {"accuracy": 1.0}, prefix="eval_test")
    writer.close()
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert rows[0]["step"] == 3 and rows[0]["loss"] == 0.5 and rows[1]["split"] == "eval_test"
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "tensorboard"))
