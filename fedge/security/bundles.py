"""Signed model bundles: the server signs a manifest, devices verify it.

See docs/architecture.md, "Security, in layers" and "State on disk".

The signature covers ``_DOMAIN || manifest`` where ``manifest`` is the serialized
``BundleManifest`` exactly as stored and sent (``ModelBundle.manifest``). A verifier checks the
bytes it received and only then parses them, so there is no canonical re-serialization to get
wrong; the domain prefix keeps a bundle signature from ever verifying as another fedge signature
made with the same server key (run announcements use their own domain). The manifest pins each
file by size and SHA-256, so one signature covers the whole bundle.

Everything arriving from outside is untrusted: version strings and file names become paths on the
device, so both are checked against strict patterns before any path is built from them.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

from fedge.errors import FedgeError
from fedge.protos.v1 import model_pb2

__all__ = [
    "BUNDLE_FILE",
    "BundleError",
    "check_file",
    "file_entry",
    "key_id",
    "load_public_key",
    "open_bundle",
    "sign_manifest",
    "verify_dir",
]

BUNDLE_FILE = "bundle.pb"
_DOMAIN = b"fedge-model-bundle-v1\x00"
_VERSION_RE = re.compile(r"^[0-9]{1,19}\.[0-9]{1,10}-[0-9a-f]{8}$")
_FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_FILE_BYTES = 2 << 30  # a device never accepts a file larger than this, whatever a manifest says


class BundleError(FedgeError):
    """A bundle that must not be used; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, message: str, hint: str = "") -> None:
        super().__init__(message, hint or "re-export the model on the server, or check the signing key")
        self.reason = reason


def key_id(public: Ed25519PublicKey) -> str:
    """Fingerprint of a signing key, so errors can say *which* key signed."""
    raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:32]


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """A server signing public key: PEM (``server-signing.pub``) or 32 raw bytes."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise FedgeError(
            f"cannot read the signing key {p}: {exc.strerror}", "pass the server's server-signing.pub"
        ) from None
    try:
        key = Ed25519PublicKey.from_public_bytes(data) if len(data) == 32 else load_pem_public_key(data)
    except ValueError:
        key = None
    if not isinstance(key, Ed25519PublicKey):
        raise FedgeError(f"{p} is not an Ed25519 public key", "pass the server's server-signing.pub")
    return key


def sign_manifest(manifest: bytes, signing_key: Ed25519PrivateKey | None) -> model_pb2.ModelBundle:
    """Wrap serialized manifest bytes into a bundle, signed unless ``signing_key`` is None."""
    if signing_key is None:
        return model_pb2.ModelBundle(manifest=manifest)
    return model_pb2.ModelBundle(
        manifest=manifest,
        signature=signing_key.sign(_DOMAIN + manifest),
        key_id=key_id(signing_key.public_key()),
    )


def open_bundle(
    bundle: bytes | model_pb2.ModelBundle,
    trusted: Ed25519PublicKey | None,
    *,
    allow_unsigned: bool = False,
) -> model_pb2.BundleManifest:
    """Verify a bundle's signature with ``trusted`` and return its checked manifest.

    ``trusted=None`` is only accepted together with ``allow_unsigned`` (plaintext federations,
    where nothing on the wire is authenticated anyway); then the signature is not checked.
    """
    signed = bundle
    if isinstance(signed, bytes):
        try:
            signed = model_pb2.ModelBundle.FromString(signed)
        except Exception:  # protobuf's DecodeError; be total on untrusted bytes
            raise BundleError("malformed", "the model bundle does not parse") from None
    if trusted is None:
        if not allow_unsigned:
            raise BundleError(
                "no-key", "no server signing key to verify the model bundle with", "enroll the device again"
            )
    elif not signed.signature:
        raise BundleError("unsigned", "the model bundle is not signed", "export it with the server's PKI")
    else:
        try:
            trusted.verify(signed.signature, _DOMAIN + signed.manifest)
        except InvalidSignature:
            signer = f" (signed by {signed.key_id})" if signed.key_id else ""
            raise BundleError(
                "bad-signature",
                f"the model bundle is not signed by the trusted server key {key_id(trusted)}{signer}",
                "only bundles exported by this federation's server are accepted",
            ) from None
    try:
        manifest = model_pb2.BundleManifest.FromString(signed.manifest)
    except Exception:
        raise BundleError("malformed", "the bundle manifest does not parse") from None
    _check_manifest(manifest)
    return manifest


def _check_manifest(m: model_pb2.BundleManifest) -> None:
    if m.format != 1:
        raise BundleError("format", f"unsupported bundle format {m.format}", "upgrade fedge on this device")
    if not _VERSION_RE.match(m.version):
        raise BundleError("malformed", f"invalid bundle version {m.version[:80]!r}")
    names = [f.name for f in m.files]
    if not names or len(set(names)) != len(names):
        raise BundleError("malformed", "the bundle lists no files, or a file twice")
    for f in m.files:
        if not _FILE_RE.match(f.name) or f.name == BUNDLE_FILE:
            raise BundleError("malformed", f"invalid file name {f.name[:80]!r} in the bundle")
        if len(f.sha256) != 32 or f.size > MAX_FILE_BYTES:
            raise BundleError("malformed", f"invalid hash or size for {f.name} in the bundle")
    if m.serve not in names:
        raise BundleError("malformed", f"the bundle serves {m.serve[:80]!r}, which it does not list")


def file_entry(manifest: model_pb2.BundleManifest, name: str) -> model_pb2.BundleFile:
    """The manifest entry of ``name`` (BundleError if the manifest does not list it)."""
    for f in manifest.files:
        if f.name == name:
            return f
    raise BundleError("malformed", f"{name!r} is not part of bundle {manifest.version}")


def check_file(manifest: model_pb2.BundleManifest, name: str, path: Path) -> None:
    """The file at ``path`` is exactly the manifest's ``name`` (size, then SHA-256)."""
    entry = file_entry(manifest, name)
    try:
        size = path.stat().st_size
        if size != entry.size:
            raise BundleError(
                "hash-mismatch",
                f"{name} of bundle {manifest.version} has {size} bytes, expected {entry.size}",
            )
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise BundleError(
            "missing", f"cannot read {name} of bundle {manifest.version}: {exc.strerror}"
        ) from None
    if digest.digest() != entry.sha256:
        raise BundleError("hash-mismatch", f"{name} of bundle {manifest.version} does not match its SHA-256")


def verify_dir(
    bundle_dir: str | Path,
    trusted: Ed25519PublicKey | None,
    *,
    allow_unsigned: bool = False,
    require_all: bool = True,
) -> model_pb2.BundleManifest:
    """Verify a bundle directory: ``bundle.pb``'s signature, then every file it lists.

    ``require_all=False`` is a device's copy: only the served file must be present (devices
    download just that one); any other listed file that is present must still match.
    """
    root = Path(bundle_dir)
    try:
        raw = (root / BUNDLE_FILE).read_bytes()
    except OSError:
        raise BundleError(
            "missing",
            f"{root} holds no {BUNDLE_FILE}",
            "point at a directory written by `fedge model export`",
        ) from None
    manifest = open_bundle(raw, trusted, allow_unsigned=allow_unsigned)
    for f in manifest.files:
        path = root / f.name
        if path.exists() or require_all or f.name == manifest.serve:
            check_file(manifest, f.name, path)
    return manifest
