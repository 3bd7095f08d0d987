"""The CLI: --help everywhere, one-line errors with exit 2, nothing half-written."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

from t2i.cli import main

CONFIG = os.path.join(REPO, "configs/shapes_classifier.py:tiny")


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["train"],
        ["sample"],
        ["reconstruct"],
        ["tokenize"],
        ["eval", "shapes"],
        ["data", "build"],
        ["data", "preview"],
        ["data", "tokenizer"],
    ],
)
def test_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main(command + ["--help"])
    assert info.value.code == 0
    assert "usage: t2i" in capsys.readouterr().out


def _error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("t2i: error: ") and "\n" not in err
    return err


def test_train_errors(capsys, tmp_path, tiny_data_dir):
    assert "data set shapes/tiny not found" in _error(
        capsys,
        ["train", "--config", CONFIG, "--workdir", str(tmp_path / "w"), f"--config.data.data_dir={tmp_path}/none"],
    )
    assert "unknown config key 'train.num_step'" in _error(
        capsys, ["train", "--config", CONFIG, "--workdir", str(tmp_path / "w"), "--config.train.num_step=3"]
    )
    assert "bad value for config key 'data.batch_size'" in _error(
        capsys, ["train", "--config", CONFIG, "--workdir", str(tmp_path / "w"), "--config.data.batch_size=x"]
    )
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert "cannot write to output folder" in _error(
        capsys,
        ["train", "--config", CONFIG, "--workdir", str(blocker / "w"), f"--config.data.data_dir={tiny_data_dir}"],
    )
    assert f"train.init_from not found: {tmp_path}/nowhere" in _error(
        capsys,
        [
            "train",
            "--config",
            CONFIG,
            "--workdir",
            str(tmp_path / "w"),
            f"--config.data.data_dir={tiny_data_dir}",
            f"--config.train.init_from={tmp_path}/nowhere",
        ],
    )
    assert not (tmp_path / "w").exists()


def test_sample_errors_write_nothing(capsys, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert "prompts file is empty" in _error(capsys, ["sample", "--prompts", str(empty), "--out", str(tmp_path / "o")])
    assert "prompts file not found" in _error(
        capsys, ["sample", "--prompts", str(tmp_path / "x"), "--out", str(tmp_path / "o")]
    )
    assert "cannot parse caption: 'a blue cat'" in _error(
        capsys, ["sample", "--prompt", "a blue cat", "--out", str(tmp_path / "o")]
    )
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert "cannot write to output folder" in _error(
        capsys, ["sample", "--prompt", "a red circle", "--out", str(blocker / "o")]
    )
    assert sorted(os.listdir(tmp_path)) == ["empty.txt", "file"]


def test_preview_sample_and_eval_round_trip(capsys, tmp_path):
    assert (
        main(["data", "preview", "--split", "test", "--num", "30", "--size", "32", "--out", str(tmp_path / "pv")]) == 0
    )
    rows = [json.loads(line) for line in open(tmp_path / "pv/manifest.jsonl")]
    assert len(rows) == 30 and set(rows[0]) >= {"prompt", "image", "scene"}
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(row["prompt"] for row in rows))
    assert main(["sample", "--prompts", str(prompts), "--out", str(tmp_path / "oracle"), "--size", "64"]) == 0
    capsys.readouterr()
    assert main(["eval", "shapes", str(tmp_path / "oracle"), "--json", str(tmp_path / "report.json")]) == 0
    assert "overall" in capsys.readouterr().out
    report = json.load(open(tmp_path / "report.json"))
    assert report["num_images"] == 30 and report["overall"] >= 0.99
    assert "output folder" in _error(capsys, ["sample", "--prompts", str(prompts), "--out", str(tmp_path / "oracle")])


def test_console_script_exit_code(tmp_path):
    """The installed entry point exits non-zero with one line on stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "t2i.cli", "eval", "shapes", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("t2i: error: ")
