"""Tests for t2i.text.tokenizer on tiny sentencepiece models trained here."""

import itertools
import pickle
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from t2i.text import tokenizer as tok
from t2i.text.tokenizer import Tokenizer, default_shapes_tokenizer, train_sentencepiece

COLORS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["circle", "square", "triangle", "star"]
PLACES = ["in the top left", "in the bottom right", "in the center", "on the left"]
COUNTS = ["two", "three"]


def _captions():
    caps = [f"a {c} {s} {p}" for c, s, p in itertools.product(COLORS, SHAPES, PLACES)]
    caps += [f"{n} {c} {s}s" for n, c, s in itertools.product(COUNTS, COLORS, SHAPES)]
    caps += [
        f"a photo of a {c1} {s1} above a {c2} {s2}"
        for c1, s1, c2, s2 in itertools.product(COLORS[:3], SHAPES, COLORS[3:], SHAPES)
    ]
    return caps


@pytest.fixture(scope="module")
def caption_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("captions") / "captions.txt"
    path.write_text("\n".join(_captions()) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def model_path(caption_file, tmp_path_factory):
    return train_sentencepiece(caption_file, str(tmp_path_factory.mktemp("spm") / "shapes"))


def _train_raw(caption_file, prefix, **ids):
    """Trains with sentencepiece directly, to get id layouts other than T5's."""
    spm.SentencePieceTrainer.train(
        input=caption_file,
        model_prefix=prefix,
        vocab_size=64,
        model_type="bpe",
        character_coverage=1.0,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
        **ids,
    )
    return prefix + ".model"


def test_t5_id_layout(model_path):
    t = Tokenizer(model_path, max_length=16)
    assert (t.pad_id, t.eos_id) == (0, 1)
    sp = spm.SentencePieceProcessor(model_file=model_path)
    assert sp.unk_id() == 2 and sp.bos_id() == -1
    assert 0 < t.vocab_size <= 256


def test_round_trip(model_path):
    t = Tokenizer(model_path, max_length=32)
    caps = _captions()[::7]
    ids, mask = t.encode(caps)
    assert t.decode(ids) == caps
    assert t.decode(ids[0]) == [caps[0]]


def test_padding_and_mask(model_path):
    t = Tokenizer(model_path, max_length=32)
    ids, mask = t.encode(["two red stars", "a photo of a red star above a yellow circle"])
    assert ids.dtype == np.int32 and mask.dtype == bool
    assert ids.shape == mask.shape == (2, 32)
    for row, m in zip(ids, mask):
        n = int(m.sum())
        assert 1 < n < 32
        assert m[:n].all() and not m[n:].any(), "mask must be a prefix of real tokens"
        assert row[n - 1] == t.eos_id
        assert (row[n:] == t.pad_id).all()
        assert t.eos_id not in row[: n - 1] and t.pad_id not in row[:n]


def test_no_eos(model_path):
    t = Tokenizer(model_path, max_length=32, add_eos=False)
    ids, mask = t.encode(["two red stars"])
    assert t.eos_id not in ids[0]
    assert ids[0, mask[0].sum() - 1] != t.pad_id
    assert t.decode(ids) == ["two red stars"]


def test_truncation_keeps_eos_and_warns_once(model_path):
    t = Tokenizer(model_path, max_length=5)
    long = "a photo of a red star above a yellow circle"
    with pytest.warns(UserWarning, match=r"2 of 3 prompts exceeded max_length=5") as record:
        ids, mask = t.encode([long, "two", long])
    assert len(record) == 1
    full, _ = Tokenizer(model_path, max_length=64).encode([long])
    for row in (0, 2):
        assert mask[row].all()
        assert ids[row, -1] == t.eos_id
        np.testing.assert_array_equal(ids[row, :-1], full[0, :4])
    assert mask[1].sum() < 5


def test_exact_fit_does_not_warn(model_path, recwarn):
    text = "two red stars"
    n = int(Tokenizer(model_path, max_length=32).encode([text])[1].sum())
    t = Tokenizer(model_path, max_length=n)
    ids, mask = t.encode([text])
    assert mask.all() and ids[0, -1] == t.eos_id
    assert not recwarn.list


def test_max_length_one_keeps_only_eos(model_path):
    t = Tokenizer(model_path, max_length=1)
    with pytest.warns(UserWarning):
        ids, mask = t.encode(["a red circle"])
    assert ids.tolist() == [[t.eos_id]] and mask.tolist() == [[True]]


@pytest.mark.parametrize("empty", ["", "   ", "\t\n"])
def test_empty_prompt_is_unconditional(model_path, empty):
    t = Tokenizer(model_path, max_length=8)
    ids, mask = t.encode([empty, "a red circle"])
    assert (ids[0] == t.pad_id).all()
    assert not mask[0].any()
    assert mask[1].any()
    assert t.decode(ids[:1]) == [""]


def test_empty_batch(model_path):
    ids, mask = Tokenizer(model_path, max_length=8).encode([])
    assert ids.shape == mask.shape == (0, 8)


@pytest.mark.parametrize("bad", ["a red circle", ["ok", 3], ["ok", None], [b"bytes"], 7])
def test_non_string_input_raises(model_path, bad):
    with pytest.raises(ValueError) as info:
        Tokenizer(model_path, max_length=8).encode(bad)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("max_length", [0, -3, 2.5, True])
def test_bad_max_length_raises(model_path, max_length):
    with pytest.raises(ValueError, match="max_length"):
        Tokenizer(model_path, max_length=max_length)


def test_missing_model_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.model"):
        Tokenizer(str(tmp_path / "nope.model"), max_length=8)


def test_invalid_model_file_raises(caption_file):
    with pytest.raises(ValueError, match="not a valid sentencepiece model"):
        Tokenizer(caption_file, max_length=8)


def test_training_is_deterministic(caption_file, model_path, tmp_path):
    first = Path(model_path).read_bytes()
    again = train_sentencepiece(caption_file, model_path[: -len(".model")])
    assert Path(again).read_bytes() == first
    other = train_sentencepiece(caption_file, str(tmp_path / "other"))
    caps = _captions()
    np.testing.assert_array_equal(Tokenizer(other, 32).encode(caps)[0], Tokenizer(model_path, 32).encode(caps)[0])


def test_bpe_training(caption_file, tmp_path):
    t = Tokenizer(train_sentencepiece(caption_file, str(tmp_path / "bpe"), model_type="bpe"), 32)
    assert (t.pad_id, t.eos_id) == (0, 1)
    assert t.decode(t.encode(_captions()[:5])[0]) == _captions()[:5]


@pytest.mark.parametrize(
    "ids, expected_pad, expected_eos",
    [
        ({}, 0, 2),  # sentencepiece defaults: unk 0, bos 1, eos 2, no pad -> pad falls back to 0
        ({"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": 3}, 3, 2),
    ],
)
def test_other_id_layouts_use_model_ids(caption_file, tmp_path, ids, expected_pad, expected_eos):
    t = Tokenizer(_train_raw(caption_file, str(tmp_path / "raw"), **ids), max_length=24)
    assert (t.pad_id, t.eos_id) == (expected_pad, expected_eos)
    caps = ["two red stars", "a photo of a red star above a yellow circle", ""]
    enc, mask = t.encode(caps)
    n = mask.sum(axis=1)
    assert enc[0, n[0] - 1] == expected_eos
    assert (enc[0, n[0] :] == expected_pad).all()
    assert n[2] == 0 and (enc[2] == expected_pad).all()
    assert t.decode(enc) == caps


def test_model_without_eos(caption_file, tmp_path):
    path = _train_raw(caption_file, str(tmp_path / "noeos"), eos_id=-1)
    with pytest.raises(ValueError, match="add_eos=False"):
        Tokenizer(path, max_length=8)
    t = Tokenizer(path, max_length=8, add_eos=False)
    assert t.eos_id == -1
    assert t.decode(t.encode(["two red stars"])[0]) == ["two red stars"]


def test_pickle_round_trip(model_path):
    t = Tokenizer(model_path, max_length=16)
    clone = pickle.loads(pickle.dumps(t))
    for a, b in zip(t.encode(["a red circle", ""]), clone.encode(["a red circle", ""])):
        np.testing.assert_array_equal(a, b)


def test_missing_caption_file(tmp_path):
    missing = tmp_path / "missing.txt"
    with pytest.raises(ValueError, match="caption file not found") as info:
        train_sentencepiece(str(missing), str(tmp_path / "m"))
    assert str(missing) in str(info.value) and "\n" not in str(info.value)


def test_empty_caption_file(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="no captions"):
        train_sentencepiece(str(empty), str(tmp_path / "m"))


@pytest.mark.skipif(not tok._SHAPES_MODEL.is_file(), reason="t2i/assets/shapes_spm.model not generated yet")
def test_default_shapes_tokenizer():
    t = default_shapes_tokenizer()
    ids, mask = t.encode(["a red circle"])
    assert ids.shape == (1, 32)
    n = int(mask.sum())
    assert 2 <= n <= 8, f"'a red circle' took {n} tokens; the Shapes vocabulary splits common words"
    assert ids[0, n - 1] == t.eos_id
    assert spm.SentencePieceProcessor(model_file=t.model_path).unk_id() not in ids[0, :n]
    assert t.decode(ids) == ["a red circle"]
