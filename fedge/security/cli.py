"""``fedge pki``: create and run the deployment's certificate authority from a shell.

Human messages go to stderr; stdout carries only what a script captures (the token of
``token create``, the table of ``list``). Errors are FedgeErrors, printed by ``fedge.cli``.
"""

from __future__ import annotations

import re
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fedge.errors import FedgeError
from fedge.security import pki

app = typer.Typer(no_args_is_help=True, help="Certificate authority: server, admin and device certificates.")
token_app = typer.Typer(no_args_is_help=True, help="Single-use enrollment tokens for devices.")
app.add_typer(token_app, name="token")

DirOpt = Annotated[str, typer.Option("--dir", help="PKI directory (holds the CA key: keep it private)")]
_DEFAULT_DIR = "fedge-pki"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``30s``, ``15m``, ``24h``, ``7d`` (or plain seconds) as seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise FedgeError(f"invalid duration {text!r}", "use a positive number with s, m, h or d, e.g. 24h")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def _say(message: str) -> None:
    typer.echo(message, err=True)


@app.command("init")
def init(
    pki_dir: DirOpt = _DEFAULT_DIR,
    ca_name: Annotated[str, typer.Option(help="CA common name")] = "fedge CA",
    days: Annotated[int, typer.Option(help="CA validity in days")] = 3650,
) -> None:
    """Create the CA and the server's signing key (refuses to overwrite an existing PKI)."""
    p = pki.init_pki(pki_dir, ca_name=ca_name, days=days)
    _say(f"created fedge PKI in {p.root}: ca.pem, ca.key, server-signing.key/.pub")
    _say(f"next: fedge pki issue-server --dir {pki_dir} --host YOUR.HOST [--ip ADDR]")


@app.command("issue-server")
def issue_server(
    host: Annotated[str, typer.Option(help="DNS name (or IP) devices dial")],
    pki_dir: DirOpt = _DEFAULT_DIR,
    ip: Annotated[list[str] | None, typer.Option("--ip", help="extra IP address SAN (repeatable)")] = None,
    days: Annotated[int, typer.Option(help="validity in days")] = 825,
    force: Annotated[bool, typer.Option("--force", help="replace an existing server.pem")] = False,
) -> None:
    """Issue the server's TLS certificate (server.pem, server.key)."""
    issued = pki.issue_server(pki_dir, host, ip or [], days, force=force)
    _say(f"issued {issued.cert_path} and {issued.key_path} for {', '.join([host, *(ip or [])])}")


@app.command("issue-admin")
def issue_admin(
    pki_dir: DirOpt = _DEFAULT_DIR,
    name: Annotated[str, typer.Option(help="admin identity; files NAME.pem/NAME.key")] = "admin",
    days: Annotated[int, typer.Option(help="validity in days")] = 365,
    force: Annotated[bool, typer.Option("--force", help="replace an existing NAME.pem")] = False,
) -> None:
    """Issue a client certificate that may use the Control API (fedge run/nodes)."""
    issued = pki.issue_admin(pki_dir, name, days, force=force)
    _say(f"issued admin certificate {issued.cert_path} and key {issued.key_path}")


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option(help="device name the token is for")],
    pki_dir: DirOpt = _DEFAULT_DIR,
    ttl: Annotated[str, typer.Option(help="lifetime: 30m, 24h, 7d, ...")] = "24h",
    relay: Annotated[
        bool, typer.Option("--relay", help="the certificate may run `fedge relay` (serve devices)")
    ] = False,
) -> None:
    """Create a single-use enrollment token for one device; prints only the token."""
    role = "relay" if relay else "device"
    token = pki.create_token(pki_dir, name, parse_duration(ttl), role=role)
    typer.echo(token)
    _say(f"{role} token for {name!r}, valid {ttl}, single use; it is shown only now")


@app.command("revoke")
def revoke(
    name: Annotated[str, typer.Option(help="device, admin or server name")],
    pki_dir: DirOpt = _DEFAULT_DIR,
) -> None:
    """Revoke every certificate issued to NAME (and its unused tokens)."""
    serials = pki.revoke(pki_dir, name)
    if serials:
        _say(
            f"revoked {len(serials)} certificate(s) of {name!r}; a running server drops them within a second"
        )
    else:
        _say(f"every certificate of {name!r} was already revoked")


@app.command("list")
def list_certs(pki_dir: DirOpt = _DEFAULT_DIR) -> None:
    """List every certificate the CA issued, with its state (valid, expired, revoked)."""
    table = Table("name", "kind", "state", "expires", "serial")
    for c in pki.list_issued(pki_dir):
        kind = f"{c.kind} (admin)" if c.admin and c.kind != "admin" else c.kind
        table.add_row(c.name, kind, c.state, c.not_after.strftime("%Y-%m-%d %H:%M UTC"), c.serial[:16])
    Console(width=110).print(table)
