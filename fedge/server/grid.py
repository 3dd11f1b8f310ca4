"""FedgeGrid: Flower's ``Grid`` on top of fedge's transport.

A ServerApp (any Flower Message-API app) talks to this Grid inside a run's worker process. The
grid serializes messages with fedge's wire codec (:mod:`fedge.codec`: Flower's serde for all but
the tensors) and hands them to a :class:`Link` — the pipe to the server process that owns the
device streams. Two things Flower's in-memory grid lacks and a fleet of real devices needs:

* replies for devices that vanish arrive as error replies at once, so a round never waits out
  its timeout for a dead device;
* node sampling cannot wait forever: Flower's ``sample_nodes`` loops on ``get_node_ids()`` until
  enough nodes connect, so the grid fails the run after ``node_wait_timeout`` seconds of that.
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from uuid import uuid4

from flwr.app import ArrayRecord, Error, Message, RecordDict
from flwr.app.message import make_message
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from fedge.chunks import FileSpan, Piece
from fedge.codec import decode_message, decode_spooled, encode_frames, read_blobs
from fedge.compress import decode_reply, is_compressed
from fedge.eligibility import is_decline
from fedge.errors import FedgeError
from fedge.security.seal import SealError
from fedge.security.secagg.wire import RECORD as SECAGG_RECORD
from fedge.server.deferred import materialized
from fedge.server.events import EventKind
from fedge.server.grid_books import Replacements, RoundStats
from fedge.server.packing import shared_frames, spooled_frames
from fedge.server.progress import Progress
from fedge.server.reporting import Reporter, quiet
from fedge.server.screening import ReplyScreen, reference_of
from fedge.server.sealing import ReplyOpener


@dataclass(frozen=True)
class Outcome:
    """What became of one instruction: ``data`` holds the serialized reply, else ``reason``."""

    data: bytes | FileSpan | None = None
    reason: str = ""
    # Raw Ed25519 public key bound to the replying device's certificate (b"" in plaintext mode).
    signer: bytes = b""

    @property
    def size(self) -> int:
        """Bytes of the reply as received, in memory or in its spool file."""
        if isinstance(self.data, FileSpan):
            return self.data.length
        return len(self.data or b"")


Payload = bytes | list[Piece]
"""A serialized message: one ``bytes``, or pieces (in memory or in a file) whose concatenation is it."""


class Link(Protocol):
    """The run worker's view of the server process."""

    def node_ids(self) -> list[int]: ...

    def push(self, items: list[tuple[str, int, Payload]], round: int, announcement: bytes) -> None: ...

    def wait(
        self, message_ids: list[str], timeout: float | None, first: bool = False
    ) -> dict[str, Outcome]: ...


