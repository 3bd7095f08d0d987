"""The T5 encoder in Flax: Imagen's frozen text encoder, from T5-small to T5-XXL.

Matches Hugging Face's `T5EncoderModel` (and T5X's encoder) numerically:

* RMS norm ("T5LayerNorm"): no mean subtraction, no bias, computed in f32.
* No biases anywhere; no 1/sqrt(d_kv) on the attention logits (T5 folds it into the
  query initialisation).
* Relative position biases: one table [num_buckets, heads], bidirectional buckets
  (half per direction, half of those exact, the rest log-spaced up to
  `max_distance`), computed once and added to the logits of every layer. Hugging Face
  keeps the table in block 0's attention and passes the bias on; T5X keeps it at the
  encoder level; both are this one table.
* v1.0: ReLU feed-forward (`wi`, `wo`). v1.1: gated GELU (`wi_0`, `wi_1`, `wo`) with
  the tanh approximation (HF's `gelu_new`).
* Dropout is omitted: the encoder is frozen and only ever runs deterministically.

The parameter tree uses T5X's names (`token_embedder/embedding`,
`layers_N/attention/{query,key,value,out}/kernel`, `layers_N/mlp/wi_0/kernel`, ...,
`relpos_bias/embedding`, `encoder_norm/scale`), with q/k/v kernels [embed, heads, kv]
and the output kernel [heads, kv, embed]. Every weight carries logical axis names
("embed", "mlp", "heads", "kv", "vocab", "norm"), so T5-XXL shards over a mesh like
any other model.

Padding: attention never looks at padded keys, and the outputs at padded positions
are set to zero (Hugging Face leaves them as whatever the padded queries computed).
An all-padding row (the unconditional prompt) therefore encodes to all zeros.

`T5Encoder` is the user-facing wrapper: weights from a Hugging Face checkpoint
(`model.safetensors`, possibly sharded) or a T5X checkpoint saved with orbax, a jitted
`encode_ids`, and `encode(texts)` with a sentencepiece tokenizer.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t2i.errors import UsageError
from t2i.nn.attention import dot_product_attention, key_mask
from t2i.nn.layers import NamedProjection, named
from t2i.parallel.mesh import LOGICAL_AXIS_RULES
from t2i.parallel.partitioning import strip_boxes, tree_shardings
from t2i.text.tokenizer import Tokenizer

Dtype = Any

ACTIVATION_AXES = ("activation_batch", "activation_length", "activation_embed")

# Encoder sizes. v1.1 (t5-v1_1-*, the Imagen paper's T5-XXL): gated GELU, no dropout in
# pre-training. v1.0 (t5-small ... t5-11b): ReLU. All use a 32128-row embedding
# (32000 sentencepiece pieces, padded to a multiple of 128).
T5_SIZES: dict[str, dict[str, Any]] = {
    "small": dict(d_model=512, d_ff=1024, d_kv=64, num_heads=6, num_layers=8, feed_forward_proj="gated-gelu"),
    "base": dict(d_model=768, d_ff=2048, d_kv=64, num_heads=12, num_layers=12, feed_forward_proj="gated-gelu"),
    "large": dict(d_model=1024, d_ff=2816, d_kv=64, num_heads=16, num_layers=24, feed_forward_proj="gated-gelu"),
    "xl": dict(d_model=2048, d_ff=5120, d_kv=64, num_heads=32, num_layers=24, feed_forward_proj="gated-gelu"),
    "xxl": dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, feed_forward_proj="gated-gelu"),
    "v1_0-small": dict(d_model=512, d_ff=2048, d_kv=64, num_heads=8, num_layers=6, feed_forward_proj="relu"),
    "v1_0-base": dict(d_model=768, d_ff=3072, d_kv=64, num_heads=12, num_layers=12, feed_forward_proj="relu"),
    "v1_0-large": dict(d_model=1024, d_ff=4096, d_kv=64, num_heads=16, num_layers=24, feed_forward_proj="relu"),
    "v1_0-3b": dict(d_model=1024, d_ff=16384, d_kv=128, num_heads=32, num_layers=24, feed_forward_proj="relu"),
    "v1_0-11b": dict(d_model=1024, d_ff=65536, d_kv=128, num_heads=128, num_layers=24, feed_forward_proj="relu"),
}

FEED_FORWARD_PROJ = ("relu", "gated-gelu")

# Hugging Face's `T5Config` defaults (t5-small v1.0), for config.json files that omit a
# field: the original t5-* configs predate `feed_forward_proj` and mean ReLU.
HF_CONFIG_DEFAULTS = dict(
    vocab_size=32128,
    d_model=512,
    d_kv=64,
    d_ff=2048,
    num_heads=8,
    num_layers=6,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="relu",
    layer_norm_epsilon=1e-6,
)


class T5CheckpointError(UsageError, ValueError):
    """A checkpoint that does not fit the config: one line naming the tensor."""


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Encoder hyperparameters; field names follow Hugging Face's `T5Config`."""

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 1024
    num_heads: int = 6
    num_layers: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    feed_forward_proj: str = "gated-gelu"  # "relu" (v1.0) or "gated-gelu" (v1.1)
    layer_norm_epsilon: float = 1e-6

    def __post_init__(self):
        if self.feed_forward_proj not in FEED_FORWARD_PROJ:
            raise ValueError(f"feed_forward_proj must be one of {FEED_FORWARD_PROJ}, got {self.feed_forward_proj!r}")

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @classmethod
    def from_name(cls, name: str, **overrides) -> "T5Config":
        """A `T5_SIZES` entry ("xxl", "v1_0-base", ...), with optional field overrides."""
        if name not in T5_SIZES:
            raise ValueError(f"unknown T5 size {name!r}; sizes are {sorted(T5_SIZES)}")
        return cls(**{**T5_SIZES[name], **overrides})

    @classmethod
    def from_hf(cls, config: Mapping[str, Any] | str | os.PathLike) -> "T5Config":
        """From a Hugging Face `config.json` (a path to it or to its folder, or the dict)."""
        if not isinstance(config, Mapping):
            path = os.fspath(config)
            if os.path.isdir(path):
                path = os.path.join(path, "config.json")
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**HF_CONFIG_DEFAULTS, **{key: value for key, value in config.items() if key in fields}})


