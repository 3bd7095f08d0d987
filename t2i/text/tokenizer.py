"""Sentencepiece text tokenizer: fixed-length ids plus a boolean mask.

Text encoders (T5 for Imagen, Parti's encoder, the unCLIP prior) take the
same two arrays, ``ids`` int32 ``[B, max_length]`` and
``mask`` bool ``[B, max_length]``. Fixed shapes keep jitted functions from
recompiling for every batch, and the mask lets attention ignore padding.

Conventions shared by all models:

* Padding uses the model's pad id and sits only at the end of a row.
* ``mask`` is True exactly at real tokens, EOS included.
* The empty prompt is the unconditional ("null") prompt of classifier-free
  guidance: all padding and an all-False mask, with no EOS. Dropping a
  caption to ``""`` in training and encoding ``""`` for the unconditional
  branch at sampling therefore give exactly the same condition.
"""

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import sentencepiece as spm

# Shipped with the package so the Shapes experiments need no download.
_SHAPES_MODEL = Path(__file__).resolve().parent.parent / "assets" / "shapes_spm.model"


class Tokenizer:
    """Sentencepiece tokenizer with fixed-length padding and a mask.

    Loads any sentencepiece ``.model`` file, including T5's ``spiece.model``
    (pad 0, eos 1, unk 2). The pad and eos ids are read from the model rather
    than assumed, so models trained with other id layouts (sentencepiece's own
    default is unk 0, bos 1, eos 2 and no pad) also work.

    A model without a pad piece (``pad_id() == -1``) pads with id 0. In such a
    model id 0 is a real piece (usually ``<unk>``), so the mask, not the ids,
    is what tells padding apart; ``decode`` strips trailing id-0 tokens.

    Attributes:
        vocab_size: number of pieces in the model; embedding tables need it.
        pad_id: id written into padded positions.
        eos_id: id appended to every non-empty prompt when ``add_eos`` is
            True; -1 if the model has no EOS piece (only allowed when
            ``add_eos`` is False).
        max_length: length of every encoded row.

    Instances pickle (sentencepiece serialises the model proto), so they can
    be handed to data-loader worker processes.
    """

    def __init__(self, model_path: str, max_length: int, add_eos: bool = True):
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be an int >= 1, got {max_length!r}")
        path = os.fspath(model_path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"sentencepiece model not found: {path}")
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromFile(path)
        except RuntimeError as err:
            raise ValueError(f"not a valid sentencepiece model: {path} ({err})") from None
        self.model_path = path
        self.max_length = max_length
        self.add_eos = add_eos
        self.vocab_size = self._sp.get_piece_size()
        pad_id = self._sp.pad_id()
        self.pad_id = pad_id if pad_id >= 0 else 0
        self.eos_id = self._sp.eos_id()
        if add_eos and self.eos_id < 0:
            raise ValueError(f"model {path} has no EOS piece; use add_eos=False")

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Encodes a batch of prompts to fixed-length ids and a mask.

        Args:
            texts: a sequence of strings. A bare ``str`` is rejected, because
                iterating it would silently encode one character per row.

        Returns:
            ``(ids, mask)``: ``ids`` int32 ``[B, max_length]``, ``mask`` bool
            ``[B, max_length]``, True exactly at real tokens (EOS included)
            and False at padding.

        Behaviour:
            * EOS is appended to every non-empty prompt when ``add_eos``.
            * A prompt longer than ``max_length`` (counting EOS) is cut to
              ``max_length`` tokens with EOS kept as the last token, so the
              encoder still sees where the prompt ends. One ``UserWarning``
              per call reports how many prompts were cut. (Python's default
              warning filter shows a given message once per call site, so a
              training loop is not flooded.)
            * An empty prompt, or one the model normalises to nothing
              (whitespace only), is the unconditional prompt: all ``pad_id``
              with an all-False mask and no EOS. This is the classifier-free
              guidance "null" condition.

        Raises:
            ValueError: if ``texts`` is a bare string, not iterable, or holds
                a non-string.
        """
        if isinstance(texts, (str, bytes)):
            raise ValueError("encode expects a sequence of strings, not a single string; wrap it in a list")
        try:
            texts = list(texts)
        except TypeError:
            raise ValueError(f"encode expects a sequence of strings, got {type(texts).__name__}") from None
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"texts[{i}] is {type(text).__name__}, expected str")

        ids = np.full((len(texts), self.max_length), self.pad_id, dtype=np.int32)
        mask = np.zeros((len(texts), self.max_length), dtype=bool)
        num_truncated = 0
        for row, pieces in enumerate(self._sp.encode(texts)):
            if not pieces:
                continue  # unconditional prompt: all padding, no EOS
            if self.add_eos:
                pieces = pieces + [self.eos_id]
            if len(pieces) > self.max_length:
                num_truncated += 1
                pieces = pieces[: self.max_length]
                if self.add_eos:
                    pieces[-1] = self.eos_id
            ids[row, : len(pieces)] = pieces
            mask[row, : len(pieces)] = True
        if num_truncated:
            warnings.warn(
                f"{num_truncated} of {len(texts)} prompts exceeded max_length={self.max_length} "
                "tokens and were truncated",
                stacklevel=2,
            )
        return ids, mask

    def decode(self, ids) -> list[str]:
        """Decodes ids back to text, one string per row.

        Accepts ``[B, L]`` or a single row ``[L]`` (numpy, JAX or nested
        lists). Each row is cut at its first EOS and trailing ``pad_id``
        tokens are dropped, so ``decode(encode(x)[0]) == x`` for text the
        model covers (up to sentencepiece's whitespace and NFKC
        normalisation). Out-of-vocabulary characters come back as `` ⁇ ``.
        """
        ids = np.asarray(ids)
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2:
            raise ValueError(f"decode expects ids of shape [B, L] or [L], got shape {ids.shape}")
        texts = []
        for row in ids.tolist():
            if self.eos_id >= 0 and self.eos_id in row:
                row = row[: row.index(self.eos_id)]
            while row and row[-1] == self.pad_id:
                row.pop()
            texts.append(self._sp.decode(row))
        return texts


def default_shapes_tokenizer(max_length: int = 32) -> Tokenizer:
    """Returns the tokenizer for the Shapes captions, from the shipped asset.

    The asset ``t2i/assets/shapes_spm.model`` is produced by
    ``train_sentencepiece`` on the Shapes captions, so Shapes runs share one
    fixed vocabulary and need no network access.
    """
    if not _SHAPES_MODEL.is_file():
        raise FileNotFoundError(
            f"Shapes tokenizer asset missing: {_SHAPES_MODEL}; "
            "create it with: t2i data tokenizer --out t2i/assets/shapes_spm --vocab_size 128"
        )
    return Tokenizer(str(_SHAPES_MODEL), max_length)


def tokenizer_for(name: str, max_length: int) -> Tokenizer:
    """The tokenizer a config names (`data.tokenizer`): "shapes" for the shipped Shapes
    model, else the path of any sentencepiece model."""
    if not name:
        raise ValueError("no tokenizer named (set data.tokenizer to 'shapes' or a sentencepiece model path)")
    return default_shapes_tokenizer(max_length) if name == "shapes" else Tokenizer(name, max_length)


def config_tokenizer(config) -> Tokenizer:
    """The text tokenizer of a model's config (`data.tokenizer`, `data.max_text_length`)."""
    return tokenizer_for(config.data.get("tokenizer") or "", int(config.data.max_text_length))


