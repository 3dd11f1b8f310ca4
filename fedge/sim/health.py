"""Container healthchecks that ask the process itself over gRPC (exit 0 healthy, 1 not).

Why gRPC and not "is the process alive": a server whose port is bound but whose services are
wedged, or a daemon that lost its inference server, must count as unhealthy so Compose's
``depends_on: service_healthy`` and restart policies act on it.

- ``server``: the standard ``grpc.health.v1.Health/Check`` on the Fleet/Control port, over mTLS
  with the admin certificate of the PKI dir (the port accepts no anonymous TLS clients).
- ``edge``: the daemon's ``EdgeInference/Health`` at the address it wrote to
  ``<state-dir>/inference_address``. Any answer means the daemon is up; ``--require-model`` also
  needs a model loaded.

Imports only grpc and the generated stubs, so a probe costs well under a second.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc

INFERENCE_ADDRESS_FILE = "inference_address"


def check_server(address: str, tls_dir: str | None, server_name: str = "", timeout: float = 3.0) -> str:
    """``grpc.health.v1`` status of the server at ``address``; raises ``RuntimeError`` if not serving."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if tls_dir:
        root = Path(tls_dir)
        ca, cert, key = ((root / n).read_bytes() for n in ("ca.pem", "admin.pem", "admin.key"))
        creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        channel = grpc.secure_channel(address, creds, options=options)
    else:
        channel = grpc.insecure_channel(address)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError as exc:
            raise RuntimeError(f"{address}: {exc.code().name} {exc.details()}") from None
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        raise RuntimeError(f"{address}: {status}")
    return status


def check_edge(state_dir: str, require_model: bool = False, timeout: float = 3.0) -> str:
    """The daemon's ``EdgeInference/Health``; raises ``RuntimeError`` when it does not answer."""
    from fedge.protos.v1 import inference_pb2, inference_pb2_grpc

    root = Path(state_dir)
    try:
        address = (root / INFERENCE_ADDRESS_FILE).read_text().strip()
    except OSError:
        raise RuntimeError(
            f"no {INFERENCE_ADDRESS_FILE} in {root}: the daemon is not serving (yet)"
        ) from None
    host = address.rsplit(":", 1)[0]
    if host in ("127.0.0.1", "localhost", "[::1]"):
        channel = grpc.insecure_channel(address)
    else:  # inference-tls: the daemon's own certificate is accepted by its own CA
        ca, cert, key = ((root / n).read_bytes() for n in ("ca.pem", "tls.pem", "tls.key"))
        channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(ca, key, cert))
    with channel:
        try:
            reply = inference_pb2_grpc.EdgeInferenceStub(channel).Health(
                inference_pb2.HealthRequest(), timeout=timeout
            )
        except grpc.RpcError as exc:
            raise RuntimeError(f"{address}: {exc.code().name} {exc.details()}") from None
    status = inference_pb2.HealthReply.Status.Name(reply.status)
    if require_model and reply.status != inference_pb2.HealthReply.SERVING:
        raise RuntimeError(f"{address}: {status} (no model loaded)")
    return f"{status} {reply.version}".strip()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fedge.sim.health", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    server = sub.add_parser("server", help="grpc.health.v1 on the server's Fleet/Control port")
    server.add_argument("--address", default="127.0.0.1:9092")
    server.add_argument("--tls-dir", help="PKI dir with ca.pem, admin.pem, admin.key (omit: plaintext)")
    server.add_argument("--server-name", default="", help="name expected in the server certificate")
    server.add_argument("--timeout", type=float, default=3.0)
    edge = sub.add_parser("edge", help="EdgeInference/Health of the daemon owning --state-dir")
    edge.add_argument("--state-dir", required=True)
    edge.add_argument("--require-model", action="store_true")
    edge.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    try:
        if args.what == "server":
            status = check_server(args.address, args.tls_dir, args.server_name, args.timeout)
        else:
            status = check_edge(args.state_dir, args.require_model, args.timeout)
    except (RuntimeError, OSError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"healthy: {status}")


if __name__ == "__main__":
    main()