def relative_position_bucket(
    relative_position: np.ndarray, bidirectional: bool = True, num_buckets: int = 32, max_distance: int = 128
) -> np.ndarray:
    """T5's bucket of `relative_position` (= key position - query position), int32.

    The first half of the buckets holds keys at or before the query, the second half
    keys after it (when bidirectional). In each half, distances below half the half's
    buckets get one bucket each; larger distances share log-spaced buckets, and all at
    or beyond `max_distance` share the last one. The log is taken in float32, like
    Mesh TensorFlow and Hugging Face, so the rounding at bucket edges is theirs.
    Positions are static, so this runs in numpy at trace time.
    """
    relative_position = np.asarray(relative_position, dtype=np.int64)
    buckets = np.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).astype(np.int64) * num_buckets
        distance = np.abs(relative_position)
    else:
        distance = -np.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    with np.errstate(divide="ignore"):  # distance 0 is small; its log is never used
        log_ratio = np.log(distance.astype(np.float32) / np.float32(max_exact)) / np.float32(
            math.log(max_distance / max_exact)
        )
    if_large = max_exact + np.where(is_small, 0.0, log_ratio * np.float32(num_buckets - max_exact)).astype(np.int64)
    if_large = np.minimum(if_large, num_buckets - 1)
    return (buckets + np.where(is_small, distance, if_large)).astype(np.int32)


