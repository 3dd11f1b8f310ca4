"""A whole federation in one process on fedge's real grid, runtime and screening — no sockets.

``InProcessFleet`` is the grid's :class:`~fedge.server.grid.Link`: pushed instruction bytes go
straight into each node's :class:`~fedge.client.runtime.ClientRuntime` (the daemon's runtime, with
its client mods) and the reply bytes come back as outcomes. It records every byte the server
receives, and can make a node vanish at a chosen secure-aggregation stage.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedge.client.runtime import ClientAppLike, ClientRuntime, decode_message
from fedge.security.secagg.wire import RECORD
from fedge.server.grid import FedgeGrid, Outcome, Payload
from fedge.server.reporting import Reporter, quiet
from fedge.server.screening import ReplyScreen

RUN_ID = 11


def stage_of(message: Message) -> str:
    """The secure-aggregation stage an instruction belongs to ('' for ordinary messages)."""
    if not message.has_content() or RECORD not in message.content.config_records:
        return ""
    return str(message.content.config_records[RECORD]["stage"])


class InProcessFleet:
    """Nodes 1..n running ``client_app`` in-process; ``drop(node, stage)`` makes a node vanish."""

    def __init__(
        self,
        client_app: ClientAppLike,
        node_configs: Mapping[int, dict[str, Any]],
        state_dir: Path,
        run_config: dict[str, Any],
        drop: Callable[[int, str], bool] | None = None,
    ) -> None:
        self.runtimes: dict[int, ClientRuntime] = {}
        for node, config in node_configs.items():
            runtime = ClientRuntime(client_app, config, state_dir / f"node-{node}")
            runtime.node_id = node
            self.runtimes[node] = runtime
        self.run_config_json = json.dumps(run_config)
        self.drop = drop or (lambda node, stage: False)
        self.received: list[bytes] = []
        self.outcomes: dict[str, Outcome] = {}

    def node_ids(self) -> list[int]:
        return sorted(self.runtimes)

    def push(self, items: list[tuple[str, int, Payload]], round: int, announcement: bytes) -> None:
        for message_id, node, payload in items:
            data = payload if isinstance(payload, bytes) else b"".join(payload)
            runtime = self.runtimes.get(node)
            if runtime is not None and self.drop(node, stage_of(decode_message(data))):
                del self.runtimes[node]
                runtime = None
            if runtime is None:
                self.outcomes[message_id] = Outcome(reason=f"node {node} is gone")
                continue
            reply = runtime.handle_bytes(data, self.run_config_json, announcement, round)
            self.received.append(reply)
            self.outcomes[message_id] = Outcome(data=reply)
        server_identity()

    def wait(self, message_ids: list[str], timeout: float | None, first: bool = False) -> dict[str, Outcome]:
        return {m: self.outcomes.pop(m) for m in message_ids if m in self.outcomes}


def server_identity() -> None:
    """The process-global task identity a ServerApp expects (the runtime sets a node's)."""
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = RUN_ID
    TaskIdentity.node_id = SUPERLINK_NODE_ID


def run_server_app(
    server_app: Any, fleet: InProcessFleet, run_config: dict[str, Any], reporter: Reporter = quiet
) -> None:
    """Run ``server_app`` on a FedgeGrid over ``fleet`` (as a run worker does); events go to ``reporter``."""
    server_identity()
    run = Run.create_empty(RUN_ID)
    run.override_config = dict(run_config)
    screen = ReplyScreen(RUN_ID, lambda *a, **k: None)
    grid = FedgeGrid(fleet, run, node_wait_timeout=5.0, screen=screen, reporter=reporter)
    context = Context(RUN_ID, SUPERLINK_NODE_ID, {}, RecordDict(), dict(run_config))
    server_app(grid, context)
