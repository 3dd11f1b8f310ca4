"""Trainable/frozen split: what travels, the frozen part's hash, and the refusal of another base."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from fedge.errors import FedgeError
from fedge.export import export_bundle
from fedge.tasks import load_task, task_data, train
from fedge.tasks.trainable import freeze, frozen_digest, load_received, trainable_state

CHARLM = load_task("charlm")


def test_charlm_marks_only_its_lora_adapters_trainable() -> None:
    model = CHARLM.build_model()
    state = model.state_dict()
    adapters = trainable_state(CHARLM, state)
    assert adapters and all(k.endswith((".lora_a", ".lora_b")) for k in adapters)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(adapters)
    # Built from the config alone: every device makes the same frozen base.
    assert frozen_digest(CHARLM, state) == frozen_digest(CHARLM, CHARLM.build_model().state_dict())


def test_training_moves_adapters_only_and_keeps_the_frozen_hash() -> None:
    model = CHARLM.build_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    (x, y), _ = task_data(CHARLM, 0)
    train(model, (x[:64], y[:64]), epochs=1, lr=0.05, batch_size=32, seed=0)
    after = model.state_dict()
    assert frozen_digest(CHARLM, after) == frozen_digest(CHARLM, before)
    assert any(not torch.equal(after[k], before[k]) for k in trainable_state(CHARLM, before))


def test_a_device_with_another_base_refuses_the_round() -> None:
    server = CHARLM.build_model().state_dict()
    sent = trainable_state(CHARLM, server)
    digest = frozen_digest(CHARLM, server)
    device = CHARLM.build_model()
    load_received(CHARLM, device, sent, digest)  # same base: accepted
    other = CHARLM.build_model()
    with torch.no_grad():
        other.tokens.weight[0, 0] += 1e-3  # a device whose base differs in one value
    with pytest.raises(FedgeError) as err:
        load_received(CHARLM, other, sent, digest)
    assert "frozen part of task 'charlm' differs from the server's" in err.value.message
    assert (
        digest[:16] in err.value.message
        and frozen_digest(CHARLM, other.state_dict())[:16] in err.value.message
    )
    with pytest.raises(FedgeError, match="received 3 arrays"):
        load_received(CHARLM, CHARLM.build_model(), dict(list(sent.items())[:3]), digest)


def test_a_frozen_backbone_with_a_trainable_head() -> None:
    digits = dataclasses.replace(load_task("digits"), trainable=("6.*",))  # the final Linear
    model = digits.build_model()
    freeze(digits, model)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["6.weight", "6.bias"]
    state = model.state_dict()
    assert set(trainable_state(digits, state)) == {"6.weight", "6.bias"}
    full = nn.Sequential(*model).state_dict()
    load_received(digits, model, full, None)  # the whole model loads without a hash (send-frozen)


def test_the_merged_charlm_exports_and_passes_parity(tmp_path: Path) -> None:
    """A checkpoint holds base + adapters; the export ships that whole model through the parity gate."""
    model = CHARLM.build_model()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("lora_b"):  # trained adapters (zero at init would export the bare base)
                param.normal_(0, 0.05)
    run_dir = tmp_path / "1"
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save(model.state_dict(), run_dir / "checkpoints" / "round-0001.pt")
    (run_dir / "summary.json").write_text(json.dumps({"run-id": 1, "task": "charlm", "rounds": 1}))
    bundle = export_bundle(run_dir, 1, tmp_path / "bundle")
    m = bundle.manifest.metrics
    assert m["fp32.max-abs-diff"] <= m["fp32.tolerance"] and m["fp32.argmax-agreement"] == 1.0
    assert list(bundle.manifest.input.shape) == [-1, 32] and bundle.manifest.output.num_classes == 96
