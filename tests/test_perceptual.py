"""The perceptual network (issue 4): torchvision-layout VGG16 and LPIPS weights convert
to the Flax layout with the same features (checked against convolutions run directly in
torch's NCHW/OIHW layout), LPIPS heads weigh the distance, and bad files fail clearly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2i.cli import main
from t2i.vqgan import perceptual
from t2i.vqgan.reconstruction import perceptual_distance

WIDTHS = (3, 4, 5, 6, 6)  # a VGG16 with VGG16's layers, narrower, so the fixture is tiny


def torch_layout_vgg(rng):
    """A random state dict in torchvision's names and layouts (OIHW kernels)."""
    state, in_channels, layer = {}, 3, 0
    for convs, width in zip(perceptual.VGG16_BLOCKS, WIDTHS):
        for _ in range(convs):
            index = perceptual.TORCH_CONV_INDICES[layer]
            state[f"features.{index}.weight"] = rng.normal(0, 0.3, (width, in_channels, 3, 3)).astype(np.float32)
            state[f"features.{index}.bias"] = rng.normal(0, 0.1, (width,)).astype(np.float32)
            in_channels, layer = width, layer + 1
    return state


def reference_features(state, images):
    """VGG16 features computed in torch's own layout (NCHW, OIHW), independently."""
    x = jnp.transpose((images - perceptual.LPIPS_SHIFT) / perceptual.LPIPS_SCALE, (0, 3, 1, 2))
    out, layer = [], 0
    for block, convs in enumerate(perceptual.VGG16_BLOCKS):
        if block:
            x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
        for _ in range(convs):
            index = perceptual.TORCH_CONV_INDICES[layer]
            w, b = state[f"features.{index}.weight"], state[f"features.{index}.bias"]
            x = jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW"))
            x = jax.nn.relu(x + b[None, :, None, None])
            layer += 1
        out.append(jnp.transpose(x, (0, 2, 3, 1)))
    return out


def test_converted_weights_give_torchs_features_and_lpips(tmp_path):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    state = torch_layout_vgg(rng)
    lin = {f"lin{k}.model.1.weight": rng.uniform(0, 1, (1, w, 1, 1)).astype(np.float32) for k, w in enumerate(WIDTHS)}
    save_file(state, str(tmp_path / "vgg.safetensors"))
    np.savez(tmp_path / "lpips.npz", **lin)
    out = str(tmp_path / "vgg_lpips.npz")
    assert (
        main(
            [
                "convert",
                "vgg16",
                "--weights",
                str(tmp_path / "vgg.safetensors"),
                "--lpips",
                str(tmp_path / "lpips.npz"),
                "--out",
                out,
            ]
        )
        == 0
    )

    features, heads = perceptual.load_perceptual(out)
    images = jnp.asarray(rng.uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)
    for got, want in zip(features(images), reference_features(state, images)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(heads[2], lin["lin2.model.1.weight"].reshape(-1))
    other = jnp.clip(images + 0.2, -1, 1)
    d = perceptual_distance(features, images, other, heads)
    unweighted = perceptual_distance(features, images, other)
    assert float(d) > 0 and not np.isclose(float(d), float(unweighted))
    assert float(perceptual_distance(features, images, images, heads)) == pytest.approx(0.0, abs=1e-6)


def test_bad_weight_files_fail_in_one_line(tmp_path, capsys):
    state = torch_layout_vgg(np.random.default_rng(1))
    del state["features.28.weight"]
    np.savez(tmp_path / "broken.npz", **state)
    code = main(["convert", "vgg16", "--weights", str(tmp_path / "broken.npz"), "--out", str(tmp_path / "o.npz")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "features.28.weight is missing" in err and "\n" not in err
    assert not (tmp_path / "o.npz").exists()
    code = main(["convert", "vgg16", "--weights", str(tmp_path / "vgg.pth"), "--out", str(tmp_path / "o.npz")])
    assert code == 2 and "not found" in capsys.readouterr().err


def test_the_tokenizer_trains_with_a_perceptual_network(tmp_path):
    import os

    from conftest import REPO

    from t2i.config import load_config
    from t2i.families import get_task
    from t2i.parallel.partitioning import strip_boxes

    np.savez(tmp_path / "vgg.npz", **torch_layout_vgg(np.random.default_rng(2)))
    converted = perceptual.convert_files(str(tmp_path / "vgg.npz"), str(tmp_path / "converted.npz"))
    config = os.path.join(REPO, "configs/vit_vqgan.py:tiny")
    task = get_task(load_config(config, ["loss.perceptual_weight=0.1", f"loss.perceptual_network={converted}"]))
    params = strip_boxes(task.init(jax.random.key(0)))
    batch = {"image_32": jnp.asarray(np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3)), jnp.uint8)}
    loss, metrics = task.loss(params, batch, jax.random.key(1), None, (False, False))
    assert float(metrics["perceptual"]) > 0
    without = get_task(load_config(config, []))
    base, _ = without.loss(params, batch, jax.random.key(1), None, (False, False))
    np.testing.assert_allclose(loss - base, 0.1 * metrics["perceptual"], rtol=1e-4)
    with pytest.raises(ValueError, match="perceptual_network"):
        get_task(load_config(config, ["loss.perceptual_weight=0.1"]))