class RMSNorm(nn.Module):
    """T5LayerNorm: x / rms(x) * scale, in f32, returned in the compute dtype."""

    epsilon: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", named(nn.initializers.ones, ("norm",)), (x.shape[-1],), self.param_dtype)
        x = x.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon)
        return (x * scale.astype(jnp.float32)).astype(self.dtype)


class RelativePositionBias(nn.Module):
    """The shared [num_buckets, heads] table, looked up as a [1, heads, q, k] f32 bias."""

    num_buckets: int
    max_distance: int
    num_heads: int
    param_dtype: Dtype = jnp.float32
    embedding_init: Any = nn.initializers.normal(1.0)

    @nn.compact
    def __call__(self, query_length: int, key_length: int):
        table = self.param(
            "embedding",
            named(self.embedding_init, (None, "heads")),
            (self.num_buckets, self.num_heads),
            self.param_dtype,
        )
        relative_position = np.arange(key_length)[None, :] - np.arange(query_length)[:, None]
        buckets = relative_position_bucket(relative_position, True, self.num_buckets, self.max_distance)
        bias = jnp.take(table.astype(jnp.float32), jnp.asarray(buckets), axis=0)  # [q, k, heads]
        return jnp.transpose(bias, (2, 0, 1))[None]


class SelfAttention(nn.Module):
    """Multi-head self-attention without biases or logit scaling; softmax in f32."""

    num_heads: int
    d_kv: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x, bias, mask):
        """x [B, L, D], bias [1, H, L, L] f32, mask bool [B, L] (keys) -> [B, L, D]."""
        d_model = x.shape[-1]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        # Hugging Face's init; the query's extra 1/sqrt(d_kv) stands in for the scaling.
        stddev = {"query": (d_model * self.d_kv) ** -0.5, "key": d_model**-0.5, "value": d_model**-0.5}
        heads = (self.num_heads, self.d_kv)
        q, k, v = (
            NamedProjection(
                heads, ("embed", "heads", "kv"), kernel_init=nn.initializers.normal(stddev[name]), name=name, **kw
            )(x)
            for name in ("query", "key", "value")
        )
        heads_axes = ("activation_batch", "activation_length", "activation_heads", None)
        q, k, v = (nn.with_logical_constraint(t, heads_axes) for t in (q, k, v))
        # No 1/sqrt(d_kv): T5 folds it into the query's initialisation.
        y, _ = dot_product_attention(
            q, k, v, mask=key_mask(mask), bias=bias, scale=1.0, dtype=self.dtype, precision=self.precision
        )
        y = nn.with_logical_constraint(y, heads_axes)
        out_stddev = (self.num_heads * self.d_kv) ** -0.5
        return NamedProjection(
            (d_model,), ("heads", "kv", "embed"), kernel_init=nn.initializers.normal(out_stddev), name="out", **kw
        )(y)


class FeedForward(nn.Module):
    """v1.0: wo(relu(wi x)); v1.1: wo(gelu_tanh(wi_0 x) * wi_1 x)."""

    d_ff: int
    gated: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        d_model = x.shape[-1]
        kw = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        wi_init = named(nn.initializers.normal(d_model**-0.5), ("embed", "mlp"))
        mlp_axes = ("activation_batch", "activation_length", "activation_mlp")
        if self.gated:
            gate = nn.gelu(nn.Dense(self.d_ff, kernel_init=wi_init, name="wi_0", **kw)(x), approximate=True)
            h = gate * nn.Dense(self.d_ff, kernel_init=wi_init, name="wi_1", **kw)(x)
        else:
            h = nn.relu(nn.Dense(self.d_ff, kernel_init=wi_init, name="wi", **kw)(x))
        h = nn.with_logical_constraint(h, mlp_axes)
        wo_init = named(nn.initializers.normal(self.d_ff**-0.5), ("mlp", "embed"))
        return nn.Dense(d_model, kernel_init=wo_init, name="wo", **kw)(h)


