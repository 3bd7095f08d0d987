"""U-Net training throughput: t2i's Efficient U-Net against imagen-pytorch, same run.

  python benchmarks/unet_throughput.py [--torch_python .venv-ref/bin/python] [--steps 20]

The configuration is imagen-pytorch's `Unet(dim=64, dim_mults=(1, 2, 4),
num_resnet_blocks=2, layer_attns=(False, False, True), layer_cross_attns=(False, True,
True), attn_heads=4, attn_dim_head=32)`, 32x32 images, batch 16, 16 text tokens of
width 384, fp32, Adam, one denoising loss step. Both sides time the same number of
steps after warm-up and report the median images per second. The two sides take turns
in blocks of `--block` steps, never overlapping: the shared machine's speed drifts by
20% within minutes, and taking turns puts both sides under the same drift, so their
ratio is steadier than either number. imagen-pytorch runs in a subprocess of
`--torch_python` (a venv with torch and imagen-pytorch; it needs no weights: its T5
look-up is answered offline by passing text embeddings directly).
Results go in docs/benchmarks.md.

On a machine with a GPU both sides run on it (JAX's default backend; torch's "cuda"):
`--batch` and `--dtype bfloat16` (t2i: bf16 compute with fp32 params; torch: autocast
to bf16) give the accelerator rows. t2i's achieved TFLOP/s (XLA's FLOP count over the
median step time) is printed where XLA gives a count: on CPU; XLA:GPU gives none, so
an MFU estimate there takes the CPU run's count (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

SIZE, TOKENS, WIDTH = 32, 16, 384

TORCH_SIDE = r"""
import json, sys, time, types
import torch
torch.set_num_threads(int(sys.argv[1]))
BATCH, BF16 = int(sys.argv[2]), sys.argv[3] == "bfloat16"
device = "cuda" if torch.cuda.is_available() else "cpu"
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
# imagen-pytorch imports torchvision.transforms for its data augmentation only; PyPI's
# torchvision does not load beside the CPU torch build here, and the U-Net never uses it.
try:
    import torchvision.transforms  # noqa: F401
except Exception:
    import importlib.machinery
    # transformers must settle "no torchvision" before the stub appears.
    from transformers import T5Config, T5EncoderModel, T5Tokenizer  # noqa: F401
    from transformers.utils import import_utils
    import_utils.is_torchvision_available()
    stub = types.ModuleType("torchvision"); stub.transforms = types.ModuleType("torchvision.transforms")
    stub.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)
    stub.transforms.__spec__ = importlib.machinery.ModuleSpec("torchvision.transforms", None)
    sys.modules["torchvision"] = stub; sys.modules["torchvision.transforms"] = stub.transforms
# Unet's default text width is looked up from the hub's T5 config at import time; answer
# offline (the benchmark passes its own 384-wide embeddings anyway).
import transformers
transformers.T5Config.from_pretrained = classmethod(lambda cls, *a, **k: cls(d_model=1024))
from imagen_pytorch import Unet
unet = Unet(dim=64, dim_mults=(1, 2, 4), num_resnet_blocks=2, layer_attns=(False, False, True),
            layer_cross_attns=(False, True, True), attn_heads=4, attn_dim_head=32, text_embed_dim=384, cond_dim=None,
            channels=3).to(device)
opt = torch.optim.Adam(unet.parameters(), lr=1e-4)
x = torch.randn(BATCH, 3, 32, 32, device=device); t = torch.rand(BATCH, device=device)
text = torch.randn(BATCH, 16, 384, device=device); mask = torch.ones(BATCH, 16, dtype=torch.bool, device=device)
def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=BF16):
        out = unet(x, t, text_embeds=text, text_mask=mask)
        loss = torch.nn.functional.mse_loss(out.float(), x)
    loss.backward(); opt.step(); sync()
