"""Training task of CLIP, and retrieval over a whole split.

Loss: the symmetric cross-entropy of CLIP over the in-batch similarity matrix
(logit scale x cosine): each image's caption is the right class among the batch's
captions, and each caption's image among the batch's images; the two averaged. The
batch is the global batch (under a data-parallel mesh, XLA gathers the embeddings).

Retrieval (`split_retrieval`, `retrieval_metrics`): embed the first N examples of a
split, then for each image rank the N captions (image -> text) and for each caption
the N images (text -> image). What counts as a hit: Shapes captions repeat (many
"two red circles" scenes) and identical captions are indistinguishable to a text
encoder by construction, and every caption starts with one of a few random prefixes
("a photo of ", "an image of ", ..., `t2i.data.shapes.PREFIXES`) that say nothing
about the image. And a caption can be true of an image without being its caption ("a
red circle" of an image captioned "a large red circle in the top left", "a blue square
above a red circle" of one captioned "a red circle below a blue square"). So four
criteria are reported, each stricter than the one before:

- `true`: the retrieved pair is right, as the Shapes evaluator judges it from the pixels
  (`t2i.evaluation.shapes_eval`, GenEval-style: the image holds exactly the objects
  the caption asks for, with every named attribute right). Image -> text: the
  retrieved caption is true of the query image; text -> image: the query caption is
  true of the retrieved image. This is what re-ranking needs;
- `description`: the retrieved item's caption equals the query's once the prefix is
  removed ("a photo of two red circles" == "two red circles");
- `caption`: the retrieved item's caption is identical to the query's;
- `index`: the retrieved item is the query's own pair (ties between duplicates make
  it arbitrary: identical captions have identical embeddings).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from t2i.clip.model import CLIP
from t2i.errors import UsageError
from t2i.train.task import Task, ratio


def to_model_range(images: jax.Array) -> jax.Array:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.astype(jnp.float32) / 127.5 - 1.0


def contrastive_loss(image_embeddings, text_embeddings, scale, valid=None):
    """Symmetric cross-entropy over scale * image @ text^T with the diagonal as labels.

    Returns (loss, per-row image->text loss [B], per-row text->image loss [B], logits).
    `valid` [B] (optional) drops padded rows, as queries and as candidates.
    """
    logits = scale * jnp.einsum("id,td->it", image_embeddings, text_embeddings, preferred_element_type=jnp.float32)
    labels = jnp.arange(logits.shape[0])
    if valid is not None:
        keep = valid[None, :] & valid[:, None]
        logits = jnp.where(keep | jnp.eye(logits.shape[0], dtype=bool), logits, -1e9)
    image_to_text = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    text_to_image = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels)
    if valid is None:
        loss = 0.5 * (jnp.mean(image_to_text) + jnp.mean(text_to_image))
    else:
        weight = valid.astype(jnp.float32)
        loss = 0.5 * jnp.sum((image_to_text + text_to_image) * weight) / jnp.maximum(jnp.sum(weight), 1.0)
    return loss, image_to_text, text_to_image, logits


class CLIPTask(Task):
    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        model_cfg = config.model
        data = config.data
        if not data.get("tokenizer"):
            raise UsageError("CLIP reads token ids: set data.tokenizer (e.g. 'shapes')")
        if int(data.max_text_length) > int(model_cfg.text_length):
            raise UsageError(
                f"data.max_text_length={data.max_text_length} exceeds the text tower's "
                f"model.text_length={model_cfg.text_length}"
            )
        self.resolution = int(model_cfg.image_size)
        self.image_key = f"image_{self.resolution}"
        self.text_length = int(data.max_text_length)
        self.model = CLIP(
            variant=model_cfg.variant,
            image_size=self.resolution,
            vocab_size=int(model_cfg.vocab_size),
            text_length=int(model_cfg.text_length),
            positions=model_cfg.positions,
            pool=model_cfg.pool,
            scan=bool(model_cfg.scan),
            remat=model_cfg.remat,
            dtype=jnp.dtype(model_cfg.dtype),
            param_dtype=jnp.dtype(model_cfg.param_dtype),
        )

    # ------------------------------------------------------------------------ params
    def init(self, rng):
        images = jnp.zeros((1, self.resolution, self.resolution, 3), jnp.float32)
        tokens = jnp.zeros((1, self.text_length), jnp.int32)
        return self.model.init(rng, images, tokens, jnp.ones((1, self.text_length), bool))

    # ---------------------------------------------------------------------- training
    def _forward(self, params, batch):
        return self.model.apply(params, to_model_range(batch[self.image_key]), batch["tokens"], batch["text_mask"])

    def loss(self, params, batch, rng, step=None):
        del rng, step  # deterministic model, no augmentation
        images, texts, scale = self._forward(params, batch)
        loss, _, _, logits = contrastive_loss(images, texts, scale)
        labels = jnp.arange(logits.shape[0])
        metrics = {
            "logit_scale": scale,
            "image_to_text_accuracy": jnp.mean(jnp.argmax(logits, axis=1) == labels),
            "text_to_image_accuracy": jnp.mean(jnp.argmax(logits, axis=0) == labels),
        }
        return loss, metrics

    def eval_step(self, params, batch):
        """In-batch retrieval accuracy (the right pair ranked first among the batch's
        valid rows) and the contrastive loss, as sums over valid rows; the trainer
        averages them over the split. They depend on the batch size: `split_retrieval`
        is the measure over a whole split."""
        images, texts, scale = self._forward(params, batch)
        valid = batch["valid"].astype(bool)
        _, image_to_text, text_to_image, logits = contrastive_loss(images, texts, scale, valid)
        labels = jnp.arange(logits.shape[0])
        return {
            "loss": ratio(0.5 * (image_to_text + text_to_image), valid),
            "image_to_text_accuracy": ratio(jnp.argmax(logits, axis=1) == labels, valid),
            "text_to_image_accuracy": ratio(jnp.argmax(logits, axis=0) == labels, valid),
        }

    # ----------------------------------------------------------------------- helpers
    def embed_images(self, params, images: jax.Array) -> jax.Array:
        """uint8 images [N, S, S, 3] at the model's resolution -> unit embeddings [N, D] f32."""
        return self.model.apply(params, to_model_range(images), method=CLIP.encode_image)

    def embed_texts(self, params, tokens: jax.Array, mask: jax.Array) -> jax.Array:
        """tokens int [N, L] and mask bool [N, L] -> unit embeddings [N, D] f32."""
        return self.model.apply(params, tokens, mask, method=CLIP.encode_text)

    def logit_scale(self, params) -> jax.Array:
        return self.model.apply(params, method=CLIP.logit_scale)


