"""EdgeInference in-process over real gRPC: hot swap under load, batching, bad input, restarts."""

from __future__ import annotations

import json
import shutil
import threading
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fedge.client.inference import InferenceServer
from fedge.client.models import ModelStore
from fedge.errors import FedgeError
from fedge.export import export_bundle
from fedge.protos.v1 import inference_pb2, inference_pb2_grpc
from tests.conftest import fedge_cli
from tests.model_runs import make_run_dir, sample_image

from .edge_fakes import wait_for


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("bundles")
    run_dir = make_run_dir(root, rounds=2)
    key = Ed25519PrivateKey.generate()
    dirs = [export_bundle(run_dir, r, root / f"r{r}", signing_key=key).bundle_dir for r in (1, 2)]
    return run_dir, key, dirs


@pytest.fixture
def store(tmp_path: Path, exported) -> tuple[ModelStore, list[str]]:
    """A device state dir holding both bundles (as downloads leave them), round 1 active."""
    _, key, dirs = exported
    pub = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "server-signing.pub").write_bytes(pub)
    versions = []
    for d in dirs:
        manifest = json.loads((d / "bundle.json").read_text())["manifest"]
        target = tmp_path / "models" / manifest["version"]
        target.mkdir(parents=True)
        for name in ("bundle.pb", manifest["serve"]):
            shutil.copy(d / name, target / name)
        versions.append(manifest["version"])
    s = ModelStore(tmp_path)
    s.activate(versions[0])
    return s, versions


def _stub(address: str) -> inference_pb2_grpc.EdgeInferenceStub:
    return inference_pb2_grpc.EdgeInferenceStub(grpc.insecure_channel(address))


def _request(x: np.ndarray, prepared: bool = False) -> inference_pb2.PredictRequest:
    tensor = inference_pb2.Tensor(shape=list(x.shape), data=np.asarray(x, "<f4").tobytes())
    return inference_pb2.PredictRequest(input=tensor, prepared=prepared)


@pytest.fixture
def serving(store):  # type: ignore[no-untyped-def]
    s, versions = store
    server = InferenceServer(s, "127.0.0.1:0")
    address = server.start()
    yield server, address, versions
    server.stop()


def test_requests_running_during_model_switches_all_succeed(serving, exported) -> None:
    server, address, (v1, v2) = serving
    image, label = sample_image(exported[0], 2)
    stop = threading.Event()
    results: list[tuple[str, str]] = []  # (version or "error: …", class)
    lock = threading.Lock()

    def client() -> None:
        stub = _stub(address)
        while not stop.is_set():
            try:
                reply = stub.Predict(_request(np.stack([image, image])), timeout=10)
                outcome = (reply.model_version, str(list(reply.classes)))
            except grpc.RpcError as exc:
                outcome = (f"error: {exc.code()} {exc.details()}", "")
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        for i in range(12):
            target = (v2, v1)[i % 2]
            seen = len(results)
            if i % 3 == 2:  # as `fedge client model use` does it: only the pointer changes
                (server.store.root / "active.json").write_text(
                    json.dumps({"version": target, "pinned": True})
                )
            else:  # as the daemon does it after a download
                server.store.activate(target)
                server.refresh()
            wait_for(lambda t=target: server.model is not None and server.model.version == t, 10, "switch")
            wait_for(lambda s=seen: len(results) >= s + 20, 10, "requests during the switch")
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    versions = Counter(v for v, _ in results)
    assert not [v for v in versions if v.startswith("error")], versions
    assert set(versions) == {v1, v2} and len(results) >= 240
    # Concurrent requests were coalesced: fewer model runs than requests.
    assert server.batches < len(results)


