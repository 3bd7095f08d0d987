"""Parti training task: next-token prediction of ViT-VQGAN token grids from the caption,
through the generic trainer.

A batch holds the caption's sentencepiece `tokens` and `text_mask` (the input
pipeline's `data.tokenizer`) and the image's token grid `image_tokens` [B, g, g] (the
pipeline reads the grids that `t2i tokenize` wrote, `data.image_tokens`). The loss is
the mean cross-entropy over the g*g positions, with optional label smoothing and
z-loss (a penalty on log Z of the softmax, which keeps logits from drifting at scale).

Classifier-free guidance is trained by dropping the caption of `cond_drop_prob` of the
examples: tokens become padding and the mask all False, exactly the empty prompt the
sampler's unconditional rows encode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from t2i.errors import UsageError
from t2i.parti.model import Parti, parti_size
from t2i.train.task import Task, ratio


def text_vocab_size(data: ml_collections.ConfigDict) -> int:
    from t2i.text.tokenizer import tokenizer_for

    if not data.get("tokenizer"):
        raise UsageError("parti needs data.tokenizer (a sentencepiece model, or 'shapes')")
    return int(tokenizer_for(data.tokenizer, int(data.max_text_length)).vocab_size)


def cross_entropy(logits: jax.Array, targets: jax.Array, label_smoothing: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """Per-token (cross-entropy with smoothed targets, log Z), both [...], in f32."""
    log_z = jax.nn.logsumexp(logits, axis=-1)
    log_probs = logits - log_z[..., None]
    nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(log_probs, axis=-1)
    return nll, log_z


class PartiTask(Task):
    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        model = config.model
        self.grid = int(model.grid)
        self.num_codes = int(model.num_codes)
        self.model = Parti(
            size=parti_size(model.size),
            text_vocab=text_vocab_size(config.data),
            text_length=int(config.data.max_text_length),
            num_codes=self.num_codes,
            grid=self.grid,
            tie_embeddings=bool(model.tie_embeddings),
            dropout_rate=float(model.dropout_rate),
            scan=bool(model.scan),
            remat=str(model.remat),
            dtype=jnp.dtype(model.dtype),
            param_dtype=jnp.dtype(model.param_dtype),
        )

    def init(self, rng):
        length = int(self.config.data.max_text_length)
        text = jnp.zeros((1, length), jnp.int32)
        return self.model.init(rng, text, jnp.ones((1, length), bool), jnp.zeros((1, self.grid * self.grid), jnp.int32))

    def _targets(self, batch) -> jax.Array:
        tokens = batch["image_tokens"]
        if tokens.shape[1:] != (self.grid, self.grid):
            raise UsageError(
                f"token grids of {tokens.shape[1]}x{tokens.shape[2]} but the model reads "
                f"{self.grid}x{self.grid} (model.grid); tokenize with the matching tokenizer"
            )
        return tokens.reshape(tokens.shape[0], -1).astype(jnp.int32)

    def loss(self, params, batch, rng, step=None):
        del step
        cfg = self.config.loss
        drop_rng, dropout_rng = jax.random.split(rng)
        targets = self._targets(batch)
        keep = jax.random.uniform(drop_rng, (targets.shape[0],)) >= float(cfg.cond_drop_prob)
        mask = batch["text_mask"] & keep[:, None]
        tokens = jnp.where(mask, batch["tokens"], 0)
        logits = self.model.apply(params, tokens, mask, targets, deterministic=False, rngs={"dropout": dropout_rng})
        nll, log_z = cross_entropy(logits, targets, float(cfg.label_smoothing))
        z_loss = float(cfg.z_loss) * jnp.mean(jnp.square(log_z))
        loss = jnp.mean(nll) + z_loss
        accuracy = jnp.mean((jnp.argmax(logits, -1) == targets).astype(jnp.float32))
        return loss, dict(nll=jnp.mean(nll), z_loss=z_loss, token_accuracy=accuracy)

    def eval_step(self, params, batch):
        """Per-token loss and accuracy (teacher forced, captions kept) over a split."""
        targets = self._targets(batch)
        logits = self.model.apply(params, batch["tokens"], batch["text_mask"], targets)
        nll, _ = cross_entropy(logits, targets)
        valid = jnp.broadcast_to(batch["valid"][:, None], targets.shape)
        return dict(nll=ratio(nll, valid), token_accuracy=ratio(jnp.argmax(logits, -1) == targets, valid))

    def default_decode_settings(self):
        """The sampling settings stored with the model (`config.sampling`)."""
        from t2i.parti.sampling import DecodeSettings

        sampling = self.config.sampling
        return DecodeSettings(
            guidance_weight=float(sampling.guidance_weight),
            temperature=float(sampling.temperature),
            top_k=int(sampling.top_k),
            top_p=float(sampling.top_p),
        )

    def check_token_grids(self, info: dict) -> None:
        """The grids `t2i tokenize` wrote must be the model's shape and codebook."""
        if int(info["grid"]) != self.grid or int(info["num_codes"]) != self.num_codes:
            raise UsageError(
                f"token grids of {info['grid']}x{info['grid']} over {info['num_codes']} codes, but the model "
                f"reads {self.grid}x{self.grid} over {self.num_codes} (model.grid, model.num_codes)"
            )

    def visualize(self, params, batch, rng, host_batch):
        """Samples for the batch's captions, decoded by the model's image tokenizer."""
        from t2i.parti.pipeline import decode_images, load_image_tokenizer, sample_grids

        if not hasattr(self, "_image_tokenizer"):
            self._image_tokenizer = load_image_tokenizer(self.config.model.image_tokenizer)
        keys = jax.random.split(rng, batch["tokens"].shape[0])
        grids = sample_grids(self, params, batch["tokens"], batch["text_mask"], keys, self.default_decode_settings())
        images = decode_images(self._image_tokenizer, grids)
        return np.asarray(jax.device_get(images)), list(host_batch["caption"])