# -------------------------------------------------------------------------- retrieval
def strip_prefix(caption: str) -> str:
    """The caption without its random prefix ("a photo of ", ...): the scene's description."""
    from t2i.data.shapes import PREFIXES

    for prefix in sorted(PREFIXES, key=len, reverse=True):
        if prefix and caption.startswith(prefix):
            return caption[len(prefix) :]
    return caption


def _ids(keys: Sequence) -> np.ndarray:
    table: dict = {}
    return np.asarray([table.setdefault(key, len(table)) for key in keys], np.int64)


def ranked(similarity: np.ndarray, k: int) -> np.ndarray:
    """[Q, min(k, I)]: each row's (query's) k most similar items, best first; ties go to
    the lower item index."""
    return np.argsort(-similarity, axis=1, kind="stable")[:, :k]


def _rates(hits: np.ndarray, ks) -> dict[int, float]:
    """hits [Q, k] bool, per rank -> share of queries with a hit in their first k, per k."""
    return {k: float(np.mean(np.any(hits[:, :k], axis=1))) for k in ks}


def top_k_hits(similarity: np.ndarray, query_keys: np.ndarray, item_keys: np.ndarray, ks=(1, 5)) -> dict[int, float]:
    """For each row (query) of `similarity` [Q, I], whether one of its k most similar
    items has the query's key; the share of queries with a hit, per k."""
    return _rates(item_keys[ranked(similarity, max(ks))] == query_keys[:, None], ks)