class EncoderLayer(nn.Module):
    """Pre-norm block: x + attention(norm(x)), then x + mlp(norm(x))."""

    config: T5Config
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x, bias, mask):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = RMSNorm(cfg.layer_norm_epsilon, name="pre_attention_layer_norm", **kw)(x)
        x = x + SelfAttention(cfg.num_heads, cfg.d_kv, precision=self.precision, name="attention", **kw)(h, bias, mask)
        x = nn.with_logical_constraint(x, ACTIVATION_AXES)
        h = RMSNorm(cfg.layer_norm_epsilon, name="pre_mlp_layer_norm", **kw)(x)
        x = x + FeedForward(cfg.d_ff, cfg.is_gated, precision=self.precision, name="mlp", **kw)(h)
        return nn.with_logical_constraint(x, ACTIVATION_AXES)


class T5EncoderModule(nn.Module):
    """ids int32 [B, L], mask bool [B, L] -> float32 [B, L, d_model], zero at padding."""

    config: T5Config
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, ids, mask):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        mask = mask.astype(bool)
        x = nn.Embed(
            cfg.vocab_size,
            cfg.d_model,
            embedding_init=named(nn.initializers.normal(1.0), ("vocab", "embed")),
            name="token_embedder",
            **kw,
        )(ids)
        x = nn.with_logical_constraint(x, ACTIVATION_AXES)
        bias = RelativePositionBias(
            cfg.relative_attention_num_buckets,
            cfg.relative_attention_max_distance,
            cfg.num_heads,
            param_dtype=self.param_dtype,
            embedding_init=nn.initializers.normal(cfg.d_model**-0.5),
            name="relpos_bias",
        )(ids.shape[1], ids.shape[1])
        for i in range(cfg.num_layers):
            x = EncoderLayer(cfg, precision=self.precision, name=f"layers_{i}", **kw)(x, bias, mask)
        x = RMSNorm(cfg.layer_norm_epsilon, name="encoder_norm", **kw)(x).astype(jnp.float32)
        return jnp.where(mask[..., None], x, 0.0)


def abstract_params(config: T5Config, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32):
    """The boxed (logically named) parameter tree as ShapeDtypeStructs; nothing allocated."""
    module = T5EncoderModule(config, dtype=dtype, param_dtype=param_dtype)
    ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    mask = jax.ShapeDtypeStruct((1, 1), jnp.bool_)
    return jax.eval_shape(module.init, jax.random.key(0), ids, mask)["params"]


# ----------------------------------------------------------------------------- weights


def _check_shape(name: str, array: np.ndarray, expected: tuple[int, ...]) -> np.ndarray:
    if tuple(array.shape) != tuple(expected):
        raise T5CheckpointError(f"tensor {name!r} has shape {tuple(array.shape)}, expected {tuple(expected)}")
    return array


def _cast_like(tree: Any, abstract: Any) -> Any:
    """Casts numpy leaves to the abstract tree's dtypes, checking the structure matches."""
    return jax.tree.map(lambda x, a: np.asarray(x, dtype=a.dtype), tree, strip_boxes(abstract))


