"""Client side of the Control API, with gRPC failures turned into actionable errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from fedge.config import split_address
from fedge.errors import FedgeError
from fedge.protos.v1 import control_pb2, control_pb2_grpc


class ControlClient:
    """A connection to a fedge server's Control service."""

    def __init__(self, address: str, timeout: float = 10.0, admin_dir: str | Path | None = None) -> None:
        split_address(address)
        self.address = address
        self._timeout = timeout
        self._channel = (
            _secure_channel(address, Path(admin_dir)) if admin_dir else grpc.insecure_channel(address)
        )
        self._stub = control_pb2_grpc.ControlStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            raise _translate(exc, self.address) from None

    def start_run(self, server_app: str, run_config: dict[str, Any], app_dir: str) -> control_pb2.RunStatus:
        return self._call(
            "StartRun",
            control_pb2.StartRunRequest(
                server_app=server_app, run_config_json=json.dumps(run_config), app_dir=app_dir
            ),
        )

    def list_runs(self) -> list[control_pb2.RunStatus]:
        return list(self._call("ListRuns", control_pb2.ListRunsRequest()).runs)

    def get_run(self, run_id: int) -> control_pb2.RunStatus:
        return self._call("GetRun", control_pb2.GetRunRequest(run_id=run_id))

    def stop_run(self, run_id: int) -> control_pb2.RunStatus:
        return self._call("StopRun", control_pb2.StopRunRequest(run_id=run_id))

    def resume_run(self, run_id: int) -> control_pb2.RunStatus:
        return self._call("ResumeRun", control_pb2.ResumeRunRequest(run_id=run_id))

    def list_nodes(self) -> list[control_pb2.NodeStatus]:
        return list(self._call("ListNodes", control_pb2.ListNodesRequest()).nodes)

    def events(self, run_id: int, replay: bool = True, follow: bool = True) -> Iterator[control_pb2.RunEvent]:
        """A run's events: recorded ones (``replay``), then live ones until it ends (``follow``)."""
        request = control_pb2.StreamEventsRequest(run_id=run_id, replay=replay, follow=follow)
        try:
            yield from self._stub.StreamEvents(request)
        except grpc.RpcError as exc:
            raise _translate(exc, self.address) from None


def _secure_channel(address: str, admin_dir: Path) -> grpc.Channel:
    """mTLS with the admin certificate (files as `fedge pki issue-admin` writes them)."""
    files = [admin_dir / n for n in ("ca.pem", "admin.pem", "admin.key")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FedgeError(
            f"admin credentials missing: {', '.join(missing)}", "create them with `fedge pki issue-admin`"
        )
    ca, cert, key = (f.read_bytes() for f in files)
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    return grpc.secure_channel(address, creds)


def _translate(exc: grpc.RpcError, address: str) -> FedgeError:
    code = exc.code() if hasattr(exc, "code") else None
    detail = exc.details() if hasattr(exc, "details") else str(exc)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return FedgeError(
            f"cannot reach the fedge server at {address}",
            "start it with `fedge server start`, or check --server HOST:PORT",
        )
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return FedgeError(
            f"the server refused these credentials: {detail}", "use an unrevoked admin certificate"
        )
    if code == grpc.StatusCode.NOT_FOUND:
        return FedgeError(str(detail), "list runs with `fedge run list`")
    if code == grpc.StatusCode.FAILED_PRECONDITION:  # "<message> (<hint>)" from the server
        message, _, hint = str(detail).rpartition(" (")
        return FedgeError(message, hint.removesuffix(")")) if message else FedgeError(str(detail))
    return FedgeError(f"server refused the request: {detail}", "check the server log (-v)")
