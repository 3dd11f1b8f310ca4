"""A run's checkpoint → a signed model bundle directory (``model.onnx``, ``model.int8.onnx``, ``bundle.pb``).

The bundle is what devices download and serve, so nothing ships that was not checked: the fp32
ONNX model must match torch on the task's whole test split (max abs diff ≤ 1e-4 times the
largest logit magnitude, at least 1; for classification 100% argmax agreement) or the export
fails; the int8 model (classification only: its choice is measured in accuracy) must stay within
one accuracy point of fp32 and be no slower at batch 1, or it is left out and the manifest says
which rule failed. The task is loaded by the reference the run recorded (``package.module:attr``
with the run's app dir), so a user task exports like a built-in one. Every number measured on
the way is written into the signed manifest.

Files are written atomically and ``bundle.pb`` last, so a directory holding a ``bundle.pb``
always holds the files it lists.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import json_format

from fedge import atomic
from fedge.errors import FedgeError
from fedge.protos.v1 import model_pb2
from fedge.security.bundles import BUNDLE_FILE, sign_manifest

log = logging.getLogger("fedge.export")

FP32_FILE, INT8_FILE = "model.onnx", "model.int8.onnx"
EXPORTERS = ("torchscript", "dynamo")  # see fedge.export.onnx_export for the choice
MAX_ABS_DIFF = 1e-4
"""Parity bound per unit of logit magnitude. float32 rounding grows with the values summed: on
ResNet-18 (digits, 5 epochs) onnxruntime's and torch's convolutions differ by 1.4e-4 at logits of
tens, while every argmax agrees, so an absolute 1e-4 would reject correct exports of deep nets."""


@dataclass(frozen=True)
class RunInfo:
    """What an export needs to know about a run, read from its directory."""

    run_dir: Path
    run_id: int
    task: str
    app_dir: str | None
    seed: int
    final_round: int | None
    model: str = ""


@dataclass(frozen=True)
class ExportResult:
    """A written bundle."""

    bundle_dir: Path
    version: str
    manifest: model_pb2.BundleManifest
    signed: bool


def read_run(run_dir: str | Path) -> RunInfo:
    """Task reference, seed, app dir from ``config.toml`` (always there); final round: ``summary.json``."""
    root = Path(run_dir)
    if not root.is_dir():
        raise FedgeError(f"run directory {root} does not exist", "check --run and --state-dir")
    config: dict[str, Any] = {}
    if (root / "config.toml").is_file():
        try:
            doc = tomllib.loads((root / "config.toml").read_text("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise FedgeError(
                f"unreadable {root / 'config.toml'}: {exc}", "restore the run directory"
            ) from None
        config = {**doc.get("run-config", {}), "app-dir": doc.get("app-dir")}
    summary: dict[str, Any] = {}
    if (root / "summary.json").is_file():
        try:
            summary = json.loads((root / "summary.json").read_text("utf-8"))
        except ValueError:
            summary = {}
    task = config.get("task") or summary.get("task")  # the reference, not the task's display name
    if not task:
        raise FedgeError(
            f"{root} records no task", "only runs of fedge's own ServerApp (with checkpoints) can be exported"
        )
    settings = summary.get("settings", {})
    run_id = summary.get("run-id") or (int(root.name) if root.name.isdigit() else 0)
    final = summary.get("rounds")
    return RunInfo(
        run_dir=root,
        run_id=int(run_id),
        task=str(task),
        app_dir=config.get("app-dir") or None,
        seed=int(settings.get("seed", config.get("seed", 0))),
        final_round=int(final) if final is not None else None,
        model=str(settings.get("model", config.get("model", ""))),
    )


def checkpoint_path(info: RunInfo, round: int | None) -> tuple[int, Path]:
    """The checkpoint of ``round`` (default: the final one, else the newest on disk)."""
    ckpts = sorted((info.run_dir / "checkpoints").glob("round-*.pt"))
    have = [int(p.stem.split("-")[1]) for p in ckpts if p.stem.split("-")[1].isdigit()]
    if not have:
        raise FedgeError(
            f"run {info.run_id} has no checkpoints in {info.run_dir}", "export a run that trained"
        )
    chosen = round if round is not None else (info.final_round if info.final_round in have else max(have))
    if chosen not in have:
        raise FedgeError(
            f"run {info.run_id} has no checkpoint for round {chosen}",
            f"rounds with checkpoints: {', '.join(map(str, have))}",
        )
    return chosen, info.run_dir / "checkpoints" / f"round-{chosen:04d}.pt"


def export_bundle(
    run_dir: str | Path,
    round: int | None = None,
    out: str | Path | None = None,
    int8: bool = False,
    signing_key: Ed25519PrivateKey | None = None,
    *,
    exporter: str = "torchscript",
) -> ExportResult:
    """Export one checkpoint of a run into a bundle directory and sign it.

    Parameters
    ----------
    run_dir : str | Path
        The run's directory (``<server state>/runs/<id>``).
    round : int | None
        Checkpoint round; default the run's final round.
    out : str | Path | None
        Bundle directory; default ``<run_dir>/bundles/round-NNNN``.
    int8 : bool
        Also quantize (the variant is chosen by measurement, see :mod:`fedge.export.quantize`) and
        serve it when it keeps accuracy within one point of fp32 and is no slower at batch 1.
    signing_key : Ed25519PrivateKey | None
        The server's signing key; None writes an unsigned bundle (plaintext federations only).
    exporter : str
        ``torchscript`` (default) or ``dynamo`` (needs ``onnxscript``).
    """
    if exporter not in EXPORTERS:
        raise FedgeError(f"unknown exporter {exporter!r}", f"use one of: {', '.join(EXPORTERS)}")
    info = read_run(run_dir)  # bad input fails here, before torch is imported
    chosen_round, ckpt = checkpoint_path(info, round)
    import torch

    from fedge.export import onnx_export as ox
    from fedge.tasks import load_task, task_data
    from fedge.tasks.training import to_arrays

    task = load_task(info.task, info.app_dir, info.model)
    model = task.build_model()
    try:
        model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
    except Exception as exc:
        raise FedgeError(
            f"checkpoint {ckpt} does not fit the {task.name} model: {exc}", "check the run's task"
        ) from None
    ox.check_exportable(model)
    train, test = task_data(task, info.seed)
    x_test, y_test = to_arrays(test)
    classify = task.kind == "classification"
    fp32 = ox.to_onnx(model, task, exporter)
    reference = ox.torch_logits(model, x_test)
    exported = ox.ort_logits(fp32, x_test, task.input_name)
    metrics = {f"fp32.{k}": v for k, v in ox.parity(reference, exported).items()}
    metrics["fp32.tolerance"] = parity_tolerance(reference)
    if not classify:  # argmax means nothing for regression or independent labels
        metrics.pop("fp32.argmax-agreement")
    if (
        metrics["fp32.max-abs-diff"] > metrics["fp32.tolerance"]
        or metrics.get("fp32.argmax-agreement", 1.0) < 1.0
    ):
        raise FedgeError(
            f"the exported model does not match torch: max abs diff {metrics['fp32.max-abs-diff']:.2e} "
            f"(allowed {metrics['fp32.tolerance']:.2e}), "
            f"argmax agreement {metrics.get('fp32.argmax-agreement', 1.0):.4f}",
            "try the other exporter (--exporter), or report the model's layers as unsupported",
        )
    if classify:
        metrics["torch.accuracy"] = ox.accuracy(reference, y_test)
        metrics["fp32.accuracy"] = ox.accuracy(exported, y_test)
    metrics["test-samples"] = float(len(y_test))
    files = {FP32_FILE: (fp32, "fp32")}
    serve = FP32_FILE
    notes = {"exporter": exporter, "opset": str(ox.OPSET[exporter]), "model": info.model or "task"}
    if int8 and not classify:
        notes["int8-choice"] = f"not tried: int8 is chosen by accuracy, which a {task.kind} task has not"
        log.warning("int8 left out of the bundle: %s", notes["int8-choice"])
    elif int8:
        x_train = to_arrays(train)[0]
        from fedge.export.quantize import quantize, report

        choice = quantize(fp32, task.input_name, x_train, x_test, y_test)
        metrics.update(report(choice))
        notes["int8-choice"] = choice.reason
        if choice.chosen is not None:
            files[INT8_FILE] = (choice.chosen.data, "int8")
            serve = INT8_FILE
            notes["int8-method"] = choice.chosen.name
            metrics["int8.accuracy"] = choice.chosen.accuracy
            metrics["int8.bytes"] = float(choice.chosen.size)
            metrics["int8.size-ratio"] = choice.chosen.size / len(fp32)
        else:
            log.warning("int8 left out of the bundle: %s", choice.reason)
    target = Path(out) if out is not None else info.run_dir / "bundles" / f"round-{chosen_round:04d}"
    return write_bundle(target, info, chosen_round, task, files, serve, metrics, notes, signing_key)


def parity_tolerance(reference: Any) -> float:
    """The largest max-abs-diff the parity gate accepts for torch logits ``reference``."""
    scale = float(abs(reference).max()) if reference.size else 0.0
    return MAX_ABS_DIFF * max(1.0, scale)


def write_bundle(
    target: Path,
    info: RunInfo,
    round: int,
    task: Any,
    files: dict[str, tuple[bytes, str]],
    serve: str,
    metrics: dict[str, float],
    notes: dict[str, str],
    signing_key: Ed25519PrivateKey | None,
) -> ExportResult:
    """Write the files, then the signed manifest naming them."""
    entries = [
        model_pb2.BundleFile(name=name, size=len(data), sha256=hashlib.sha256(data).digest(), kind=kind)
        for name, (data, kind) in sorted(files.items())
    ]
    digest = hashlib.sha256(b"".join(e.name.encode() + b"\0" + e.sha256 for e in entries)).hexdigest()[:8]
    manifest = model_pb2.BundleManifest(
        format=1,
        version=f"{info.run_id}.{round}-{digest}",
        run_id=info.run_id,
        round=round,
        task=task.name,
        created_at=time.time(),
        files=entries,
        serve=serve,
        input=model_pb2.InputSpec(
            name=task.input_name, shape=[-1, *task.input_shape], dtype="float32", scale=task.input_scale
        ),
        output=model_pb2.OutputSpec(name=task.output_name, num_classes=task.num_classes, kind=task.kind),
        metrics=metrics,
        exporter={**versions(), **notes},
    )
    try:
        target.mkdir(parents=True, exist_ok=True)
        for stale in (BUNDLE_FILE, "bundle.json"):  # the old manifest must not outlive its files
            (target / stale).unlink(missing_ok=True)
        for name, (data, _) in files.items():
            atomic.write_bytes(target / name, data, atomic.PRIVATE)  # a global model: the owner's
        bundle = sign_manifest(manifest.SerializeToString(), signing_key)
        view = {"manifest": json_format.MessageToDict(manifest), "signed": bool(bundle.signature)}
        atomic.write_text(target / "bundle.json", json.dumps(view, indent=2) + "\n", atomic.PRIVATE)
        atomic.write_bytes(target / BUNDLE_FILE, bundle.SerializeToString(), atomic.PRIVATE)
    except OSError as exc:
        raise FedgeError(
            f"cannot write the bundle to {target}: {exc.strerror}", "pass a writable --out"
        ) from None
    log.info("exported bundle %s to %s", manifest.version, target)
    return ExportResult(target, manifest.version, manifest, bool(bundle.signature))


def versions() -> dict[str, str]:
    """Versions of everything that shaped the exported bytes."""
    out = {}
    for dist in ("torch", "onnx", "onnxruntime", "fedge"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out
