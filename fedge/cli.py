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
    pretty_exceptions_enable=False,
    help="Edge-and-cloud federated learning on Flower. Commands that run something take -v "
    "(info: what each component does) and -vv (debug), on the console and in their logs.",
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"fedge {version('fedge')}")
        except PackageNotFoundError:  # a source checkout that was never installed
            import fedge

            print(f"fedge {getattr(fedge, '__version__', 'unknown')}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print fedge's version and exit."
    ),
) -> None:
    """Edge-and-cloud federated learning on Flower."""


def _register() -> None:
    from fedge.client.cli import app as client_app
    from fedge.export.cli import app as model_app
    from fedge.relay.cli import app as relay_app
    from fedge.security.cli import app as pki_app
    from fedge.server.cli import nodes_app, run_app, server_app
    from fedge.sim.cli import simulate

    app.add_typer(server_app, name="server", help="Run the cloud aggregation server.")
    app.add_typer(run_app, name="run", help="Launch and watch federated runs.")
    app.add_typer(nodes_app, name="nodes", help="Inspect connected edge nodes.")
    app.add_typer(client_app, name="client", help="Run the edge client daemon.")
    app.add_typer(relay_app, name="relay", help="Relay between the server and a group of devices.")
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
        # Non-standalone typer returns exit codes (130: Ctrl-C). prog_name: `python -m fedge` is the
        # same command (usage lines, the completion variable _FEDGE_COMPLETE).
        code = app(standalone_mode=False, prog_name="fedge")
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
            print(f"error: {_once(exc.format_message())}", file=sys.stderr)
            print("hint: run the command with --help to see its options", file=sys.stderr)
            raise SystemExit(2) from None
        raise


def _once(message: str) -> str:
    """``message`` with repeated sentences dropped: click and typer both add "Did you mean …?"."""
    import re

    seen: list[str] = []
    for sentence in re.split(r"(?<=[.?!])\s+", message.strip()):
        if sentence not in seen:
            seen.append(sentence)
    return " ".join(seen)


if __name__ == "__main__":
    main()
