"""The perceptual loss's feature network: VGG16 with LPIPS's linear heads (Zhang et al.
2018), loaded from weights a user supplies (none ship with t2i; Shapes trains without).

Weights come in torchvision's layout, from a safetensors or .npz file of the
`vgg16().state_dict()` (`features.<i>.weight` [out, in, 3, 3], `features.<i>.bias`),
optionally with LPIPS's heads (`lin<k>.model.1.weight` [1, C, 1, 1], k = 0..4, from the
`lpips` package's `vgg.pth`) in the same or a second file. `convert_vgg16` turns them
into one .npz in this module's layout (HWIO kernels, `lin_<k>` channel weights); the
ViT-VQGAN config names that file as `loss.perceptual_network`. A `.pth` is a pickle:
save it as safetensors first (`safetensors.torch.save_file(torch.load(...), ...)`), so
t2i never unpickles a downloaded file.

Input images are in [-1, 1]; LPIPS's scaling layer (a fixed per-channel shift and
scale) maps them to what the ImageNet-trained VGG expects. Features are taken after the
last ReLU of each of the five blocks (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t2i.errors import UsageError
from t2i.io import atomic_file

# Convolutions per block of VGG16, and their indices in torchvision's `features`.
VGG16_BLOCKS = (2, 2, 3, 3, 3)
VGG16_WIDTHS = (64, 128, 256, 512, 512)
TORCH_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
# LPIPS's ScalingLayer, for inputs in [-1, 1].
LPIPS_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
LPIPS_SCALE = np.array([0.458, 0.448, 0.450], np.float32)


class VGG16Features(nn.Module):
    """images [B, H, W, 3] in [-1, 1] -> five feature maps (one per block)."""

    widths: Sequence[int] = VGG16_WIDTHS

    @nn.compact
    def __call__(self, images):
        x = (images.astype(jnp.float32) - LPIPS_SHIFT) / LPIPS_SCALE
        features = []
        layer = 0
        for block, (convs, width) in enumerate(zip(VGG16_BLOCKS, self.widths)):
            if block:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            for _ in range(convs):
                x = nn.relu(nn.Conv(width, (3, 3), padding=1, name=f"conv_{layer}")(x))
                layer += 1
            features.append(x)
        return features


def _read(path: str) -> dict[str, np.ndarray]:
    if not os.path.isfile(path):
        raise UsageError(f"weights file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return dict(load_file(path))
    if path.endswith(".npz"):
        with np.load(path) as data:
            return {key: data[key] for key in data.files}
    raise UsageError(f"{path}: weights must be .safetensors or .npz (save a .pth as safetensors first)")


def convert_vgg16(vgg: dict[str, np.ndarray], lpips: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """torchvision-layout VGG16 (and LPIPS heads) -> this module's flat arrays."""
    out = {}
    for layer, index in enumerate(TORCH_CONV_INDICES):
        for name in ("weight", "bias"):
            key = f"features.{index}.{name}"
            if key not in vgg:
                raise UsageError(f"not a torchvision VGG16 state dict: {key} is missing")
        out[f"conv_{layer}/kernel"] = np.transpose(
            np.asarray(vgg[f"features.{index}.weight"], np.float32), (2, 3, 1, 0)
        )
        out[f"conv_{layer}/bias"] = np.asarray(vgg[f"features.{index}.bias"], np.float32)
    heads = {**vgg, **(lpips or {})}
    for k in range(len(VGG16_BLOCKS)):
        key = f"lin{k}.model.1.weight"
        if key in heads:
            out[f"lin_{k}"] = np.asarray(heads[key], np.float32).reshape(-1)
    found = sum(f"lin_{k}" in out for k in range(len(VGG16_BLOCKS)))
    if found not in (0, len(VGG16_BLOCKS)):
        raise UsageError(f"LPIPS heads incomplete: {found} of {len(VGG16_BLOCKS)} lin<k>.model.1.weight found")
    return out


def convert_files(vgg_path: str, out_path: str, lpips_path: str | None = None) -> str:
    """Reads the user's files, converts, writes one .npz (atomically)."""
    if not out_path.endswith(".npz"):
        raise UsageError(f"the converted file must end in .npz, got {out_path}")
    arrays = convert_vgg16(_read(vgg_path), _read(lpips_path) if lpips_path else None)
    with atomic_file(out_path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return out_path


def load_perceptual(path: str) -> tuple[Callable, list[jax.Array] | None]:
    """(features(images) -> feature maps, LPIPS channel weights or None) from a
    converted .npz; the weights are constants of the loss, never trained."""
    arrays = _read(path)
    layers = len(TORCH_CONV_INDICES)
    if f"conv_{layers - 1}/kernel" not in arrays:
        raise UsageError(f"{path} is not a converted VGG16 (run t2i.vqgan.perceptual.convert_files)")
    params = {
        f"conv_{i}": {"kernel": arrays[f"conv_{i}/kernel"], "bias": arrays[f"conv_{i}/bias"]} for i in range(layers)
    }
    firsts = [sum(VGG16_BLOCKS[:b]) for b in range(len(VGG16_BLOCKS))]
    widths = tuple(int(arrays[f"conv_{i}/kernel"].shape[-1]) for i in firsts)
    model = VGG16Features(widths=widths)
    params = jax.tree.map(jnp.asarray, {"params": params})

    def features(images):
        return model.apply(params, images)

    heads = None
    if "lin_0" in arrays:
        heads = [jnp.asarray(arrays[f"lin_{k}"]) for k in range(len(VGG16_BLOCKS))]
    return features, heads
