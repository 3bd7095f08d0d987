"""The Shapes classifier's targets, decoding and metrics (the metrics can fail)."""

import jax
import jax.numpy as jnp
import numpy as np

from t2i.classifier.model import decode, grid_targets
from t2i.data import pipeline
from t2i.families import get_task


def _batch(config, n=64):
    return {k: jnp.asarray(v) for k, v in next(pipeline.eval_batches(config.data, "test", n)).items() if k != "caption"}


def test_grid_targets_mark_each_centre_once(tiny_config):
    batch = _batch(tiny_config)
    valid = batch["color"] >= 0
    targets = grid_targets(batch["cx"], batch["cy"], valid, 8)
    np.testing.assert_array_equal(targets["centre"].sum((1, 2)), batch["num_objects"])
    owner = np.asarray(targets["owner"])
    for i in range(owner.shape[0]):  # every object owns its centre cell, and only objects that exist own cells
        for n in range(int(batch["num_objects"][i])):
            row, col = int(batch["cy"][i, n] * 8), int(batch["cx"][i, n] * 8)
            assert owner[i, row, col] == n
        assert owner[i].max() < int(batch["num_objects"][i])


def _oracle_outputs(batch, grid=8, color_shift=0):
    """Logits a perfect model would produce, from the ground truth."""
    valid = batch["color"] >= 0
    targets = grid_targets(batch["cx"], batch["cy"], valid, grid)
    owner = jnp.clip(targets["owner"], 0)
    take = lambda v: jnp.take_along_axis(v, owner.reshape(len(v), -1), 1).reshape(owner.shape)  # noqa: E731
    cells = jnp.arange(grid, dtype=jnp.float32)
    out = {
        "objectness": jnp.where(targets["centre"] > 0, 10.0, -10.0),
        "color": jax.nn.one_hot((take(batch["color"]) + color_shift) % 6, 6) * 10,
        "shape": jax.nn.one_hot(take(batch["shape"]), 3) * 10,
        "size": jax.nn.one_hot(take(batch["size"]), 2) * 10,
        "offset": jnp.stack(
            [take(batch["cx"]) * grid - cells[None, None, :], take(batch["cy"]) * grid - cells[None, :, None]], -1
        ),
    }
    return out


def test_metrics_are_one_for_a_perfect_model_and_catch_errors(tiny_config):
    task = get_task(tiny_config)
    batch = _batch(tiny_config)
    for shift, expected_color in ((0, 1.0), (1, 0.0)):
        task.predict = lambda params, images, s=shift: decode(_oracle_outputs(batch, color_shift=s))
        metrics = {k: float(n / d) for k, (n, d) in task.eval_step(None, batch).items()}
        assert metrics["color_accuracy"] == expected_color
        for name in ("shape_accuracy", "size_accuracy", "position_accuracy", "count_accuracy", "detected"):
            assert metrics[name] == 1.0, (name, metrics)


def test_untrained_model_scores_low(tiny_config):
    task = get_task(tiny_config)
    params = task.init(jax.random.key(0))
    metrics = {k: float(n / d) for k, (n, d) in jax.jit(task.eval_step)(params, _batch(tiny_config)).items()}
    assert metrics["count_accuracy"] < 0.5 and metrics["position_accuracy"] < 0.5


def test_recolor_rerenders_with_the_new_labels(tiny_config):
    from t2i.data import shapes

    tiny_config.model.recolor_probability = 1.0
    task = get_task(tiny_config)
    example = pipeline.to_arrays(pipeline.data_source(tiny_config.data, "train")[0])
    out = task.random_transform(example, np.random.default_rng(0))
    n = int(example["num_objects"])
    assert (out["color"][n:] == -1).all() and (out["shape"] == example["shape"]).all()
    objects = [
        shapes.ShapeObject(
            shapes.COLORS[out["color"][i]],
            shapes.SHAPES[out["shape"][i]],
            tuple(shapes.SIZES)[out["size"][i]],
            float(out["cx"][i]),
            float(out["cy"][i]),
            float(out["r"][i]),
        )
        for i in range(n)
    ]
    np.testing.assert_array_equal(out["image_32"], shapes.render(objects, 32))
    recolored = [task.random_transform(example, np.random.default_rng(s))["color"][0] for s in range(30)]
    assert len(set(recolored)) > 3  # colours really vary