def test_health_info_and_bad_input(serving, exported) -> None:
    server, address, (v1, _) = serving
    stub = _stub(address)
    assert stub.Health(inference_pb2.HealthRequest(), timeout=5).status == inference_pb2.HealthReply.SERVING
    info = stub.ModelInfo(inference_pb2.ModelInfoRequest(), timeout=5)
    assert (
        info.loaded
        and info.version == v1
        and info.task == "digits"
        and list(info.input.shape) == [-1, 1, 8, 8]
    )
    image, label = sample_image(exported[0], 1)
    prepared = stub.Predict(_request(image.reshape(1, 1, 8, 8) / 16.0, prepared=True), timeout=5)
    assert list(prepared.classes) == [label]
    probs = np.frombuffer(prepared.probabilities.data, "<f4").reshape(list(prepared.probabilities.shape))
    assert probs.shape == (1, 10) and abs(float(probs.sum()) - 1.0) < 1e-5
    for bad, code in [
        (_request(np.zeros(7)), grpc.StatusCode.INVALID_ARGUMENT),
        (_request(np.full(64, np.nan)), grpc.StatusCode.INVALID_ARGUMENT),
        (
            inference_pb2.PredictRequest(input=inference_pb2.Tensor(shape=[2, 64], data=b"\0" * 12)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(bad, timeout=5)
        assert err.value.code() == code
    # The service is still fine afterwards.
    assert list(stub.Predict(_request(image), timeout=5).classes) == [label]


def test_a_damaged_bundle_is_never_served(serving, exported) -> None:
    server, address, (v1, v2) = serving
    damaged = server.store.root / v2 / "model.onnx"
    data = bytearray(damaged.read_bytes())
    data[-10] ^= 0x01
    damaged.write_bytes(bytes(data))
    with pytest.raises(FedgeError):
        server.store.activate(v2)
    (server.store.root / "active.json").write_text(json.dumps({"version": v2, "pinned": True}))
    assert server.refresh() is False
    assert _stub(address).ModelInfo(inference_pb2.ModelInfoRequest(), timeout=5).version == v1


def test_no_model_yet_then_restart_serves_the_active_model(tmp_path: Path, store) -> None:
    empty = InferenceServer(ModelStore(tmp_path / "nothing"), "127.0.0.1:0")
    address = empty.start()
    try:
        stub = _stub(address)
        health = stub.Health(inference_pb2.HealthRequest(), timeout=5)
        assert health.status == inference_pb2.HealthReply.NOT_SERVING
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(_request(np.zeros(64)), timeout=5)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert (tmp_path / "nothing" / "inference_address").read_text().strip() == address
    finally:
        empty.stop()
    assert not (tmp_path / "nothing" / "inference_address").exists()
    s, (v1, _) = store
    again = InferenceServer(s, "127.0.0.1:0")
    try:  # a restarted daemon serves its active model at once, server or not
        assert _stub(again.start()).Health(inference_pb2.HealthRequest(), timeout=5).version == v1
    finally:
        again.stop()


def test_plaintext_only_on_loopback_and_cli_errors(tmp_path: Path) -> None:
    with pytest.raises(FedgeError, match="non-loopback"):
        InferenceServer(ModelStore(tmp_path), "0.0.0.0:0")
    np.save(tmp_path / "x.npy", np.zeros(64))
    done = fedge_cli("client", "predict", "--input", str(tmp_path / "x.npy"), "--state-dir", str(tmp_path))
    assert (
        done.returncode == 2 and "no edge daemon serves inference" in done.stderr and "hint: " in done.stderr
    )
    done = fedge_cli("client", "predict", "--input", str(tmp_path / "nope.npy"), "--state-dir", str(tmp_path))
    assert done.returncode == 2 and "input file not found" in done.stderr
    done = fedge_cli("client", "predict", "--input", str(tmp_path / "x.npy"), "--address", "127.0.0.1:1")
    assert done.returncode == 2 and "cannot reach the edge daemon" in done.stderr
    assert "Traceback" not in done.stderr


def test_mtls_inference_for_non_loopback_callers(tmp_path: Path, store, exported) -> None:
    from fedge.security import init_pki, issue_admin, issue_server

    pki = tmp_path / "inference-pki"
    init_pki(pki)
    issue_server(pki, "localhost", ["127.0.0.1"])
    issue_admin(pki)
    s, (v1, _) = store
    server = InferenceServer(s, "0.0.0.0:0", tls_dir=pki)  # any interface: only with mTLS
    port = server.start().rsplit(":", 1)[1]
    try:
        image, label = sample_image(exported[0], 1)
        np.save(tmp_path / "x.npy", image)
        address = f"127.0.0.1:{port}"
        args = ("client", "predict", "--input", str(tmp_path / "x.npy"), "--address", address)
        done = fedge_cli(*args, "--tls-dir", str(pki))
        assert done.returncode == 0 and f"sample 0: class {label} " in done.stdout, done.stderr
        plain = fedge_cli(*args, "--timeout", "3")  # no client certificate: refused
        assert plain.returncode == 2 and "cannot reach the edge daemon" in plain.stderr
    finally:
        server.stop()


def test_resnet18_exports_passes_parity_and_is_served(tmp_path: Path) -> None:
    """ResNet-18 (11M parameters, 8×8 digits): export, the parity gate, and the inference service."""
    import torch

    from fedge.tasks import load_task, task_data

    run_dir = make_run_dir(tmp_path / "runs", rounds=1, model="resnet18", samples=64)
    bundle = export_bundle(run_dir, 1, tmp_path / "bundle")
    m = bundle.manifest.metrics
    assert bundle.manifest.exporter["model"] == "resnet18" and bundle.manifest.serve == "model.onnx"
    assert m["fp32.max-abs-diff"] <= m["fp32.tolerance"] and m["fp32.argmax-agreement"] == 1.0
    task = load_task("digits", model="resnet18")
    net = task.build_model()
    net.load_state_dict(torch.load(run_dir / "checkpoints" / "round-0001.pt", weights_only=True))
    _, (x_test, _) = task_data(task, 0)
    with torch.no_grad():
        expected = net.eval()(torch.from_numpy(x_test[:8])).argmax(1).tolist()
    target = tmp_path / "edge" / "models" / bundle.version
    target.mkdir(parents=True)
    for name in ("bundle.pb", "model.onnx"):
        shutil.copy(bundle.bundle_dir / name, target / name)
    store = ModelStore(tmp_path / "edge", allow_unsigned=True)
    store.activate(bundle.version)
    server = InferenceServer(store, "127.0.0.1:0")
    address = server.start()
    try:
        reply = _stub(address).Predict(_request(x_test[:8].reshape(8, -1) * task.input_scale), timeout=30)
    finally:
        server.stop()
    assert reply.model_version == bundle.version and list(reply.classes) == expected
