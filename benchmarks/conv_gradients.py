"""Where a U-Net training step's time goes on XLA:CPU: one 3x3 convolution's forward,
input gradient and kernel gradient, against PyTorch's on the same shapes.

  python benchmarks/conv_gradients.py [--torch_python .venv-ref/bin/python]

Shape: batch 16, 32x32, 64 -> 64 channels, fp32 (the first level of the throughput
benchmark's U-Net). The "t2i:" rows are t2i/models/conv.py (XLA's forward and input
gradient, the kernel gradient as a banded patches^T @ dy product), against torch's
"forward + kernel grad" and "forward + both grads". Medians of 10 timed calls after warm-up; the torch side runs in a
subprocess with 2 threads. Results go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

BATCH, SIDE, IN, OUT = 16, 32, 64, 64

TORCH_SIDE = r"""
import json, statistics, time, torch
torch.set_num_threads(2)
x = torch.randn(16, 64, 32, 32, requires_grad=True)
conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False)
dy = torch.randn(16, 64, 32, 32)
def timed(fn):
    for _ in range(3): fn()
    times = []
    for _ in range(10):
        start = time.perf_counter(); fn(); times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)
def forward():
    with torch.no_grad(): conv(x)
def input_grad():
    torch.autograd.grad(conv(x), x, dy)
def kernel_grad():
    torch.autograd.grad(conv(x), conv.weight, dy)
def both():
    torch.autograd.grad(conv(x), (x, conv.weight), dy)
print(json.dumps({"forward": timed(forward), "forward + input grad": timed(input_grad),
                  "forward + kernel grad": timed(kernel_grad), "forward + both grads": timed(both)}))
"""


def jax_side() -> dict:
    import jax
    import numpy as np

    x = jax.numpy.asarray(np.random.randn(BATCH, SIDE, SIDE, IN), jax.numpy.float32)
    w = jax.numpy.asarray(np.random.randn(3, 3, IN, OUT) * 0.05, jax.numpy.float32)
    dy = jax.numpy.asarray(np.random.randn(BATCH, SIDE, SIDE, OUT), jax.numpy.float32)

    from t2i.models import conv as t2i_conv

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def banded(x, w):  # what t2i's layers train with: XLA's forward, banded kernel gradient
        return t2i_conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def vjp(select, fn=conv):
        return jax.jit(lambda x, w, dy: select(jax.vjp(fn, x, w)[1](dy)))

    functions = {
        "forward": (jax.jit(conv), (x, w)),
        "forward + input grad": (vjp(lambda g: g[0]), (x, w, dy)),
        "forward + kernel grad": (vjp(lambda g: g[1]), (x, w, dy)),
        "forward + both grads": (vjp(lambda g: g), (x, w, dy)),
        "t2i: fwd + kernel grad": (vjp(lambda g: g[1], banded), (x, w, dy)),
        "t2i: fwd + both grads": (vjp(lambda g: g, banded), (x, w, dy)),
    }
    results = {}
    for name, (fn, args) in functions.items():
        for _ in range(3):
            jax.block_until_ready(fn(*args))
        times = []
        for _ in range(10):
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times.append(time.perf_counter() - start)
        results[name] = 1e3 * statistics.median(times)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch_python", default=".venv-ref/bin/python")
    args = parser.parse_args()
    ours = jax_side()
    try:
        out = subprocess.run([args.torch_python, "-c", TORCH_SIDE], capture_output=True, text=True, check=True)
        theirs = json.loads(out.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.CalledProcessError) as error:
        print(f"torch side unavailable ({error}); XLA only", file=sys.stderr)
        theirs = {}
    print(f"{'op (ms)':<24}{'XLA:CPU':>10}{'torch':>10}{'ratio':>8}")
    for name, ms in ours.items():
        ref = theirs.get(name.replace("t2i: fwd", "forward"))
        ratio = f"{ms / ref:.2f}x" if ref else "-"
        print(f"{name:<24}{ms:>10.2f}{(ref or float('nan')):>10.2f}{ratio:>8}")
    print(json.dumps({"xla_cpu_ms": ours, "torch_ms": theirs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
