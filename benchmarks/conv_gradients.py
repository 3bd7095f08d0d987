"""Where a U-Net training step's time goes on XLA:CPU: 3x3 convolutions' forward pass
and gradients, XLA's and t2i's, against PyTorch's on the same shapes.

  python benchmarks/conv_gradients.py [--torch_python .venv-ref/bin/python]
      [--shapes 16x32x64x64,16x16x128x128,...]

Shapes are batch x side x in x out channels, fp32, "SAME" padding, stride 1; the
default is the 3x3 layers of the throughput benchmark's U-Net (32x32 to 8x8, 64 to 512
channels). Per shape, the JAX rows are XLA's own convolution and t2i's
`conv_general_dilated` (t2i/nn/conv.py) in its two CPU modes: "banded" (XLA's
forward and input gradient, the kernel gradient as a banded patches^T @ dy product)
and "auto", what t2i trains with (Winograd F(4x4, 3x3), t2i/nn/winograd.py). The
JAX functions' calls are interleaved round by round, so a noisy machine slows them
alike; medians of 10 timed rounds after 3 warm-up rounds. The torch side (2 threads,
`torch.nn.Conv2d` without bias) runs in a subprocess afterwards. Results go in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

UNET_SHAPES = "16x32x64x64,16x32x128x64,16x16x128x128,16x16x256x128,16x8x256x256,16x8x512x256"
ROUNDS, WARM = 10, 3

TORCH_SIDE = r"""
import json, statistics, sys, time, torch
torch.set_num_threads(2)
results = {}
for shape in sys.argv[1].split(","):
    batch, side, cin, cout = map(int, shape.split("x"))
    x = torch.randn(batch, cin, side, side, requires_grad=True)
    conv = torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    dy = torch.randn(batch, cout, side, side)
    def forward():
        with torch.no_grad(): conv(x)
    def kernel_grad():
        torch.autograd.grad(conv(x), conv.weight, dy)
    def both():
        torch.autograd.grad(conv(x), (x, conv.weight), dy)
    row = {}
    for name, fn in (("forward", forward), ("forward + kernel grad", kernel_grad), ("forward + both grads", both)):
        for _ in range(3): fn()
        times = []
        for _ in range(10):
            start = time.perf_counter(); fn(); times.append(time.perf_counter() - start)
        row[name] = 1e3 * statistics.median(times)
    results[shape] = row
print(json.dumps(results))
"""


def jax_side(shape: str) -> dict:
    import jax
    import numpy as np

    from t2i.nn import conv as t2i_conv

    batch, side, cin, cout = map(int, shape.split("x"))
    rng = np.random.RandomState(0)
    x = jax.numpy.asarray(rng.randn(batch, side, side, cin), jax.numpy.float32)
    w = jax.numpy.asarray(rng.randn(3, 3, cin, cout) / np.sqrt(9 * cin), jax.numpy.float32)
    dy = jax.numpy.asarray(rng.randn(batch, side, side, cout), jax.numpy.float32)
    nhwc = ("NHWC", "HWIO", "NHWC")

    def xla(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=nhwc)

    def t2i(x, w):
        return t2i_conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=nhwc)

    def compiled(mode, fn, select=None):
        # t2i's mode is read when the function is traced, so lower under it.
        os.environ["T2I_CONV"] = mode
        try:
            if select is None:
                return jax.jit(lambda x, w, dy: fn(x, w)).lower(x, w, dy).compile()
            return jax.jit(lambda x, w, dy: select(jax.vjp(fn, x, w)[1](dy))).lower(x, w, dy).compile()
        finally:
            os.environ.pop("T2I_CONV")

    functions = {
        "XLA forward": compiled("xla", xla),
        "XLA forward + kernel grad": compiled("xla", xla, lambda g: g[1]),
        "XLA forward + both grads": compiled("xla", xla, lambda g: g),
        "t2i banded: forward + both grads": compiled("banded", t2i, lambda g: g),
        "t2i auto: forward": compiled("auto", t2i),
        "t2i auto: forward + both grads": compiled("auto", t2i, lambda g: g),
    }
    times = {name: [] for name in functions}
    for round_index in range(WARM + ROUNDS):
        for name, fn in functions.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(x, w, dy))
            if round_index >= WARM:
                times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch_python", default=".venv-ref/bin/python")
    parser.add_argument("--shapes", default=UNET_SHAPES, help="batch x side x in x out, comma-separated")
    args = parser.parse_args()
    ours = {shape: jax_side(shape) for shape in args.shapes.split(",")}
    try:
        out = subprocess.run(
            [args.torch_python, "-c", TORCH_SIDE, args.shapes], capture_output=True, text=True, check=True
        )
        theirs = json.loads(out.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.CalledProcessError) as error:
        print(f"torch side unavailable ({error}); JAX only", file=sys.stderr)
        theirs = {}
    for shape, rows in ours.items():
        print(f"\n{shape} (batch x side x in x out)")
        print(f"{'ms':<36}{'JAX':>9}{'torch':>9}{'ratio':>8}")
        for name, ms in rows.items():
            ref = theirs.get(shape, {}).get(name.split(": ")[-1].replace("XLA ", ""))
            ratio = f"{ms / ref:.2f}x" if ref else "-"
            print(f"{name:<36}{ms:>9.2f}{(ref or float('nan')):>9.2f}{ratio:>8}")
        banded, auto = rows["t2i banded: forward + both grads"], rows["t2i auto: forward + both grads"]
        print(f"{'auto against banded (fwd + both)':<36}{banded / auto:>9.2f}x")
    print(json.dumps({"jax_ms": ours, "torch_ms": theirs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