def caption_truth(images: np.ndarray, captions: Sequence[str]):
    """`holds(i, j)`: caption j is true of image i, as the Shapes evaluator judges it from
    the pixels (`t2i.evaluation.shapes_eval`: exactly the objects the caption asks for,
    every named attribute right; 100% right on ground truth at 32 and 64 px)."""
    from t2i.evaluation import shapes_eval

    detections: dict[int, list] = {}
    requests: dict[int, object] = {}

    def holds(i: int, j: int) -> bool:
        if i not in detections:
            detections[i] = shapes_eval.detect(np.asarray(images[i]))
        if j not in requests:
            requests[j] = shapes_eval.parse_caption(captions[j])
        return bool(shapes_eval.judge(requests[j], detections[i])["overall"])

    return holds


def retrieval_metrics(
    similarity: np.ndarray, captions: Sequence[str] | None = None, images: np.ndarray | None = None, ks=(1, 5)
) -> dict[str, float]:
    """Retrieval both ways from `similarity` [N images, N texts] (pair i = image i, text
    i). Keys `<direction>_<criterion>_top<k>`, direction `image_to_text` or
    `text_to_image`; criterion `index` always, with the N `captions` also `caption` and
    `description`, and with the N uint8 `images` too, `true` (see the module doc)."""
    similarity = np.asarray(similarity, np.float64)
    n = similarity.shape[0]
    if similarity.shape != (n, n):
        raise ValueError(f"similarity must be square [N images, N texts], got {similarity.shape}")
    criteria = {"index": np.arange(n)}
    if captions is not None:
        if len(captions) != n:
            raise ValueError(f"{len(captions)} captions for {n} pairs")
        criteria["caption"] = _ids(captions)
        criteria["description"] = _ids([strip_prefix(c) for c in captions])
    holds = None
    if images is not None:
        if captions is None or len(images) != n:
            raise ValueError("judging retrieved pairs needs the N captions and the N images")
        holds = caption_truth(images, captions)
    out = {}
    for direction, matrix in (("image_to_text", similarity), ("text_to_image", similarity.T)):
        order = ranked(matrix, max(ks))
        for name, keys in criteria.items():
            for k, value in _rates(keys[order] == keys[:, None], ks).items():
                out[f"{direction}_{name}_top{k}"] = value
        if holds is not None:
            pairs = (lambda q, r: holds(q, r)) if direction == "image_to_text" else (lambda q, r: holds(r, q))
            hits = np.asarray([[pairs(q, int(r)) for r in row] for q, row in enumerate(order)], bool)
            for k, value in _rates(hits, ks).items():
                out[f"{direction}_true_top{k}"] = value
    return out


def embed_split(
    task: CLIPTask, params, data: ml_collections.ConfigDict, split: str, num: int | None, batch_size: int = 250
) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """(image embeddings [N, D], text embeddings [N, D], captions, uint8 images) of the
    first `num` examples of `split` (all of it when None), one jitted call per batch."""
    from t2i.data import pipeline

    if not data.get("tokenizer"):
        raise UsageError("CLIP retrieval needs data.tokenizer")

    @jax.jit
    def embed(params, images, tokens, mask):
        return task.embed_images(params, images), task.embed_texts(params, tokens, mask)

    image_parts, text_parts, captions, pixels = [], [], [], []
    for batch in pipeline.eval_batches(data, split, batch_size, limit=num):
        valid = np.asarray(batch["valid"])
        images, texts = jax.device_get(embed(params, batch[task.image_key], batch["tokens"], batch["text_mask"]))
        image_parts.append(images[valid])
        text_parts.append(texts[valid])
        captions.extend(c for c, v in zip(batch["caption"], valid) if v)
        pixels.append(np.asarray(batch[task.image_key])[valid])
    return np.concatenate(image_parts), np.concatenate(text_parts), captions, np.concatenate(pixels)


def split_retrieval(
    task: CLIPTask,
    params,
    data: ml_collections.ConfigDict,
    split: str = "test",
    num: int | None = None,
    batch_size: int = 250,
    ks=(1, 5),
) -> dict[str, float]:
    """Image -> text and text -> image top-k retrieval among the first `num` examples of
    `split` (see the module doc for the criteria); `num_examples` says how many."""
    images, texts, captions, pixels = embed_split(task, params, data, split, num, batch_size)
    metrics = retrieval_metrics(images @ texts.T, captions, pixels, ks)
    metrics["num_examples"] = len(captions)
    return metrics
