"""EdgeInference: the daemon serves its active model to local applications (onnxruntime).

Address: ``127.0.0.1:0`` by default (any free loopback port, so many daemons share a machine);
the bound address is written to ``<state_dir>/inference_address`` for ``fedge client predict``
and removed on exit. ``inference-address = ""`` turns the service off. Plaintext is only
allowed on loopback; anything else needs ``inference-tls-dir`` (mTLS: a server certificate and
the CA that callers' certificates must come from).

Batching: one batcher thread runs the model. It takes the oldest request and whatever else is
already waiting (up to ``max_batch`` rows) and runs them as one batch, so an idle service adds
no latency and a busy one amortizes the per-call cost.

Hot swap: the model in use is one reference. A switch loads, verifies and warms the new session
first, then replaces the reference; a batch always runs on the session it picked up, so no
request fails or sees a half-loaded model. Switches come from the daemon (a new bundle) and from
``fedge client model use`` (``models/active.json`` changes; a watcher notices within 0.25 s).
"""

from __future__ import annotations

import hashlib
import logging
import math
import queue
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from fedge.atomic import write_text
from fedge.config import is_loopback, split_address
from fedge.errors import FedgeError
from fedge.protos.v1 import inference_pb2, inference_pb2_grpc, model_pb2
from fedge.security.bundles import BundleError, file_entry

from .local_peer import may_call
from .models import ACTIVE, ModelStore

log = logging.getLogger("fedge.client.inference")

ADDRESS_FILE = "inference_address"
MAX_BATCH = 64
#: gRPC framing and the request's other fields, on top of the tensor bytes a request may carry.
_ENVELOPE_BYTES = 64 * 1024
#: Most dimensions a request tensor may have (numpy's own limit is 64; models need a handful).
MAX_DIMS = 8
WATCH_INTERVAL = 0.25
REQUEST_TIMEOUT = 30.0


@dataclass(frozen=True)
class PredictLimits:
    """What one Predict request may ask (``max-predict-rows`` / ``max-predict-bytes``).

    Why: any local caller reaches the endpoint, and one 16 MiB request used to take the daemon
    from 396 MB to 1.3 GB (the float32 input, its scaled copy, the batch and the logits). Bytes
    are refused by gRPC before the message is read; rows before any copy is made.
    """

    max_rows: int = 1024
    max_bytes: int = 4 * 1024 * 1024

    def check(self, shape: list[int], data_bytes: int, sample: tuple[int, ...] | None) -> None:
        """Raise PredictError (INVALID_ARGUMENT) for a tensor that is malformed or too large.

        With the served model's ``sample`` shape, the tensor must be one sample (flat or shaped)
        or a batch of them: ``[n, *sample]`` or ``[n, prod(sample)]``.
        """
        if not shape or len(shape) > MAX_DIMS or any(d < 0 for d in shape):
            raise PredictError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input tensor: shape {shape[: MAX_DIMS + 1]}: use 1 to {MAX_DIMS} non-negative dimensions",
            )
        if math.prod(shape) * 4 != data_bytes:
            raise PredictError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input tensor: shape {shape} does not match {data_bytes} bytes of float32",
            )
        rows = shape[0]
        if sample is not None:
            per = math.prod(sample)
            if shape not in ([per], list(sample)) and shape[1:] not in ([per], list(sample)):
                raise PredictError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input tensor: shape {shape} is not [n, {per}] or [n, {', '.join(map(str, sample))}] "
                    "as the served model's input",
                )
            rows = 1 if shape in ([per], list(sample)) else shape[0]
        if rows > self.max_rows:
            raise PredictError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{rows} samples in one request; this device serves at most {self.max_rows} "
                "(max-predict-rows): split the input",
            )


