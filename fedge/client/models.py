"""The device's model store and the Fleet side of receiving bundles.

Layout under ``<state_dir>/models/``::

    <version>/bundle.pb, <served file>   verified bundles (only the served file is downloaded)
    active.json                          {"version": …, "pinned": bool}, replaced atomically
    .incoming-<version>/                 a download in progress (never served)

Trust: every bundle must be signed by the server key pinned at enrollment
(``<state_dir>/server-signing.pub``). Only a plaintext federation (``--insecure``) without a
pinned key accepts unsigned bundles, with a warning — nothing on its wire is authenticated anyway.
A bundle is verified when offered (signature, before any byte is downloaded), when its file is
complete (size and SHA-256, before it is stored) and again each time it is loaded for serving.

Switching: a new verified bundle becomes active at once, unless an operator pinned a version with
``fedge client model use VERSION`` (rollback); pinned devices still download and store new
bundles, and ``fedge client model use latest`` unpins. A device never auto-activates a bundle
created before the active one.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedge.atomic import write_text
from fedge.errors import FedgeError
from fedge.protos.v1 import fleet_pb2, model_pb2
from fedge.security.bundles import (
    BUNDLE_FILE,
    BundleError,
    check_file,
    file_entry,
    load_public_key,
    open_bundle,
)
from fedge.security.bundles import verify_dir as _verify_dir

log = logging.getLogger("fedge.client.models")

SERVER_SIGNING_PUB = "server-signing.pub"
ACTIVE = "active.json"


@dataclass(frozen=True)
class Stored:
    """A verified bundle in the store."""

    version: str
    directory: Path
    manifest: model_pb2.BundleManifest

    @property
    def model_path(self) -> Path:
        return self.directory / self.manifest.serve


class ModelStore:
    """Verified bundles on disk and the active pointer."""

    def __init__(self, state_dir: str | Path, allow_unsigned: bool = False) -> None:
        self.state_dir = Path(state_dir)
        self.root = self.state_dir / "models"
        pub = self.state_dir / SERVER_SIGNING_PUB
        self.trusted: Ed25519PublicKey | None = load_public_key(pub) if pub.is_file() else None
        # Unsigned bundles only where nothing pins a key and the federation is plaintext.
        self.allow_unsigned = allow_unsigned and self.trusted is None

    def open(self, bundle: bytes) -> model_pb2.BundleManifest:
        """Verify an offered bundle's signature; its checked manifest."""
        return open_bundle(bundle, self.trusted, allow_unsigned=self.allow_unsigned)

    def verify(self, version: str) -> Stored:
        """Re-verify a stored bundle (signature and the served file); BundleError if anything is off."""
        if version.startswith(".") or "/" in version or not (self.root / version).is_dir():
            raise FedgeError(
                f"no model {version!r} on this device", "list them with `fedge client model list`"
            )
        directory = self.root / version
        manifest = _verify_dir(directory, self.trusted, allow_unsigned=self.allow_unsigned, require_all=False)
        if manifest.version != version:
            raise BundleError("malformed", f"{directory} holds bundle {manifest.version}, not {version}")
        return Stored(version, directory, manifest)

    def has(self, version: str) -> bool:
        return (self.root / version / BUNDLE_FILE).is_file()

    def versions(self) -> list[Stored | tuple[str, str]]:
        """Every stored bundle, oldest first; entries that fail verification as (version, error)."""
        out: list[Stored | tuple[str, str]] = []
        if not self.root.is_dir():
            return out
        for d in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                out.append(self.verify(d.name))
            except FedgeError as exc:
                out.append((d.name, exc.message))
        return sorted(out, key=lambda s: s.manifest.created_at if isinstance(s, Stored) else 0.0)

    def active(self) -> tuple[str, bool]:
        """(active version or "", pinned)."""
        try:
            data = json.loads((self.root / ACTIVE).read_text("utf-8"))
            return str(data.get("version", "")), bool(data.get("pinned", False))
        except (OSError, ValueError, AttributeError):
            return "", False

    def activate(self, version: str, pinned: bool = False) -> Stored:
        """Verify ``version`` and make it the active model (one atomic file replace)."""
        stored = self.verify(version)
        write_text(self.root / ACTIVE, json.dumps({"version": version, "pinned": pinned}) + "\n")
        return stored

    def newest(self) -> Stored | None:
        """The most recently created verified bundle."""
        good = [s for s in self.versions() if isinstance(s, Stored)]
        return good[-1] if good else None


class _Download:
    def __init__(self, manifest: model_pb2.BundleManifest, bundle: bytes, staging: Path) -> None:
        self.manifest, self.bundle, self.staging = manifest, bundle, staging
        self.entry = file_entry(manifest, manifest.serve)
        self.next_index = 0
        self.received = 0
        staging.mkdir(parents=True)
        self.fh = (staging / manifest.serve).open("wb")


