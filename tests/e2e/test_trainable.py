"""Only what trains travels: LoRA fine-tuning of the built-in char-LM on real daemons (mTLS, sealed).

The same training runs three times on one federation: sending only the adapters, sending the
whole model every round (``send-frozen``), and with secure aggregation. The server's Fleet byte
counters show what crossed the wire; the checkpoints show all three end with the same merged model
(aggregated in node order, so that network timing cannot change the float rounding).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from fedge.client.data import write_partitions
from fedge.sim.local import LocalFederation
from fedge.tasks import load_task
from fedge.tasks.trainable import trainable_state
from tests.conftest import REPO
from tests.e2e.test_metrics import METRICS, scrape, value

pytestmark = pytest.mark.e2e

ROUNDS = 2
DAEMONS = 3  # secure aggregation needs 3


def _run(fed: LocalFederation, **extra: Any) -> tuple[dict[str, torch.Tensor], float]:
    """Run to the end; (final checkpoint, bytes the server received on Fleet streams meanwhile)."""
    before = value(scrape(fed.workdir / "server"), "fedge_server_fleet_received_bytes_total")
    client = fed.control()
    config = {
        "task": "charlm",
        "num-server-rounds": ROUNDS,
        "min-clients": DAEMONS,
        "local-epochs": 1,
        "lr": 0.05,
        "central-eval": False,
        "fraction-evaluate": 0.0,
        "export": "off",
        # Node order, not arrival order: the three runs fold the same updates in the same order
        # (a streaming fold follows arrival order, which changes the last float bits).
        "streaming": False,
        **extra,
    }
    run = client.start_run("fedge.server.app:app", config, str(REPO))
    kinds = [e.kind for e in client.events(run.run_id)]
    status = client.get_run(run.run_id)
    client.close()
    assert kinds[-1] == "run-finished", status.error
    after = value(scrape(fed.workdir / "server"), "fedge_server_fleet_received_bytes_total")
    ckpt = Path(status.run_dir) / "checkpoints" / f"round-{ROUNDS:04d}.pt"
    return torch.load(ckpt, weights_only=True), after - before


def test_lora_runs_send_only_adapters_and_end_with_the_full_exchange_model(tmp_path: Path) -> None:
    task = load_task("charlm")
    model = task.build_model().state_dict()
    adapter_bytes = sum(t.numel() * t.element_size() for t in trainable_state(task, model).values())
    model_bytes = sum(t.numel() * t.element_size() for t in model.values())
    assert adapter_bytes < 0.15 * model_bytes
    with LocalFederation(tmp_path) as fed:
        fed.start_server(METRICS)
        edges = [tmp_path / f"edge-{i}" for i in range(DAEMONS)]
        for edge, path in zip(edges, write_partitions(task, DAEMONS, "iid", 0, edges), strict=True):
            fed.start_daemon(edge.name, ["--data", str(path)])
        fed.wait_for_nodes(DAEMONS)
        lora, lora_bytes = _run(fed)
        full, full_bytes = _run(fed, **{"send-frozen": True})
        secure, _ = _run(fed, secagg=True)
    updates = DAEMONS * ROUNDS  # train replies (evaluation replies carry no arrays)
    # Received: the sealed updates plus small frames (hello, metrics, acks) — bounded by a margin.
    assert updates * adapter_bytes <= lora_bytes < updates * adapter_bytes + 60_000, lora_bytes
    assert updates * model_bytes <= full_bytes, full_bytes
    assert lora_bytes < 0.25 * full_bytes
    assert list(lora) == list(full) == list(model)  # the checkpoint is the whole, merged model
    adapters = trainable_state(task, model)
    assert any(not torch.equal(lora[n], model[n]) for n in adapters)  # the adapters trained
    for name, tensor in lora.items():
        if name in adapters:
            # The same training, up to float rounding: the full exchange also averages the frozen
            # part, and the mean of three equal float32 tensors may differ from them in the last
            # bit, which the next round's training carries into the adapters. So the two runs'
            # adapters differ by far less than they moved, not bit for bit.
            moved = (tensor - model[name]).norm()
            assert (tensor - full[name]).norm() <= 1e-2 * moved, (name, moved)
        else:
            assert torch.equal(tensor, model[name]), name  # the frozen part never moved
            assert torch.allclose(full[name], model[name], atol=1e-6), name
    # Secure aggregation masks and sums only the adapters (quantized: close, not equal).
    for name in adapters:
        assert torch.allclose(secure[name], lora[name], atol=1e-3), name
    assert all(torch.equal(secure[n], model[n]) for n in model if n not in adapters)
