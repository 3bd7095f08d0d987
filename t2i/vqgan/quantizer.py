"""Factorized, l2-normalised vector quantization (ViT-VQGAN, Yu et al. 2022, section 3.2).

The encoder output (width D) is projected down to a small code dimension (32 in the
paper), l2-normalised, and matched to the l2-normalised codebook entries by cosine
similarity (for unit vectors the nearest in Euclidean distance); the chosen entry is
projected back up to D for the decoder. Gradients pass the lookup straight through.
Low-dimensional, unit-norm codes are what lets the paper use 8,192 codes at high usage.

Two ways to learn the codebook (`codebook_learning`):
- "gradient": the codebook is a parameter trained by the codebook loss
  ||sg(z) - e||^2 (plus beta ||z - sg(e)||^2 for the encoder), as in the paper;
- "ema": the codebook follows an exponential moving average of the encoder outputs
  assigned to each code (van den Oord et al. 2017, appendix; VQ-VAE-2), outside the
  optimizer: `CodebookState` holds the averages and `ema_codebook` turns them into
  entries; only the commitment loss reaches the encoder.

`CodebookState` also keeps the last `window` steps' code counts, from which the usage
(share of codes used in the window) and perplexity are logged and dead codes (unused
over the whole window) are restarted from recent encoder outputs (`restart_dead_codes`).
Everything here is pure: the training step threads the state through.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from t2i.nn.layers import Dense, named

Dtype = Any

CODEBOOK_AXES = ("vq_codes", "vq_code_dim")
CODEBOOK_LEARNING = ("gradient", "ema")


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """x / ||x|| along the last axis, in f32; a zero vector stays zero."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def nearest_codes(encodings: jax.Array, codebook: jax.Array) -> jax.Array:
    """Index of the most similar (unit) codebook row for each (unit) encoding."""
    similarity = jnp.einsum("...d,kd->...k", encodings, codebook)
    return jnp.argmax(similarity, axis=-1).astype(jnp.int32)