# Driven by the parent one step per line in, one line out, so that its blocks of steps
# take turns with t2i's and a machine whose speed drifts slows both sides alike.
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() != "step":
        break
    start = time.perf_counter(); step()
    print("step_seconds", time.perf_counter() - start, flush=True)
params = sum(p.numel() for p in unet.parameters())
from torch.utils.flop_counter import FlopCounterMode
with FlopCounterMode(display=False) as counter:  # one more step, counted, not timed
    step()
print(json.dumps({"parameters": params, "device": device, "gflop_per_step": counter.get_total_flops() / 1e9}))
"""


def t2i_side(
    steps: int, batch: int, dtype: str, modes: list[str], profile_dir: str = "", block: int = 5, other_block=None
) -> dict:
    """Times the training step per convolution mode (t2i/nn/conv.py: "auto" is
    what t2i trains with, "banded" leaves out Winograd's 3x3 convolutions, "xla" is
    XLA's own convolution and gradients) in alternating blocks of `block` steps, so
    that a noisy machine slows every mode alike;
    `other_block(warm, block)`, if given, runs after each round (imagen-pytorch's
    steps, so they alternate too). Returns {mode: result}."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from t2i.diffusion import gaussian, schedules
    from t2i.imagen.unet import EfficientUNet

    unet = EfficientUNet(
        base_channels=64,
        channel_mults=(1, 2, 4),
        num_res_blocks=(2, 2, 2),
        self_attention_levels=(False, False, True),
        cross_attention_levels=(False, True, True),
        heads=4,
        head_dim=32,
        embed_dim=256,
        dtype=jnp.dtype(dtype),
    )
    rng = jax.random.key(0)
    x0 = jax.random.normal(rng, (batch, SIZE, SIZE, 3))
    text = jax.random.normal(rng, (batch, TOKENS, WIDTH))
    mask = jnp.ones((batch, TOKENS), bool)
    tx = optax.adam(1e-4)
    schedule = schedules.cosine()

    def make_step():  # a fresh function per mode: JAX caches traces by function
        def step(params, opt_state, rng):
            def loss_fn(p):
                noise_rng, time_rng = jax.random.split(rng)
                logsnr = gaussian.sample_training_logsnr(time_rng, batch, schedule)
                eps = jax.random.normal(noise_rng, x0.shape)
                out = unet.apply(p, gaussian.diffuse(x0, eps, logsnr), logsnr, text, mask)
                return gaussian.diffusion_loss(out, x0, eps, logsnr, "v")

            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        return step

    def lower(mode):
        # The mode is read when the step is traced (t2i/nn/conv.py).
        os.environ["T2I_CONV"] = mode
        try:
            params = unet.init(rng, x0, jnp.zeros(batch), text, mask)
            opt_state = tx.init(params)
            return jax.jit(make_step(), donate_argnums=(0, 1)).lower(params, opt_state, rng), (params, opt_state)
        finally:
            os.environ.pop("T2I_CONV")

    # The model's FLOPs: XLA's count of the lowered program in "xla" mode (on XLA:CPU it
    # equals the compiled count; the banded gradient's scan body would be counted once).
    # XLA:GPU gives none here, and its compiled count leaves out the convolutions it
    # hands to cuDNN, so GPU rows take their FLOPs from a CPU run.
    cost = lower("xla")[0].cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    gflop = float(cost.get("flops", 0.0)) / 1e9 if cost else None
    runs = {}
    for mode in modes:
        lowered, state = lower(mode)
        runs[mode] = {"fn": lowered.compile(), "state": state, "times": []}
    # Rounds of `block` timed steps per mode, then the other side's block: each block
    # starts with untimed steps (3 in the first round, compilation's warm-up; 1 after,
    # the cost of switching back from the other side).
    count = 0
    for round_index, start_step in enumerate(range(0, steps, block)):
        warm = 3 if round_index == 0 else 1
        timed = min(block, steps - start_step)
        for run in runs.values():
            for i in range(warm + timed):
                start = time.perf_counter()
                params, opt_state, loss = run["fn"](*run["state"], jax.random.fold_in(rng, count))
                jax.block_until_ready(loss)
                count += 1
                run["state"] = (params, opt_state)
                if i >= warm:
                    run["times"].append(time.perf_counter() - start)
        if other_block is not None:
            other_block(warm, timed)
    if profile_dir:
        first = runs[modes[0]]

        def run_first(i):
            params, opt_state, loss = first["fn"](*first["state"], jax.random.fold_in(rng, i))
            first["state"] = (params, opt_state)
            return loss

        profile_by_op_kind(first["fn"], run_first, profile_dir)
    device = jax.devices()[0].device_kind
    results = {}
    for mode, run in runs.items():
        params = run["state"][0]
        results[mode] = {
            "device": device,
            "median_step_seconds": statistics.median(run["times"]),
            "step_seconds": run["times"],
            "images_per_second": batch / statistics.median(run["times"]),
            "parameters": int(sum(np.prod(x.shape) for x in jax.tree.leaves(params))),
            "gflop_per_step": gflop,
        }
    return results


def profile_by_op_kind(compiled, run_step, out_dir: str, steps: int = 3) -> None:
    """Traces `steps` calls of `run_step(i)` (a training step that keeps its own state)
    with jax.profiler and prints the time per step by XLA op kind: each
    traced HLO instruction is classed by the main op of its fused computation
    (convolution, dot, reduce, concatenate, or elementwise). A while loop's own event
    is skipped: the instructions of its body are traced, and classed, one by one."""
    import collections
    import glob
    import gzip
    import re

    import jax

    shutil.rmtree(out_dir, ignore_errors=True)
    with jax.profiler.trace(out_dir, create_perfetto_trace=True):
        for i in range(steps):
            outputs = run_step(1000 + i)
        jax.block_until_ready(outputs)
    trace = glob.glob(os.path.join(out_dir, "**", "*.trace.json.gz"), recursive=True)[0]
    with gzip.open(trace) as f:
        events = json.load(f)["traceEvents"]
    hlo = compiled.as_text()
    calls, bodies, current = {}, collections.defaultdict(set), None
    for line in hlo.splitlines():
        header = re.match(r"(?:ENTRY )?%?([\w.\-]+) \(.*\) -> .* \{", line)
        if header:
            current = header.group(1)
            continue
        op = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = \S+ ([\w\-]+)\(", line)
        if op:
            bodies[current].add(op.group(2))
            called = re.search(r"calls=%?([\w.\-]+)", line)
            calls[op.group(1)] = (op.group(2), called.group(1) if called else None)
    kinds = ("convolution", "dot", "reduce", "concatenate")
    seconds = collections.Counter()
    for event in events:
        if event.get("ph") != "X" or event["name"] not in calls:
            continue
        op, called = calls[event["name"]]
        if op == "while":
            continue
        ops = bodies.get(called, set()) | {op}
        kind = next((k for k in kinds if k in ops), "elementwise/other")
        seconds[kind] += event.get("dur", 0) / 1e6 / steps
    print(f"profile ({out_dir}), seconds per step by op kind, {sum(seconds.values()):.3f} in all:")
    for kind, value in seconds.most_common():
        print(f"  {kind:<32}{value:8.3f}")


class TorchSide:
    """imagen-pytorch's step in a subprocess of `torch_python`, run in blocks of steps."""

    def __init__(self, torch_python: str, threads: int, batch: int, dtype: str):
        self.batch = batch
        self.times: list[float] = []
        self.stderr = tempfile.TemporaryFile("w+")  # a file, not a pipe: a full pipe would block it
        self.process = subprocess.Popen(
            [torch_python, "-c", TORCH_SIDE, str(threads), str(batch), dtype],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )
        # A frozen child outlives its parent: make sure an error on t2i's side ends it.
        atexit.register(self.process.kill)
        self._read_line("ready")
        os.kill(self.process.pid, signal.SIGSTOP)  # until its first block

    def _read_line(self, prefix: str) -> str:
        line = self.process.stdout.readline()
        while line and not line.startswith(prefix):  # imagen-pytorch prints advice too
            line = self.process.stdout.readline()
        if not line:
            self._fail()
        return line

    def _fail(self) -> None:
        self.process.wait()
        self.stderr.seek(0)
        print("imagen-pytorch failed:\n" + self.stderr.read()[-2000:], file=sys.stderr)
        sys.exit(1)

    def run_block(self, warm: int, block: int) -> None:
        """`warm` untimed steps, then `block` timed ones."""
        os.kill(self.process.pid, signal.SIGCONT)
        for i in range(warm + block):
            self.process.stdin.write("step\n")
            self.process.stdin.flush()
            line = self._read_line("step_seconds ")
            if i >= warm:
                self.times.append(float(line.split()[1]))
        # Frozen between its blocks: torch's idle worker threads spin on both cores
        # (measured: 2 CPU-seconds per idle second), which would slow t2i's steps.
        os.kill(self.process.pid, signal.SIGSTOP)

    def finish(self) -> dict:
        os.kill(self.process.pid, signal.SIGCONT)
        out, _ = self.process.communicate("done\n")
        if self.process.returncode != 0:
            self._fail()
        result = json.loads(out.strip().splitlines()[-1])
        result["images_per_second"] = self.batch / statistics.median(self.times)
        return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--torch_python", default=os.path.join(".venv-ref", "bin", "python"))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument(
        "--conv",
        default="auto,xla",
        help="t2i convolution modes to time, comma-separated (auto, banded, xla: t2i/nn/conv.py); "
        "the first is t2i's row",
    )
    parser.add_argument("--block", type=int, default=5, help="steps per side before switching to the other")
    parser.add_argument("--profile", default="", help="a directory: also profile t2i's first mode there")
    args = parser.parse_args()
    modes = args.conv.split(",")
    torch_python = shutil.which(args.torch_python)  # a path, or a name on PATH ("python3")
    torch_side = None
    if torch_python is None:
        print(f"imagen-pytorch: skipped ({args.torch_python} not found)")
    else:
        torch_side = TorchSide(torch_python, args.threads, args.batch, args.dtype)
    other_block = torch_side.run_block if torch_side else None
    results = t2i_side(args.steps, args.batch, args.dtype, modes, args.profile, args.block, other_block)
    for mode, ours in results.items():
        tflops = ours["gflop_per_step"] / ours["median_step_seconds"] / 1e3 if ours["gflop_per_step"] else float("nan")
        print(
            f"[{ours['device']}, batch {args.batch}, {args.dtype}] t2i EfficientUNet (conv: {mode}): "
            f"{ours['images_per_second']:.2f} images/s, {ours['parameters'] / 1e6:.2f}M params, "
            f"{ours['gflop_per_step'] or float('nan'):.1f} GFLOP/step, {tflops:.2f} TFLOP/s achieved "
            "(FLOPs of direct convolutions; Winograd's do fewer)"
        )
    ours = results[modes[0]]
    if len(modes) > 1:
        base = results[modes[1]]
        print(f"t2i {modes[0]} / {modes[1]}: {ours['images_per_second'] / base['images_per_second']:.2f}x")
    if torch_side is None:
        return
    theirs = torch_side.finish()
    print(
        f"[{theirs['device']}] imagen-pytorch Unet: {theirs['images_per_second']:.2f} images/s, "
        f"{theirs['parameters'] / 1e6:.2f}M params, {theirs['gflop_per_step']:.1f} GFLOP/step (torch's count)"
    )
    print(f"ratio (t2i / imagen-pytorch): {ours['images_per_second'] / theirs['images_per_second']:.2f}x")


if __name__ == "__main__":
    main()
