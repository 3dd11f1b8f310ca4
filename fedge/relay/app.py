"""The relay's "ClientApp": forward an instruction to the subtree, answer with one partial aggregate.

The relay's parent side is an unchanged :class:`fedge.client.daemon.EdgeDaemon` whose ClientApp is
:class:`RelayApp`, so everything a device does towards its parent (reconnects, heartbeats, one task
at a time, sealing the reply to the run's aggregator key and signing it) the relay does too. Per
instruction it:

1. refuses what a partial aggregate cannot be sound for (:func:`refusal`, the rules in
   :mod:`fedge.server.relay_settings`): secure aggregation, central DP, strategies that are not
   a function of the weighted mean;
2. samples its connected devices (``--sample-fraction``, at least ``--min-devices``);
3. sends them the instruction through a :class:`fedge.server.grid.FedgeGrid` over its own router,
   so their replies are opened (sealed to this relay's per-run key, :mod:`fedge.relay.keys`) and
   screened (weights, norm bound, names/shapes) exactly as the server screens devices;
4. folds each reply as it arrives (:class:`fedge.relay.partial.PartialAggregate`) and answers with
   the subtree's weighted mean and weight. Devices that fail or vanish cost only themselves.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flwr.app import Context, Message
from flwr.common.constant import ErrorCode
from flwr.supercore.run import Run

from fedge.client.runtime import error_reply
from fedge.errors import FedgeError
from fedge.protos.v1 import fleet_pb2
from fedge.relay.children import Children
from fedge.relay.keys import RunKeys
from fedge.relay.partial import PartialAggregate
from fedge.security.secagg.wire import MESSAGE_TYPE as SECAGG_MESSAGE_TYPE
from fedge.security.secagg.wire import RECORD as SECAGG_RECORD
from fedge.server.bounds import bounded_screen
from fedge.server.grid import FedgeGrid, Outcome, Payload
from fedge.server.relay_settings import HINT, fedge_settings, relay_refusal
from fedge.server.router import Router
from fedge.server.screening import max_norm_from, mirror_from

log = logging.getLogger("fedge.relay")

#: Runs whose grids (and adaptive norm bounds) the relay keeps.
KEEP_RUNS = 8
#: Share of the run's ``round-timeout`` the relay waits for its devices: its own reply must still
#: reach the server before the server's wait for it ends.
TIMEOUT_SHARE = 0.9
FORWARDED = ("train", "evaluate")


@dataclass(frozen=True)
class Sampling:
    """Which of its devices a relay asks each round."""

    fraction: float = 1.0
    min_devices: int = 1
    wait: float = 120.0  # seconds to wait for min_devices to connect

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise FedgeError(f"--sample-fraction must be in (0, 1], got {self.fraction:g}", "e.g. 0.1")
        if self.min_devices < 1:
            raise FedgeError(f"--min-devices must be ≥ 1, got {self.min_devices}", "use 1 or more")

    def pick(self, nodes: list[int], seed: tuple[int, ...]) -> list[int]:
        """A reproducible sample (seeded by run, round and relay) of ``nodes``."""
        if self.fraction >= 1:
            return nodes
        count = min(len(nodes), max(self.min_devices, math.ceil(self.fraction * len(nodes))))
        return sorted(random.Random(repr(seed)).sample(nodes, count))


def refusal(message: Message, run_config: Mapping[str, Any]) -> str | None:
    """Why a relay must not answer ``message`` with a partial aggregate (None: it may)."""
    if message.metadata.message_type == SECAGG_MESSAGE_TYPE or (
        message.has_content() and SECAGG_RECORD in message.content.config_records
    ):
        return f"secure aggregation cannot pass through relays (docs/relay.md); {HINT}"
    problem = relay_refusal(run_config)
    return None if problem is None else f"{problem.message}; {problem.hint}"


class RelayApp:
    """Callable as a ClientApp by the relay's parent-side daemon.

    Parameters
    ----------
    children : Children
        The relay's device streams.
    keys : RunKeys | None
        Per-run keys its devices seal to (None: a plaintext federation, nothing sealed).
    sampling : Sampling
        Which devices each instruction goes to.
    """

    def __init__(self, children: Children, keys: RunKeys | None, sampling: Sampling) -> None:
        self._children = children
        self._keys = keys
        self._sampling = sampling
        self._grids: OrderedDict[int, FedgeGrid] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, message: Message, context: Context) -> Message:
        meta = message.metadata
        if meta.message_type.split(".")[0] not in FORWARDED:
            return error_reply(message, ErrorCode.UNKNOWN, f"a relay forwards only {' and '.join(FORWARDED)}")
        problem = refusal(message, context.run_config)
        if problem is not None:
            log.error("refusing run %d: %s", meta.run_id, problem)
            return error_reply(message, ErrorCode.UNKNOWN, f"fedge relay: {problem}")
        grid = self._grid(meta.run_id, context.run_config)
        nodes = self._sampling.pick(self._wait_for_devices(), (meta.run_id, _round(message), context.node_id))
        if not nodes:
            return error_reply(
                message, ErrorCode.UNKNOWN, "fedge relay: no device is connected to this relay"
            )
        out = [Message(message.content, node, meta.message_type, group_id=meta.group_id) for node in nodes]
        partial, failures = PartialAggregate(), []
        timeout = TIMEOUT_SHARE * float(context.run_config.get("round-timeout", 600.0))
        for reply in grid.send_and_stream(out, timeout=timeout):
            if reply.has_error():
                failures.append(f"node {reply.metadata.src_node_id}: {reply.error.reason}")
                continue
            try:
                partial.add(reply)
            except ValueError as exc:
                failures.append(f"node {reply.metadata.src_node_id}: {exc}")
        log.info(
            "run %d %s: %d of %d devices folded",
            meta.run_id,
            meta.message_type,
            partial.count,
            len(nodes),
            extra={"failures": failures[:10]},
        )
        if not partial.count:
            reasons = "; ".join(failures[:3])
            return error_reply(message, ErrorCode.UNKNOWN, f"fedge relay: no device answered ({reasons})")
        return partial.reply_to(message)

    def _wait_for_devices(self) -> list[int]:
        """Connected devices, after waiting (bounded) until ``min_devices`` are."""
        deadline = time.monotonic() + self._sampling.wait
        nodes = self._children.router.node_ids()
        while len(nodes) < self._sampling.min_devices and time.monotonic() < deadline:
            time.sleep(0.1)
            nodes = self._children.router.node_ids()
        return nodes

    def _grid(self, run_id: int, run_config: Mapping[str, Any]) -> FedgeGrid:
        """The grid of ``run_id`` (made on first use: its screen keeps the run's norm history)."""
        with self._lock:
            grid = self._grids.get(run_id)
            if grid is None:
                grid = self._grids[run_id] = self._new_grid(run_id, dict(run_config))
                while len(self._grids) > KEEP_RUNS:
                    self._grids.popitem(last=False)
            self._grids.move_to_end(run_id)
            return grid

    def _new_grid(self, run_id: int, run_config: dict[str, Any]) -> FedgeGrid:
        audit = self._children.audit

        def write(kind: str, **fields: Any) -> None:
            audit.write(kind, run_id=run_id, **fields)

        own_app = fedge_settings(run_config) is not None
        screen = bounded_screen(
            run_id,
            write,
            run_config,
            max_norm_from(run_config),
            own_app,
            mirror=mirror_from(run_config, own_app),
        )
        run_ctx = fleet_pb2.RunContext(run_id=run_id, run_config_json=json.dumps(run_config))
        opener = self._keys.opener(run_id) if self._keys is not None else None
        link = SubtreeLink(self._children.router, run_ctx)
        return FedgeGrid(link, Run.create_empty(run_id), self._sampling.wait, screen, opener)


class SubtreeLink:
    """:class:`fedge.server.grid.Link` over the relay's own router (the server's is a pipe)."""

    def __init__(self, router: Router, run_ctx: fleet_pb2.RunContext) -> None:
        self._router, self._run_ctx = router, run_ctx

    def node_ids(self) -> list[int]:
        return self._router.node_ids()

    def push(self, items: list[tuple[str, int, Payload]], round: int, announcement: bytes) -> None:
        ctx = fleet_pb2.RunContext()
        ctx.CopyFrom(self._run_ctx)
        ctx.round, ctx.announcement = round, announcement
        self._router.push(ctx, items)

    def wait(self, message_ids: list[str], timeout: float | None, first: bool = False) -> dict[str, Outcome]:
        return self._router.wait(message_ids, timeout, first)


def _round(message: Message) -> int:
    group = message.metadata.group_id
    return int(group) if group.isdigit() else 0