class FactorizedQuantizer(nn.Module):
    """`z [..., D] -> (z_q [..., D], aux)`; aux holds `indices`, the unit `encodings`
    [..., code_dim] (for the EMA update and restarts) and the loss terms.

    `aux["loss"]` is codebook loss + beta * commitment loss, each a mean over tokens of
    a squared distance between unit vectors; in EMA mode the codebook loss is zero.
    """

    features: int  # the encoder's (and decoder's) width D
    num_codes: int = 1024
    code_dim: int = 32
    beta: float = 0.25
    codebook_learning: str = "gradient"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        if self.codebook_learning not in CODEBOOK_LEARNING:
            raise ValueError(f"codebook_learning must be one of {CODEBOOK_LEARNING}, got {self.codebook_learning!r}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.down = Dense(self.code_dim, axes=("embed", "vq_code_dim"), **kw)
        self.codebook = self.param(
            "codebook",
            named(nn.initializers.normal(1.0), CODEBOOK_AXES),
            (self.num_codes, self.code_dim),
            self.param_dtype,
        )
        self.up = Dense(self.features, axes=("vq_code_dim", "embed"), **kw)

    def unit_codebook(self) -> jax.Array:
        return l2_normalize(self.codebook)

    def encode(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        """z [..., D] -> (unit encodings [..., code_dim], code indices [...])."""
        encodings = l2_normalize(self.down(z))
        return encodings, nearest_codes(encodings, jax.lax.stop_gradient(self.unit_codebook()))

    def lookup(self, indices: jax.Array) -> jax.Array:
        """Code indices -> unit code vectors [..., code_dim] (the decoder's input side)."""
        return jnp.take(self.unit_codebook(), indices, axis=0)

    def __call__(self, z: jax.Array):
        encodings, indices = self.encode(z)
        codes = self.lookup(indices)
        if self.codebook_learning == "ema":
            codes = jax.lax.stop_gradient(codes)
            codebook_loss = jnp.zeros((), jnp.float32)
        else:
            codebook_loss = jnp.mean(jnp.sum((jax.lax.stop_gradient(encodings) - codes) ** 2, axis=-1))
        commitment_loss = jnp.mean(jnp.sum((encodings - jax.lax.stop_gradient(codes)) ** 2, axis=-1))
        # Straight-through: the forward value is the code, the gradient goes to the encoder.
        straight_through = encodings + jax.lax.stop_gradient(codes - encodings)
        z_q = self.up(straight_through.astype(self.dtype))
        aux = dict(
            indices=indices,
            encodings=encodings,
            codebook_loss=codebook_loss,
            commitment_loss=commitment_loss,
            loss=codebook_loss + self.beta * commitment_loss,
        )
        return z_q, aux


@struct.dataclass
class CodebookState:
    """Non-gradient codebook statistics, carried beside the params.

    `recent_counts[i]` holds the code counts of step `i mod window`; `cluster_size` is
    the EMA of each code's count per step; `ema_codes` is, per code, the EMA of the mean
    unit encoding assigned to it, over the steps that assign it any (used in EMA mode,
    kept in both so the mode is a config switch); `restarted_at` is the step each code
    was last restarted (a restarted code gets a full window before it can be declared
    dead again, without faking counts that would inflate the usage). Averaging only over those steps,
    rather than decaying a running sum every step as VQ-VAE-2 does, keeps an idle
    code's vector from underflowing to zero in float32 over a long run.
    """

    recent_counts: jax.Array  # [window, num_codes] int32
    cluster_size: jax.Array  # [num_codes] f32
    ema_codes: jax.Array  # [num_codes, code_dim] f32
    step: jax.Array  # [] int32
    restarted_at: jax.Array  # [num_codes] int32


def init_codebook_state(codebook: jax.Array, window: int) -> CodebookState:
    """A fresh state whose EMA codebook equals `codebook` (normalised)."""
    num_codes, code_dim = codebook.shape
    return CodebookState(
        recent_counts=jnp.zeros((window, num_codes), jnp.int32),
        cluster_size=jnp.ones((num_codes,), jnp.float32),
        ema_codes=l2_normalize(codebook),
        step=jnp.zeros((), jnp.int32),
        restarted_at=jnp.zeros((num_codes,), jnp.int32),
    )


def code_counts(indices: jax.Array, num_codes: int) -> jax.Array:
    """How many tokens chose each code: [num_codes] int32."""
    return jnp.zeros((num_codes,), jnp.int32).at[indices.reshape(-1)].add(1)


def update_codebook_state(
    state: CodebookState, indices: jax.Array, encodings: jax.Array, decay: float = 0.99
) -> CodebookState:
    """Records one step's assignments: the window row and the EMA statistics."""
    num_codes = state.cluster_size.shape[0]
    counts = code_counts(indices, num_codes)
    flat = encodings.reshape(-1, encodings.shape[-1]).astype(jnp.float32)
    sums = jnp.zeros_like(state.ema_codes).at[indices.reshape(-1)].add(flat)
    assigned = counts > 0
    means = sums / jnp.maximum(counts, 1)[:, None].astype(jnp.float32)
    window = state.recent_counts.shape[0]
    return state.replace(
        recent_counts=state.recent_counts.at[state.step % window].set(counts),
        cluster_size=decay * state.cluster_size + (1.0 - decay) * counts.astype(jnp.float32),
        ema_codes=jnp.where(assigned[:, None], decay * state.ema_codes + (1.0 - decay) * means, state.ema_codes),
        step=state.step + 1,
    )


def ema_codebook(state: CodebookState) -> jax.Array:
    """The EMA mode's codebook: each code's averaged assigned encoding, normalised
    (codes are compared as unit vectors, so the average's length does not matter)."""
    return l2_normalize(state.ema_codes)


def window_usage(state: CodebookState) -> jax.Array:
    """Share of codes chosen at least once in the window's filled steps."""
    used = jnp.sum(state.recent_counts, axis=0) > 0
    return jnp.mean(used.astype(jnp.float32))


def window_perplexity(state: CodebookState) -> jax.Array:
    """exp(entropy) of the code distribution over the window: 1 (one code) .. num_codes."""
    counts = jnp.sum(state.recent_counts, axis=0).astype(jnp.float32)
    probs = counts / jnp.maximum(jnp.sum(counts), 1.0)
    entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0))
    return jnp.exp(entropy)


def dead_codes(state: CodebookState) -> jax.Array:
    """Codes unused over a full window: [num_codes] bool (none before the window fills,
    nor within a window of their last restart)."""
    window = state.recent_counts.shape[0]
    unused = jnp.sum(state.recent_counts, axis=0) == 0
    return unused & (state.step - state.restarted_at >= window)


def restart_dead_codes(
    codebook: jax.Array, state: CodebookState, encodings: jax.Array, rng: jax.Array
) -> tuple[jax.Array, CodebookState, jax.Array]:
    """Moves each dead code onto a random recent encoding (this step's, [..., code_dim]).

    Call it after `update_codebook_state` for the same step.
    Returns the new codebook (same dtype as given), the state with the restarted codes'
    EMA statistics reset to that encoding and their restart step recorded (so they get
    a full window to be chosen before they can be restarted again), and the number of
    codes restarted. The shapes are static, so it runs inside the jitted step.
    """
    dead = dead_codes(state)
    flat = encodings.reshape(-1, encodings.shape[-1]).astype(jnp.float32)
    picks = jax.random.randint(rng, (dead.shape[0],), 0, flat.shape[0])
    replacement = flat[picks]
    new_codebook = jnp.where(dead[:, None], replacement.astype(codebook.dtype), codebook)
    new_state = state.replace(
        cluster_size=jnp.where(dead, 1.0, state.cluster_size),
        ema_codes=jnp.where(dead[:, None], replacement, state.ema_codes),
        restarted_at=jnp.where(dead, state.step, state.restarted_at),
    )
    return new_codebook, new_state, jnp.sum(dead.astype(jnp.int32))
