"""Edge inference latency and model size: torch eager vs onnxruntime fp32 vs onnxruntime int8.

    python bench/inference.py [--rounds N] [--epochs N] [--models task,mobilenet_v3_small,resnet18] [--json]

Each model — the digits task's own CNN and the built-in edge networks (``--set model=…``:
MobileNetV3-Small, ResNet-18, adapted to 8×8 digits) — is trained centrally for a few epochs (so
int8 accuracy means something), then exported exactly as a run's bundle is
(``fedge.export.export_bundle(int8=True)``: parity gate, int8 chosen by measurement). Everything runs
on one pinned core with one thread (torch and onnxruntime), as on a small device; each engine is
timed round-robin in slices (``--rounds``) so load from other processes on a shared machine hits
all of them alike, and the figure is the median over all slices. Also measured: the inference
service end to end (gRPC Predict on loopback, batch 1), which adds transport to the model time.

Goals (issue 6): onnxruntime ≤ 0.3× torch latency at batch 1; int8 ≤ 0.3× the fp32 file size
with no slower latency.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import numpy as np  # noqa: E402

from bench._timing import pin_one_core  # noqa: E402


def _run_dir(root: Path, epochs: int, model: str) -> Path:
    """A run directory as fedge's ServerApp writes it, trained centrally."""
    import io

    import torch

    from fedge.tasks import load_task, task_data, train

    task = load_task("digits", model=model)
    (x, y), _ = task_data(task, 0)
    torch.manual_seed(0)
    net = task.build_model()
    train(net, (x, y), epochs=epochs, lr=0.05, batch_size=32, seed=0)
    run_dir = root / (model or "task") / "1"
    (run_dir / "checkpoints").mkdir(parents=True)
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    (run_dir / "checkpoints" / "round-0001.pt").write_bytes(buf.getvalue())
    summary = {"run-id": 1, "task": "digits", "rounds": 1, "settings": {"model": model}}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def _timed(fns: dict[str, Callable[[], Any]], rounds: int, reps: int) -> dict[str, float]:
    """Median seconds per call of each fn, sliced round-robin.

    ``reps`` calls per slice, fewer for slow calls (a slice of about 50 ms at most, at least 2
    calls) so ResNet-18 at batch 64 takes seconds, not minutes.
    """
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        for _ in range(3):
            fn()
    start = time.perf_counter()
    for fn in fns.values():
        fn()
    slowest = (time.perf_counter() - start) / len(fns)
    reps = max(2, min(reps, int(0.05 / max(slowest, 1e-9))))
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(reps):
                start = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=15, help="round-robin slices per engine")
    parser.add_argument("--epochs", type=int, default=5, help="central training epochs")
    parser.add_argument(
        "--models",
        default="task,mobilenet_v3_small,resnet18",
        help="'task' (its own CNN) and/or edge networks",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    cpu = pin_one_core()
    import torch

    torch.set_num_threads(1)
    everything = {}
    for model in args.models.split(","):
        results = _measure("" if model == "task" else model, args.epochs, args.rounds)
        everything[model] = {"cpu": cpu, **results}
        _report(model, everything[model], args.json)
    if args.json:
        print(json.dumps(everything, indent=2))


def _measure(model_name: str, epochs: int, rounds: int) -> dict[str, Any]:
    import torch

    from fedge.export import export_bundle
    from fedge.export.onnx_export import session
    from fedge.tasks import load_task, task_data

    task = load_task("digits", model=model_name)
    _, (x_test, y_test) = task_data(task, 0)
    with tempfile.TemporaryDirectory(prefix="fedge-bench-") as tmp:
        started = time.perf_counter()
        run_dir = _run_dir(Path(tmp), epochs, model_name)
        train_s = time.perf_counter() - started
        started = time.perf_counter()
        bundle = export_bundle(run_dir, 1, Path(tmp) / "bundle", int8=True)
        export_s = time.perf_counter() - started
        fp32_bytes = (bundle.bundle_dir / "model.onnx").read_bytes()
        int8_path = bundle.bundle_dir / "model.int8.onnx"
        int8_bytes = int8_path.read_bytes() if int8_path.exists() else b""
        model = task.build_model()
        model.load_state_dict(torch.load(run_dir / "checkpoints" / "round-0001.pt", weights_only=True))
        model.eval()
        grpc_us = _service_latency(Path(tmp), bundle.bundle_dir, x_test[:1] * task.input_scale, rounds)
    sessions = {"ort-fp32": session(fp32_bytes)}
    if int8_bytes:
        sessions["ort-int8"] = session(int8_bytes)
    results: dict[str, Any] = {
        "int8-method": bundle.manifest.exporter.get("int8-method", "none"),
        "int8-choice": bundle.manifest.exporter.get("int8-choice", ""),
        "train-s": train_s,
        "export-s": export_s,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    for batch, reps in ((1, 400), (64, 20)):
        x = np.ascontiguousarray(np.resize(x_test, (batch, *x_test.shape[1:])))
        xt = torch.from_numpy(x)
        fns: dict[str, Callable[[], Any]] = {}

        def torch_eager(xt: torch.Tensor = xt) -> Any:
            with torch.no_grad():
                return model(xt)

        fns["torch"] = torch_eager
        for name, sess in sessions.items():
            fns[name] = lambda s=sess, x=x: s.run(None, {task.input_name: x})  # type: ignore[attr-defined]
        for name, sec in _timed(fns, rounds, reps).items():
            results[f"{name}.batch{batch}-us"] = sec * 1e6
    results["grpc-predict.batch1-us"] = grpc_us
    m = bundle.manifest.metrics
    results.update(
        {
            "fp32.bytes": len(fp32_bytes),
            "int8.bytes": len(int8_bytes),
            "fp32.accuracy": m["fp32.accuracy"],
            "int8.accuracy": m.get("int8.accuracy", float("nan")),
            "torch.accuracy": m["torch.accuracy"],
            "fp32.max-abs-diff": m["fp32.max-abs-diff"],
        }
    )
    # What every int8 variant measured at export time (the rule's inputs), for the report.
    for variant in ("fp32", "dynamic", "dynamic-matmul", "static-qdq", "static-qdq-fp32-input-layer"):
        for key in ("bytes", "accuracy", "batch1-us"):
            if f"{variant}.{key}" in m:
                results[f"variant.{variant}.{key}"] = m[f"{variant}.{key}"]
    return results


def _service_latency(root: Path, bundle_dir: Path, x: np.ndarray, rounds: int) -> float:
    """Median µs of one Predict through the daemon's EdgeInference service on loopback."""
    import shutil

    import grpc

    from fedge.client.inference import InferenceServer
    from fedge.client.models import ModelStore
    from fedge.protos.v1 import inference_pb2, inference_pb2_grpc

    manifest = json.loads((bundle_dir / "bundle.json").read_text())["manifest"]
    target = root / "edge" / "models" / manifest["version"]
    target.mkdir(parents=True)
    for name in ("bundle.pb", manifest["serve"]):
        shutil.copy(bundle_dir / name, target / name)
    store = ModelStore(root / "edge", allow_unsigned=True)
    store.activate(manifest["version"])
    server = InferenceServer(store, "127.0.0.1:0")
    address = server.start()
    try:
        with grpc.insecure_channel(address) as channel:
            stub = inference_pb2_grpc.EdgeInferenceStub(channel)
            request = inference_pb2.PredictRequest(
                input=inference_pb2.Tensor(shape=list(x.shape), data=x.astype("<f4").tobytes())
            )
            sec = _timed({"grpc": lambda: stub.Predict(request, timeout=5)}, rounds, 40)["grpc"]
    finally:
        server.stop()
    return sec * 1e6


def _report(model: str, r: dict[str, Any], as_json: bool) -> None:
    ratios = {
        "ort-fp32/torch batch1": r["ort-fp32.batch1-us"] / r["torch.batch1-us"],
        "ort-fp32/torch batch64": r["ort-fp32.batch64-us"] / r["torch.batch64-us"],
    }
    if r["int8.bytes"]:
        ratios.update(
            {
                "ort-int8/torch batch1": r["ort-int8.batch1-us"] / r["torch.batch1-us"],
                "int8/fp32 size": r["int8.bytes"] / r["fp32.bytes"],
                "int8/fp32 latency batch1": r["ort-int8.batch1-us"] / r["ort-fp32.batch1-us"],
                "int8/fp32 latency batch64": r["ort-int8.batch64-us"] / r["ort-fp32.batch64-us"],
            }
        )
    r["ratios"] = ratios
    if as_json:
        return
    name = "digits CNN" if model == "task" else f"{model} on digits"
    print(f"\n{name} ({r['parameters']} parameters), 1 thread pinned to cpu {r['cpu']}")
    print(f"trained {r['train-s']:.1f}s, exported {r['export-s']:.1f}s; int8: {r['int8-choice']}")
    print(f"{'engine':12s} {'batch 1':>10s} {'batch 64':>10s} {'bytes':>8s} {'accuracy':>9s}")
    rows = [("torch", None, "torch.accuracy"), ("ort-fp32", "fp32.bytes", "fp32.accuracy")]
    if r["int8.bytes"]:
        rows.append(("ort-int8", "int8.bytes", "int8.accuracy"))
    for name, size, acc in rows:
        print(
            f"{name:12s} {r[f'{name}.batch1-us']:8.1f}µs {r[f'{name}.batch64-us']:8.1f}µs "
            f"{(r[size] if size else 0):8d} {r[acc]:9.4f}"
        )
    print(f"grpc Predict (service end to end, batch 1): {r['grpc-predict.batch1-us']:.0f}µs")
    print(f"fp32 parity vs torch: max abs diff {r['fp32.max-abs-diff']:.2e}")
    for variant in ("fp32", "dynamic", "dynamic-matmul", "static-qdq", "static-qdq-fp32-input-layer"):
        if f"variant.{variant}.bytes" in r:
            print(
                f"  at export: {variant:32s} {r[f'variant.{variant}.batch1-us']:8.1f}µs (batch 1) "
                f"{int(r[f'variant.{variant}.bytes']):9d} B  accuracy {r[f'variant.{variant}.accuracy']:.4f}"
            )
    goals = {
        "ort-fp32/torch batch1": 0.3,
        "int8/fp32 size": 0.3,
        "int8/fp32 latency batch1": 1.0,
    }
    for name, value in ratios.items():
        goal = goals.get(name)
        verdict = "" if goal is None else f"  (goal ≤ {goal}: {'met' if value <= goal else 'MISSED'})"
        print(f"{name:28s} {value:6.3f}{verdict}")


if __name__ == "__main__":
    main()
