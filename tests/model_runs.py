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

from fedge.tasks import load_task, task_data, train

RUN_ID = 4242


def make_run_dir(root: Path, rounds: int = 2, run_id: int = RUN_ID, seed: int = 0) -> Path:
    """``root/<run_id>`` with one checkpoint per round (round 0 = the initial model)."""
    task = load_task("digits")
    (x, y), _ = task_data(task, seed)
    torch.manual_seed(seed)
    model = task.build_model()
    run_dir = root / str(run_id)
    (run_dir / "checkpoints").mkdir(parents=True)
    for rnd in range(rounds + 1):
        if rnd:
            train(model, (x, y), epochs=1, lr=0.05, batch_size=32, seed=seed + rnd)
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        (run_dir / "checkpoints" / f"round-{rnd:04d}.pt").write_bytes(buf.getvalue())
    (run_dir / "config.toml").write_text(
        'server-app = "fedge.server.app:app"\napp-dir = "."\n\n'
        f'[run-config]\ntask = "digits"\nseed = {seed}\nrun-dir = "{run_dir}"\n'
    )
    summary = {"run-id": run_id, "task": "digits", "rounds": rounds, "settings": {"seed": seed}}
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