def convert_hf_params(tensors: Mapping[str, np.ndarray], config: T5Config, param_dtype: Dtype = jnp.float32) -> dict:
    """Hugging Face T5 state dict (numpy, torch names) -> this module's parameter tree.

    Linear weights are [out, in] in torch and become [in, out] kernels; q/k/v/o are
    reshaped to split heads (HF's head-major `view(..., heads, d_kv)`). `decoder.*` and
    `lm_head.*` are ignored; any other encoder tensor the config does not use, and any
    missing or misshapen one, raises `T5CheckpointError`.
    """
    cfg = config
    d, h, kv, ff = cfg.d_model, cfg.num_heads, cfg.d_kv, cfg.d_ff
    used: set[str] = set()

    def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in tensors:
            raise T5CheckpointError(f"checkpoint has no tensor {name!r}")
        used.add(name)
        return _check_shape(name, np.asarray(tensors[name]), shape)

    embed_name = "encoder.embed_tokens.weight" if "encoder.embed_tokens.weight" in tensors else "shared.weight"
    params: dict[str, Any] = {
        "token_embedder": {"embedding": get(embed_name, (cfg.vocab_size, d))},
        "relpos_bias": {
            "embedding": get(
                "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                (cfg.relative_attention_num_buckets, h),
            )
        },
        "encoder_norm": {"scale": get("encoder.final_layer_norm.weight", (d,))},
    }
    for i in range(cfg.num_layers):
        prefix = f"encoder.block.{i}.layer."
        attention = {
            ours: {"kernel": get(f"{prefix}0.SelfAttention.{theirs}.weight", (h * kv, d)).T.reshape(d, h, kv)}
            for ours, theirs in (("query", "q"), ("key", "k"), ("value", "v"))
        }
        attention["out"] = {"kernel": get(f"{prefix}0.SelfAttention.o.weight", (d, h * kv)).T.reshape(h, kv, d)}
        wi_names = ("wi_0", "wi_1") if cfg.is_gated else ("wi",)
        mlp = {name: {"kernel": get(f"{prefix}1.DenseReluDense.{name}.weight", (ff, d)).T} for name in wi_names}
        mlp["wo"] = {"kernel": get(f"{prefix}1.DenseReluDense.wo.weight", (d, ff)).T}
        params[f"layers_{i}"] = {
            "pre_attention_layer_norm": {"scale": get(f"{prefix}0.layer_norm.weight", (d,))},
            "attention": attention,
            "pre_mlp_layer_norm": {"scale": get(f"{prefix}1.layer_norm.weight", (d,))},
            "mlp": mlp,
        }
    unused = sorted(
        n for n in tensors if n.startswith("encoder.") and n not in used and n != "encoder.embed_tokens.weight"
    )
    if unused:
        raise T5CheckpointError(f"checkpoint tensor {unused[0]!r} is not used by the config ({len(unused)} unused)")
    return _cast_like(params, abstract_params(cfg, param_dtype=param_dtype))


class _SafetensorsCheckpoint(Mapping):
    """Lazy name -> numpy view of `model.safetensors` or its sharded form (never unpickles)."""

    def __init__(self, path: str):
        from safetensors import safe_open

        path = os.fspath(path)
        folder = path if os.path.isdir(path) else os.path.dirname(path)
        index = os.path.join(folder, "model.safetensors.index.json")
        if os.path.isfile(path):
            files = {None: path}
        elif os.path.isfile(os.path.join(folder, "model.safetensors")):
            files = {None: os.path.join(folder, "model.safetensors")}
        elif os.path.isfile(index):
            with open(index, encoding="utf-8") as f:
                shard_names = sorted(set(json.load(f)["weight_map"].values()))
            files = {name: os.path.join(folder, name) for name in shard_names}
        else:
            raise T5CheckpointError(f"no model.safetensors or model.safetensors.index.json in {folder}")
        self._where: dict[str, Any] = {}
        self._handles = {}
        for key, file in files.items():
            if not os.path.isfile(file):
                raise T5CheckpointError(f"checkpoint shard missing: {file}")
            handle = safe_open(file, framework="numpy")
            self._handles[key] = handle
            for name in handle.keys():
                self._where[name] = handle

    def __getitem__(self, name: str) -> np.ndarray:
        return self._where[name].get_tensor(name)

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def load_hf_params(path: str, config: T5Config, param_dtype: Dtype = jnp.float32) -> dict:
    """Reads the encoder's tensors (only) from a Hugging Face safetensors checkpoint."""
    return convert_hf_params(_SafetensorsCheckpoint(path), config, param_dtype)


