"""Stock Flower apps, unchanged, on fedge and on Flower's simulation engine: the same results.

Every app in this directory imports ``flwr`` (and numpy) only. Each runs twice in its test: on a
real fedge federation — one ``fedge server`` with mTLS and sealed updates, shared by the module,
and three real ``fedge client`` daemons running the app's ClientApp — and on Flower's Ray
simulation engine with three virtual nodes. The apps write what they computed to
``result-path``; both engines must agree. All apps are deterministic (seeded data, no sampling
randomness: every node takes part), so the agreement asked is float equality up to summation
order (relative 1e-9) — except SecAgg+, whose stochastic quantization gets a stated tolerance.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from fedge.server.run_cli import build_run_config, follow
from fedge.sim.local import LocalFederation
from fedge.sim.ray_engine import run_on_ray
from tests.conftest import REPO, fedge_cli

pytestmark = pytest.mark.e2e

ZOO = REPO / "tests" / "appzoo"
CLIENTS = 3
ROUNDS = 2
_RUNNING: dict[str, str] = {}  # the ClientApp the module's daemons run now
_HEAD: dict[str, Future[tuple[subprocess.Popen[bytes], str]]] = {}  # the module's Ray head


@pytest.fixture(scope="module", autouse=True)
def ray_head() -> Iterator[None]:
    """One Ray head for every app's Flower simulation, which connects to it (``RAY_ADDRESS``).

    Starting Ray is most of a small simulation's time; sharing one head leaves each app only its
    own actors to start. Its temp dir is private, so no other ``ray.init()`` on this machine finds
    it, and it is stopped by killing its own process group.
    """
    temp = Path(tempfile.mkdtemp(prefix="fz"))  # short: Ray's socket paths live under it
    saved = os.environ.get("RAY_ADDRESS")
    with ThreadPoolExecutor(1) as pool:  # it starts while the fedge server and daemons do
        _HEAD["head"] = pool.submit(_start_head, temp)
        try:
            yield
        finally:
            if saved is None:
                os.environ.pop("RAY_ADDRESS", None)
            else:
                os.environ["RAY_ADDRESS"] = saved
            with contextlib.suppress(AssertionError):
                _stop_group(_HEAD.pop("head").result()[0])
            shutil.rmtree(temp, ignore_errors=True)


def _start_head(temp: Path, attempts: int = 3) -> tuple[subprocess.Popen[bytes], str]:
    """``ray start --head`` on free ports; on a loaded machine its node can time out: try again."""
    log = temp / "head.log"
    for _ in range(attempts):
        port, client_port, agent_port, dashboard_port = _free_ports(4)
        with log.open("wb") as out:
            head = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("ray")),
                    "start",
                    "--head",
                    "--block",
                    f"--port={port}",
                    f"--ray-client-server-port={client_port}",
                    f"--dashboard-agent-listen-port={agent_port}",
                    f"--dashboard-port={dashboard_port}",
                    f"--temp-dir={temp}",
                    "--num-cpus=1",  # one ClientApp actor: one worker process to start per app
                    "--include-dashboard=false",
                    "--disable-usage-stats",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "RAY_ADDRESS": ""},
            )
        deadline = time.monotonic() + 120
        while head.poll() is None and time.monotonic() < deadline:
            if "Ray runtime started" in log.read_text(errors="replace"):
                return head, f"127.0.0.1:{port}"
            time.sleep(0.2)
        _stop_group(head)
    raise AssertionError(f"Ray's head did not start:\n{log.read_text(errors='replace')[-2000:]}")


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=15)
            return


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    """One mTLS fedge server for the whole zoo; each test starts its app's daemons."""
    fed = LocalFederation(tmp_path_factory.mktemp("zoo"))
    try:
        fed.start_server()
        yield fed
    finally:
        fed.close()


def _daemons(fed: LocalFederation, client_ref: str, app_dir: Path, wait: bool = True) -> None:
    """Make the running daemons ``CLIENTS`` daemons of ``client_ref`` (enrolled once).

    Started from the test's main thread only: a daemon is told to exit when the thread that
    started it ends (``PR_SET_PDEATHSIG``), so never from a pool thread.
    """
    alive = fed.daemons and all(p.poll() is None for p in fed.daemons)
    if not alive or _RUNNING.get("client") != client_ref:
        fed.stop_daemons()
        _RUNNING["client"] = client_ref
        for i in range(CLIENTS):
            node = ["--node-config", f"partition-id={i}", "--node-config", f"num-partitions={CLIENTS}"]
            fed.start_daemon(f"edge-{i}", ["--client-app", client_ref, "--app-dir", str(app_dir), *node])
    if wait:
        fed.wait_for_nodes(CLIENTS)