def train_sentencepiece(
    caption_file: str,
    model_prefix: str,
    vocab_size: int = 256,
    model_type: str = "unigram",
) -> str:
    """Trains a sentencepiece model on a caption file; returns the .model path.

    Args:
        caption_file: UTF-8 text, one caption per line.
        model_prefix: output path without extension; ``<prefix>.model`` and
            ``<prefix>.vocab`` are written, creating parent directories.
        vocab_size: upper bound on the number of pieces. A small caption set
            may not support that many, and failing would be unhelpful, so the
            limit is soft (``hard_vocab_limit=False``) and the trained model
            can be smaller; read ``Tokenizer.vocab_size``.
        model_type: ``"unigram"``, ``"bpe"``, ``"word"`` or ``"char"``. On a
            tiny, highly repetitive caption set (combinatorial templates)
            sentencepiece 0.2's unigram seed search finds few candidate
            pieces, giving a small vocabulary that splits common words;
            ``"bpe"`` learns whole-word pieces there.

    Choices and why:
        * Ids follow T5: pad 0, eos 1, unk 2, no bos, so these models and
          T5's ``spiece.model`` are interchangeable for ``Tokenizer``.
        * ``character_coverage=1.0``: every character in the captions gets a
          piece; the default 0.9995 can map rare characters of small corpora
          to unk and break round trips.
        * ``num_threads=1``: training is deterministic, so the same caption
          file and prefix always give byte-identical models (the paths are
          recorded in the model) and a tokenizer can be rebuilt exactly.
        * ``minloglevel=2``: sentencepiece's per-step log is silenced; errors
          still raise.

    Raises:
        ValueError: if ``caption_file`` is missing or holds no non-blank line.
    """
    path = os.fspath(caption_file)
    if not os.path.isfile(path):
        raise ValueError(f"caption file not found: {path}")
    with open(path, encoding="utf-8") as f:
        if not any(line.strip() for line in f):
            raise ValueError(f"caption file has no captions: {path}")
    prefix = os.fspath(model_prefix)
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        input=path,
        model_prefix=prefix,
        vocab_size=vocab_size,
        model_type=model_type,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    return prefix + ".model"
