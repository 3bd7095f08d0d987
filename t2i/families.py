"""The family registry: one entry per model family, and the only place that names them.

A family is a package above the shared parts (`t2i/imagen/`, `t2i/vqgan/`,
`t2i/parti/`, `t2i/clip/`, `t2i/classifier/`). Its entry says, by module path (imported
only when used, so `t2i data ...` never pays for model imports):

- `task`: its training `Task` (`config.task` names the family; `t2i train` and
  every model-file loader build the task through `get_task`);
- `pipeline`: its `t2i sample --pipeline NAME` function, `(prompts, seed, options) ->
  (uint8 images, settings for the manifest)`, if it draws images;
- `options`: the module attribute holding the extra `t2i sample` flags that its
  pipeline reads (`{flag: (type, help)}`), in a module without heavy imports; the CLI
  adds them to its parser, and refuses a flag that the chosen pipeline does not read;
- `sampling`: the module attribute listing the fields of its `config.sampling` block
  (the trained model's own sampling defaults) with a parser for each, which `t2i
  export --sampling KEY=VALUE` may set.

Data is chosen by each config (`data.builder_config`, `data.tokenizer`,
`data.text_embeddings`, `data.image_tokens`), so a family needs no code in the input
pipeline. A new family adds its package and one line here; nothing shared imports a
family (docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
import importlib

import ml_collections

from t2i.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Family:
    task: str  # "module:attribute"
    pipeline: str | None = None
    options: str | None = None
    sampling: str | None = None


FAMILIES: dict[str, Family] = {
    "shapes_classifier": Family(task="t2i.classifier.task:ShapesClassifierTask"),
    "imagen": Family(
        task="t2i.imagen.task:ImagenTask",
        pipeline="t2i.imagen.cascade:imagen_pipeline",
        options="t2i.imagen.options:OPTIONS",
        sampling="t2i.imagen.options:SAMPLING",
    ),
    "vit_vqgan": Family(task="t2i.vqgan.task:VQGANTask"),
    "parti": Family(
        task="t2i.parti.task:PartiTask",
        pipeline="t2i.parti.pipeline:parti_pipeline",
        options="t2i.parti.options:OPTIONS",
        sampling="t2i.parti.options:SAMPLING",
    ),
    "clip": Family(task="t2i.clip.task:CLIPTask"),
}


def resolve(path: str):
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def get_task(config: ml_collections.ConfigDict):
    """The family's Task for a config (`config.task` names the family)."""
    if config.task not in FAMILIES:
        raise UsageError(f"unknown task '{config.task}' (known: {', '.join(sorted(FAMILIES))})")
    return resolve(FAMILIES[config.task].task)(config)


def pipelines() -> dict[str, str]:
    """`t2i sample --pipeline` names -> pipeline function paths (families that draw)."""
    return {name: family.pipeline for name, family in FAMILIES.items() if family.pipeline}


def sample_options() -> dict[str, tuple[type, str, list[str]]]:
    """Every family's extra `t2i sample` flags: name -> (type, help, families reading it)."""
    readers: dict[str, list[tuple[str, type, str]]] = {}
    for name, family in FAMILIES.items():
        if family.options:
            for flag, (kind, help_text) in resolve(family.options).items():
                readers.setdefault(flag, []).append((name, kind, help_text))
    merged = {}
    for flag, entries in readers.items():
        names = [name for name, _, _ in entries]
        helps = {help_text for _, _, help_text in entries}
        help_text = entries[0][2] if len(helps) == 1 else "; ".join(f"{name}: {text}" for name, _, text in entries)
        merged[flag] = (entries[0][1], help_text, names)
    return merged


def parse_sampling(family: str, assignments: list[str]) -> dict:
    """["guidance_weight=3", "num_candidates=8"] -> {field: parsed value}, the fields a
    family's `config.sampling` block holds; a one-line error for anything else."""
    if family not in FAMILIES:
        raise UsageError(f"unknown task '{family}' (known: {', '.join(sorted(FAMILIES))})")
    if not FAMILIES[family].sampling:
        raise UsageError(f"a {family} model has no sampling settings (--sampling is for {', '.join(pipelines())})")
    fields = resolve(FAMILIES[family].sampling)
    parsed = {}
    for assignment in assignments:
        key, equals, text = assignment.partition("=")
        key = key.strip()
        if not equals or key not in fields:
            raise UsageError(
                f"--sampling takes KEY=VALUE with KEY one of {', '.join(fields)} for {family}, got {assignment!r}"
            )
        try:
            parsed[key] = fields[key](text.strip())
        except ValueError as error:
            raise UsageError(f"bad value for --sampling {key}: {str(error).splitlines()[0]}") from None
    return parsed
