"""Control service: what the server CLI (``fedge run …``, ``fedge nodes …``) talks to."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import grpc

from fedge.eligibility import to_proto
from fedge.errors import FedgeError
from fedge.protos.v1 import control_pb2, control_pb2_grpc
from fedge.server.events import TERMINAL_STATES
from fedge.server.relay_role import claims_relay
from fedge.server.router import Router
from fedge.server.runs import RunManager
from fedge.server.store import RunRow, Store
from fedge.server.tls import Gate

DEFAULT_SERVER_APP = "fedge.server.app:app"


class ControlService(control_pb2_grpc.ControlServicer):
    """Start, list, watch and stop runs; list nodes."""

    def __init__(self, store: Store, router: Router, runs: RunManager, gate: Gate) -> None:
        self._gate = gate
        self._store = store
        self._router = router
        self._runs = runs

    def StartRun(
        self, request: control_pb2.StartRunRequest, context: grpc.ServicerContext
    ) -> control_pb2.RunStatus:  # noqa: N802
        self._gate.admit_admin(context)
        try:
            run_config = json.loads(request.run_config_json or "{}")
        except json.JSONDecodeError:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "run_config_json is not valid JSON")
        if not isinstance(run_config, dict) or not all(
            isinstance(v, (bool, int, float, str)) for v in run_config.values()
        ):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "run config values must be bool, int, float or str"
            )
        if any(claims_relay(s.capabilities) for s in self._router.sessions()):
            # Imported here: the rules load the strategies (and torch), which a server without
            # relays never needs in its process.
            from fedge.server.relay_settings import relay_refusal

            refused = relay_refusal(run_config)  # docs/relay.md
            if refused is not None and (request.server_app or DEFAULT_SERVER_APP) == DEFAULT_SERVER_APP:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{refused.message} ({refused.hint})")
        try:
            row = self._runs.start(request.server_app or DEFAULT_SERVER_APP, run_config, request.app_dir)
        except FedgeError as exc:  # a bad setting (e.g. export=) is the caller's to fix
            detail = f"{exc.message} ({exc.hint})" if exc.hint else exc.message
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, detail)
            raise
        return self._status(row)

    def ListRuns(
        self, request: control_pb2.ListRunsRequest, context: grpc.ServicerContext
    ) -> control_pb2.ListRunsResponse:  # noqa: N802
        self._gate.admit_admin(context)
        return control_pb2.ListRunsResponse(runs=[self._status(r, rounds=False) for r in self._store.runs()])

    def GetRun(
        self, request: control_pb2.GetRunRequest, context: grpc.ServicerContext
    ) -> control_pb2.RunStatus:  # noqa: N802
        self._gate.admit_admin(context)
        return self._status(self._get(request.run_id, context))

    def StopRun(
        self, request: control_pb2.StopRunRequest, context: grpc.ServicerContext
    ) -> control_pb2.RunStatus:  # noqa: N802
        self._gate.admit_admin(context)
        self._get(request.run_id, context)
        try:
            return self._status(self._runs.stop(request.run_id))
        except FedgeError as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, exc.message)
            raise

    def ResumeRun(
        self, request: control_pb2.ResumeRunRequest, context: grpc.ServicerContext
    ) -> control_pb2.RunStatus:  # noqa: N802
        self._gate.admit_admin(context)
        self._get(request.run_id, context)
        try:
            return self._status(self._runs.resume(request.run_id))
        except FedgeError as exc:  # not resumable (finished, running, nothing committed)
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{exc.message} ({exc.hint})")
            raise

    def StreamEvents(  # noqa: N802
        self, request: control_pb2.StreamEventsRequest, context: grpc.ServicerContext
    ) -> Iterator[control_pb2.RunEvent]:
        self._gate.admit_admin(context)
        run_id = request.run_id
        self._get(run_id, context)
        seq = 0 if request.replay else max((s for s, *_ in self._store.events(run_id)), default=0)
        # Told when the call ends (a grpc.aio server's sync handler context has no is_active()).
        ended = threading.Event()
        context.add_callback(ended.set)
        while not ended.is_set():
            for s, kind, at, data in self._store.events(run_id, seq):
                seq = s
                yield control_pb2.RunEvent(run_id=run_id, kind=kind, at=at, data_json=json.dumps(data))
            if not request.follow:
                return
            row = self._store.run(run_id)
            if row is None or row.state in TERMINAL_STATES:
                if not self._store.events(run_id, seq):
                    return
                continue
            with self._runs.changed:
                # Checked under the lock the recorder notifies under: an event recorded after the
                # read above wakes this wait instead of being noticed a second later.
                if not self._store.events(run_id, seq):
                    self._runs.changed.wait(timeout=1.0)

    def ListNodes(
        self, request: control_pb2.ListNodesRequest, context: grpc.ServicerContext
    ) -> control_pb2.ListNodesResponse:  # noqa: N802
        self._gate.admit_admin(context)
        online = {s.node_id: s for s in self._router.sessions()}
        nodes = [
            control_pb2.NodeStatus(
                node_id=n.node_id,
                name=n.name,
                online=n.node_id in online,
                first_seen=n.first_seen,
                last_seen=n.last_seen,
                peer=n.peer,
                accelerator=online[n.node_id].accelerator if n.node_id in online else "",
                properties=to_proto(online[n.node_id].properties) if n.node_id in online else None,
            )
            for n in self._store.nodes()
        ]
        return control_pb2.ListNodesResponse(nodes=nodes)

    def _get(self, run_id: int, context: grpc.ServicerContext) -> RunRow:
        row = self._store.run(run_id)
        if row is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no run with id {run_id}")
        return row  # type: ignore[return-value]

    def _status(self, row: RunRow, rounds: bool = True) -> control_pb2.RunStatus:
        return control_pb2.RunStatus(
            run_id=row.run_id,
            state=row.state,
            server_app=row.server_app,
            current_round=row.current_round,
            num_rounds=row.num_rounds,
            created_at=row.created_at,
            finished_at=row.finished_at,
            error=row.error,
            run_dir=row.run_dir,
            run_config_json=json.dumps(row.run_config),
            rounds_json=json.dumps(self._store.rounds(row.run_id)) if rounds else "",
        )
