"""Call a Flower ClientApp in-process, with one persistent Context per run.

Why in-process: stock Flower (≥1.40) starts a fresh ClientApp process for every message, which
re-imports torch and costs seconds per round. The daemon keeps one warm interpreter and calls
``client_app(message, context)`` directly, one task at a time.

Why one task at a time: flwr 1.41's ``Message(...)`` constructor reads the process-global
``TaskIdentity`` (task_id, run_id, node_id). We set it right before each call, so two concurrent
calls would race on it.

Why Context state on disk: a run outlives a daemon restart (device reboot, upgrade). The run's
``Context`` is written atomically to ``<state_dir>/runs/<run_id>/context.pb`` after every task
and loaded again when the daemon comes back, so ``context.state`` survives — as it does on a
Flower SuperNode, which keeps it in its NodeState.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message, RecordDict, UserConfig
from flwr.common.constant import ErrorCode
from flwr.common.serde import context_from_proto, context_to_proto
from flwr.proto.message_pb2 import Context as ProtoContext
from flwr.supercore.task_identity import TaskIdentity

from fedge import atomic
from fedge.apps import check_importable, load_object
from fedge.chunks import FileSpan
from fedge.codec import Frame, decode_message, encode_frames
from fedge.eligibility import DECLINED
from fedge.errors import FedgeError
from fedge.security.secagg.wire import MESSAGE_TYPE as SECAGG_MESSAGE_TYPE

from .compression import compressed
from .sealing import ReplySealer
from .secagg import SecAggMod

log = logging.getLogger("fedge.client.runtime")

ClientAppLike = Callable[[Message, Context], Message]
"""A ``flwr.clientapp.ClientApp`` or any callable with its call signature."""

TaskObserver = Callable[[str, str, float], None]
"""Told (message type, outcome ``ok``/``error``/``undecodable``, ClientApp seconds) per task."""

# Flower's runtimes use a per-process task id; ours is one long-lived "task" per daemon.
TASK_ID = 1
# Contexts kept in memory; older ones are reloaded from disk on demand (state can hold tensors).
_CONTEXT_CACHE = 8


def load_client_app(ref: str, app_dir: str | None = None) -> ClientAppLike:
    """Import ``package.module:attr`` and check it is callable, so a bad ref fails at startup."""
    obj = load_object(ref, app_dir, kind="ClientApp")
    if not callable(obj):
        raise FedgeError(
            f"'{ref}' is a {type(obj).__name__}, not a ClientApp",
            "point --client-app at a flwr.clientapp.ClientApp instance, e.g. my_app.client:app",
        )
    return obj


class DeferredClientApp:
    """A ClientApp imported when the first instruction arrives, not when the daemon starts.

    Why: the ClientApp usually imports torch, which alone is ~220 MB of a daemon's ~260 MB idle
    RSS; a device that waits for work should not pay for it (measured idle RSS: 262 MB eager, see
    the issue note for lazy). The module is still looked up at startup, so a wrong reference fails
    at once; an app that then fails to import answers its first instruction with the error.
    """

    def __init__(self, ref: str, app_dir: str | None = None) -> None:
        check_importable(ref, app_dir, kind="ClientApp")
        self.ref, self.app_dir = ref, app_dir
        self._app: ClientAppLike | None = None

    def __call__(self, message: Message, context: Context) -> Message:
        if self._app is None:
            self._app = load_client_app(self.ref, self.app_dir)
            log.info("loaded ClientApp %s", self.ref)
        return self._app(message, context)


def parse_run_config(raw: str) -> UserConfig:
    """Decode ``RunContext.run_config_json``: a JSON object of bool/int/float/str (Flower UserConfig)."""
    if not raw:
        return {}
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("run_config_json must be a JSON object")
    for key, item in value.items():
        if not isinstance(item, (bool, int, float, str)):
            raise ValueError(f"run_config['{key}'] must be bool/int/float/str, got {type(item).__name__}")
    return value


def error_reply(message: Message, code: int, reason: str) -> Message:
    """A reply that carries an ``Error`` instead of content, as Flower's SuperNode builds it."""
    return Message(Error(code=code, reason=reason), reply_to=message)