def convert_t5x_params(tree: Mapping[str, Any], config: T5Config, param_dtype: Dtype = jnp.float32) -> dict:
    """T5X parameter tree (nested dict of numpy arrays) -> this module's parameter tree.

    Accepts the whole train state (`{"target": ..., "state": ...}`), the `target` tree
    or its `{"params": ...}` form. T5X kernels are already [in, out]; its attention
    kernels are flat ([embed, heads * d_kv] and [heads * d_kv, embed]) and its relative
    position table is [heads, buckets].
    """
    cfg = config
    d, h, kv, ff = cfg.d_model, cfg.num_heads, cfg.d_kv, cfg.d_ff
    for key in ("target", "params"):
        if isinstance(tree, Mapping) and key in tree:
            tree = tree[key]

    def get(path: str, shape: tuple[int, ...]) -> np.ndarray:
        node = tree
        for part in path.split("/"):
            if not isinstance(node, Mapping) or part not in node:
                raise T5CheckpointError(f"T5X checkpoint has no tensor {path!r}")
            node = node[part]
        return _check_shape(path, np.asarray(node), shape)

    params: dict[str, Any] = {
        "token_embedder": {"embedding": get("token_embedder/embedding", (cfg.vocab_size, d))},
        "relpos_bias": {
            "embedding": get("encoder/relpos_bias/rel_embedding", (h, cfg.relative_attention_num_buckets)).T
        },
        "encoder_norm": {"scale": get("encoder/encoder_norm/scale", (d,))},
    }
    for i in range(cfg.num_layers):
        prefix = f"encoder/layers_{i}/"
        attention = {
            name: {"kernel": get(f"{prefix}attention/{name}/kernel", (d, h * kv)).reshape(d, h, kv)}
            for name in ("query", "key", "value")
        }
        attention["out"] = {"kernel": get(f"{prefix}attention/out/kernel", (h * kv, d)).reshape(h, kv, d)}
        wi_names = ("wi_0", "wi_1") if cfg.is_gated else ("wi",)
        mlp = {name: {"kernel": get(f"{prefix}mlp/{name}/kernel", (d, ff))} for name in wi_names}
        mlp["wo"] = {"kernel": get(f"{prefix}mlp/wo/kernel", (ff, d))}
        params[f"layers_{i}"] = {
            "pre_attention_layer_norm": {"scale": get(f"{prefix}pre_attention_layer_norm/scale", (d,))},
            "attention": attention,
            "pre_mlp_layer_norm": {"scale": get(f"{prefix}pre_mlp_layer_norm/scale", (d,))},
            "mlp": mlp,
        }
    return _cast_like(params, abstract_params(cfg, param_dtype=param_dtype))


def _encoder_part(tree: Mapping[str, Any]) -> dict:
    """The token embedder and encoder of a T5X tree (optionally under target/params)."""
    for key in ("target", "params"):
        if key in tree:
            return {key: _encoder_part(tree[key])}
    return {key: value for key, value in tree.items() if key in ("token_embedder", "encoder")}


def restore_t5x_tree(path: str) -> dict:
    """Restores the encoder part of an orbax PyTree checkpoint as numpy arrays.

    Only the token embedder and encoder are read: the decoder and optimizer state of a
    T5X train state (as large again as the encoder for XXL) stay on disk.
    """
    import orbax.checkpoint as ocp

    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise T5CheckpointError(f"T5X checkpoint directory not found: {path}")
    checkpointer = ocp.PyTreeCheckpointer()
    wanted = _encoder_part(checkpointer.metadata(path).item_metadata.tree)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
    return checkpointer.restore(
        path, args=ocp.args.PyTreeRestore(item=wanted, restore_args=restore_args, partial_restore=True)
    )


# ----------------------------------------------------------------------------- wrapper


