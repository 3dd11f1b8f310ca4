"""Does a GPU pay off, and where? Server aggregation, central evaluation, client training: CPU vs CUDA.

    python bench/gpu.py [--updates 100] [--params 10000000] [--device cuda:0]

1. Aggregation: ``--updates`` float32 updates of ``--params`` parameters folded into one weighted
   sum, as fedge's streaming fold does (``acc.add_(update, alpha=w)``). On the CPU the updates are
   folded where they arrive (host memory); on the GPU each is first copied there (``.to(device)``
   of pageable host memory, as a decoded reply is), then folded. GB/s = update bytes / seconds.
   Then the per-update fold, device/CPU time ratio, at 1e4..1e7 parameters.
2. Central evaluation: samples/s of fedge's evaluation loop (``fedge.tasks.training.evaluate``)
   on the ``mnist5k`` CNN and a 4M-parameter MLP, CPU vs GPU.
3. Client training: samples/s of fedge's training loop at batch 32 and 256, same models.

Everything is measured in one run, CPU and GPU alike (ratios against the CPU of the same machine).
Without a CUDA device it prints "no CUDA device: skipped" and exits 0. Measured on an H200
(16 host cores) on 2026-12-04, see the README ("Accelerators"): aggregation stays on the CPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from bench._timing import median_seconds  # noqa: E402
from fedge.tasks import mnist5k  # noqa: E402
from fedge.tasks.training import evaluate, train  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fold_seconds(updates: list[np.ndarray], device: torch.device) -> float:
    """Seconds to fold ``updates`` (host arrays) into one weighted sum on ``device``."""
    acc = torch.zeros(updates[0].shape, dtype=torch.float32, device=device)
    weight = 1.0 / len(updates)
    _sync(device)
    start = time.perf_counter()
    for update in updates:
        acc.add_(torch.from_numpy(update).to(device), alpha=weight)
    _sync(device)
    return time.perf_counter() - start


def mlp_4m() -> nn.Module:
    """~4.2M parameters: 784 → 2048 → 1280 → 10."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 2048), nn.ReLU(), nn.Linear(2048, 1280), nn.ReLU(), nn.Linear(1280, 10)
    )


def throughput(run: Callable[[], object], samples: int, device: torch.device, reps: int = 3) -> float:
    """Samples per second of ``run`` (median of ``reps`` after a warm-up)."""

    def timed() -> None:
        run()
        _sync(device)

    return samples / median_seconds(timed, reps)


def fold_ratio(size: int, rng: np.random.Generator, gpu: torch.device) -> float:
    """Per-update fold time on ``gpu`` over the CPU's, for updates of ``size`` parameters."""
    few = [rng.standard_normal(size, dtype=np.float32) for _ in range(10)]
    on_gpu = median_seconds(lambda: fold_seconds(few, gpu), 5)
    return on_gpu / median_seconds(lambda: fold_seconds(few, torch.device("cpu")), 5)


def eval_rate(
    build: Callable[[], nn.Module], data: tuple[np.ndarray, np.ndarray], device: torch.device
) -> float:
    """Samples/s of fedge's evaluation loop for a fresh model of ``build`` on ``device``."""
    return throughput(lambda: evaluate(build(), data, device=device), len(data[0]), device)


def train_rate(
    build: Callable[[], nn.Module], data: tuple[np.ndarray, np.ndarray], batch: int, device: torch.device
) -> float:
    """Samples/s of one epoch of fedge's training loop at ``batch`` on ``device``."""
    return throughput(
        lambda: train(build(), data, epochs=1, lr=0.01, batch_size=batch, seed=0, device=device),
        len(data[0]),
        device,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=100)
    parser.add_argument("--params", type=int, default=10_000_000)
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--samples", type=int, default=4096, help="samples per throughput measurement")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: skipped")
        return
    gpu, cpu = torch.device(args.device), torch.device("cpu")
    name = torch.cuda.get_device_name(gpu)
    print(f"GPU {name}; host threads {torch.get_num_threads()}; torch {torch.__version__}")

    rng = np.random.default_rng(0)
    updates = [rng.standard_normal(args.params, dtype=np.float32) for _ in range(args.updates)]
    gigabytes = args.updates * args.params * 4 / 1e9
    fold_seconds(updates[:2], gpu)  # CUDA context and allocator warm-up
    t_cpu, t_gpu = fold_seconds(updates, cpu), fold_seconds(updates, gpu)
    print(f"\n1. aggregation, {args.updates} updates × {args.params:.0e} float32 ({gigabytes:.1f} GB)")
    print(f"   cpu     {t_cpu:.3f} s = {gigabytes / t_cpu:.1f} GB/s")
    print(f"   {gpu}  {t_gpu:.3f} s = {gigabytes / t_gpu:.1f} GB/s  ({t_cpu / t_gpu:.2f}× the CPU)")
    del updates
    print("   per-update fold, device time / CPU time:")
    for size in (10_000, 100_000, 1_000_000, 10_000_000):
        print(f"     {size:>10,d} params: {fold_ratio(size, rng, gpu):.2f}×")

    models: dict[str, Callable[[], nn.Module]] = {"mnist5k CNN": mnist5k.build_model, "4M-param MLP": mlp_4m}
    data = (rng.random((args.samples, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, args.samples))
    print(f"\n2. central evaluation, samples/s ({args.samples} samples, batch 256)")
    for label, build in models.items():
        on_cpu, on_gpu = eval_rate(build, data, cpu), eval_rate(build, data, gpu)
        print(f"   {label:<13} cpu {on_cpu:>10,.0f}  gpu {on_gpu:>10,.0f}  {on_gpu / on_cpu:.2f}×")
    print("\n3. client training, samples/s (one epoch)")
    for batch in (32, 256):
        for label, build in models.items():
            on_cpu, on_gpu = train_rate(build, data, batch, cpu), train_rate(build, data, batch, gpu)
            ratio = on_gpu / on_cpu
            print(f"   batch {batch:<4}{label:<13} cpu {on_cpu:>9,.0f}  gpu {on_gpu:>9,.0f}  {ratio:.2f}×")


if __name__ == "__main__":
    main()