class FedgeGrid(Grid):
    """``flwr.serverapp.Grid`` for one fedge run.

    Parameters
    ----------
    link : Link
        Connection to the server process (device streams, node registry).
    run : Run
        The Flower ``Run`` this grid serves.
    node_wait_timeout : float
        Seconds a run may wait for enough nodes before it fails with a clear error.
    screen : ReplyScreen, optional
        Checks every reply against its instruction before the ServerApp sees it.
    opener : ReplyOpener, optional
        Opens sealed replies (sealing on); its announcement travels with every instruction.
    reporter : Reporter, optional
        Where run events go (the run worker's pipe to the run manager); see :meth:`report`.
    progress : Progress, optional
        Told of every batch pushed and every reply (or failure) collected: per-round progress
        and metrics for any ServerApp.
    eligibility : str, optional
        The run's device filter as its flags (``--select … --require …``): the server offers only
        matching nodes, so a run short of nodes names it in its failure.
    sampler : random.Random, optional
        Secret node sampling (a ``secrets.SystemRandom``, set by ``secret-sampling``): node
        lists come in an order it shuffles, so whichever positions Flower's seeded ``random``
        picks, the sample is uniform and secret. It also draws the replacements of declining
        devices. ``None``: node lists in id order, replacements from a generator seeded by round.
    """

    def __init__(
        self,
        link: Link,
        run: Run,
        node_wait_timeout: float = 120.0,
        screen: ReplyScreen | None = None,
        opener: ReplyOpener | None = None,
        reporter: Reporter = quiet,
        progress: Progress | None = None,
        spool: Path | None = None,
        eligibility: str = "",
        sampler: random.Random | None = None,
    ) -> None:
        # Where instructions are written for the server process to send (None: through the pipe).
        self._spool = spool
        self._eligibility = eligibility
        self._sampler = sampler
        # Per round: reply bytes as received, declines, replacements, the sampled population.
        self._stats: dict[int, RoundStats] = {}
        self._population = 0
        self._progress = progress or Progress()
        self._screen = screen or ReplyScreen(run.run_id, lambda *a, **k: None)
        self._opener = opener
        self._reporter = reporter
        self._round_of: dict[str, int] = {}
        self._refs: dict[str, ArrayRecord | None] = {}
        self._link = link
        self._run = run
        self._node_wait_timeout = node_wait_timeout
        self._waiting_since: float | None = None
        self._sent: dict[str, Message] = {}
        # The round of apps that stamp none into group_id: one batch of train messages is one round.
        self._round = 0
        self._reported = 0
        # Flower's compat layer calls a Grid from several threads (a node poller, one sender per
        # client): the bookkeeping above is only touched under this lock; the link is thread-safe.
        self._lock = threading.Lock()

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def report(self, kind: str, data: dict[str, Any]) -> None:
        """Send a run event to whoever watches the run (:func:`fedge.server.reporting.reporter_of`)."""
        self._reporter(kind, data)

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        """Connected nodes; fails the run when sampling has waited too long for more."""
        now = time.monotonic()
        with self._lock:
            if self._waiting_since is None:
                self._waiting_since = now
            waited = now - self._waiting_since
        if waited > self._node_wait_timeout:
            count = len(self._link.node_ids())
            if self._eligibility:
                raise FedgeError(
                    f"waited {self._node_wait_timeout:.0f} s for enough eligible edge nodes; "
                    f"{count} connected {'node matches' if count == 1 else 'nodes match'} the run's "
                    f"filter {self._eligibility}",
                    "start devices that match, relax --select/--require, lower --min-clients, "
                    "or raise node-wait-timeout (see `fedge nodes list`)",
                )
            raise FedgeError(
                f"waited {self._node_wait_timeout:.0f} s for enough edge nodes; {count} connected",
                "start more edge daemons, lower --min-clients, or raise node-wait-timeout",
            )
        ids = self._link.node_ids()
        if self._sampler is not None:
            self._sampler.shuffle(ids)
        with self._lock:
            self._population = len(ids)
        return ids

    def round_stats(self, server_round: int) -> dict[str, int]:
        """What the transport saw of ``server_round`` so far (metrics: bytes, declines, population)."""
        with self._lock:
            stats = self._stats.get(server_round)
            return stats.as_metrics() if stats is not None else {}

    def _stats_of(self, server_round: int) -> RoundStats:
        """The round's counters (caller holds the lock)."""
        return self._stats.setdefault(server_round, RoundStats())

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        batch = list(messages)
        if any(m.metadata.reply_to_message_id or m.metadata.message_id for m in batch):
            raise ValueError("only new instruction messages can be pushed")
        with self._lock:
            self._waiting_since = None
            round_, started = self._round_of_batch(batch)
            if started:
                self._stats_of(round_).population = self._population
                for old in [r for r in self._stats if r < round_ - 1]:  # read by the round's end
                    del self._stats[old]
        if started:
            self.report(EventKind.ROUND_STARTED, {"round": round_})
        announcement = self._opener.announcement if self._opener else b""
        shared: dict[tuple[int, int], bytes] = {}
        written: dict[tuple[int, int], FileSpan] = {}
        items: list[tuple[str, int, Payload]] = []
        with contextlib.ExitStack() as stack:
            spool = None
            if self._spool is not None:
                spool = stack.enter_context(
                    tempfile.NamedTemporaryFile(dir=self._spool, prefix="out-", suffix=".msg", delete=False)
                )
            for msg in batch:
                meta = msg.metadata
                meta.__dict__["_message_id"] = str(uuid4())
                with self._lock:
                    self._sent[meta.message_id] = _metadata_only(msg)
                    self._refs[meta.message_id] = reference_of(msg)
                    self._round_of[meta.message_id] = round_
                frames = encode_frames(msg)
                payload = (
                    spooled_frames(frames, spool, written)
                    if spool is not None
                    else shared_frames(frames, shared)
                )
                items.append((meta.message_id, meta.dst_node_id, payload))
            if spool is not None and not written:
                os.unlink(spool.name)  # nothing large: everything travels in the pipe
        self._progress.sent(batch)
        # One copy of each tensor for the whole batch, however many devices get it: the frames
        # of every message point at the same bytes objects, which pickle sends once over the pipe
        # and the server's streams chunk lazily.
        self._link.push(items, round_, announcement)
        return [item[0] for item in items]

    def _round_of_batch(self, batch: list[Message]) -> tuple[int, bool]:
        """The server round of a batch, and whether it starts that round (caller holds the lock).

        The round is the batch's ``group_id`` (fedge's loop stamps it on every message). Apps that
        set no numeric ``group_id`` (Flower's ``Strategy.start``) get one round per batch of train
        messages, counted here. A round starts (``round-started``) at its first train batch.
        """
        group = next((m.metadata.group_id for m in batch if m.metadata.group_id), "")
        train = any(m.metadata.message_type.split(".")[0] == "train" for m in batch)
        if group.isdigit():
            self._round = int(group)
        elif train:
            self._round += 1
        started = train and self._round != self._reported
        if started:
            self._reported = self._round
        return self._round, started

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._collect(self._link.wait(list(message_ids), 0.0))

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return list(self.send_and_stream(messages, timeout=timeout))

    def send_and_stream(
        self, messages: Iterable[Message], *, timeout: float | None = None, defer: bool = False
    ) -> Iterator[Message]:
        """Push ``messages`` and yield each reply as soon as it arrives (decoded, opened, screened).

        What streaming aggregation stands on: a consumer that folds each reply and drops it
        keeps O(model) memory instead of O(clients × model). Replies not in by ``timeout`` are
        abandoned, as in Flower's grids. With ``defer``, a large sealed reply keeps its arrays
        in its spool file (:mod:`fedge.server.deferred`, screened in one pass already): for a
        consumer that reads them tensor by tensor and turns the rest into plain records.
        """
        batch = list(messages)
        ids = list(self.push_messages(batch))
        replacing = Replacements(batch)
        deadline = None if timeout is None else time.monotonic() + timeout
        remaining = set(ids)
        abandoned = False
        outcomes: dict[str, Outcome] = {}
        try:
            while remaining:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    # Abandon the rest — but what resolved since the last wait is a reply like any
                    # other: dropping it lost a reply that had arrived (seen under heavy load).
                    outcomes = self._link.wait(sorted(remaining), 1e-3)
                    remaining.difference_update(outcomes)
                    abandoned = True
                    yield from self._collect(outcomes, replacing, defer)
                    break
                outcomes = self._link.wait(sorted(remaining), left, first=True)
                remaining.difference_update(outcomes)
                # One at a time: a reply is decoded (and opened) only once the consumer has
                # folded the one before, so replies that arrived together are never all in
                # memory at once; those still waiting are file names or small bytes.
                while outcomes:
                    message_id = next(iter(outcomes))
                    one = {message_id: outcomes.pop(message_id)}
                    yield from self._replaced(self._collect(one, replacing, defer), replacing, remaining)
        finally:
            for outcome in outcomes.values():  # arrived but never read (the consumer stopped early)
                if isinstance(outcome.data, FileSpan):
                    outcome.data.discard()
            if remaining and not abandoned:  # tell the server to stop waiting, then forget them here
                self._link.wait(sorted(remaining), 1e-3)
            with self._lock:
                for message_id in remaining:
                    self._sent.pop(message_id, None)
                    self._refs.pop(message_id, None)
                    self._round_of.pop(message_id, None)

    def _replaced(
        self, replies: list[Message], replacing: Replacements, remaining: set[str]
    ) -> Iterator[Message]:
        """``replies``, less the declines that another device now answers (added to ``remaining``).

        A generator of its own so that nothing in :meth:`send_and_stream` 's frame still points
        at a yielded reply while the next one is decoded (two replies in memory at the peak).
        """
        while replies:
            reply = replies.pop(0)
            # A device that no longer qualifies declined: another takes its place.
            swap = self._replace(reply, replacing)
            if swap:
                remaining.add(swap)
            else:
                yield reply
            del reply

    def pull_first(self, message_ids: Iterable[str], timeout: float | None) -> list[Message]:
        """Replies to any of ``message_ids`` as soon as one arrives (none after ``timeout``).

        The push-and-pull primitive of asynchronous rounds (:mod:`fedge.strategies.buffered`):
        instructions go out one device at a time with :meth:`push_messages`, and each reply is
        collected the moment it is in, so the device that sent it gets new work at once.
        """
        ids = list(message_ids)
        return self._collect(self._link.wait(ids, timeout, first=True)) if ids else []

    def connected_nodes(self) -> list[int]:
        """The nodes connected now; unlike :meth:`get_node_ids` it never counts as waiting to sample."""
        return self._link.node_ids()

    def abandon(self, message_ids: Iterable[str]) -> None:
        """Stop waiting for ``message_ids`` (their late replies are dropped by the server)."""
        ids = sorted(message_ids)
        if not ids:
            return
        self._link.wait(ids, 1e-3)
        with self._lock:
            for message_id in ids:
                self._sent.pop(message_id, None)
                self._refs.pop(message_id, None)
                self._round_of.pop(message_id, None)

    def reject(self, instruction: Message, reason: str, detail: str) -> Message:
        """An update refused above the transport (e.g. too stale): audited and reported like screening's."""
        return self._screen.reject(instruction, reason, detail)

    def _receive(
        self, outcome: Outcome, instruction: Message, reference: ArrayRecord | None, round_: int, defer: bool
    ) -> Message:
        """Decode, open (if sealed) and screen one reply; refusals become audited error replies.

        A reply the server process left in a file is read from it (sealed payloads piece by
        piece, straight into their arrays) and the file deleted.
        """
        data = outcome.data or b""
        try:
            try:
                if isinstance(data, FileSpan):
                    reply, blobs = decode_spooled(data, keep_blobs=self._opener is not None)
                else:
                    reply, blobs = decode_message(data), {}
            except Exception as exc:  # whatever a device sends must never take the run down
                return self._screen.reject(
                    instruction, "malformed", f"undecodable reply: {type(exc).__name__}"
                )
            if self._opener is not None:
                meta = instruction.metadata
                try:
                    reply = self._opener.open(
                        reply, round_, meta.dst_node_id, meta.message_type, outcome.signer, blobs, defer=defer
                    )
                except SealError as exc:
                    return self._screen.reject(instruction, exc.reason, exc.message)
            if blobs:  # large bytes of a reply that were not sealed payloads
                read_blobs(reply, blobs)
        finally:
            if isinstance(data, FileSpan):
                data.discard()
        if reference is not None and is_compressed(reply):
            try:  # decoded one reply at a time, as it arrives: the fold never holds more
                reply = decode_reply(materialized(reply), reference)
            except (FedgeError, ValueError) as exc:
                return self._screen.reject(instruction, "malformed", f"undecodable compressed update: {exc}")
        return self._screen.check(reply, instruction, reference)

    def _collect(
        self, outcomes: dict[str, Outcome], replacing: Replacements | None = None, defer: bool = False
    ) -> list[Message]:
        replies: list[Message] = []
        for message_id, outcome in outcomes.items():
            with self._lock:
                instruction = self._sent.pop(message_id, None)
                reference = self._refs.pop(message_id, None)
                round_ = self._round_of.pop(message_id, 0)
                if instruction is not None and outcome.data is not None:
                    self._stats_of(round_).add_bytes(instruction.metadata.message_type, outcome.size)
            if instruction is None:
                if isinstance(outcome.data, FileSpan):  # a reply nobody waits for: its file goes
                    outcome.data.discard()
                continue
            if outcome.data is not None:
                reply = self._receive(outcome, instruction, reference, round_, defer)
            else:
                error = Error(code=ErrorCode.NODE_UNAVAILABLE, reason=outcome.reason)
                reply = Message(error, reply_to=instruction)
            if replacing is not None:
                # A replacement's reply answers the instruction it stands in for, for the exchange.
                reply.metadata.__dict__["_reply_to_message_id"] = replacing.root(message_id)
            self._progress.received(instruction, reply)
            replies.append(reply)
        return replies

    def _replace(self, reply: Message, replacing: Replacements) -> str:
        """Send a declined train instruction to another eligible node; its id, or "" if none is left."""
        if not reply.has_error() or not is_decline(reply.error.code):
            return ""
        with self._lock:
            round_ = self._round
            self._stats_of(round_).declined += 1
        original = replacing.original(reply.metadata.reply_to_message_id)
        if original is None or original.metadata.message_type.split(".")[0] != "train":
            return ""
        if SECAGG_RECORD in original.content.config_records:
            return ""  # a stand-in never took part in the cohort's key setup: a plain dropout
        free = sorted(set(self._link.node_ids()) - replacing.used)
        if not free:
            return ""
        node = (self._sampler or random.Random(round_)).choice(free)
        meta = original.metadata
        swap = Message(original.content, node, meta.message_type, ttl=meta.ttl, group_id=meta.group_id)
        (new_id,) = self.push_messages([swap])
        replacing.add(new_id, meta.message_id, node)
        with self._lock:
            self._stats_of(round_).replaced += 1
        return new_id


def _metadata_only(msg: Message) -> Message:
    """Keep what an error reply needs without holding the (large) content."""
    return make_message(metadata=msg.metadata, content=RecordDict())
