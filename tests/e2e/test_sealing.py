"""With mTLS and sealing on (the default), the server process never holds or writes an update.

The server runs in-process so the test sees every reply byte its process receives. The
plaintext run is the control: there the same search does find the clients' updates.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fedge.chunks import FileSpan
from fedge.config import ServerConfig
from fedge.server.service import FedgeServer
from fedge.sim.local import LocalFederation
from tests.conftest import REPO

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("secure", [True, False])
def test_the_server_never_sees_or_writes_an_individual_update(tmp_path: Path, secure: bool) -> None:
    probes, work = tmp_path / "probes", tmp_path / "fed"
    probes.mkdir()
    work.mkdir()
    fed = LocalFederation(work, secure=secure)
    if secure:
        fed._ensure_pki()
    cfg = ServerConfig(
        address="127.0.0.1:0",
        state_dir=str(work / "server"),
        insecure=not secure,
        pki_dir=str(fed.pki_dir) if secure else "",
        enroll_address="127.0.0.1:0" if secure else "",
    )
    server = FedgeServer(cfg, verbosity=2)
    received: list[bytes] = []
    deliver = server.router.deliver

    def seen(data: bytes | FileSpan) -> bytes:  # a reply spooled to disk: what the file holds
        return Path(data.path).read_bytes() if isinstance(data, FileSpan) else data

    server.router.deliver = lambda node, mid, data: received.append(seen(data)) or deliver(node, mid, data)  # type: ignore[method-assign]
    fed.address = server.start()
    fed.enroll_address = server.enroll_address
    try:
        for i in range(2):
            fed.start_daemon(
                f"edge-{i}",
                [
                    "--client-app",
                    "tests.apps.leak_probe:client_app",
                    "--app-dir",
                    str(REPO),
                    "--node-config",
                    f"partition-id={i}",
                    "--node-config",
                    f"probe-dir={probes}",
                ],
            )
        fed.wait_for_nodes(2)
        client = fed.control()
        run = client.start_run("tests.apps.leak_probe:server_app", {"num-server-rounds": 2}, str(REPO))
        assert [e.kind for e in client.events(run.run_id)][-1] == "run-finished"
    finally:
        fed.close()
        server.stop(grace=0)
    updates = [p.read_bytes() for p in probes.iterdir()]
    assert len(updates) == 4  # 2 clients × 2 rounds, each 16 KiB of high-entropy float32
    needles = [u[i : i + 32] for u in updates for i in (0, len(u) // 2, len(u) - 32)]
    seen_on_wire = any(n in blob for blob in received for n in needles)
    assert seen_on_wire is not secure  # control: plaintext replies do carry the updates
    if secure:
        written = [p for p in (work / "server").rglob("*") if p.is_file()]
        assert any(p.name == "fedge.db" for p in written) and any(p.name == "audit.jsonl" for p in written)
        for path in written:
            blob = path.read_bytes()
            assert not any(n in blob for n in needles), f"{path} holds a client's update"