class PredictError(Exception):
    """A request that cannot be served: a gRPC status code and a message for the caller."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class Loaded:
    """A verified model with its onnxruntime session (immutable once published)."""

    manifest: model_pb2.BundleManifest
    session: object
    sample_shape: tuple[int, ...]
    loaded_at: float = field(default_factory=time.time)

    @property
    def version(self) -> str:
        return self.manifest.version

    def prepare(self, x: np.ndarray, prepared: bool) -> np.ndarray:
        """Raw features (as in the device's data files) → model input, per the bundle's input spec."""
        per = math.prod(self.sample_shape)
        if x.size == 0 or x.size % per:
            raise PredictError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"model {self.version} ({self.manifest.task}) expects {per} values per sample "
                f"(shape {list(self.sample_shape)}), got shape {list(x.shape)}",
            )
        out = x.astype(np.float32, copy=not prepared)
        if not prepared and self.manifest.input.scale not in (0.0, 1.0):
            out = out / np.float32(self.manifest.input.scale)
        out = np.ascontiguousarray(out.reshape(-1, *self.sample_shape))
        if not np.isfinite(out).all():
            raise PredictError(grpc.StatusCode.INVALID_ARGUMENT, "input contains NaN or infinite values")
        return out

    def run(self, x: np.ndarray) -> np.ndarray:
        """Model outputs as the task's kind reads them: probabilities, or values for regression."""
        logits = self.session.run(None, {self.manifest.input.name: x})[0]  # type: ignore[attr-defined]
        logits = logits.reshape(len(x), -1)
        if self.manifest.output.kind == "regression":
            return np.asarray(logits, dtype=np.float32)
        if self.manifest.output.kind == "multilabel":
            return np.asarray(1.0 / (1.0 + np.exp(-logits)), dtype=np.float32)
        z = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


def load_model(store: ModelStore, version: str, threads: int = 1) -> Loaded:
    """Verify a stored bundle, read its served file once, check that exact byte string, load it."""
    import onnxruntime as ort

    stored = store.verify(version)
    data = stored.model_path.read_bytes()
    if hashlib.sha256(data).digest() != file_entry(stored.manifest, stored.manifest.serve).sha256:
        raise BundleError("hash-mismatch", f"{stored.manifest.serve} of {version} changed while loading")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # a signed but unloadable model: keep serving the previous one
        raise BundleError("unloadable", f"onnxruntime cannot load model {version}: {exc}") from None
    shape = tuple(int(d) for d in stored.manifest.input.shape[1:])
    loaded = Loaded(stored.manifest, session, shape)
    loaded.run(np.zeros((1, *shape), np.float32))  # warm up before the first request sees it
    return loaded


@dataclass
class _Request:
    x: np.ndarray
    prepared: bool
    future: futures.Future[tuple[np.ndarray, str]] = field(default_factory=futures.Future)


class Batcher:
    """The one thread that runs the model; coalesces waiting requests into batches."""

    def __init__(self, current: InferenceServer, max_batch: int = MAX_BATCH) -> None:
        self._server, self._max_batch = current, max_batch
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="fedge-inference-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, x: np.ndarray, prepared: bool) -> futures.Future[tuple[np.ndarray, str]]:
        request = _Request(x, prepared)
        self._queue.put(request)
        return request.future

    def close(self) -> None:
        self._queue.put(None)
        if self._thread.ident is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            model = self._server.model
            per = math.prod(model.sample_shape) if model is not None else 1
            batch, rows, stop = [first], max(1, first.x.size // per), False
            while rows < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
                rows += max(1, item.x.size // per)
            self._serve(batch)
            if stop:
                break
        while True:  # closing: fail whatever is left instead of leaving callers hanging
            try:
                left = self._queue.get_nowait()
            except queue.Empty:
                return
            if left is not None:
                left.future.set_exception(PredictError(grpc.StatusCode.UNAVAILABLE, "the daemon is stopping"))

    def _serve(self, batch: list[_Request]) -> None:
        model = self._server.model  # one snapshot for the whole batch: a swap cannot split it
        if model is None:
            for r in batch:
                r.future.set_exception(
                    PredictError(grpc.StatusCode.FAILED_PRECONDITION, "this device has no model yet")
                )
            return
        ready: list[tuple[_Request, np.ndarray]] = []
        for r in batch:
            try:
                ready.append((r, model.prepare(r.x, r.prepared)))
            except PredictError as exc:
                r.future.set_exception(exc)
        if not ready:
            return
        try:
            probs = model.run(np.concatenate([x for _, x in ready]))
        except Exception as exc:
            for r, _ in ready:
                r.future.set_exception(PredictError(grpc.StatusCode.INTERNAL, f"inference failed: {exc}"))
            return
        start = 0
        for r, x in ready:
            r.future.set_result((probs[start : start + len(x)], model.version))
            start += len(x)
        self._server.predictions += len(probs)
        self._server.batches += 1


class _Servicer(inference_pb2_grpc.EdgeInferenceServicer):
    def __init__(self, server: InferenceServer) -> None:
        self._server = server

    def _admit(self, context: grpc.ServicerContext) -> None:
        """Plaintext loopback: only the daemon's own user (or root) may call (fedge.client.local_peer)."""
        port = self._server.port
        if self._server.tls or port is None or may_call(context.peer(), port):
            return
        context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            "EdgeInference on loopback serves only the daemon's own user",
        )

    def Predict(  # noqa: N802 (gRPC method name)
        self, request: inference_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> inference_pb2.PredictReply:
        self._admit(context)
        shape = list(request.input.shape)
        model = self._server.model
        try:
            self._server.limits.check(shape, len(request.input.data), model.sample_shape if model else None)
        except PredictError as exc:
            context.abort(exc.code, exc.message)
        x = np.frombuffer(request.input.data, dtype="<f4").reshape(shape)
        try:
            probs, version = self._server.batcher.submit(x, request.prepared).result(REQUEST_TIMEOUT)
        except PredictError as exc:
            context.abort(exc.code, exc.message)
        except futures.TimeoutError:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "inference timed out")
        return inference_pb2.PredictReply(
            classes=probs.argmax(axis=1).tolist(),
            probabilities=inference_pb2.Tensor(shape=list(probs.shape), data=probs.astype("<f4").tobytes()),
            model_version=version,
            kind=self._server.model.manifest.output.kind if self._server.model else "",
        )

    def ModelInfo(  # noqa: N802
        self, request: inference_pb2.ModelInfoRequest, context: grpc.ServicerContext
    ) -> inference_pb2.ModelInfoReply:
        self._admit(context)
        model = self._server.model
        _, pinned = self._server.store.active()
        if model is None:
            return inference_pb2.ModelInfoReply(loaded=False, predictions=self._server.predictions)
        m = model.manifest
        return inference_pb2.ModelInfoReply(
            loaded=True,
            version=m.version,
            run_id=m.run_id,
            round=m.round,
            task=m.task,
            file=m.serve,
            input=m.input,
            output=m.output,
            metrics=dict(m.metrics),
            loaded_at=model.loaded_at,
            predictions=self._server.predictions,
            pinned=pinned,
        )

    def Health(  # noqa: N802
        self, request: inference_pb2.HealthRequest, context: grpc.ServicerContext
    ) -> inference_pb2.HealthReply:
        self._admit(context)
        model = self._server.model
        status = inference_pb2.HealthReply.SERVING if model else inference_pb2.HealthReply.NOT_SERVING
        return inference_pb2.HealthReply(status=status, version=model.version if model else "")


class InferenceServer:
    """The daemon's EdgeInference gRPC server, its batcher and the active model."""

    def __init__(
        self,
        store: ModelStore,
        address: str = "127.0.0.1:0",
        threads: int = 1,
        tls_dir: str | Path | None = None,
        max_batch: int = MAX_BATCH,
        limits: PredictLimits | None = None,
    ) -> None:
        host, _ = split_address(address)
        if tls_dir is None and not is_loopback(host):
            raise FedgeError(
                f"inference on {address} would be plaintext on a non-loopback address",
                "use 127.0.0.1:PORT, or pass --inference-tls-dir for mTLS",
            )
        self.store, self.address, self.threads = store, address, threads
        self.limits = limits or PredictLimits()
        self.tls = tls_dir is not None  # mTLS authenticates callers; plaintext checks their user
        self.port: int | None = None
        self._tls_dir = Path(tls_dir) if tls_dir is not None else None
        self.model: Loaded | None = None
        self.predictions = 0  # samples classified
        self.batches = 0  # model runs (fewer than requests when requests were coalesced)
        self._swap = threading.Lock()
        self._seen: tuple[int, int] | None = None
        self._stop = threading.Event()
        self._grpc: grpc.Server | None = None
        self.batcher = Batcher(self, max_batch)

    def start(self) -> str:
        """Load the active model (if any), bind, serve; returns the bound address."""
        self.refresh()
        self.batcher.start()
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="fedge-inference"),
            options=[
                ("grpc.max_receive_message_length", self.limits.max_bytes + _ENVELOPE_BYTES),
                ("grpc.max_send_message_length", self.limits.max_bytes + _ENVELOPE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        inference_pb2_grpc.add_EdgeInferenceServicer_to_server(_Servicer(self), server)
        host, _ = split_address(self.address)
        try:
            if self._tls_dir is not None:
                port = server.add_secure_port(self.address, _tls_credentials(self._tls_dir))
            else:
                port = server.add_insecure_port(self.address)
        except RuntimeError:
            port = 0
        if not port:
            raise FedgeError(
                f"cannot serve inference on {self.address}: the port is in use or the address is not local",
                "pick another --inference-address, or pass an empty one to turn inference off",
            )
        server.start()
        self._grpc = server
        self.port = port
        self.bound = f"{host}:{port}"
        write_text(self.store.state_dir / ADDRESS_FILE, self.bound + "\n")
        threading.Thread(target=self._watch, name="fedge-inference-watch", daemon=True).start()
        log.info("inference on %s (model: %s)", self.bound, self.model.version if self.model else "none yet")
        return self.bound

    def stop(self) -> None:
        self._stop.set()
        if self._grpc is not None:
            self._grpc.stop(1.0).wait(3.0)
            path = self.store.state_dir / ADDRESS_FILE
            try:
                if path.read_text().strip() == self.bound:
                    path.unlink()
            except OSError:
                pass
        self.batcher.close()

    def refresh(self) -> bool:
        """Serve the active version if it is not the one loaded; keep the old one on any failure."""
        with self._swap:
            version, _ = self.store.active()
            current = self.model
            if not version or (current is not None and current.version == version):
                return False
            try:
                loaded = load_model(self.store, version, self.threads)
            except (FedgeError, OSError) as exc:
                still = current.version if current else "nothing"
                log.warning("model %s not served (%s); still serving %s", version, exc, still)
                return False
            self.model = loaded  # the swap: one reference assignment
            log.info("serving model %s (was %s)", version, current.version if current else "none")
            return True

    def _watch(self) -> None:
        """Notice ``fedge client model use`` (active.json replaced) and switch."""
        path = self.store.root / ACTIVE
        while not self._stop.wait(WATCH_INTERVAL):
            try:
                st = path.stat()
                seen = (st.st_ino, st.st_mtime_ns)
            except OSError:
                continue
            if seen != self._seen:
                self._seen = seen
                self.refresh()


def _tls_credentials(tls_dir: Path) -> grpc.ServerCredentials:
    """mTLS: ``server.pem``/``server.key`` (a serverAuth certificate, e.g. from ``fedge pki
    issue-server`` in a PKI of its own) and ``ca.pem``, which callers' certificates must chain to.

    The device's enrolled certificate cannot serve here: it is issued for clientAuth only.
    """
    files = [tls_dir / n for n in ("server.pem", "server.key", "ca.pem")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FedgeError(
            f"inference TLS files missing: {', '.join(missing)}",
            "put server.pem, server.key and ca.pem in --inference-tls-dir (`fedge pki issue-server`)",
        )
    cert, key, ca = (f.read_bytes() for f in files)
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)