class T5Encoder:
    """A frozen T5 encoder with its weights: `encode_ids` (jitted) and `encode(texts)`.

    Build it with `from_pretrained_hf` or `from_t5x`, or from a config and a parameter
    tree. With a `mesh`, the weights are placed by their logical axis names
    (`LOGICAL_AXIS_RULES`) and the forward pass runs under that mesh, so T5-XXL is
    split over fsdp x tensor devices. Parameters are kept in `param_dtype`; pass
    bfloat16 to halve the memory of a frozen XXL (about 9.5 GB instead of 19 GB).
    """

    def __init__(
        self,
        config: T5Config,
        params: Any,
        max_length: int,
        tokenizer: Tokenizer | None = None,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        mesh: jax.sharding.Mesh | None = None,
    ):
        if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
            raise ValueError(f"tokenizer has {tokenizer.vocab_size} pieces, the embedding only {config.vocab_size}")
        self.config = config
        self.max_length = max_length
        self.tokenizer = tokenizer
        self.mesh = mesh
        self.module = T5EncoderModule(config, dtype=dtype, param_dtype=param_dtype)
        if mesh is not None:
            shardings = tree_shardings(abstract_params(config, dtype, param_dtype), mesh)
            params = jax.tree.map(jax.device_put, params, shardings)
        else:
            params = jax.tree.map(jnp.asarray, params)
        self.params = params
        self._apply = jax.jit(lambda p, ids, mask: self.module.apply({"params": p}, ids, mask))

    @classmethod
    def from_pretrained_hf(
        cls,
        path: str,
        max_length: int,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        tokenizer: Tokenizer | None = None,
        mesh: jax.sharding.Mesh | None = None,
    ) -> "T5Encoder":
        """From a Hugging Face folder: config.json, model.safetensors (or shards + index).

        `spiece.model` in the folder becomes the tokenizer unless one is given.
        """
        path = os.fspath(path)
        config = T5Config.from_hf(path)
        params = load_hf_params(path, config, param_dtype)
        spiece = os.path.join(path, "spiece.model")
        if tokenizer is None and os.path.isfile(spiece):
            tokenizer = Tokenizer(spiece, max_length)
        return cls(config, params, max_length, tokenizer, dtype, param_dtype, mesh)

    @classmethod
    def from_t5x(
        cls,
        path: str,
        config: T5Config | str,
        max_length: int,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        tokenizer: Tokenizer | None = None,
        mesh: jax.sharding.Mesh | None = None,
    ) -> "T5Encoder":
        """From a T5X parameter tree saved as an orbax PyTree checkpoint directory.

        T5X's own legacy format (msgpack + tensorstore) is not read here: restore it with
        t5x and pass the tree to `convert_t5x_params`.
        """
        config = T5Config.from_name(config) if isinstance(config, str) else config
        params = convert_t5x_params(restore_t5x_tree(path), config, param_dtype)
        return cls(config, params, max_length, tokenizer, dtype, param_dtype, mesh)

    def encode_ids(self, ids, mask) -> jax.Array:
        """ids int32 [B, L], mask bool [B, L] -> float32 [B, L, d_model], zero at padding.

        Any L works (one compilation per shape); the tokenizer pads to `max_length`.
        """
        ids = jnp.asarray(ids, jnp.int32)
        mask = jnp.asarray(mask, bool)
        if ids.ndim != 2 or ids.shape != mask.shape:
            raise ValueError(f"ids and mask must both be [B, L], got {ids.shape} and {mask.shape}")
        if self.mesh is None:
            return self._apply(self.params, ids, mask)
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
            return self._apply(self.params, ids, mask)

    def encode(self, texts) -> tuple[jax.Array, np.ndarray]:
        """Tokenizes and encodes: (embeddings float32 [B, max_length, D], mask bool numpy [B, max_length])."""
        if self.tokenizer is None:
            raise ValueError("this T5Encoder has no tokenizer; pass one, or use encode_ids")
        ids, mask = self.tokenizer.encode(texts)
        return self.encode_ids(ids, mask), mask
