"""Imagen training task: one stage of the cascade (the base model or a super-resolution
model), trained through the generic trainer.

Text conditioning comes in one of two forms (`config.text.source`):
  tokens:      the batch's sentencepiece `tokens` through a learned embedding (tests and
               ablations; no frozen encoder needed),
  embeddings:  frozen-encoder outputs already in the batch as `text_embeddings`
               [B, L, D] with `text_mask` (precomputed once per data set, as Imagen
               prescribes a frozen text encoder).
Classifier-free guidance is trained by dropping the text of `cond_drop_prob` of the
examples: their mask becomes all False, which is exactly how the empty prompt looks at
sampling time.

Super-resolution stages get the same scene at `low_resolution`, upsampled to the
stage's resolution and noised to a random augmentation level that the model is told
(noise-conditioning augmentation); at sampling the level is fixed and can be swept.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t2i.diffusion import gaussian, samplers, schedules
from t2i.imagen import attention_maps
from t2i.imagen.unet import EfficientUNet
from t2i.nn.layers import named
from t2i.train.task import Task


class ImagenStage(nn.Module):
    """A U-Net with its text front end (a learned token embedding in `tokens` mode)."""

    unet: dict
    text_source: str
    vocab_size: int = 0
    text_dim: int = 0
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, logsnr, text, text_mask, low_res=None, aug_logsnr=None):
        if self.text_source == "tokens":
            text = nn.Embed(
                self.vocab_size,
                self.text_dim,
                param_dtype=self.param_dtype,
                embedding_init=named(nn.initializers.normal(1.0), ("vocab", "embed")),
                name="token_embedding",
            )(text)
        return EfficientUNet(**self.unet, dtype=self.dtype, param_dtype=self.param_dtype, name="unet")(
            x, logsnr, text, text_mask, low_res, aug_logsnr
        )


def to_model_range(images: jax.Array) -> jax.Array:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.astype(jnp.float32) / 127.5 - 1.0


def to_uint8(images: jax.Array) -> jax.Array:
    return jnp.clip(jnp.round((images + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def upsample(images: jax.Array, size: int) -> jax.Array:
    b, _, _, c = images.shape
    return jax.image.resize(images, (b, size, size, c), method="bicubic")


def random_crop(rng: jax.Array, images: list[jax.Array], size: int) -> list[jax.Array]:
    """The same random size x size window of each example, cut from every array in
    `images` (all [B, S, S, C] with one S)."""
    batch, side = images[0].shape[:2]
    offsets = jax.random.randint(rng, (batch, 2), 0, side - size + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (size, size, image.shape[-1]))

    return [jax.vmap(crop)(image, offsets) for image in images]


def object_word_transform(max_length: int):
    """A pipeline transform adding `word_tokens` int32 [MAX_OBJECTS, 2]: the MiniLM token
    position of each object's colour word and shape word (-1 for no object, or for a
    word cut off at `max_length`)."""
    import os

    from t2i.data import shapes
    from t2i.data.pipeline import MAX_OBJECTS
    from t2i.text.minilm import WordPieceTokenizer, package_model_dir

    tokenizer = WordPieceTokenizer(os.path.join(package_model_dir(), "vocab.txt"))

    def add_word_tokens(example: dict) -> dict:
        caption, count = example["caption"], int(example["num_objects"])
        identities = [
            (shapes.COLORS[c], shapes.SHAPES[k]) for c, k in zip(example["color"][:count], example["shape"][:count])
        ]
        words = shapes.object_word_indices(caption, shapes.KINDS[int(example["kind"])], identities)
        starts = tokenizer.word_starts(caption)
        tokens = np.full((MAX_OBJECTS, 2), -1, np.int32)
        for k, object_words in enumerate(words):
            for j, word in enumerate(object_words):
                if starts[word] <= max_length - 2:  # [SEP] takes the last place
                    tokens[k, j] = starts[word]
        return {**example, "word_tokens": tokens}

    return add_word_tokens


class ImagenTask(Task):
    def __init__(self, config):
        super().__init__(config)
        model = config.model
        self.resolution = int(model.resolution)
        self.super_resolution = bool(model.low_resolution)
        self.low_resolution = int(model.low_resolution)
        # Super-resolution stages may train on crops (Imagen's 256 -> 1024 model trains
        # on 64 -> 256 crops): the U-Net is convolutional, so it samples at full size.
        self.train_crop = int(model.get("train_crop", 0))
        if self.train_crop and not (self.super_resolution and self.train_crop < self.resolution):
            raise ValueError(
                f"model.train_crop={self.train_crop} needs a super-resolution stage and a crop "
                f"smaller than its resolution {self.resolution}"
            )
        if self.train_crop % (2 ** (len(model.channel_mults) - 1)):
            raise ValueError(f"model.train_crop={self.train_crop} must divide by 2^(levels - 1)")
        coord_channels = bool(model.get("coord_channels", False))
        if coord_channels and self.train_crop:
            # A crop's pixel coordinates would be the crop's, not the image's.
            raise ValueError("model.coord_channels cannot be combined with model.train_crop")
        unet = dict(
            base_channels=model.base_channels,
            channel_mults=tuple(model.channel_mults),
            num_res_blocks=tuple(model.num_res_blocks),
            self_attention_levels=tuple(model.self_attention_levels),
            cross_attention_levels=tuple(model.cross_attention_levels),
            heads=model.heads,
            head_dim=model.head_dim,
            embed_dim=model.embed_dim,
            dense_skips=model.dense_skips,
            attention_every_block=model.attention_every_block,
            ff_mult=model.ff_mult,
            coord_channels=coord_channels,
            pooled_text=bool(model.get("pooled_text", True)),
            super_resolution=self.super_resolution,
        )
        text = config.text
        self.text_source = text.source
        if self.text_source not in ("tokens", "embeddings"):
            raise ValueError(f"unknown text source '{self.text_source}' (tokens or embeddings)")
        self.model = ImagenStage(
            unet=unet,
            text_source=text.source,
            vocab_size=text.vocab_size,
            text_dim=text.dim,
            dtype=jnp.dtype(model.dtype),
            param_dtype=jnp.dtype(model.param_dtype),
        )
        diffusion = config.diffusion
        self.schedule = schedules.get_schedule(diffusion.schedule, **dict(diffusion.schedule_kwargs))
        self.aug_schedule = schedules.cosine()
        self.parametrization = diffusion.parametrization
        # Token-level attention supervision (not in Imagen; off by default): each
        # object's colour and shape words should attend inside its box
        # (t2i/imagen/attention_maps.py). The data pipeline adds the words' positions.
        self.attention_loss_weight = float(diffusion.get("attention_loss_weight", 0.0))
        if self.attention_loss_weight:
            if (
                self.super_resolution
                or self.text_source != "embeddings"
                or config.data.get("text_embeddings") not in ("minilm", "minilm_phrases")
            ):
                raise ValueError(
                    "diffusion.attention_loss_weight needs a base stage on the MiniLM text embeddings "
                    "(it locates each object's words with MiniLM's tokenizer)"
                )
            if not any(model.cross_attention_levels):
                raise ValueError("diffusion.attention_loss_weight needs cross-attention at some level")
            self.transform = object_word_transform(int(config.data.max_text_length))

    # ---------------------------------------------------------------- shapes of inputs
    def _text(self, batch):
        if self.text_source == "tokens":
            return batch["tokens"], batch["text_mask"]
        return batch["text_embeddings"], batch["text_mask"]

    def _dummy_text(self, batch_size):
        length = int(self.config.text.max_length)
        mask = jnp.ones((batch_size, length), bool)
        if self.text_source == "tokens":
            return jnp.zeros((batch_size, length), jnp.int32), mask
        return jnp.zeros((batch_size, length, int(self.config.text.dim)), jnp.float32), mask

    def init(self, rng):
        size = self.resolution
        x = jnp.zeros((1, size, size, 3))
        text, mask = self._dummy_text(1)
        low = jnp.zeros_like(x) if self.super_resolution else None
        aug = jnp.zeros((1,)) if self.super_resolution else None
        return self.model.init(rng, x, jnp.zeros((1,)), text, mask, low, aug)

    # ---------------------------------------------------------------------- training
    def _low_res_condition(self, batch, rng, aug_t=None):
        """The upsampled low-resolution image, noised to a random (training) or given
        (sampling) augmentation level; returns (noised image, its log-SNR)."""
        low = to_model_range(batch[f"image_{self.low_resolution}"])
        low = upsample(low, self.resolution)
        noise_rng, level_rng = jax.random.split(rng)
        if aug_t is None:
            aug_t = jax.random.uniform(level_rng, (low.shape[0],), maxval=self.config.diffusion.noise_aug_max)
        aug_logsnr = self.aug_schedule(aug_t)
        noised = gaussian.diffuse(low, jax.random.normal(noise_rng, low.shape), aug_logsnr)
        return noised, aug_logsnr

    def loss(self, params, batch, rng, step=None):
        noise_rng, time_rng, drop_rng, aug_rng = jax.random.split(rng, 4)
        x0 = to_model_range(batch[f"image_{self.resolution}"])
        text, mask = self._text(batch)
        keep = jax.random.uniform(drop_rng, (x0.shape[0],)) >= self.config.diffusion.cond_drop_prob
        mask = mask & keep[:, None]
        logsnr = gaussian.sample_training_logsnr(time_rng, x0.shape[0], self.schedule)
        low, aug_logsnr = self._low_res_condition(batch, aug_rng) if self.super_resolution else (None, None)
        if self.train_crop:
            x0, low = random_crop(jax.random.fold_in(rng, 1), [x0, low], self.train_crop)
        eps = jax.random.normal(noise_rng, x0.shape)
        x_t = gaussian.diffuse(x0, eps, logsnr)
        diffusion = self.config.diffusion
        if self.attention_loss_weight:
            out, state = self.model.apply(params, x_t, logsnr, text, mask, low, aug_logsnr, mutable=["intermediates"])
        else:
            out = self.model.apply(params, x_t, logsnr, text, mask, low, aug_logsnr)
        loss = gaussian.diffusion_loss(
            out, x0, eps, logsnr, self.parametrization, diffusion.min_snr_gamma, diffusion.get("snr_floor", 0.0)
        )
        if not self.attention_loss_weight:
            return loss, {}
        attention_loss = attention_maps.token_region_loss(
            attention_maps.cross_attention_maps(state["intermediates"]),
            batch["word_tokens"],
            batch["cx"],
            batch["cy"],
            batch["r"],
            keep,
        )
        return loss + self.attention_loss_weight * attention_loss, {
            "diffusion_loss": loss,
            "attention_loss": attention_loss,
        }

    # ---------------------------------------------------------------------- sampling
    def sample(self, params, batch, rng, *, steps=None, sampler=None, guidance=None, aug_level=None):
        """Images (uint8) for the batch's prompts; SR stages upsample the batch's
        low-resolution images (ground truth in training, the previous stage's output
        in the cascade)."""
        sampling = self.config.sampling
        steps = steps or sampling.steps
        sampler = sampler or sampling.sampler
        guidance = guidance or samplers.Guidance(
            weight=sampling.guidance_weight,
            thresholding=sampling.thresholding,
            percentile=sampling.percentile,
            # .get: configs stored before the interval existed have no such field
            interval=samplers.interval_bounds(tuple(sampling.get("guidance_interval") or (None, None))),
        )
        text, mask = self._text(batch)
        batch_size = mask.shape[0]
        init_rng, aug_rng, sample_rng = jax.random.split(rng, 3)
        low, aug_logsnr = None, None
        if self.super_resolution:
            level = sampling.noise_aug_level if aug_level is None else aug_level
            low, aug_logsnr = self._low_res_condition(batch, aug_rng, jnp.full((batch_size,), level))

        def model_fn(x, logsnr, conditioning):
            text_c, mask_c, low_c, aug_c = conditioning
            return self.model.apply(params, x, logsnr, text_c, mask_c, low_c, aug_c)

        conditioning = (text, mask, low, aug_logsnr)
        null = (text, jnp.zeros_like(mask), low, aug_logsnr)  # the empty prompt: nothing attended
        size = self.resolution
        x_init = jax.random.normal(init_rng, (batch_size, size, size, 3))
        grid = schedules.sampling_grid(self.schedule, steps)
        images = samplers.sample(
            model_fn,
            x_init,
            grid,
            sample_rng,
            sampler=sampler,
            parametrization=self.parametrization,
            guidance=guidance,
            conditioning=conditioning,
            null_conditioning=null,
            eta=sampling.eta,
        )
        return to_uint8(images)

    def visualize(self, params, batch, rng, host_batch):
        if not hasattr(self, "_jitted_sample"):  # compiled once, not at every grid
            self._jitted_sample = jax.jit(lambda p, b, r: self.sample(p, b, r))
        images = self._jitted_sample(params, batch, rng)
        return np.asarray(jax.device_get(images)), list(host_batch["caption"])
