"""The ``fedge`` command: server, run, nodes, client, simulate.

Every ``FedgeError`` becomes two lines (``error:`` and ``hint:``) and exit code 2; nothing a
user can cause ends in a traceback.
"""

from __future__ import annotations

import os
import sys

import typer

from fedge.errors import FedgeError

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
# gRPC's C-core log lines (bind errors, GOAWAY on reconnects) duplicate fedge's own messages; set
# it outright because importing flwr sets "error" for every child process. FEDGE_GRPC_VERBOSITY
# (DEBUG, INFO, ERROR) brings them back for debugging.
os.environ["GRPC_VERBOSITY"] = os.environ.get("FEDGE_GRPC_VERBOSITY", "NONE")

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Edge-and-cloud federated learning on Flower.",
)


def _register() -> None:
    from fedge.client.cli import app as client_app
    from fedge.export.cli import app as model_app
    from fedge.security.cli import app as pki_app
    from fedge.server.cli import nodes_app, run_app, server_app
    from fedge.sim.cli import simulate

    app.add_typer(server_app, name="server", help="Run the cloud aggregation server.")
    app.add_typer(run_app, name="run", help="Launch and watch federated runs.")
    app.add_typer(nodes_app, name="nodes", help="Inspect connected edge nodes.")
    app.add_typer(client_app, name="client", help="Run the edge client daemon.")
    app.add_typer(pki_app, name="pki", help="Certificates, enrollment tokens, revocation.")
    app.add_typer(model_app, name="model", help="Export run checkpoints to signed ONNX bundles; verify them.")
    app.command("simulate", help="Simulate a federation on this machine.")(simulate)


def fail(exc: FedgeError) -> None:
    """Print the two-line error and exit (2 for bad input)."""
    print(f"error: {exc.message}", file=sys.stderr)
    if exc.hint:
        print(f"hint: {exc.hint}", file=sys.stderr)
    raise SystemExit(exc.exit_code)


def main() -> None:
    """Console entry point."""
    try:
        _register()
        code = app(standalone_mode=False)  # non-standalone typer returns exit codes (130: Ctrl-C)
        if isinstance(code, int) and code:
            if code == 130:
                print("interrupted", file=sys.stderr)
            raise SystemExit(code)
    except FedgeError as exc:
        fail(exc)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        raise SystemExit(130) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as exc:  # click usage errors carry their own message and exit code
        import click

        if isinstance(exc, click.exceptions.Exit):
            raise SystemExit(exc.exit_code) from None
        if isinstance(exc, click.ClickException):
            print(f"error: {exc.format_message()}", file=sys.stderr)
            print("hint: run the command with --help to see its options", file=sys.stderr)
            raise SystemExit(2) from None
        raise


if __name__ == "__main__":
    main()
