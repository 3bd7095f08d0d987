"""The Shapes benchmark: scene sampler, captioner and renderer (pure numpy).

Normative spec: `docs/shapes.md` (shared with the TFDS builder and the evaluator).
Everything here is deterministic given a numpy Generator, and `scene_for(split, i)`
seeds one Generator per example, so any example can be made on its own (random access
for sharded data loading) and the data set is bit-for-bit reproducible.

No JAX here: the data pipeline and the evaluator import this module on hosts that
should not need an accelerator runtime.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

import numpy as np

COLORS = ("red", "orange", "yellow", "green", "blue", "purple")
PALETTE = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (235, 205, 30),
    "green": (40, 160, 70),
    "blue": (40, 90, 210),
    "purple": (140, 60, 180),
}
BACKGROUND = (232, 232, 232)
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.11, "large": 0.17}  # half-extent r of the bounding box
POSITIONS = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)  # row-major over the 3x3 grid, so index = 3 * row + column
RELATIONS = ("to the left of", "to the right of", "above", "below")
KINDS = ("single", "pair", "count")
KIND_PROBABILITIES = (0.4, 0.4, 0.2)
PREFIXES = ("", "a photo of ", "an image of ", "a drawing of ", "a picture of ")
COUNT_WORDS = {2: "two", 3: "three"}
IDENTITIES = tuple((color, shape) for color in COLORS for shape in SHAPES)
HELDOUT_PAIRS = frozenset({("purple", "triangle"), ("yellow", "circle"), ("green", "square")})
SPLIT_SEEDS = {"train": 1_000_001, "validation": 2_000_002, "test": 3_000_003, "heldout": 4_000_004}
DEFAULT_SPLIT_SIZES = {"train": 200_000, "validation": 5_000, "test": 5_000, "heldout": 5_000}

BORDER = 0.02  # objects lie wholly inside [BORDER, 1 - BORDER]^2
GAP = 0.06  # minimum gap between two objects' bounding boxes (max-norm)
CELL_MARGIN = 0.04  # a named position keeps the centre this far from the cell's borders
RELATION_THRESHOLD = 0.10
GENERATOR_THRESHOLD = 0.20  # the generator's margin, so judging tolerates small errors
GENERATOR_DOMINANCE = 1.5

# Rejection sampling draws candidate placements in batches (one numpy call per batch).
# The hardest case, three large objects, accepts about 2% of candidates, so failing all
# _PLACEMENT_BATCH * _PLACEMENT_ROUNDS draws would take astronomically bad luck.
_PLACEMENT_BATCH = 64
_PLACEMENT_ROUNDS = 100
_IDENTITY_TRIES = 1000


@dataclasses.dataclass(frozen=True)
class ShapeObject:
    color: str
    shape: str
    size: str
    cx: float
    cy: float
    r: float


@dataclasses.dataclass(frozen=True)
class Scene:
    kind: str  # "single" | "pair" | "count"
    caption: str
    objects: tuple[ShapeObject, ...]
    size_named: bool = False  # single: the caption names the size
    position: str = ""  # single: the named 3x3 cell, "" if the caption names none
    relation: str = ""  # pair: the relation of objects[0] to objects[1]

    def to_json(self) -> dict:
        """A JSON-safe dict; objects become a list of dicts."""
        d = dataclasses.asdict(self)
        d["objects"] = [dataclasses.asdict(obj) for obj in self.objects]
        return d

    @classmethod
    def from_json(cls, d: dict) -> Scene:
        return cls(
            kind=d["kind"],
            caption=d["caption"],
            objects=tuple(ShapeObject(**obj) for obj in d["objects"]),
            size_named=bool(d.get("size_named", False)),
            position=d.get("position", ""),
            relation=d.get("relation", ""),
        )


def position_cell(cx: float, cy: float) -> str:
    """The 3x3 cell (split at 1/3 and 2/3 on each axis) holding the centre (cx, cy)."""
    column = min(max(int(cx * 3), 0), 2)
    row = min(max(int(cy * 3), 0), 2)
    return POSITIONS[3 * row + column]


def _relation_mask(dx, dy, relation: str, threshold: float, dominance: float):
    """The spec's relation rule on offsets dx = B.cx - A.cx, dy = B.cy - A.cy.

    Works on scalars and on arrays, so the sampler can test a batch of candidates.
    """
    main, other = {
        "to the left of": (dx, dy),
        "to the right of": (-dx, dy),
        "above": (dy, dx),
        "below": (-dy, dx),
    }[relation]
    return (main >= threshold) & (np.abs(main) > dominance * np.abs(other))


def relation_holds(a, b, relation: str, threshold: float = RELATION_THRESHOLD, dominance: float = 1.0) -> bool:
    """Whether `a <relation> b` holds for two objects with centres (cx, cy).

    Defaults are the judging rule; the generator calls it with its wider margin.
    """
    return bool(_relation_mask(b.cx - a.cx, b.cy - a.cy, relation, threshold, dominance))


def _pick(rng: np.random.Generator, options):
    return options[rng.integers(len(options))]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(color: str, shape: str, size: str = "") -> str:
    words = f"{size} {color} {shape}" if size else f"{color} {shape}"
    return f"{_article(words)} {words}"


def object_word_indices(caption: str, kind: str, identities) -> list[tuple[int, int]]:
    """For each object of a generated scene, in scene order, the positions (among
    `caption.split()`) of the words naming its colour and its shape.

    `identities` are the objects' (color, shape). Pair captions name the objects in
    scene order, so an object whose colour (or shape) an earlier object shares takes
    that word's next occurrence; a count caption names all its objects with one colour
    word and one plural noun. Raises ValueError for a caption outside this grammar.
    """
    words = caption.split()
    out = []
    for k, (color, shape) in enumerate(identities):
        if kind == "count":
            color_nth, shape_nth, noun = 0, 0, shape + "s"
        else:
            color_nth = sum(1 for c, _ in identities[:k] if c == color)
            shape_nth = sum(1 for _, s in identities[:k] if s == shape)
            noun = shape
        colors = [i for i, word in enumerate(words) if word == color]
        nouns = [i for i, word in enumerate(words) if word == noun]
        if color_nth >= len(colors) or shape_nth >= len(nouns):
            raise ValueError(f"caption {caption!r} does not name object {k} ({color} {shape}) as a {kind} caption does")
        out.append((colors[color_nth], nouns[shape_nth]))
    return out


def _draw_identities(rng: np.random.Generator, count: int, heldout: bool) -> list[tuple[str, str]]:
    """`count` distinct (color, shape) identities, conditioned on the split's hold-out rule.

    Rejection keeps the non-held-out distribution exactly "drawn as above" for both
    kinds of split: held-out scenes are ordinary scenes that contain a held-out pair.
    """
    for _ in range(_IDENTITY_TRIES):
        indices = rng.choice(len(IDENTITIES), size=count, replace=False)
        identities = [IDENTITIES[i] for i in indices]
        if any(identity in HELDOUT_PAIRS for identity in identities) == heldout:
            return identities
    raise RuntimeError("could not draw identities satisfying the hold-out rule")


def _place(
    rng: np.random.Generator, radii, low, high, accept: Callable[[np.ndarray], np.ndarray] | None = None
) -> np.ndarray:
    """Centres [n, 2], uniform in per-object boxes [low, high], by rejection sampling.

    A candidate is kept when every two objects are separated by GAP and `accept`
    (a test on a batch of candidates [batch, n, 2]) holds.
    """
    radii = np.asarray(radii, np.float64)
    first, second = np.triu_indices(len(radii), 1)
    min_distance = radii[first] + radii[second] + GAP
    for _ in range(_PLACEMENT_ROUNDS):
        centres = rng.uniform(low, high, size=(_PLACEMENT_BATCH, len(radii), 2))
        distance = np.abs(centres[:, first] - centres[:, second]).max(-1)
        ok = (distance >= min_distance).all(-1)
        if accept is not None:
            ok &= accept(centres)
        if ok.any():
            return centres[np.argmax(ok)]
    raise RuntimeError("rejection sampling found no valid placement")


def _bounds(radii) -> tuple[np.ndarray, np.ndarray]:
    """Per-object centre ranges [n, 2] that keep each object inside the border."""
    radii = np.asarray(radii, np.float64)[:, None]
    return np.repeat(BORDER + radii, 2, 1), np.repeat(1 - BORDER - radii, 2, 1)


def _objects(identities, sizes, centres) -> tuple[ShapeObject, ...]:
    return tuple(
        ShapeObject(color, shape, size, float(cx), float(cy), SIZES[size])
        for (color, shape), size, (cx, cy) in zip(identities, sizes, centres)
    )


def layout(
    rng: np.random.Generator, identities, sizes, position: str = "", relation: str = ""
) -> tuple[ShapeObject, ...]:
    """Places objects of the given (color, shape) identities and size names.

    `position` (one object) keeps its centre in that 3x3 cell with CELL_MARGIN;
    `relation` (two objects) makes "first <relation> second" hold with the
    generator's margin. Used by the scene sampler and by anything that must draw a
    scene for a given request (the oracle sampler).
    """
    radii = [SIZES[size] for size in sizes]
    low, high = _bounds(radii)
    accept = None
    if position:
        row, column = divmod(POSITIONS.index(position), 3)
        cell = np.array([[column, row]], np.float64)
        low = np.maximum(low, cell / 3 + CELL_MARGIN)
        high = np.minimum(high, (cell + 1) / 3 - CELL_MARGIN)
    if relation:

        def accept(centres):
            offset = centres[:, 1] - centres[:, 0]
            return _relation_mask(offset[:, 0], offset[:, 1], relation, GENERATOR_THRESHOLD, GENERATOR_DOMINANCE)

    return _objects(identities, sizes, _place(rng, radii, low, high, accept=accept))


def _sample_single(rng: np.random.Generator, heldout: bool) -> Scene:
    ((color, shape),) = _draw_identities(rng, 1, heldout)
    size = _pick(rng, tuple(SIZES))
    size_named = bool(rng.random() < 0.5)
    position = _pick(rng, POSITIONS) if rng.random() < 0.5 else ""
    caption = _noun_phrase(color, shape, size if size_named else "")
    if position:
        caption += f" in the {position}"
    return Scene(
        "single",
        caption,
        layout(rng, [(color, shape)], [size], position=position),
        size_named=size_named,
        position=position,
    )


def _sample_pair(rng: np.random.Generator, heldout: bool) -> Scene:
    identities = _draw_identities(rng, 2, heldout)
    relation = _pick(rng, RELATIONS)
    sizes = [_pick(rng, tuple(SIZES)) for _ in identities]
    (color_a, shape_a), (color_b, shape_b) = identities
    caption = f"{_noun_phrase(color_a, shape_a)} {relation} {_noun_phrase(color_b, shape_b)}"
    return Scene("pair", caption, layout(rng, identities, sizes, relation=relation), relation=relation)


def _sample_count(rng: np.random.Generator, heldout: bool) -> Scene:
    ((color, shape),) = _draw_identities(rng, 1, heldout)
    count = int(rng.integers(2, 4))
    sizes = [_pick(rng, tuple(SIZES)) for _ in range(count)]
    caption = f"{COUNT_WORDS[count]} {color} {shape}s"
    return Scene("count", caption, layout(rng, [(color, shape)] * count, sizes))


_SAMPLERS = {"single": _sample_single, "pair": _sample_pair, "count": _sample_count}


def sample_scene(rng: np.random.Generator, heldout: bool = False, kind: str | None = None) -> Scene:
    """One random scene; its kind is drawn (0.4/0.4/0.2) unless given.

    heldout=False never uses a held-out (color, shape) pair; heldout=True always uses
    at least one.
    """
    if kind is None:
        kind = KINDS[rng.choice(len(KINDS), p=KIND_PROBABILITIES)]
    elif kind not in _SAMPLERS:
        raise ValueError(f"unknown scene kind '{kind}'; expected one of {', '.join(KINDS)}")
    scene = _SAMPLERS[kind](rng, heldout)
    prefix = _pick(rng, PREFIXES)
    return dataclasses.replace(scene, caption=prefix + scene.caption)


def scene_for(split: str, index: int) -> Scene:
    """Example `index` of `split`, from its own Generator: independent of all others."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split '{split}'; expected one of {', '.join(SPLIT_SEEDS)}")
    rng = np.random.default_rng([SPLIT_SEEDS[split], index])
    return sample_scene(rng, heldout=split == "heldout")


