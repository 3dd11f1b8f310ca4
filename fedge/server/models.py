"""Model distribution on the server: the latest bundle, offers to devices, files in parts.

Pull, not push: a device is *offered* the latest bundle (the signed manifest only, ~1 KiB) when
it connects and whenever a new bundle is published; it asks for the files only if it lacks that
version, so a reconnecting fleet costs one small frame per device. Files are read lazily on the
stream's writer thread, one part at a time (:class:`PartStream`), so a fleet downloading a model
never holds more than a part per stream in memory.

The latest bundle survives restarts through ``<state_dir>/latest-bundle`` (the bundle
directory's path, written atomically); the bundle is re-verified whenever it is loaded.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedge.atomic import write_text
from fedge.chunks import CHUNK_BYTES
from fedge.errors import FedgeError
from fedge.protos.v1 import fleet_pb2
from fedge.security.bundles import BUNDLE_FILE, verify_dir
from fedge.server.audit import AuditLog
from fedge.server.router import Router, Session

log = logging.getLogger("fedge.server.models")

CAPABILITY = "models-v1"
POINTER = "latest-bundle"


@dataclass(frozen=True)
class Published:
    """A verified bundle the server can hand out."""

    version: str
    bundle: bytes  # serialized fedge.v1.ModelBundle, exactly as signed
    directory: Path
    serve: str
    round: int
    run_id: int


class PartStream:
    """The frames of one bundle file, read from disk as the stream writer consumes them."""

    def __init__(
        self,
        published: Published,
        session: Session,
        done: Callable[[], None] = lambda: None,
        part_bytes: int = CHUNK_BYTES,
    ) -> None:
        self._published, self._session, self._done, self._part_bytes = published, session, done, part_bytes

    def __iter__(self) -> Iterator[fleet_pb2.ServerFrame]:
        pub = self._published
        path = pub.directory / pub.serve
        try:
            size = path.stat().st_size
            total = max(1, -(-size // self._part_bytes))
            with path.open("rb") as fh:
                for index in range(total):
                    if self._session.closed.is_set():
                        return
                    data = fh.read(self._part_bytes)
                    frame = fleet_pb2.ServerFrame()  # filled in place: no copy of data
                    part = frame.model_part
                    part.version, part.file, part.index, part.total = pub.version, pub.serve, index, total
                    part.data = data
                    yield frame
        except OSError as exc:  # the bundle vanished from disk: the device times out and asks again
            log.warning("cannot send model %s: %s", pub.version, exc)
        finally:
            self._done()


class ModelHub:
    """The server's bundle registry and the Fleet side of model distribution."""

    def __init__(
        self, state_dir: Path, router: Router, audit: AuditLog, signing_pub: Ed25519PublicKey | None
    ) -> None:
        self._pointer = state_dir / POINTER
        self._router = router
        self._audit = audit
        self._pub = signing_pub
        self._lock = threading.Lock()
        self._known: dict[str, Published] = {}
        # Transfers under way, per (session, version); weak so a dropped stream never blocks a new one.
        self._sending: dict[tuple[int, str], weakref.ref[Session]] = {}
        self._latest: Published | None = None
        self._load_pointer()

    @property
    def latest(self) -> Published | None:
        """The bundle devices are offered (None before the first export)."""
        return self._latest

    def _load_pointer(self) -> None:
        try:
            target = Path(self._pointer.read_text("utf-8").strip())
        except OSError:
            return
        try:
            self._latest = self._register(target)
        except FedgeError as exc:
            log.warning("latest bundle %s not offered: %s", target, exc.message)

    def _register(self, bundle_dir: Path) -> Published:
        manifest = verify_dir(bundle_dir, self._pub, allow_unsigned=self._pub is None)
        pub = Published(
            version=manifest.version,
            bundle=(bundle_dir / BUNDLE_FILE).read_bytes(),
            directory=bundle_dir.resolve(),
            serve=manifest.serve,
            round=manifest.round,
            run_id=manifest.run_id,
        )
        with self._lock:
            self._known[pub.version] = pub
        return pub

    def publish(self, bundle_dir: str | Path) -> Published:
        """Verify a bundle (as a device will), make it the latest and offer it to every device."""
        pub = self._register(Path(bundle_dir))
        with self._lock:
            self._latest = pub
        write_text(self._pointer, str(pub.directory) + "\n")
        self._audit.write("model-published", version=pub.version, run_id=pub.run_id, round=pub.round)
        offer = self._offer(pub)
        for session in self._router.sessions():
            if CAPABILITY in session.capabilities:
                session.outbox.put(offer)
        log.info("model %s published and offered to the fleet", pub.version)
        return pub

    @staticmethod
    def _offer(pub: Published) -> fleet_pb2.ServerFrame:
        return fleet_pb2.ServerFrame(model_offer=fleet_pb2.ModelOffer(version=pub.version, bundle=pub.bundle))

    def on_connect(self, session: Session) -> None:
        """A device that can take models is offered the latest one (call after ``Router.open``)."""
        latest = self._latest
        if latest is not None and CAPABILITY in session.capabilities:
            session.outbox.put(self._offer(latest))

    def on_request(self, session: Session, request: fleet_pb2.ModelRequest) -> None:
        """Send the served file of a known bundle; unknown versions are logged and ignored."""
        with self._lock:
            pub = self._known.get(request.version)
        if pub is None:
            log.warning("node %s asked for unknown model %r", session.name, request.version[:80])
            return
        key = (id(session), pub.version)
        with self._lock:
            ref = self._sending.get(key)
            if ref is not None and ref() is session:  # a repeated request must not queue the file twice
                return
            self._sending[key] = weakref.ref(session)

        def done() -> None:
            with self._lock:
                self._sending.pop(key, None)

        session.outbox.put(PartStream(pub, session, done))

    def on_status(self, session: Session, status: fleet_pb2.ModelStatus) -> None:
        """Record what a device did with a bundle (audit log: installs and refusals)."""
        event = "model-installed" if status.installed else "model-refused"
        self._audit.write(
            event,
            node=session.name,
            node_id=session.node_id,
            version=status.version[:80],
            active=status.active[:80],
            error=status.error[:300],
        )
        if not status.installed:
            log.warning("node %s refused model %s: %s", session.name, status.version[:80], status.error[:300])
