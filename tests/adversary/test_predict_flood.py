"""Issue 14, item 5: a local caller of a real daemon's EdgeInference asks for too much.

The daemon (``fedge client start``) serves a signed digits model; the caller sends one 16 MiB
request (65,520 samples), a 100-dimensional tensor and too many small rows. Each must be refused
with a clear status, and the daemon's RSS must stay within 100 MB of what it was before.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest

from fedge.client.inference import ADDRESS_FILE
from fedge.client.models import ModelStore
from fedge.export import export_bundle
from fedge.protos.v1 import inference_pb2, inference_pb2_grpc
from fedge.security import Pki
from fedge.sim.local import LocalFederation
from tests.model_runs import make_run_dir

pytestmark = pytest.mark.e2e


def _install_model(fed: LocalFederation, state: Path, work: Path) -> None:
    """A bundle signed by this federation's server key, active in the device's model store."""
    bundle = export_bundle(
        make_run_dir(work, rounds=1), 1, work / "bundle", signing_key=Pki.open(fed.pki_dir).signing_key()
    ).bundle_dir
    manifest = json.loads((bundle / "bundle.json").read_text())["manifest"]
    target = state / "models" / manifest["version"]
    target.mkdir(parents=True)
    for name in ("bundle.pb", manifest["serve"]):
        shutil.copy(bundle / name, target / name)
    ModelStore(state).activate(manifest["version"])


def _predict(stub: inference_pb2_grpc.EdgeInferenceStub, shape: list[int], data: bytes) -> grpc.RpcError:
    request = inference_pb2.PredictRequest(input=inference_pb2.Tensor(shape=shape, data=data))
    with pytest.raises(grpc.RpcError) as refused:
        stub.Predict(request, timeout=30)
    return refused.value


def test_oversized_and_malformed_predicts_are_refused(federation: LocalFederation, tmp_path: Path) -> None:
    federation.start_server()
    state = federation.enroll("edge-serving")
    _install_model(federation, state, tmp_path / "export")
    daemon = federation.start_daemon("edge-serving", [])
    deadline = time.monotonic() + 60
    while not (state / ADDRESS_FILE).exists():
        assert time.monotonic() < deadline and daemon.poll() is None, "the daemon serves no inference"
        time.sleep(0.1)
    channel = grpc.insecure_channel((state / ADDRESS_FILE).read_text().strip())
    stub = inference_pb2_grpc.EdgeInferenceStub(channel)
    one = inference_pb2.PredictRequest(
        input=inference_pb2.Tensor(shape=[1, 64], data=np.zeros((1, 64), "<f4").tobytes())
    )
    for _ in range(3):  # warm: the model is loaded and has answered
        assert len(stub.Predict(one, timeout=30).classes) == 1
    rss = psutil.Process(daemon.pid)
    baseline = rss.memory_info().rss

    huge = _predict(stub, [65_520, 64], bytes(65_520 * 64 * 4))  # 16 MiB
    assert huge.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in (huge.details() or "")
    many = _predict(stub, [2_000, 64], bytes(2_000 * 64 * 4))  # under the byte cap, over the rows cap
    assert many.code() == grpc.StatusCode.INVALID_ARGUMENT and "max-predict-rows" in (many.details() or "")
    deep = _predict(stub, [1] * 100, bytes(4))
    assert deep.code() == grpc.StatusCode.INVALID_ARGUMENT
    wrong = _predict(stub, [3, 10], bytes(3 * 10 * 4))
    assert wrong.code() == grpc.StatusCode.INVALID_ARGUMENT and "[n, 64]" in (wrong.details() or "")
    assert (rss.memory_info().rss - baseline) / 2**20 < 100
    assert len(stub.Predict(one, timeout=30).classes) == 1  # and it still serves
    channel.close()


# A channel with its own subchannel pool opens its own TCP connection, never a shared one.
_OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def _connected_as(uid: int, address: str) -> grpc.Channel:
    """A channel whose TCP connection was opened by ``uid`` (the test runs as root: seteuid)."""
    channel = grpc.insecure_channel(address, options=_OWN_CONNECTION)
    os.seteuid(uid)  # glibc applies it to every thread, gRPC's poller (which connects) included
    try:
        grpc.channel_ready_future(channel).result(timeout=10)
    finally:
        os.seteuid(0)
    return channel


@pytest.mark.skipif(os.geteuid() != 0, reason="opening a connection as another user needs root")
def test_only_the_daemons_own_user_may_call(federation: LocalFederation, tmp_path: Path) -> None:
    federation.start_server()
    state = federation.enroll("edge-private")
    daemon = federation.start_daemon("edge-private", [])
    deadline = time.monotonic() + 60
    while not (state / ADDRESS_FILE).exists():
        assert time.monotonic() < deadline and daemon.poll() is None, "the daemon serves no inference"
        time.sleep(0.1)
    address = (state / ADDRESS_FILE).read_text().strip()
    with _connected_as(65534, address) as stranger:
        with pytest.raises(grpc.RpcError) as refused:
            inference_pb2_grpc.EdgeInferenceStub(stranger).ModelInfo(
                inference_pb2.ModelInfoRequest(), timeout=10
            )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # The daemon's user (root here) is served, on a connection of its own: gRPC otherwise shares
    # one TCP connection between channels to the same target, and that may be the stranger's.
    with grpc.insecure_channel(address, options=_OWN_CONNECTION) as own:
        inference_pb2_grpc.EdgeInferenceStub(own).ModelInfo(inference_pb2.ModelInfoRequest(), timeout=10)