def _coverage(obj: ShapeObject, size: int, supersample: int):
    """The fraction of each pixel the object covers, over the pixels its box touches.

    Evaluates the exact shape at the centres of a supersample x supersample subgrid per
    pixel and averages (a box filter). Returns (row slice, column slice, coverage).
    """

    def span(centre):
        start = max(int(np.floor((centre - obj.r) * size)), 0)
        return start, max(min(int(np.ceil((centre + obj.r) * size)), size), start)

    (x0, x1), (y0, y1) = span(obj.cx), span(obj.cy)
    fine = size * supersample
    dx = (np.arange(x0 * supersample, x1 * supersample) + 0.5) / fine - obj.cx
    dy = (np.arange(y0 * supersample, y1 * supersample) + 0.5)[:, None] / fine - obj.cy
    if obj.shape == "circle":
        inside = dx**2 + dy**2 <= obj.r**2
    elif obj.shape == "square":
        inside = (np.abs(dx) <= obj.r) & (np.abs(dy) <= obj.r)
    elif obj.shape == "triangle":  # apex (cx, cy - r), base from (cx - r, cy + r) to (cx + r, cy + r)
        inside = (dy <= obj.r) & (np.abs(dx) <= (dy + obj.r) / 2)
    else:
        raise ValueError(f"unknown shape '{obj.shape}'")
    coverage = inside.reshape(y1 - y0, supersample, x1 - x0, supersample).mean((1, 3), dtype=np.float32)
    return slice(y0, y1), slice(x0, x1), coverage


def render(objects_or_scene: Scene | Iterable[ShapeObject], size: int, supersample: int = 4) -> np.ndarray:
    """An anti-aliased uint8 image [size, size, 3] of a scene (or of its objects).

    Objects never overlap, so each pixel is the background plus, per object, its
    coverage times (colour - background): exact for pixels shared by two objects'
    edges, and fully covered pixels are exactly the palette colour.
    """
    objects = objects_or_scene.objects if isinstance(objects_or_scene, Scene) else objects_or_scene
    background = np.asarray(BACKGROUND, np.float32)
    image = np.broadcast_to(background, (size, size, 3)).copy()
    for obj in objects:
        rows, columns, coverage = _coverage(obj, size, supersample)
        color = np.asarray(PALETTE[obj.color], np.float32)
        image[rows, columns] += coverage[..., None] * (color - background)
    return np.rint(image).astype(np.uint8)
