"""Task registry: `config.task` names the family the trainer runs."""

from __future__ import annotations

import ml_collections

from t2i.errors import UsageError


def _registry():
    # Imported lazily so `t2i data ...` does not pay for model imports.
    from t2i.tasks.classifier import ShapesClassifierTask
    from t2i.tasks.imagen import ImagenTask
    from t2i.tasks.vqgan import VQGANTask

    return {"shapes_classifier": ShapesClassifierTask, "imagen": ImagenTask, "vit_vqgan": VQGANTask}


def get_task(config: ml_collections.ConfigDict):
    registry = _registry()
    if config.task not in registry:
        raise UsageError(f"unknown task '{config.task}' (known: {', '.join(sorted(registry))})")
    return registry[config.task](config)
