"""ViT-VQGAN training task: the image tokenizer (Yu et al. 2022), trained through the
generic trainer.

Params are `{"generator": ..., "discriminator": ...}` (no discriminator when
`loss.adversarial_weight` is 0). Both networks update in the same step from one scalar:

    loss = reconstruction + vq + w_p * perceptual + w_adv * G_adv(G, sg(D))   [-> generator]
         + D_logistic(sg(G(x)), D) + lazy R1                                   [-> discriminator]

Each term sees only one network's params (the other behind a stop-gradient), so one
backward pass gives each network exactly its own loss's gradient: the simultaneous
update StyleGAN-style training uses, with the two optimizers as `optimizer.groups` of
one optimizer state. The adversarial terms are off (not computed at all: a separately
compiled phase of the step, see `phase`; not a `lax.cond`, slow on XLA's CPU) before
`loss.adversarial_start`, the paper's warm-up; the R1 penalty runs every
`loss.r1_every` steps with its weight scaled up by the same factor (lazy
regularisation, Karras et al. 2020).

The codebook's non-gradient side (usage window, EMA statistics, dead-code restarts) is
`model_state["codebook"]`, updated by `update_model_state` after each optimizer step.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from t2i.train.state import STATE_INPUTS
from t2i.train.task import Task
from t2i.vqgan import quantizer as vq
from t2i.vqgan.gan import Discriminator, discriminator_loss, generator_loss, r1_penalty
from t2i.vqgan.reconstruction import l2_loss, logit_laplace_image, logit_laplace_nll, perceptual_distance
from t2i.vqgan.vit_vqgan import ViTVQGAN

GENERATOR = "generator"
DISCRIMINATOR = "discriminator"


def to_model_range(images: jax.Array) -> jax.Array:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.astype(jnp.float32) / 127.5 - 1.0


def to_uint8(images: jax.Array) -> jax.Array:
    return jnp.clip(jnp.round((images + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def psnr(reconstruction: jax.Array, target: jax.Array) -> jax.Array:
    """Per-image PSNR in dB of [-1, 1] images (peak-to-peak 2), [B]."""
    mse = jnp.mean(jnp.square(reconstruction - target), axis=(1, 2, 3))
    return 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-10))


def _with_codebook(params: dict, codebook: jax.Array) -> dict:
    """`params` with the generator's codebook replaced (nested dicts copied, not mutated)."""
    generator = dict(params[GENERATOR])
    inner = dict(generator["params"])
    quant = dict(inner["quantizer"])
    quant["codebook"] = codebook
    inner["quantizer"] = quant
    generator["params"] = inner
    return {**params, GENERATOR: generator}


