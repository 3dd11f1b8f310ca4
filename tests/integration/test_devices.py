"""The device choice reaches the model and the data (training, client and central evaluation),
and what leaves a device for aggregation is on the CPU (aggregation stays there: bench/gpu.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from flwr.app import Context, RecordDict

from fedge import accel
from fedge.server.app import app as server_app
from tests.apps import device_probe
from tests.integration.test_apps_inprocess import RUN_ID, InProcessGrid, _task_identity  # noqa: F401 (autouse)


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_device_reaches_model_data_and_central_evaluation(tmp_path: Path, device: str) -> None:
    expected = accel.torch_device(device)  # auto: the CPU on a machine without accelerators
    grid = InProcessGrid(2)
    for context in grid.contexts.values():
        context.node_config["device"] = device  # what `fedge client start --device` sets
    config = {
        "task": "tests.apps.device_probe:TASK",
        "num-server-rounds": 1,
        "min-clients": 2,
        "run-dir": str(tmp_path),
        "export": "off",
    }
    device_probe.SEEN.clear()
    server_app(grid, Context(RUN_ID, 0, {"device": device}, RecordDict(), config))
    kinds = {kind for kind, _ in device_probe.SEEN}
    assert {"train-output", "train-target", "train-param", "evaluate-ctx", "evaluate-param"} <= kinds
    wrong = [(kind, d) for kind, d in device_probe.SEEN if d != expected]
    assert not wrong, wrong  # no tensor silently left on another device
    # Replies carry CPU arrays; the aggregated model and its checkpoint live on the CPU.
    for reply in grid.replies.values():
        arrays = reply.content.array_records.get("arrays")
        if arrays is not None:
            assert all(t.device.type == "cpu" for t in arrays.to_torch_state_dict().values())
    state = torch.load(tmp_path / "checkpoints" / "round-0001.pt", weights_only=True)
    assert all(t.device.type == "cpu" for t in state.values())
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["train-replies"] == 2 and "central-accuracy" in last
