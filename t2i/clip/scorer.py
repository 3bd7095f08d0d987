"""Image-text scores for re-ranking samples (Parti draws N images per prompt and keeps
the best by CLIP score).

`ImageTextScorer` is the interface a sampling pipeline calls: any contrastive model
can stand in. `CLIPScorer` implements it with a trained `t2i.clip` model: the cosine
between the image's and the prompt's unit embeddings, in [-1, 1].

    scorer = CLIPScorer.from_file("t2i/assets/clip_shapes.npz")   # or a training workdir
    scores = scorer.score(images, [prompt] * len(images))      # uint8 [N, S, S, 3]
    best = images[np.argsort(-scores)[:k]]
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from t2i.errors import UsageError
from t2i.text.tokenizer import config_tokenizer


@runtime_checkable
class ImageTextScorer(Protocol):
    def score(self, images: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
        """images uint8 [N, S, S, 3], N prompts -> float [N], higher = better match of
        image i and prompt i."""
        ...


class CLIPScorer:
    """`score` = cosine of CLIP's image and text embeddings.

    Built from a loaded model (anything with `.task`, a `CLIPTask`, `.params` and
    `.config`, as `t2i.model_files.load_model` returns), or by `from_file`. Images of
    another size are resized to the model's resolution (`jax.image.resize`, bilinear,
    antialiased when shrinking) in [-1, 1]. Inputs run in fixed batches of
    `batch_size` (the last one padded), so the embedding compiles once per image size.
    """

    def __init__(self, model, batch_size: int = 64):
        from t2i.clip.model import CLIP
        from t2i.clip.task import CLIPTask, to_model_range

        if not isinstance(model.task, CLIPTask):
            source = getattr(model, "source", None) or "the model"
            raise UsageError(f"{source} is not a CLIP model (its task is {type(model.task).__name__})")
        self.task, self.params, self.config = model.task, model.params, model.config
        self.source = getattr(model, "source", None)
        self.resolution = self.task.resolution
        self.batch_size = int(batch_size)
        self.tokenizer = config_tokenizer(self.config)
        task, resolution, clip = self.task, self.resolution, self.task.model

        def scores(params, images, tokens, mask):
            x = to_model_range(images)
            if x.shape[1:3] != (resolution, resolution):
                x = jax.image.resize(x, (x.shape[0], resolution, resolution, 3), method="linear")
            image_embeddings = clip.apply(params, x, method=CLIP.encode_image)
            text_embeddings = task.embed_texts(params, tokens, mask)
            return jnp.sum(image_embeddings * text_embeddings, axis=-1)

        self._scores = jax.jit(scores)

    @classmethod
    def from_file(cls, source: str, step: int | None = None, batch_size: int = 64) -> "CLIPScorer":
        """From a training workdir (its newest checkpoint, or `step`) or an export."""
        from t2i.model_files import load_model

        return cls(load_model(source, step, family="clip"), batch_size)

    def score(self, images: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
            raise ValueError(f"images must be [N, S, S, 3], got shape {images.shape}")
        if images.dtype != np.uint8:
            raise ValueError(f"images must be uint8, got {images.dtype}")
        if isinstance(prompts, str) or len(prompts) != len(images):
            raise ValueError(f"one prompt per image: {len(images)} images, {len(prompts)} prompts")
        tokens, mask = self.tokenizer.encode(list(prompts))
        n, b = len(images), self.batch_size
        out = []
        for start in range(0, n, b):
            rows = np.arange(start, start + b).clip(max=n - 1)  # pad the last batch with its last row
            result = self._scores(self.params, images[rows], tokens[rows], mask[rows])
            out.append(np.asarray(jax.device_get(result))[: min(b, n - start)])
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0,), np.float32)
