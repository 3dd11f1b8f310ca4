"""``fedge model export|verify``: bundles from the operator's side (reads the server's state dir)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from fedge import logs
from fedge.config import ServerConfig
from fedge.errors import FedgeError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Export and verify model bundles.")

_Str = str | None


@app.command("export")
def export(
    run: Annotated[int, typer.Option("--run", help="Run id (see `fedge run list`).")],
    round_: Annotated[int | None, typer.Option("--round", help="Checkpoint round (default: final).")] = None,
    int8: Annotated[bool, typer.Option("--int8", help="Also quantize to int8 (measured, see docs).")] = False,
    out: Annotated[_Str, typer.Option("--out", help="Bundle dir (default: RUN_DIR/bundles/round-N).")] = None,
    state_dir: Annotated[
        str, typer.Option("--state-dir", help="The server's state dir (holds runs/).")
    ] = ServerConfig.state_dir,
    pki_dir: Annotated[
        _Str,
        typer.Option("--pki-dir", envvar="FEDGE_PKI_DIR", help="PKI dir whose server key signs the bundle."),
    ] = None,
    exporter: Annotated[str, typer.Option(help="torchscript (default) or dynamo (needs onnxscript).")] = (
        "torchscript"
    ),
    verbose: logs.VERBOSE_OPT = 0,
) -> None:
    """Export a run's checkpoint to ONNX, check it against torch, and write a signed bundle."""
    logs.setup(verbose)
    if round_ is not None and round_ < 0:
        raise FedgeError(f"--round must be ≥ 0, got {round_}", "omit it for the final round")
    run_dir = Path(state_dir) / "runs" / str(run)
    if not run_dir.is_dir():
        raise FedgeError(
            f"no run {run} in {Path(state_dir) / 'runs'}",
            "pass the server's --state-dir and a run id from `fedge run list`",
        )
    key = None
    if pki_dir:
        from fedge.security import Pki

        key = Pki.open(pki_dir).signing_key()
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from fedge.export import export_bundle

    result = export_bundle(run_dir, round_, out, int8, key, exporter=exporter)
    m = result.manifest.metrics
    print(f"bundle {result.version} -> {result.bundle_dir}")
    print(
        f"fp32: parity vs torch max abs diff {m['fp32.max-abs-diff']:.2e}, argmax agreement "
        f"{m['fp32.argmax-agreement']:.2%}; accuracy {m['fp32.accuracy']:.4f}"
    )
    if int8:
        if "int8.accuracy" in m:
            print(
                f"int8 ({result.manifest.exporter['int8-method']}): accuracy {m['int8.accuracy']:.4f}, "
                f"{m['int8.size-ratio']:.2f}× the fp32 size; serving {result.manifest.serve}"
            )
        else:
            print(f"int8 left out: {result.manifest.exporter['int8-choice']}")
    if not result.signed:
        print(
            "note: unsigned bundle (no --pki-dir); devices that pin a server key refuse it", file=sys.stderr
        )


@app.command("verify")
def verify(
    bundle_dir: Annotated[str, typer.Argument(help="A bundle directory (holds bundle.pb).")],
    key: Annotated[_Str, typer.Option("--key", help="The server's server-signing.pub.")] = None,
    pki_dir: Annotated[
        _Str, typer.Option("--pki-dir", help="The server's PKI dir (instead of --key).")
    ] = None,
    state_dir: Annotated[
        _Str, typer.Option("--state-dir", help="An enrolled device's state dir (instead of --key).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the verified manifest as JSON.")] = False,
) -> None:
    """Check a bundle's signature and every file's SHA-256; exit 2 if anything is off."""
    from fedge.security.bundles import load_public_key, verify_dir

    sources = [p for p in (key, pki_dir and Path(pki_dir) / "server-signing.pub") if p]
    if state_dir:
        sources.append(Path(state_dir) / "server-signing.pub")
    if len(sources) != 1:
        raise FedgeError(
            "verify needs exactly one trusted key", "pass --key server-signing.pub, --pki-dir or --state-dir"
        )
    manifest = verify_dir(bundle_dir, load_public_key(sources[0]), require_all=False)
    if as_json:
        from google.protobuf import json_format

        print(json.dumps(json_format.MessageToDict(manifest), indent=2))
        return
    present = [f.name for f in manifest.files if (Path(bundle_dir) / f.name).exists()]
    print(
        f"ok: bundle {manifest.version} (run {manifest.run_id}, round {manifest.round}, "
        f"task {manifest.task}); signature valid; sha256 ok: {', '.join(present)}; serves {manifest.serve}"
    )
