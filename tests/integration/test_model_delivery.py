"""The daemon receiving model bundles from a fake Fleet server that serves exactly the bytes we say.

A tampered file or a manifest signed by another key must be refused, and the daemon must keep
serving the model it had; rollback pins a version until ``use latest``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fedge.client.daemon import EdgeDaemon
from fedge.client.runtime import load_client_app
from fedge.config import EdgeConfig
from fedge.export import export_bundle
from fedge.protos.v1 import fleet_pb2, inference_pb2, inference_pb2_grpc
from fedge.security.bundles import open_bundle
from tests.conftest import fedge_cli
from tests.model_runs import make_run_dir, sample_image

from .edge_fakes import FakeFleet, wait_for

APP = load_client_app("tests.integration.edge_test_app:app")


class ModelFleet(FakeFleet):
    """FakeFleet that offers bundles and answers model requests with chosen bytes, in two parts."""

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, tuple[str, bytes]] = {}
        self.requests: list[str] = []
        self.statuses: list[fleet_pb2.ModelStatus] = []

    def offer(self, bundle_dir: Path, data: bytes | None = None) -> str:
        raw = (bundle_dir / "bundle.pb").read_bytes()
        manifest = open_bundle(raw, None, allow_unsigned=True)  # the fake does not check: the device must
        served = (bundle_dir / manifest.serve).read_bytes() if data is None else data
        self.files[manifest.version] = (manifest.serve, served)
        offer = fleet_pb2.ModelOffer(version=manifest.version, bundle=raw)
        self.wait_streams(1, 10).outbox.put(fleet_pb2.ServerFrame(model_offer=offer))
        return manifest.version

    def wait_status(self, version: str, timeout: float = 20) -> fleet_pb2.ModelStatus:
        with self._cond:
            assert self._cond.wait_for(lambda: any(s.version == version for s in self.statuses), timeout)
            return next(s for s in self.statuses if s.version == version)

    def _read(self, stream, frames) -> None:  # type: ignore[no-untyped-def]
        try:
            for frame in frames:
                kind = frame.WhichOneof("kind")
                with self._cond:
                    if kind == "model_request":
                        version = frame.model_request.version
                        self.requests.append(version)
                        name, data = self.files[version]
                        half = len(data) // 2
                        for i, piece in enumerate((data[:half], data[half:])):
                            part = fleet_pb2.ModelPart(
                                version=version, file=name, index=i, total=2, data=piece
                            )
                            stream.outbox.put(fleet_pb2.ServerFrame(model_part=part))
                    elif kind == "model_status":
                        self.statuses.append(frame.model_status)
                    self._cond.notify_all()
        except grpc.RpcError:
            pass
        finally:
            stream.ended.set()
            stream.outbox.put(None)


@pytest.fixture(scope="module")
def keys() -> dict[str, Ed25519PrivateKey]:
    return {"server": Ed25519PrivateKey.generate(), "other": Ed25519PrivateKey.generate()}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Ed25519PrivateKey]) -> dict[str, Path]:
    """Rounds 1..3 signed by the server key, round 3 also signed by another key."""
    root = tmp_path_factory.mktemp("bundles")
    run_dir = make_run_dir(root, rounds=3)
    out = {
        f"r{r}": export_bundle(run_dir, r, root / f"r{r}", signing_key=keys["server"]).bundle_dir
        for r in (1, 2, 3)
    }
    out["foreign"] = export_bundle(run_dir, 3, root / "foreign", signing_key=keys["other"]).bundle_dir
    out["run"] = run_dir
    return out


@pytest.fixture
def fleet() -> Iterator[ModelFleet]:
    server = ModelFleet().start()
    yield server
    server.stop()


@pytest.fixture
def daemon(fleet: ModelFleet, tmp_path: Path, keys: dict[str, Ed25519PrivateKey]) -> Iterator[EdgeDaemon]:
    """A daemon that pins the server key (as enrollment leaves it), connected to the fake fleet."""
    state = tmp_path / "edge"
    state.mkdir()
    pub = keys["server"].public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    (state / "server-signing.pub").write_bytes(pub)
    cfg = EdgeConfig(server=fleet.address, name="edge-1", state_dir=str(state), insecure=True)
    edge = EdgeDaemon(cfg, APP)  # type: ignore[arg-type]
    thread = threading.Thread(target=edge.run_forever, daemon=True)
    thread.start()
    assert edge.wait_connected(10)
    yield edge
    edge.stop()
    thread.join(10)


def _stub(edge: EdgeDaemon) -> inference_pb2_grpc.EdgeInferenceStub:
    assert edge.inference is not None
    return inference_pb2_grpc.EdgeInferenceStub(grpc.insecure_channel(edge.inference.bound))


def _served(edge: EdgeDaemon) -> str:
    return _stub(edge).ModelInfo(inference_pb2.ModelInfoRequest(), timeout=5).version


def _predict(edge: EdgeDaemon, x: np.ndarray) -> inference_pb2.PredictReply:
    tensor = inference_pb2.Tensor(shape=list(x.shape), data=x.astype("<f4").tobytes())
    return _stub(edge).Predict(inference_pb2.PredictRequest(input=tensor), timeout=10)


def test_offered_bundle_is_verified_stored_and_served(fleet: ModelFleet, daemon: EdgeDaemon, bundles) -> None:
    assert "models-v1" in fleet.wait_streams(1, 5).hello.capabilities
    v1 = fleet.offer(bundles["r1"])
    status = fleet.wait_status(v1)
    assert status.installed and status.active == v1 and not status.error
    wait_for(lambda: _served(daemon) == v1, 10, "the daemon to serve v1")
    image, label = sample_image(bundles["run"], 1)
    reply = _predict(daemon, image)
    assert list(reply.classes) == [label] and reply.model_version == v1
    stored = Path(daemon.cfg.state_dir) / "models" / v1
    assert sorted(p.name for p in stored.iterdir()) == ["bundle.pb", "model.onnx"]
    fleet.offer(bundles["r1"])  # offered again (e.g. on reconnect): nothing is downloaded twice
    wait_for(lambda: len([s for s in fleet.statuses if s.version == v1]) == 2, 10, "second status")
    assert fleet.requests == [v1]


def test_tampered_or_foreign_bundles_are_refused_and_the_old_model_keeps_serving(
    fleet: ModelFleet, daemon: EdgeDaemon, bundles
) -> None:
    v1 = fleet.offer(bundles["r1"])
    wait_for(lambda: _served(daemon) == v1, 20, "the daemon to serve v1")
    image, _ = sample_image(bundles["run"], 1)

    good = (bundles["r2"] / "model.onnx").read_bytes()
    tampered = bytearray(good)
    tampered[len(tampered) // 2] ^= 0x01  # one byte of the model changed
    v2 = fleet.offer(bundles["r2"], bytes(tampered))
    status = fleet.wait_status(v2)
    assert not status.installed and "does not match its SHA-256" in status.error and status.active == v1
    assert _served(daemon) == v1 and _predict(daemon, image).model_version == v1
    models = Path(daemon.cfg.state_dir) / "models"
    assert not (models / v2).exists() and not [p for p in models.iterdir() if p.name.startswith(".incoming")]

    foreign = fleet.offer(bundles["foreign"])  # a manifest signed by another key
    status = fleet.wait_status(foreign)
    assert not status.installed and "not signed by the trusted server key" in status.error
    assert foreign not in fleet.requests  # refused on the signature, before any byte was fetched
    assert _served(daemon) == v1 and _predict(daemon, image).model_version == v1

    fleet.statuses.clear()
    assert fleet.offer(bundles["r2"]) == v2  # the genuine bytes are accepted
    assert fleet.wait_status(v2).installed
    wait_for(lambda: _served(daemon) == v2, 10, "the daemon to serve v2")


def test_rollback_pins_a_version_until_use_latest(fleet: ModelFleet, daemon: EdgeDaemon, bundles) -> None:
    state = daemon.cfg.state_dir
    v1 = fleet.offer(bundles["r1"])
    fleet.wait_status(v1)
    v2 = fleet.offer(bundles["r2"])
    fleet.wait_status(v2)
    wait_for(lambda: _served(daemon) == v2, 10, "v2 served")

    done = fedge_cli("client", "model", "use", v1, "--state-dir", state)
    assert done.returncode == 0, done.stderr
    assert "pinned" in done.stdout and f"the running daemon serves {v1}" in done.stdout
    assert _stub(daemon).ModelInfo(inference_pb2.ModelInfoRequest(), timeout=5).pinned

    v3 = fleet.offer(bundles["r3"])  # arrives while pinned: stored, not activated
    assert fleet.wait_status(v3).installed
    assert _served(daemon) == v1
    listing = fedge_cli("client", "model", "list", "--state-dir", state)
    assert listing.returncode == 0 and all(v in listing.stdout for v in (v1, v2, v3))
    assert "active, pinned" in listing.stdout

    done = fedge_cli("client", "model", "use", "latest", "--state-dir", state)
    assert done.returncode == 0 and v3 in done.stdout, done.stderr
    wait_for(lambda: _served(daemon) == v3, 10, "v3 served after unpinning")

    bad = fedge_cli("client", "model", "use", "9.9-deadbeef", "--state-dir", state)
    assert bad.returncode == 2 and "no model '9.9-deadbeef' on this device" in bad.stderr
    assert "hint: " in bad.stderr and _served(daemon) == v3