def on_fedge(fed: LocalFederation, app: str, out: Path, app_dir: Path = ZOO) -> dict[str, Any]:
    """Run ``app``'s ServerApp on ``fed`` with its ClientApp on the daemons; its result and run dir."""
    started = time.monotonic()
    _daemons(fed, f"{app}:client_app", app_dir)
    daemons_s = time.monotonic() - started
    config = {"num-server-rounds": ROUNDS, "result-path": str(out / "fedge.json")}
    client = fed.control()
    try:
        status = client.start_run(f"{app}:server_app", config, str(app_dir))
        follow(client, status.run_id, ROUNDS, Console(stderr=True))
        run_dir = Path(client.get_run(status.run_id).run_dir)
    finally:
        client.close()
    print(f"{app} on fedge: daemons {daemons_s:.1f} s, run {time.monotonic() - started - daemons_s:.1f} s")
    return {"result": json.loads((out / "fedge.json").read_text()), "run_dir": run_dir}


def on_flower(
    app: str,
    out: Path,
    config: dict[str, Any] | None = None,
    app_dir: Path = ZOO,
    refs: tuple[str, str] = ("", ""),
) -> Any:
    """Run the same apps on Flower's Ray simulation engine; the app's result."""
    config = {**(config or {"num-server-rounds": ROUNDS}), "result-path": str(out / "flower.json")}
    config["run-dir"] = str(out / "flower-run")
    server_ref, client_ref = refs if refs[0] else (f"{app}:server_app", f"{app}:client_app")
    os.environ["RAY_ADDRESS"] = _HEAD["head"].result()[1]  # the module's Ray head, once it is up
    started = time.monotonic()
    run_on_ray(config, CLIENTS, server_app_ref=server_ref, client_app_ref=client_ref, app_dir=str(app_dir))
    print(f"{app} on Flower's Ray engine: {time.monotonic() - started:.1f} s")
    return json.loads((out / "flower.json").read_text())


def on_both(fed: LocalFederation, app: str, out: Path) -> tuple[dict[str, Any], Any]:
    """:func:`on_fedge` (in a thread: it only drives processes) while Flower's engine runs here."""
    _daemons(fed, f"{app}:client_app", ZOO, wait=False)
    with ThreadPoolExecutor(1) as pool:
        fedge = pool.submit(on_fedge, fed, app, out)
        flower = on_flower(app, out)
        return fedge.result(), flower


def agree(a: Any, b: Any, path: str = "", abs_tol: float = 1e-12) -> None:
    """``a == b`` with floats equal up to summation order (or within ``abs_tol``)."""
    if isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=abs_tol), f"{path}: {a} != {b}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            agree(a[key], b[key], f"{path}.{key}", abs_tol)
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            agree(x, y, f"{path}[{i}]", abs_tol)
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _models(result: dict[str, Any]) -> list[list[float]]:
    return [result["models"][str(r)] for r in range(ROUNDS + 1)]


def test_legacy_server_fn_with_a_numpy_client(federation: LocalFederation, tmp_path: Path) -> None:
    fedge, flower = on_both(federation, "zoo_legacy", tmp_path)
    agree(fedge["result"], flower)
    models = _models(fedge["result"])
    assert models[0] == [0.0] * 4 and models[2] != models[1]
    # fedge recorded the stock app's rounds from what crossed its grid.
    rows = _rows(fedge["run_dir"])
    assert [(r["round"], r["train-replies"], r["evaluate-replies"]) for r in rows] == [(1, 3, 3), (2, 3, 3)]
    assert rows[1]["evaluate-loss"] < rows[0]["evaluate-loss"]
    assert (fedge["run_dir"] / "plots" / "loss.png").is_file()
    # The logs of the server and of every daemon: the app's own INFO progress at the default
    # verbosity, no "Key 'arrays' was overwritten" per sealed reply, no colour codes.
    logs = {p.name: p.read_text(errors="replace") for p in federation.workdir.glob("*.log")}
    assert sorted(logs) == ["edge-0.log", "edge-1.log", "edge-2.log", "server.log"]
    for name, text in logs.items():
        assert "was overwritten" not in text, name
        assert "\x1b[" not in text, name
    assert "[ROUND 1]" in logs["server.log"] and "aggregate_fit: received 3 results" in logs["server.log"]


def test_a_custom_legacy_strategy_with_histogram_replies(federation: LocalFederation, tmp_path: Path) -> None:
    fedge, flower = on_both(federation, "zoo_strategy", tmp_path)
    agree(fedge["result"], flower)
    for counts, (results, failures) in fedge["result"]["rounds"].values():
        assert (results, failures) == (3, 0) and sum(counts) > 150