class ModelSync:
    """Receives offers and parts on the daemon's stream thread; installs and activates bundles.

    ``on_installed(stored, activated)`` is called after a bundle is stored (the daemon tells the
    inference service to switch). Every method returns the frames to send back.
    """

    def __init__(self, store: ModelStore, on_installed: Callable[[Stored, bool], None]) -> None:
        self.store = store
        self._on_installed = on_installed
        self._current: _Download | None = None
        self._lock = threading.Lock()

    def on_offer(self, offer: fleet_pb2.ModelOffer) -> list[fleet_pb2.EdgeFrame]:
        try:
            manifest = self.store.open(offer.bundle)
            if manifest.version != offer.version:
                raise BundleError(
                    "malformed", f"offer names {offer.version[:80]!r} but carries {manifest.version}"
                )
        except FedgeError as exc:
            return [self._refused(offer.version, exc)]
        if self.store.allow_unsigned:
            log.warning("accepting unsigned model bundle %s (plaintext federation)", manifest.version)
        if self.store.has(manifest.version):
            try:
                stored = self.store.verify(manifest.version)
            except FedgeError:
                shutil.rmtree(self.store.root / manifest.version, ignore_errors=True)  # damaged: fetch again
            else:
                self._installed(stored)
                return [self._status(manifest.version)]
        with self._lock:
            if self._current is not None and self._current.manifest.version == manifest.version:
                return []  # already on its way (the server offers again on publish races)
            self._abort()
            staging = self.store.root / f".incoming-{manifest.version}"
            shutil.rmtree(staging, ignore_errors=True)
            try:
                self._current = _Download(manifest, offer.bundle, staging)
            except OSError as exc:
                return [self._refused(manifest.version, FedgeError(f"cannot store model: {exc}"))]
        log.info(
            "downloading model %s (%d bytes)", manifest.version, file_entry(manifest, manifest.serve).size
        )
        return [fleet_pb2.EdgeFrame(model_request=fleet_pb2.ModelRequest(version=manifest.version))]

    def on_part(self, part: fleet_pb2.ModelPart) -> list[fleet_pb2.EdgeFrame]:
        with self._lock:
            dl = self._current
            if dl is None or part.version != dl.manifest.version:
                return []  # a stale transfer of an abandoned version
            problem = ""
            if part.file != dl.manifest.serve or part.index != dl.next_index or part.total < 1:
                problem = f"unexpected part {part.file[:80]}#{part.index} of model {dl.manifest.version}"
            elif dl.received + len(part.data) > dl.entry.size:
                problem = f"model {dl.manifest.version} sent more than its {dl.entry.size} bytes"
            if problem:
                self._abort()
                return [self._refused(part.version, BundleError("protocol", problem))]
            try:
                dl.fh.write(part.data)
                if dl.next_index + 1 == part.total:
                    dl.fh.close()
            except OSError as exc:  # disk full, state dir gone: refuse, keep serving what we have
                self._abort()
                return [self._refused(part.version, FedgeError(f"cannot store model: {exc.strerror}"))]
            dl.received += len(part.data)
            dl.next_index += 1
            if dl.next_index < part.total:
                return []
            self._current = None
        return self._complete(dl)

    def _complete(self, dl: _Download) -> list[fleet_pb2.EdgeFrame]:
        version = dl.manifest.version
        try:
            check_file(dl.manifest, dl.manifest.serve, dl.staging / dl.manifest.serve)
            (dl.staging / BUNDLE_FILE).write_bytes(dl.bundle)
            target = self.store.root / version
            shutil.rmtree(target, ignore_errors=True)
            dl.staging.rename(target)
            stored = self.store.verify(version)
        except FedgeError as exc:
            shutil.rmtree(dl.staging, ignore_errors=True)
            return [self._refused(version, exc)]
        except OSError as exc:
            shutil.rmtree(dl.staging, ignore_errors=True)
            return [self._refused(version, FedgeError(f"cannot store model {version}: {exc}"))]
        self._installed(stored)
        return [self._status(version)]

    def _installed(self, stored: Stored) -> None:
        """Activate a stored bundle unless pinned or older than the active one; tell the daemon."""
        active, pinned = self.store.active()
        newer = True
        if active and active != stored.version:
            try:
                newer = stored.manifest.created_at > self.store.verify(active).manifest.created_at
            except FedgeError:
                newer = True  # the active one is gone or damaged: anything verified is better
        activate = active != stored.version and not pinned and newer
        if activate:
            try:
                self.store.activate(stored.version)
            except (FedgeError, OSError) as exc:
                log.warning("model %s stored but not activated: %s", stored.version, exc)
                activate = False
            else:
                log.info("model %s installed and active", stored.version)
        elif active != stored.version:
            log.info("model %s stored, not activated (%s)", stored.version, "pinned" if pinned else "older")
        self._on_installed(stored, activate)

    def _status(self, version: str) -> fleet_pb2.EdgeFrame:
        active, _ = self.store.active()
        return fleet_pb2.EdgeFrame(
            model_status=fleet_pb2.ModelStatus(version=version, installed=True, active=active)
        )

    def _refused(self, version: str, exc: FedgeError) -> fleet_pb2.EdgeFrame:
        log.warning("model bundle %s refused: %s", version[:80], exc.message)
        active, _ = self.store.active()
        status = fleet_pb2.ModelStatus(
            version=version[:80], installed=False, active=active, error=exc.message
        )
        return fleet_pb2.EdgeFrame(model_status=status)

    def _abort(self) -> None:
        dl, self._current = self._current, None
        if dl is not None:
            dl.fh.close()
            shutil.rmtree(dl.staging, ignore_errors=True)

    def reset(self) -> None:
        """The stream ended: drop a partial download (the next offer starts it again)."""
        with self._lock:
            self._abort()