class VQGANTask(Task):
    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        model = config.model
        loss = config.loss
        self.image_size = int(model.image_size)
        self.image_key = f"image_{self.image_size}"
        self.logit_laplace = float(loss.logit_laplace_weight) > 0
        self.model = ViTVQGAN(
            image_size=self.image_size,
            patch_size=int(model.patch_size),
            encoder=model.encoder,
            decoder=model.decoder,
            num_codes=int(model.num_codes),
            code_dim=int(model.code_dim),
            beta=float(model.beta),
            codebook_learning=model.codebook_learning,
            output_channels=6 if self.logit_laplace else 3,
            dtype=jnp.dtype(model.dtype),
            param_dtype=jnp.dtype(model.param_dtype),
        )
        self.grid = self.image_size // int(model.patch_size)
        recolor_prob = float(config.data.get("recolor_prob", 0.0))
        if recolor_prob > 0:  # training images re-rendered in new colours (t2i.data.augment)
            from t2i.data.augment import recolor

            self.random_transform = functools.partial(recolor, prob=recolor_prob)
        self.adversarial = float(loss.adversarial_weight) > 0
        self.discriminator = Discriminator(
            channels=tuple(model.discriminator_channels), param_dtype=jnp.dtype(model.param_dtype)
        )
        self.perceptual_features = None
        if float(loss.perceptual_weight) > 0:
            if not loss.get("perceptual_network"):
                raise ValueError(
                    "loss.perceptual_weight > 0 needs loss.perceptual_network (a converted VGG16/LPIPS "
                    ".npz, see t2i.vqgan.perceptual); set the weight to 0 to train without it"
                )
            from t2i.vqgan.perceptual import load_perceptual

            self.perceptual_features, self.perceptual_channel_weights = load_perceptual(loss.perceptual_network)

    # ------------------------------------------------------------------------ params
    def init(self, rng):
        g_rng, d_rng = jax.random.split(rng)
        images = jnp.zeros((1, self.image_size, self.image_size, 3))
        params = {GENERATOR: self.model.init(g_rng, images)}
        if self.adversarial:
            params[DISCRIMINATOR] = self.discriminator.init(d_rng, jnp.zeros((2,) + images.shape[1:]))
        return params

    def inference_params(self, params: dict) -> dict:
        """What sampling and export keep: the generator (encoder, codebook, decoder)."""
        return {GENERATOR: params[GENERATOR]}

    def init_model_state(self, params):
        from t2i.parallel.partitioning import strip_boxes

        codebook = strip_boxes(params)[GENERATOR]["params"]["quantizer"]["codebook"]
        state = vq.init_codebook_state(codebook, int(self.config.codebook.window))
        return {"codebook": {name: getattr(state, name) for name in state.__dataclass_fields__}}

    # ---------------------------------------------------------------------- training
    def _reconstruction(self, outputs: jax.Array) -> jax.Array:
        return logit_laplace_image(outputs) if self.logit_laplace else outputs

    def phase(self, step: int):
        """(adversarial terms on, R1 this step): static, so the warm-up compiles without
        the discriminator and R1's double backward runs only every `r1_every` steps."""
        if not self.adversarial:
            return None
        cfg = self.config.loss
        on = step >= int(cfg.adversarial_start)
        return (on, on and step % int(cfg.r1_every) == 0)

    def loss(self, params, batch, rng, step=None, phase=None):
        """`phase` as `self.phase` gives it; None: the adversarial terms on (when the
        config has them), no R1."""
        del rng, step  # deterministic given the batch; the phase carries the schedule
        cfg = self.config.loss
        adversarial_on, r1_now = phase if phase is not None else (self.adversarial, False)
        x = to_model_range(batch[self.image_key])
        outputs, aux = self.model.apply(params[GENERATOR], x)
        recon = self._reconstruction(outputs)
        l2 = l2_loss(recon, x)
        total = float(cfg.l2_weight) * l2 + aux["loss"]
        metrics = dict(
            l2=l2,
            psnr=jnp.mean(psnr(jax.lax.stop_gradient(recon), x)),
            commitment_loss=aux["commitment_loss"],
            codebook_loss=aux["codebook_loss"],
        )
        if self.logit_laplace:
            nll = logit_laplace_nll(outputs, x)
            total = total + float(cfg.logit_laplace_weight) * nll
            metrics["logit_laplace"] = nll
        if self.perceptual_features is not None:
            perceptual = perceptual_distance(self.perceptual_features, recon, x, self.perceptual_channel_weights)
            total = total + float(cfg.perceptual_weight) * perceptual
            metrics["perceptual"] = perceptual
        if self.adversarial:
            adv_total, adv_metrics = self._adversarial(params[DISCRIMINATOR], recon, x, adversarial_on, r1_now)
            total = total + adv_total
            metrics.update(adv_metrics)
        metrics[STATE_INPUTS] = dict(indices=aux["indices"], encodings=aux["encodings"])
        return total, metrics

    def _adversarial(self, d_params, recon, real, on: bool, r1_now: bool):
        """(generator's adversarial term + discriminator loss + lazy R1, metrics); the
        same metric names in every phase (zeros when off), so log rows average."""
        cfg = self.config.loss
        zero = jnp.zeros((), jnp.float32)
        metrics = dict(g_adv=zero, d_loss=zero, d_real=zero, d_fake=zero, r1=zero)
        if not on:
            return zero, metrics
        discriminate = self.discriminator.apply
        g_adv = generator_loss(discriminate(jax.lax.stop_gradient(d_params), recon))
        # Real and fake in separate calls: in one batch the minibatch-stddev groups would
        # mix them and hand the discriminator a shortcut.
        real_logits = discriminate(d_params, real)
        fake_logits = discriminate(d_params, jax.lax.stop_gradient(recon))
        d_loss = discriminator_loss(real_logits, fake_logits)
        total = float(cfg.adversarial_weight) * g_adv + d_loss
        metrics.update(g_adv=g_adv, d_loss=d_loss, d_real=jnp.mean(real_logits), d_fake=jnp.mean(fake_logits))
        if r1_now:
            every = int(cfg.r1_every)
            r1 = r1_penalty(lambda images: discriminate(d_params, images), real)
            total = total + 0.5 * float(cfg.r1_gamma) * every * r1
            metrics["r1"] = r1
        return total, metrics

    def update_model_state(self, params, model_state, inputs, rng, step):
        """Codebook bookkeeping after the optimizer step: the usage window and EMA
        statistics; in EMA mode the codebook param set from the averages; dead codes
        (unused over a full window) restarted on this step's encodings."""
        cfg = self.config.codebook
        state = vq.CodebookState(**model_state["codebook"])
        encodings = jax.lax.stop_gradient(inputs["encodings"])
        state = vq.update_codebook_state(state, inputs["indices"], encodings, float(cfg.ema_decay))
        codebook = params[GENERATOR]["params"]["quantizer"]["codebook"]
        if self.config.model.codebook_learning == "ema":
            codebook = vq.ema_codebook(state).astype(codebook.dtype)
        restarted = jnp.zeros((), jnp.int32)
        if cfg.restart_dead:
            codebook, state, restarted = vq.restart_dead_codes(codebook, state, encodings, rng)
        metrics = dict(
            codebook_usage=vq.window_usage(state),
            codebook_perplexity=vq.window_perplexity(state),
            codes_restarted=restarted.astype(jnp.float32),
        )
        new_state = {"codebook": {name: getattr(state, name) for name in state.__dataclass_fields__}}
        return _with_codebook(params, codebook), new_state, metrics

    # ------------------------------------------------------------------- evaluation
    def eval_step(self, params, batch):
        x = to_model_range(batch[self.image_key])
        outputs, _ = self.model.apply(params[GENERATOR], x)
        recon = self._reconstruction(outputs)
        valid = batch["valid"].astype(jnp.float32)
        errors = jnp.mean(jnp.square(recon - x), axis=(1, 2, 3))
        return dict(
            psnr=(jnp.sum(psnr(recon, x) * valid), jnp.sum(valid)),
            l2=(jnp.sum(errors * valid), jnp.sum(valid)),
        )

    # ------------------------------------------------------------ inference helpers
    def reconstruct(self, params, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """uint8 images -> (uint8 reconstructions, code grids [B, g, g])."""
        outputs, aux = self.model.apply(params[GENERATOR], to_model_range(images))
        return to_uint8(self._reconstruction(outputs)), aux["indices"]

    def tokenize(self, params, images: jax.Array) -> jax.Array:
        """uint8 images -> code grids [B, g, g] int32."""
        return self.model.apply(params[GENERATOR], to_model_range(images), method=ViTVQGAN.tokenize)

    def decode(self, params, codes: jax.Array) -> jax.Array:
        """Code grids [B, g, g] -> uint8 images."""
        outputs = self.model.apply(params[GENERATOR], codes, method=ViTVQGAN.decode_codes)
        return to_uint8(self._reconstruction(outputs))

    def visualize(self, params, batch, rng, host_batch):
        """Each test image beside its reconstruction."""
        if not hasattr(self, "_jitted_reconstruct"):
            self._jitted_reconstruct = jax.jit(self.reconstruct)
        recon, _ = self._jitted_reconstruct(params, batch[self.image_key])
        pairs = np.concatenate([np.asarray(host_batch[self.image_key]), np.asarray(jax.device_get(recon))], axis=2)
        return pairs, list(host_batch["caption"])
