"""``fedge client model list|use`` and ``fedge client predict``: the device's models, from its shell.

``model`` works on the state dir directly (no daemon needed: a rollback must work when the daemon
is down too); a running daemon notices the switch within a quarter second. ``predict`` talks to
the daemon's EdgeInference service.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fedge.config import EdgeConfig, split_address
from fedge.errors import FedgeError

if TYPE_CHECKING:  # imported lazily: `fedge --help` must not pay for grpc, numpy and crypto
    import grpc
    import numpy as np

    from .models import ModelStore

ADDRESS_FILE = "inference_address"  # fedge.client.inference.ADDRESS_FILE

model_app = typer.Typer(no_args_is_help=True, add_completion=False, help="Models stored on this device.")

STATE_OPT = Annotated[str, typer.Option("--state-dir", help="The daemon's state dir.")]
DEFAULT_STATE = EdgeConfig.state_dir


def _store(state_dir: str) -> ModelStore:
    from .models import ModelStore

    if not Path(state_dir).is_dir():
        raise FedgeError(f"state dir {state_dir} does not exist", "pass the daemon's --state-dir")
    return ModelStore(state_dir, allow_unsigned=not (Path(state_dir) / "server-signing.pub").is_file())


@model_app.command("list")
def list_models(state_dir: STATE_OPT = DEFAULT_STATE) -> None:
    """List verified bundles (oldest first) and which one is active."""
    from rich.console import Console
    from rich.table import Table

    from .models import Stored

    store = _store(state_dir)
    active, pinned = store.active()
    entries = store.versions()
    if not entries:
        print(f"no models in {store.root} yet (they arrive from the server after a run)")
        return
    table = Table("version", "run", "round", "task", "file", "accuracy", "created", "state")
    for e in entries:
        if not isinstance(e, Stored):
            table.add_row(e[0], "", "", "", "", "", "", f"damaged: {e[1]}")
            continue
        m = e.manifest
        acc = m.metrics.get("int8.accuracy" if m.serve.endswith(".int8.onnx") else "fp32.accuracy")
        state = ("active, pinned" if pinned else "active") if e.version == active else ""
        created = dt.datetime.fromtimestamp(m.created_at).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(
            e.version,
            str(m.run_id),
            str(m.round),
            m.task,
            m.serve,
            f"{acc:.4f}" if acc else "",
            created,
            state,
        )
    Console(width=160).print(table)


@model_app.command("use")
def use(
    version: Annotated[str, typer.Argument(help="A version from `model list`, or `latest` to unpin.")],
    state_dir: STATE_OPT = DEFAULT_STATE,
) -> None:
    """Switch the active model (pinned: new bundles are stored, not activated), or `latest` to unpin."""
    store = _store(state_dir)
    if version == "latest":
        newest = store.newest()
        if newest is None:
            raise FedgeError(f"no verified model in {store.root}", "wait for the server to send one")
        stored = store.activate(newest.version, pinned=False)
        print(f"active model: {stored.version} (following the server's latest again)")
    else:
        stored = store.activate(version, pinned=True)
        print(
            f"active model: {stored.version} (pinned: new models are stored but not activated "
            "until `fedge client model use latest`)"
        )
    address = _address_file(Path(state_dir))
    if address:
        served = _wait_served(address, stored.version)
        print(f"the running daemon serves {stored.version}" if served else "the daemon has not switched yet")


def _address_file(state_dir: Path) -> str:
    try:
        return (state_dir / ADDRESS_FILE).read_text().strip()
    except OSError:
        return ""


def _wait_served(address: str, version: str, timeout: float = 5.0) -> bool:
    import grpc

    from fedge.protos.v1 import inference_pb2, inference_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = inference_pb2_grpc.EdgeInferenceStub(channel)
        while time.monotonic() < deadline:
            try:
                if stub.ModelInfo(inference_pb2.ModelInfoRequest(), timeout=1.0).version == version:
                    return True
            except grpc.RpcError:
                return False
            time.sleep(0.05)
    return False


def load_input(path: str) -> np.ndarray:
    """A numeric ``.npy`` array (no pickles) or a ``.npz`` with one array."""
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise FedgeError(f"input file not found: {path}", "pass --input with a .npy file of features")
    try:
        data = np.load(p, allow_pickle=False)
        if isinstance(data, np.lib.npyio.NpzFile):
            if len(data.files) != 1:
                raise FedgeError(
                    f"{path} holds {len(data.files)} arrays", "pass a .npy, or a .npz with one array"
                )
            data = data[data.files[0]]
    except (ValueError, OSError) as exc:
        raise FedgeError(
            f"{path} is not a readable .npy/.npz array ({exc})", "save it with numpy.save"
        ) from None
    if data.dtype == np.bool_ or not np.issubdtype(data.dtype, np.number):
        raise FedgeError(f"{path} holds {data.dtype} values, not numbers", "save numeric features")
    return np.asarray(data)


def predict(
    input_path: Annotated[str, typer.Option("--input", help="Features as .npy (one sample or a batch).")],
    state_dir: STATE_OPT = DEFAULT_STATE,
    address: Annotated[
        str | None, typer.Option("--address", help="HOST:PORT of the service (default: from --state-dir).")
    ] = None,
    prepared: Annotated[
        bool, typer.Option("--prepared", help="Input is already model input (scaled), not raw features.")
    ] = False,
    tls_dir: Annotated[
        str | None,
        typer.Option("--tls-dir", help="mTLS: dir with ca.pem and tls.pem/tls.key (or admin.pem/admin.key)."),
    ] = None,
    server_name: Annotated[
        str | None, typer.Option("--server-name", help="mTLS: the serving device's name.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the reply as JSON.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 30.0,
) -> None:
    """Classify features with the model the local daemon serves; prints class and probabilities."""
    import grpc
    import numpy as np

    from fedge.protos.v1 import inference_pb2, inference_pb2_grpc

    x = load_input(input_path)
    if address is None:
        address = _address_file(Path(state_dir))
        if not address:
            raise FedgeError(
                f"no edge daemon serves inference for {state_dir} (no {ADDRESS_FILE} there)",
                "start it with `fedge client start --state-dir DIR`, or pass --address HOST:PORT",
            )
    split_address(address)
    request = inference_pb2.PredictRequest(
        input=inference_pb2.Tensor(shape=list(x.shape), data=x.astype("<f4").tobytes()), prepared=prepared
    )
    with _channel(address, tls_dir, server_name) as channel:
        try:
            reply = inference_pb2_grpc.EdgeInferenceStub(channel).Predict(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise _translate(exc, address) from None
    probs = np.frombuffer(reply.probabilities.data, dtype="<f4").reshape(list(reply.probabilities.shape))
    if as_json:
        out = {"model": reply.model_version, "classes": list(reply.classes), "probabilities": probs.tolist()}
        print(json.dumps(out))
        return
    print(f"model {reply.model_version}")
    if reply.kind == "regression":
        for i, row in enumerate(probs):
            print(f"sample {i}: {' '.join(f'{v:.4g}' for v in row)}")
        return
    for i, (cls, row) in enumerate(zip(reply.classes, probs, strict=True)):
        print(
            f"sample {i}: class {cls} (p={row[cls]:.3f})  probabilities: {' '.join(f'{p:.3f}' for p in row)}"
        )


def _channel(address: str, tls_dir: str | None, server_name: str | None) -> grpc.Channel:
    import grpc

    if not tls_dir:
        return grpc.insecure_channel(address)
    root = Path(tls_dir)
    pairs = [("tls.pem", "tls.key"), ("admin.pem", "admin.key")]
    pair = next(
        ((root / c, root / k) for c, k in pairs if (root / c).is_file() and (root / k).is_file()), None
    )
    if pair is None or not (root / "ca.pem").is_file():
        raise FedgeError(
            f"{tls_dir} holds no ca.pem with tls.pem/tls.key or admin.pem/admin.key", "pass --tls-dir"
        )
    creds = grpc.ssl_channel_credentials(
        root_certificates=(root / "ca.pem").read_bytes(),
        private_key=pair[1].read_bytes(),
        certificate_chain=pair[0].read_bytes(),
    )
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.secure_channel(address, creds, options=options)


def _translate(exc: grpc.RpcError, address: str) -> FedgeError:
    import grpc

    code = exc.code() if hasattr(exc, "code") else None
    detail = exc.details() if hasattr(exc, "details") else str(exc)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return FedgeError(
            f"cannot reach the edge daemon's inference service at {address}",
            "check that `fedge client start` runs with this --state-dir (or --address)",
        )
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return FedgeError(
            f"the daemon cannot predict yet: {detail}", "models arrive after a run; see `model list`"
        )
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return FedgeError(
            f"input refused: {detail}", "pass features shaped like one row of the training data"
        )
    return FedgeError(f"prediction failed: {detail}", "see the daemon log (-v)")
