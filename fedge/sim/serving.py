"""After a simulated run: check that every daemon serves the run's final model; optionally hold.

The run's final bundle is exported and published before the run is reported finished (its
``model-exported`` event precedes ``run-finished``), so when ``follow`` returns the version is
known; each daemon then reports it through its own EdgeInference service once it has downloaded,
verified and switched to it. ``--hold`` keeps the federation up afterwards so a user (or a test)
can call ``fedge client predict --state-dir <workdir>/edge-0 --input x.npy``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
from rich.console import Console

from fedge.errors import FedgeError
from fedge.protos.v1 import inference_pb2, inference_pb2_grpc
from fedge.server.control_client import ControlClient
from fedge.server.events import EventKind

ADDRESS_FILE = "inference_address"  # fedge.client.inference.ADDRESS_FILE (sim never imports client internals)


def final_model(client: ControlClient, run_id: int) -> tuple[str, str]:
    """(version, "") of the run's last exported bundle, or ("", why there is none)."""
    version, why = "", "none was exported (export=off, or the ServerApp writes no checkpoints)"
    for event in client.events(run_id, replay=True, follow=False):
        data = json.loads(event.data_json or "{}")
        if event.kind == EventKind.MODEL_EXPORTED:
            version, why = str(data.get("version", "")), ""
        elif event.kind == EventKind.EXPORT_FAILED:
            version, why = "", f"model export failed: {data.get('error', '?')}"
    return version, why


def served_version(address: str, timeout: float = 2.0) -> str:
    """The version a daemon's inference service reports ("" if none or unreachable)."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = inference_pb2_grpc.EdgeInferenceStub(channel).ModelInfo(
                inference_pb2.ModelInfoRequest(), timeout=timeout
            )
        except grpc.RpcError:
            return ""
    return reply.version


def wait_served(states: dict[str, Path], version: str, timeout: float = 60.0) -> dict[str, str]:
    """Block until every daemon serves ``version``; returns name → inference address."""
    deadline = time.monotonic() + timeout
    done: dict[str, str] = {}
    while len(done) < len(states):
        for name, state in states.items():
            if name in done:
                continue
            try:
                address = (state / ADDRESS_FILE).read_text().strip()
            except OSError:
                continue
            if served_version(address) == version:
                done[name] = address
        if len(done) < len(states):
            if time.monotonic() > deadline:
                missing = ", ".join(sorted(set(states) - set(done)))
                raise FedgeError(
                    f"{missing} did not serve model {version} within {timeout:.0f} s",
                    "see the daemon logs in the workdir (a refused bundle is logged there)",
                )
            time.sleep(0.1)
    return done


def check_serving(
    client: ControlClient, run_id: int, states: dict[str, Path], console: Console, hold: bool
) -> None:
    """Report which model every daemon serves; with ``hold``, keep running until Ctrl-C/SIGTERM.

    An inference address is printed only while it is alive, i.e. with ``hold``: without it the
    daemons stop with the simulation, and an address to a stopped daemon would mislead.
    """
    version, why = final_model(client, run_id)
    if not version:
        console.print(f"no model to serve: {why}", soft_wrap=True)
    else:
        for name, address in sorted(wait_served(states, version).items()):
            where = f"serves model {version} on {address}" if hold else f"served model {version}"
            console.print(f"{name} {where}", soft_wrap=True)
    if not hold:
        console.print("daemons stopped with the simulation (--hold keeps them serving)", soft_wrap=True)
        return
    first = next(iter(sorted(states.values())), None)
    console.print(
        f"holding the federation; try `fedge client predict --state-dir {first} --input x.npy` "
        "(Ctrl-C or SIGTERM to stop)",
        soft_wrap=True,
    )
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        console.print("stopping the federation")