def test_flowers_secagg_plus_with_a_client_dropping_out(federation: LocalFederation, tmp_path: Path) -> None:
    fedge, flower = on_both(federation, "zoo_secagg", tmp_path)
    # SecAgg+ quantizes with stochastic rounding (np.random): a step of 16/2^22 per element,
    # scaled by max-weight/Σ weights (~7) when unweighted, over two rounds: 1e-4 is ~4 steps.
    # Aggregating the dropout's update, or missing a survivor's, moves the model by > 0.1.
    agree(fedge["result"], flower, abs_tol=1e-4)
    models = _models(fedge["result"])
    assert models[1] != [0.0] * 4
    rows = _rows(fedge["run_dir"])
    # Round 1: the dropout's failure is seen at the grid; round 2: every client took part.
    assert rows[0]["train-failures"] == 1 and rows[1]["train-failures"] == 0


def test_client_side_dp_with_fixed_clipping(federation: LocalFederation, tmp_path: Path) -> None:
    fedge, flower = on_both(federation, "zoo_dp", tmp_path)
    agree(fedge["result"], flower)
    models = _models(fedge["result"])
    step = math.dist(models[1], models[0])
    assert 0 < step <= fedge["result"]["clip"] + 1e-9  # every update clipped, so their mean too


def test_a_query_app_with_replies_that_are_not_models(federation: LocalFederation, tmp_path: Path) -> None:
    fedge, flower = on_both(federation, "zoo_query", tmp_path)
    agree(fedge["result"], flower)
    assert [fedge["result"][str(c)]["replies"] for c in range(ROUNDS)] == [3, 3]
    rows = _rows(fedge["run_dir"])
    assert [r["group"] for r in rows] == ["exchange"] * ROUNDS and rows[0]["query-replies"] == 3


def test_push_without_waiting_and_custom_message_types(federation: LocalFederation, tmp_path: Path) -> None:
    fedge, flower = on_both(federation, "zoo_push", tmp_path)
    agree(fedge["result"], flower)
    assert fedge["result"]["sums"] == [11, 11, 11]


def test_a_client_answering_in_other_dtypes(federation: LocalFederation, tmp_path: Path) -> None:
    fedge, flower = on_both(federation, "zoo_dtypes", tmp_path)
    agree(fedge["result"], flower)
    assert fedge["result"]["steps"] == [10.0]


def test_a_run_whose_every_reply_is_rejected_fails_with_the_reasons(
    federation: LocalFederation, tmp_path: Path
) -> None:
    # The dtypes app again, now declaring that replies mirror instructions: its float64 replies
    # to a float32 model are all rejected. FedAvg carries on without them; the run must not.
    _daemons(federation, "zoo_dtypes:client_app", ZOO)
    common = ["--server", federation.address, *federation.auth]
    done = fedge_cli(
        "run",
        "start",
        *common,
        "--server-app",
        "zoo_dtypes:server_app",
        "--app-dir",
        str(ZOO),
        "--rounds",
        "1",
        "--set",
        "replies-mirror-instructions=true",
    )
    assert done.returncode == 1, done.stderr[-3000:]
    reason = "none of the run's 3 replies was usable: 3× update rejected (dtype): array 'w' has dtype float64"
    assert reason in " ".join(done.stderr.split()), done.stderr[-3000:]
    run_id = done.stderr.split("run ", 1)[1].split()[0]
    status = fedge_cli("run", "status", run_id, *common)
    assert status.returncode == 0 and "failed" in status.stdout
    assert reason in " ".join(status.stdout.split()), status.stdout
    # The round as the grid recorded it: round 1, no replies, no failures, 3 rejected.
    assert re.search(r"^\s*1\s+0\s+0\s+3\s*$", status.stdout, re.MULTILINE), status.stdout


def test_no_initial_parameters(federation: LocalFederation, tmp_path: Path) -> None:
    fedge, flower = on_both(federation, "zoo_noinit", tmp_path)
    agree(fedge["result"], flower)
    assert _models(fedge["result"])[0] == [0.25] * 4  # what the client's get_parameters gave


def test_an_app_configured_by_its_pyproject(federation: LocalFederation, tmp_path: Path) -> None:
    app_dir = ZOO / "configapp"
    _daemons(federation, "configapp.client_app:app", app_dir, wait=False)  # the run waits for them
    command = ["run", "start", "--server", federation.address, *federation.auth]
    command += ["--server-app", "configapp.server_app:app", "--app-dir", str(app_dir)]
    with ThreadPoolExecutor(1) as pool:  # the real CLI, no --rounds, only the result path set
        started = pool.submit(fedge_cli, *command, "--set", f"result-path={tmp_path / 'fedge.json'}")
        # Flower's engine gets what `flwr run` would read from the same pyproject.
        config = build_run_config(None, None, None, None, None, "configapp.server_app:app", str(app_dir))
        refs = ("configapp.server_app:app", "configapp.client_app:app")
        flower = on_flower("configapp", tmp_path, config, app_dir, refs)
        done = started.result()
    assert done.returncode == 0, done.stderr[-3000:]
    fedge = json.loads((tmp_path / "fedge.json").read_text())
    assert fedge["config"] == {"num-server-rounds": 2, "local-epochs": 3, "lr": 0.05, "model.size": 4}
    agree(fedge, flower)