class ClientRuntime:
    """Runs instructions through one ClientApp and keeps each run's Context.

    Parameters
    ----------
    client_app : ClientAppLike
        The ClientApp, loaded once (warm).
    node_config : Mapping[str, bool | int | float | str]
        Flower ``context.node_config`` (e.g. ``data-path``); always the daemon's current value,
        so changing ``--data`` between restarts takes effect for ongoing runs.
    state_dir : str | Path
        Where ``runs/<run_id>/context.pb`` files live.
    """

    def __init__(
        self, client_app: ClientAppLike, node_config: Mapping[str, Any], state_dir: str | Path
    ) -> None:
        self.client_app = client_app
        self.node_config: UserConfig = dict(node_config)
        self.state_dir = Path(state_dir)
        # Assigned by the server's Welcome; a message arriving before it is a protocol error.
        self.node_id = 0
        self._contexts: OrderedDict[int, Context] = OrderedDict()
        self._reply_sealer: ReplySealer | None = None
        # This node's secure-aggregation rounds in progress (in memory only: see fedge.client.secagg).
        self._secagg = SecAggMod()
        self.observe: TaskObserver | None = None  # e.g. fedge.client.metrics.EdgeMetrics.task
        # Why this device declines a task now ("" = take it): the daemon's eligibility check
        # (fedge.client.properties.decline_reason); a decline is no failure (fedge.eligibility).
        self.decline: Callable[[str, UserConfig], str] | None = None

    def _sealer(self) -> ReplySealer:
        """The device's sealer, loaded on first use (plaintext federations never need keys)."""
        if self._reply_sealer is None:
            self._reply_sealer = ReplySealer(self.state_dir)
        return self._reply_sealer

    def context_path(self, run_id: int) -> Path:
        """Where the Context of ``run_id`` is persisted."""
        return self.state_dir / "runs" / str(run_id) / "context.pb"

    def context(self, run_id: int, run_config: UserConfig | None = None) -> Context:
        """The Context of ``run_id``: cached, else loaded from disk, else new (empty state).

        ``run_config`` (when the server sent one) replaces the stored one; node_id and
        node_config always reflect this daemon now.
        """
        ctx = self._contexts.get(run_id)
        if ctx is None:
            ctx = self._load(run_id)
            self._contexts[run_id] = ctx
            while len(self._contexts) > _CONTEXT_CACHE:
                self._contexts.popitem(last=False)
        self._contexts.move_to_end(run_id)
        ctx.node_id = self.node_id
        ctx.node_config = dict(self.node_config)
        if run_config is not None:
            ctx.run_config = dict(run_config)
        return ctx

    def _load(self, run_id: int) -> Context:
        path = self.context_path(run_id)
        if path.is_file():
            try:
                proto = ProtoContext()
                proto.ParseFromString(path.read_bytes())
                ctx = context_from_proto(proto)
                log.debug("loaded context of run %d from %s", run_id, path)
                return ctx
            except Exception as exc:  # a corrupt file must not wedge the device forever
                log.warning("ignoring unreadable context %s (%s); starting the run's state afresh", path, exc)
        return Context(run_id=run_id, node_id=self.node_id, node_config={}, state=RecordDict(), run_config={})

    def _save(self, ctx: Context) -> None:
        try:
            data = context_to_proto(ctx).SerializeToString()
            atomic.write_bytes(self.context_path(ctx.run_id), data, 0o600)
        except OSError as exc:  # the reply is still valid; only resumability suffers
            log.error("could not persist context of run %d: %s", ctx.run_id, exc)

    def handle(self, message: Message, run_config: UserConfig | None = None) -> Message:
        """Run one instruction and return the reply; never raises for app failures.

        An exception inside the ClientApp becomes an error reply (code
        ``CLIENT_APP_RAISED_EXCEPTION``, Flower's reason format) and the run's in-memory Context
        is dropped, so the next task starts from the last persisted state — like a SuperNode,
        which does not keep a failed task's Context.
        """
        run_id = message.metadata.run_id
        TaskIdentity.task_id = TASK_ID
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = self.node_id
        ctx = self.context(run_id, run_config)
        started = time.perf_counter()
        declined = self.decline(message.metadata.message_type, ctx.run_config) if self.decline else ""
        if declined:
            log.info("%s", declined, extra={"run": run_id})
            self._observed(message, "declined", started)
            return error_reply(message, DECLINED, declined)
        try:
            # Every ClientApp takes part in secure aggregation without changes (a pass-through
            # for messages that do not ask for it).
            reply = self._secagg(message, ctx, self._app)
            if not isinstance(reply, Message):
                raise TypeError(f"ClientApp returned {type(reply).__name__}, expected flwr.app.Message")
        except Exception as exc:
            self._observed(message, "error", started)
            self._contexts.pop(run_id, None)
            reason = str(type(exc)) + ":<'" + str(exc) + "'>"
            log.error(
                "ClientApp raised %s: %s",
                type(exc).__name__,
                exc,
                exc_info=log.isEnabledFor(logging.INFO),
                extra={"run": run_id},
            )
            return error_reply(message, ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason)
        self._observed(message, "error" if reply.has_error() else "ok", started)
        if message.metadata.message_type != SECAGG_MESSAGE_TYPE:  # secagg setup never touches it
            self._save(ctx)
        return reply

    def _app(self, message: Message, ctx: Context) -> Message:
        """The ClientApp, its train updates compressed when the run asks (fedge.client.compression)."""
        return compressed(message, ctx, self.client_app)

    def _observed(self, message: Message, outcome: str, started: float) -> None:
        if self.observe is not None:
            self.observe(message.metadata.message_type, outcome, time.perf_counter() - started)

    def handle_bytes(
        self, data: bytes, run_config_json: str | None = None, announcement: bytes = b"", round: int = 0
    ) -> bytes:
        """:meth:`handle_frames` with the reply joined into one ``bytes``."""
        return b"".join(self.handle_frames(data, run_config_json, announcement, round))

    def handle_frames(
        self,
        data: bytes | FileSpan,
        run_config_json: str | None = None,
        announcement: bytes = b"",
        round: int = 0,
    ) -> list[Frame]:
        """Bytes in, frames out: decode the instruction, :meth:`handle` it, encode the reply.

        ``run_config_json`` is ``RunContext.run_config_json`` (``None``: keep the stored run
        config). A malformed one is answered with an error reply, since the app cannot run.
        With an ``announcement`` the reply's arrays are sealed to the run's aggregator key.
        The reply comes as :func:`fedge.codec.encode_frames` frames, which views the reply's
        tensors: chunking them never builds one model-sized ``bytes``.
        """
        try:
            message = decode_message(data)
        except Exception:
            if self.observe is not None:
                self.observe("", "undecodable", 0.0)
            raise
        finally:
            if isinstance(data, FileSpan):
                data.discard()  # decoded into the message (or never will be)
        try:
            run_config = None if run_config_json is None else parse_run_config(run_config_json)
        except ValueError as exc:
            log.error("bad run config for run %d: %s", message.metadata.run_id, exc)
            self._observed(message, "error", time.perf_counter())
            reply = error_reply(message, ErrorCode.UNKNOWN, f"fedge: bad run_config_json: {exc}")
            return encode_frames(reply)
        reply = self.handle(message, run_config)
        _release(message, reply)
        if announcement and reply.has_content():
            try:
                reply = self._sealer().seal(reply, announcement, round, self.node_id)
            except FedgeError as exc:  # e.g. an announcement not signed by our server: never send
                log.error("refusing to send the reply: %s", exc.message)
                reply = error_reply(
                    message, ErrorCode.UNKNOWN, f"fedge: cannot seal the reply: {exc.message}"
                )
        try:
            return encode_frames(reply)
        except Exception as exc:  # e.g. content Flower's serde cannot carry: still answer
            log.error("cannot serialize the ClientApp's reply: %s", exc)
            reason = f"fedge: reply could not be serialized: {type(exc).__name__}: {exc}"
            return encode_frames(error_reply(message, ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason))


def _release(instruction: Message, reply: Message) -> None:
    """Empty the instruction's array records the reply does not reuse: the app is done with them.

    Flower's Messages sit in reference cycles, freed only by the cyclic GC; until then the
    instruction's model (the whole global model) would stay beside the reply and its sealed copy.
    """
    if not instruction.has_content():
        return
    kept = {id(r) for r in reply.content.array_records.values()} if reply.has_content() else set()
    for record in instruction.content.array_records.values():
        if id(record) not in kept:
            record.clear()
