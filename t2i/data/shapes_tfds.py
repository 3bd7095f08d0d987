"""The Shapes benchmark as a TFDS data set in array_record files.

Each example holds the caption, the structured scene (kind, the named attributes and
per object color/shape/size/cx/cy/r) and the same scene rendered at every resolution
of the builder config (`image_32`, `image_64`, ...), so each stage of a cascade sees
the same scene. Images are `tfds.features.Tensor` uint8 arrays: reading and writing
need no TensorFlow.

Builder configs fix the split sizes and resolutions, so a tiny copy for tests and the
spec-sized data set live side by side under one data_dir:
  default: the spec's sizes (200k / 5k / 5k / 5k) at 32 and 64 px,
  small:   20k / 1k / 5k / 5k at 32 and 64 px (spec-sized test and heldout), for CPU
           runs and the demo,
  tiny:    512 / 128 / 128 / 128 at 16, 32 and 64 px, for tests.
Any other sizes: `custom_t<train>_v<val>_e<test>_h<heldout>_r<res>-<res>`.
"""

from __future__ import annotations

import re

import numpy as np
import tensorflow_datasets as tfds

from t2i.data import shapes
from t2i.errors import UsageError

SPLITS = ("train", "validation", "test", "heldout")


class ShapesConfig(tfds.core.BuilderConfig):
    def __init__(self, *, split_sizes: dict[str, int], resolutions: tuple[int, ...], **kwargs):
        super().__init__(**kwargs)
        self.split_sizes = dict(split_sizes)
        self.resolutions = tuple(sorted(resolutions))


PRESETS = {
    "default": (dict(shapes.DEFAULT_SPLIT_SIZES), (32, 64)),
    "small": (dict(train=20_000, validation=1_000, test=5_000, heldout=5_000), (32, 64)),
    "tiny": (dict(train=512, validation=128, test=128, heldout=128), (16, 32, 64)),
}
_CUSTOM = re.compile(r"^custom_t(\d+)_v(\d+)_e(\d+)_h(\d+)_r([\d-]+)$")


def custom_name(split_sizes: dict[str, int], resolutions) -> str:
    s = split_sizes
    res = "-".join(str(r) for r in sorted(resolutions))
    return f"custom_t{s['train']}_v{s['validation']}_e{s['test']}_h{s['heldout']}_r{res}"


def config_from_name(name: str) -> ShapesConfig:
    """A preset name or a `custom_...` name -> its ShapesConfig."""
    if name in PRESETS:
        sizes, resolutions = PRESETS[name]
    else:
        match = _CUSTOM.match(name)
        if not match:
            raise UsageError(
                f"unknown Shapes builder config '{name}' (presets: {', '.join(PRESETS)}, "
                "or custom_t<train>_v<val>_e<test>_h<heldout>_r<res>-<res>)"
            )
        numbers = [int(x) for x in match.groups()[:4]]
        sizes = dict(zip(SPLITS, numbers))
        resolutions = tuple(int(r) for r in match.group(5).split("-"))
    for split, n in sizes.items():
        if n < 1:
            raise UsageError(f"Shapes split '{split}' must have at least one example, got {n}")
    for r in resolutions:
        if r < 16 or r > 256:
            raise UsageError(f"Shapes resolution {r} is outside 16..256")
    return ShapesConfig(
        name=name, split_sizes=sizes, resolutions=resolutions, description=f"Shapes v1: {sizes} at {resolutions} px"
    )


class Shapes(tfds.core.GeneratorBasedBuilder):
    """Procedural coloured shapes with compositional captions (docs/shapes.md, v1)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Shapes spec v1."}
    BUILDER_CONFIGS = [config_from_name(name) for name in PRESETS]

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            f"image_{r}": tfds.features.Tensor(shape=(r, r, 3), dtype=np.uint8) for r in self.builder_config.resolutions
        }
        features.update(
            caption=tfds.features.Text(),
            kind=tfds.features.ClassLabel(names=shapes.KINDS),
            size_named=tfds.features.Tensor(shape=(), dtype=np.bool_),
            position=tfds.features.Text(),
            relation=tfds.features.Text(),
            objects=tfds.features.Sequence(
                {
                    "color": tfds.features.ClassLabel(names=shapes.COLORS),
                    "shape": tfds.features.ClassLabel(names=shapes.SHAPES),
                    "size": tfds.features.ClassLabel(names=tuple(shapes.SIZES)),
                    "cx": tfds.features.Tensor(shape=(), dtype=np.float32),
                    "cy": tfds.features.Tensor(shape=(), dtype=np.float32),
                    "r": tfds.features.Tensor(shape=(), dtype=np.float32),
                }
            ),
        )
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(features),
            homepage="docs/shapes.md",
            # Keep example i of a split at index i (scene_for(split, i)); the
            # training pipeline does its own seeded shuffle.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download: every example is rendered from its seed.
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str):
        for index in range(self.builder_config.split_sizes[split]):
            scene = shapes.scene_for(split, index)
            yield index, scene_to_example(scene, self.builder_config.resolutions)


def scene_to_example(scene, resolutions) -> dict:
    example = {f"image_{r}": shapes.render(scene, r) for r in resolutions}
    example.update(
        caption=scene.caption,
        kind=scene.kind,
        size_named=bool(scene.size_named),
        position=scene.position,
        relation=scene.relation,
        objects={
            "color": [o.color for o in scene.objects],
            "shape": [o.shape for o in scene.objects],
            "size": [o.size for o in scene.objects],
            "cx": np.asarray([o.cx for o in scene.objects], np.float32),
            "cy": np.asarray([o.cy for o in scene.objects], np.float32),
            "r": np.asarray([o.r for o in scene.objects], np.float32),
        },
    )
    return example


def builder(config_name: str, data_dir: str) -> Shapes:
    config = config_from_name(config_name)  # validates the name
    # TFDS wants presets by name and only new configs as instances.
    return Shapes(
        config=config_name if config_name in PRESETS else config, data_dir=data_dir, file_format="array_record"
    )


def build(config_name: str, data_dir: str) -> Shapes:
    """Renders every split into `data_dir` (TFDS shows a progress bar per split)."""
    shapes_builder = builder(config_name, data_dir)
    _hold_split_in_memory(shapes_builder.builder_config)
    shapes_builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return shapes_builder


def _hold_split_in_memory(config: ShapesConfig) -> None:
    """Let TFDS's writer keep a whole split in memory.

    The writer collects a split's examples before writing them in key order, and above
    `MAX_MEM_BUFFER_SIZE` (1 GB) it spills to temporary files through `tf.io.gfile`,
    which needs TensorFlow; t2i does not install it, so the spec-sized build (200k
    training scenes, about 3 GB of pixels) failed with "No module named 'tensorflow'".
    Raising the limit to the largest split's size (with room for the captions and
    the scene) keeps everything in memory instead.
    """
    from tensorflow_datasets.core import shuffle

    pixels = sum(r * r * 3 for r in config.resolutions)
    largest = max(config.split_sizes.values()) * (pixels + 1024)
    shuffle.MAX_MEM_BUFFER_SIZE = max(shuffle.MAX_MEM_BUFFER_SIZE, 2 * largest)
