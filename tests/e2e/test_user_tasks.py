"""A user's own task on every path: the example in examples/diabetes (regression, its own
train/evaluate, CSV data) with `fedge simulate` from its own directory, on Ray and on real daemons
started with `fedge client start`, exported to a verified bundle that a daemon serves; an image-
folder task trained through a DataLoader on real daemons; a device without the task's code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fedge.sim.local import LocalFederation
from fedge.sim.serving import final_model, wait_served
from tests.conftest import REPO, fedge_cli

pytestmark = pytest.mark.e2e

EXAMPLE = REPO / "examples" / "diabetes"
TASK = "diabetes.task:TASK"
FEDGE = Path(sys.executable).parent / "fedge"  # the console script, as a user runs it


def fedge_script(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The installed ``fedge`` command, run in ``cwd`` with no PYTHONPATH (as a newcomer would)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    return subprocess.run(
        [str(FEDGE), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd
    )


def assert_logged(log: Path, text: str, timeout: float = 10.0) -> None:
    """``text`` appears in ``log`` within ``timeout`` seconds (a process writes it on its own time)."""
    deadline = time.monotonic() + timeout
    while text not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert text in log.read_text(), log.read_text()


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_example_task_simulates_from_its_own_directory_and_exports_a_verified_bundle(tmp_path: Path) -> None:
    work = tmp_path / "sim"
    done = fedge_script(
        "simulate", "--task", TASK, "--clients", "2", "--rounds", "3", "--set", "lr=0.01",
        "--workdir", str(work), cwd=EXAMPLE,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    run_dir = next((work / "server" / "runs").iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["task"] == TASK and summary["task-name"] == "diabetes"
    lines = _metrics(run_dir)
    # Its own evaluate_fn's metrics, centrally and on the clients; training improved the model.
    assert {"central-mae", "central-r2", "eval-mae", "train-loss"} <= set(lines[-1])
    assert lines[-1]["central-mae"] < lines[0]["central-mae"]
    assert "central-mae=" in done.stderr  # the console shows the regression metric per round
    assert f"workdir {work}\n" in done.stderr  # whole, on one line, though stderr is not a TTY
    assert "edge-0 served model" in done.stderr and "edge-1 served model" in done.stderr
    assert " on 127.0.0.1:" not in done.stderr  # no address of a daemon that has stopped
    assert f"summary: {run_dir / 'summary.json'}" in done.stderr and "plots: " in done.stderr
    bundle = run_dir / "bundles" / "round-0003"
    ok = fedge_cli("model", "verify", str(bundle), "--pki-dir", str(work / "pki"))
    assert ok.returncode == 0 and ok.stdout.startswith("ok: bundle"), ok.stdout + ok.stderr
    manifest = json.loads((bundle / "bundle.json").read_text())["manifest"]
    assert manifest["output"]["kind"] == "regression" and manifest["task"] == "diabetes"


def test_example_task_runs_on_ray_from_its_own_directory(tmp_path: Path) -> None:
    work = tmp_path / "ray"
    done = fedge_script(
        "simulate", "--engine", "ray", "--task", TASK, "--clients", "2", "--rounds", "2",
        "--gpus-per-client", "0", "--set", "lr=0.01", "--workdir", str(work), cwd=EXAMPLE, timeout=480,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = _metrics(work / "run")
    assert [line["round"] for line in lines] == [0, 1, 2]
    assert lines[-1]["train-replies"] == 2 and "eval-mae" in lines[-1]
    assert lines[-1]["central-mae"] < lines[0]["central-mae"]


def test_example_task_on_real_daemons_then_a_daemon_serves_its_bundle(
    federation: LocalFederation, tmp_path: Path
) -> None:
    sys.path.insert(0, str(EXAMPLE))
    try:
        from diabetes.task import make_device_files
    finally:
        sys.path.remove(str(EXAMPLE))
    files = make_device_files(tmp_path / "devices", 2)
    federation.start_server()
    for i, path in enumerate(files):
        federation.start_daemon(
            f"edge-{i}",
            ["--data", str(path), "--node-config", "label-column=progression", "--app-dir", str(EXAMPLE),
             "--device", "auto"],
        )  # fmt: skip
    federation.wait_for_nodes(2)
    client = federation.control()
    assert {n.accelerator for n in client.list_nodes()} == {"cpu"}  # auto resolves to the CPU here
    # The server's --device defaults to auto too: its central evaluation runs on what auto picked.
    assert_logged(federation.workdir / "server.log", "central evaluation on cpu")
    listed = fedge_cli("nodes", "list", "--server", federation.address, *federation.auth)
    assert listed.returncode == 0 and "accelerator" in listed.stdout and "cpu" in listed.stdout
    done = fedge_cli(
        "run", "start", "--server", federation.address, *federation.auth, "--task", TASK,
        "--app-dir", str(EXAMPLE), "--rounds", "2", "--min-clients", "2", "--set", "lr=0.01",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    run = client.list_runs()[-1]
    version, why = final_model(client, run.run_id)
    assert version, why
    states = {f"edge-{i}": federation.workdir / f"edge-{i}" for i in range(2)}
    wait_served(states, version)
    sample = np.loadtxt(files[0], delimiter=",", skiprows=1, max_rows=1)[:-1]
    np.save(tmp_path / "patient.npy", sample)
    predicted = fedge_cli(
        "client", "predict", "--state-dir", str(states["edge-0"]), "--input", str(tmp_path / "patient.npy")
    )
    assert predicted.returncode == 0, predicted.stderr
    value = float(predicted.stdout.splitlines()[1].split(":")[1])
    assert 0 < value < 400  # a progression score, served as a value (no softmax)
    ok = fedge_cli("model", "verify", str(states["edge-0"] / "models" / version), "--state-dir",
                   str(states["edge-0"]))  # fmt: skip
    assert ok.returncode == 0, ok.stderr


IMAGE_TASK = """
from pathlib import Path

