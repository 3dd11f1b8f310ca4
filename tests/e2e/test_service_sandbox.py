"""The systemd units' seccomp hardening, exercised without systemd (tests/sandbox.py).

A server and a daemon run a whole round under the syscall and address-family filters their units
declare: mTLS, enrollment, sealing, the run worker (spawned processes, torch training and central
evaluation), ONNX export, the model bundle's delivery and the daemon's inference service. A
forbidden syscall would kill the process (SIGSYS), as systemd would.

And why ``MemoryDenyWriteExecute=yes`` is not in the units: under it, torch cannot run a
convolution (oneDNN generates its kernels at run time), while onnxruntime can.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedge.client.data import write_partitions
from fedge.sim.local import LocalFederation
from fedge.tasks import load_task
from tests.conftest import REPO, fedge_cli

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze"),
]

SANDBOX = str(REPO / "tests" / "sandbox.py")
UNITS = REPO / "deploy" / "systemd"


def sandboxed(unit: str, *extra: str) -> list[str]:
    return [sys.executable, SANDBOX, str(UNITS / unit), *extra, "--"]


def _libseccomp() -> bool:
    import ctypes.util

    return ctypes.util.find_library("seccomp") is not None


@pytest.mark.skipif(not _libseccomp(), reason="needs libseccomp")
def test_server_and_daemon_run_a_round_under_their_units_filters(federation: LocalFederation) -> None:
    federation.start_server(wrap=sandboxed("fedge-server.service"))
    edge = federation.workdir / "edge-0"
    (path,) = write_partitions(load_task("digits"), 1, "iid", 0, [edge])
    daemon = federation.start_daemon(edge.name, ["--data", str(path)], wrap=sandboxed("fedge-client.service"))
    federation.wait_for_nodes(1)
    done = fedge_cli(
        "run", "start", "--server", federation.address, *federation.auth, "--task", "digits",
        "--rounds", "1", "--min-clients", "1", "--set", "local-epochs=1",
    )  # fmt: skip
    assert done.returncode == 0 and "finished" in done.stderr, done.stderr
    active = edge / "models" / "active.json"
    deadline = time.monotonic() + 30
    while not active.exists():
        assert time.monotonic() < deadline, (federation.workdir / "edge-0.log").read_text()[-2000:]
        time.sleep(0.1)
    assert json.loads(active.read_text())["version"]
    # Still alive after training, evaluation, export and delivery: a SIGSYS would have ended them.
    assert daemon.poll() is None and federation.server is not None and federation.server.poll() is None


@pytest.mark.skipif(not _libseccomp(), reason="needs libseccomp")
def test_memory_deny_write_execute_breaks_torch_but_not_onnxruntime(tmp_path: Path) -> None:
    import torch

    from fedge.tasks import load_task

    model = load_task("digits").build_model().eval()
    onnx_path = tmp_path / "model.onnx"
    torch.onnx.export(
        model, (torch.zeros(4, 1, 8, 8),), str(onnx_path), dynamo=False, opset_version=17, input_names=["x"]
    )
    script = tmp_path / "probe.py"
    script.write_text(
        "import sys, onnxruntime as ort, torch\n"
        "from fedge.tasks import load_task\n"
        "x = torch.randn(4, 1, 8, 8)\n"
        "print('onnx', ort.InferenceSession(sys.argv[1]).run(None, {'x': x.numpy()})[0].shape)\n"
        "try:\n"
        "    load_task('digits').build_model()(x)\n"
        "    print('torch ok')\n"
        "except RuntimeError as exc:\n"
        "    print('torch failed:', exc)\n"
    )
    done = subprocess.run(
        [*sandboxed("fedge-client.service", "--mdwe"), sys.executable, str(script), str(onnx_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert "onnx (4, 10)" in done.stdout, done.stdout + done.stderr
    assert "torch failed: could not create a primitive" in done.stdout, done.stdout + done.stderr
