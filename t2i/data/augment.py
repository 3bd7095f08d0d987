"""Host-side, seeded augmentations of the input pipeline's flat Shapes examples.

`recolor` re-renders a scene with new palette colours: the image tokenizer uses it so
that its codes learn every colour on every shape, the colour-shape pairs the train
split holds out included (docs/tokenizer.md says why that keeps the caption hold-out
intact for the text-to-image models), and the Shapes classifier so that it reads any
colour on any shape. Plug one in as a task's `random_transform`.
"""

from __future__ import annotations

import numpy as np

from t2i.data import shapes

SIZE_NAMES = tuple(shapes.SIZES)
# Fields computed from the caption by a task's `transform`, which runs before the random
# transform: a recoloured example would carry stale ones.
TEXT_FEATURES = ("tokens", "text_embeddings", "text_mask")


def _objects(example: dict, colors) -> list[shapes.ShapeObject]:
    """The example's objects (flat, padded fields) with the given colour indices."""
    return [
        shapes.ShapeObject(
            color=shapes.COLORS[int(colors[i])],
            shape=shapes.SHAPES[int(example["shape"][i])],
            size=SIZE_NAMES[int(example["size"][i])],
            cx=float(example["cx"][i]),
            cy=float(example["cy"][i]),
            r=float(example["r"][i]),
        )
        for i in range(int(example["num_objects"]))
    ]


def scene_objects(example: dict) -> list[shapes.ShapeObject]:
    """A flat example's objects, as `shapes.render` takes them."""
    return _objects(example, example["color"])


def _draw_colors(rng: np.random.Generator, kind: str, shape_ids: np.ndarray) -> np.ndarray:
    """Colour indices, uniform over the six palette colours, for a valid scene of `kind`.

    A count scene shows one identity, so all its objects share one colour; a pair scene
    shows two different (colour, shape) identities, so two objects of one shape are
    redrawn until their colours differ (uniform over the valid assignments).
    """
    n = len(shape_ids)
    if kind == "count":
        return np.full((n,), rng.integers(len(shapes.COLORS)), np.int32)
    while True:
        colors = rng.integers(len(shapes.COLORS), size=n).astype(np.int32)
        if len(set(zip(colors.tolist(), shape_ids.tolist()))) == n:
            return colors


def _recolor_caption(caption: str, kind: str, old, new) -> str:
    """The caption with each object's colour word replaced (and its article fixed)."""
    words = caption.split()
    for (color_at, _), (color, _) in zip(shapes.object_word_indices(caption, kind, old), new):
        words[color_at] = color
        if color_at > 0 and words[color_at - 1] in ("a", "an"):
            words[color_at - 1] = shapes._article(color)
    return " ".join(words)


def recolor(example: dict, rng: np.random.Generator, prob: float, keep_kind: bool = True) -> dict:
    """With probability `prob`, the example's scene re-rendered in new colours.

    Each object's colour is drawn uniformly from the six palette colours, keeping the
    scene valid for its kind (see `_draw_colors`); shapes, sizes and positions stay.
    Every `image_<S>` field is re-rendered at its resolution S exactly as
    `shapes.render` draws the recoloured objects, and `color` and `caption` name the
    new colours. Otherwise the example comes back unchanged. Deterministic given `rng`
    (the pipeline derives one per example from the run's seed); the input is not
    modified.

    `keep_kind=False` draws every object's colour independently (a count scene may
    mix colours, a pair may repeat an identity): scenes no caption describes, for a
    model that learns from the structured scene alone (the Shapes classifier); the
    caption of a recoloured example is then empty.
    """
    if not rng.random() < prob:
        return example
    present = [key for key in TEXT_FEATURES if key in example]
    if present:
        raise ValueError(f"recolor must run before text features are computed; the example has {present}")
    n = int(example["num_objects"])
    kind = shapes.KINDS[int(example["kind"])]
    old = scene_objects(example)
    if keep_kind:
        colors = _draw_colors(rng, kind, np.asarray(example["shape"][:n]))
    else:
        colors = rng.integers(len(shapes.COLORS), size=n).astype(np.int32)
    objects = _objects(example, colors)
    out = dict(example)
    color = np.array(example["color"], copy=True)
    color[:n] = colors
    out["color"] = color
    for key in example:
        resolution = key[len("image_") :]
        if key.startswith("image_") and resolution.isdigit():  # not `image_tokens`, say
            out[key] = shapes.render(objects, int(resolution))
    if "caption" in example and not keep_kind:
        out["caption"] = ""
    elif "caption" in example:
        out["caption"] = _recolor_caption(
            example["caption"], kind, [(o.color, o.shape) for o in old], [(o.color, o.shape) for o in objects]
        )
    return out