from torch import nn

from fedge.client.images import ImageFolder
from fedge.tasks import Task

HERE = Path(__file__).parent


def build_model():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))


def load_data(seed):
    return ImageFolder(HERE / "test", TASK), ImageFolder(HERE / "test", TASK)


TASK = Task(name="blocks", build_model=build_model, load_data=load_data, input_shape=(1, 8, 8),
            num_classes=3, input_scale=255.0)
"""


def write_images(root: Path, per_class: int, seed: int) -> None:
    """Tiny 8×8 PNGs, one folder per class: a bright block top-left, top-right or at the bottom."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    blocks = {
        "a": (slice(0, 4), slice(0, 4)),
        "b": (slice(0, 4), slice(4, 8)),
        "c": (slice(4, 8), slice(0, 8)),
    }
    for name, where in blocks.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (8, 8)).astype(np.uint8)
            pixels[where] = rng.integers(180, 255, pixels[where].shape)
            Image.fromarray(pixels, mode="L").save(root / name / f"{i}.png")


def test_image_folder_task_trains_through_a_dataloader_on_real_daemons(
    federation: LocalFederation, tmp_path: Path
) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "blocks.py").write_text(IMAGE_TASK)
    write_images(app / "test", 10, seed=99)
    federation.start_server(["--device", "cpu"])
    for i in range(2):
        write_images(tmp_path / f"images-{i}", 15, seed=i)
        data = ["--data", str(tmp_path / f"images-{i}")]
        federation.start_daemon(f"edge-{i}", [*data, "--app-dir", str(app), "--device", "cpu"])
    federation.wait_for_nodes(2)
    assert {n.accelerator for n in federation.control().list_nodes()} == {"cpu"}
    assert_logged(federation.workdir / "server.log", "central evaluation on cpu")
    done = fedge_cli(
        "run", "start", "--server", federation.address, *federation.auth, "--task", "blocks:TASK",
        "--app-dir", str(app), "--rounds", "3", "--min-clients", "2", "--set", "lr=0.1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    run_dir = Path(federation.control().list_runs()[-1].run_dir)
    lines = _metrics(run_dir)
    assert lines[-1]["train-replies"] == 2 and lines[-1]["eval-replies"] == 2
    assert lines[0]["central-accuracy"] < 0.7 < lines[-1]["central-accuracy"]


def test_a_device_without_the_task_code_fails_the_run_with_the_whole_reason_and_the_fix(
    federation: LocalFederation,
) -> None:
    federation.start_server()
    federation.start_daemon("edge-0", [])  # no --app-dir: the task's package is not on this device
    federation.wait_for_nodes(1)
    done = fedge_cli(
        "run", "start", "--server", federation.address, *federation.auth, "--task", TASK,
        "--app-dir", str(EXAMPLE), "--rounds", "1", "--min-clients", "1",
    )  # fmt: skip
    assert done.returncode == 1
    error = done.stderr
    assert f"this device cannot load task '{TASK}'" in error and "No module named 'diabetes'" in error
    hint = next(line for line in error.splitlines() if line.startswith("hint:"))
    assert "must be on every device" in hint and "fedge client start --app-dir DIR" in hint
    assert "min-clients" not in hint
