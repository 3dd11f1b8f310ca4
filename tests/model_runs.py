"""Test helper: a run directory as fedge's ServerApp leaves it, trained centrally in a second.

The export path only reads a run directory (``config.toml``, ``summary.json``,
``checkpoints/round-NNNN.pt``), so tests build one directly instead of running a federation.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch

from fedge.export.quantize import Variant, choose
from fedge.protos.v1.model_pb2 import BundleManifest
from fedge.tasks import load_task, task_data, train

RUN_ID = 4242


def make_run_dir(
    root: Path,
    rounds: int = 2,
    run_id: int = RUN_ID,
    seed: int = 0,
    model: str = "",
    samples: int | None = None,
) -> Path:
    """``root/<run_id>`` with one checkpoint per round (round 0 = the initial model).

    ``model`` picks a built-in edge network (``--set model=…``); ``samples`` trains on the first
    that many training images only (big networks, small CI machines).
    """
    task = load_task("digits", model=model)
    (x, y), _ = task_data(task, seed)
    x, y = x[:samples], y[:samples]
    torch.manual_seed(seed)
    net = task.build_model()
    run_dir = root / str(run_id)
    (run_dir / "checkpoints").mkdir(parents=True)
    for rnd in range(rounds + 1):
        if rnd:
            train(net, (x, y), epochs=1, lr=0.05, batch_size=32, seed=seed + rnd)
        buf = io.BytesIO()
        torch.save(net.state_dict(), buf)
        (run_dir / "checkpoints" / f"round-{rnd:04d}.pt").write_bytes(buf.getvalue())
    (run_dir / "config.toml").write_text(
        'server-app = "fedge.server.app:app"\napp-dir = "."\n\n'
        f'[run-config]\ntask = "digits"\nseed = {seed}\nmodel = "{model}"\nrun-dir = "{run_dir}"\n'
    )
    settings = {"seed": seed, "model": model}
    summary = {"run-id": run_id, "task": "digits", "rounds": rounds, "settings": settings}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def sample_image(run_dir: Path, round: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """A raw digits test image (0..16 pixels, as device data files hold) the model gets right."""
    task = load_task("digits")
    _, (x_test, y_test) = task_data(task, seed)
    model = task.build_model()
    model.load_state_dict(torch.load(run_dir / "checkpoints" / f"round-{round:04d}.pt", weights_only=True))
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(x_test)).argmax(dim=1).numpy()
    index = int(np.flatnonzero(predicted == y_test)[0])
    return (x_test[index] * task.input_scale).reshape(-1), int(y_test[index])


INT8_VARIANTS = ("dynamic", "dynamic-matmul", "static-qdq", "static-qdq-fp32-input-layer")


def check_int8_as_ruled(manifest: BundleManifest, bundle_dir: Path) -> Variant | None:
    """Assert the bundle ships what the int8 rule picks from the measurements its manifest records.

    Which variant wins (or whether any does) depends on latencies measured at export time, which
    load on a shared machine moves, so tests never assume a winner: they re-apply the rule to the
    recorded figures and check the files, the served name and the stated reason agree with it.
    """
    m = manifest.metrics
    names = [n for n in INT8_VARIANTS if f"{n}.batch1-us" in m]
    assert names, "no int8 variant was measured"
    recorded = [
        Variant(n, b"x" * int(m[f"{n}.bytes"]), m[f"{n}.accuracy"], m[f"{n}.batch1-us"]) for n in names
    ]
    fp32 = Variant("fp32", b"", m["fp32.accuracy"], m["fp32.batch1-us"])
    choice = choose(fp32, recorded)
    int8_file = bundle_dir / "model.int8.onnx"
    assert manifest.exporter["int8-choice"] == choice.reason
    if choice.chosen is None:
        assert manifest.serve == "model.onnx" and not int8_file.exists(), choice.reason
        return None
    assert manifest.serve == "model.int8.onnx"
    assert manifest.exporter["int8-method"] == choice.chosen.name
    assert int8_file.stat().st_size == choice.chosen.size == m["int8.bytes"]
    return choice.chosen
