"""torch → ONNX for a task's model: exporter, opset, dynamic batch axis, parity against torch.

Exporter choice (measured here, torch 2.13): ``torch.onnx.export`` defaults to ``dynamo=True``,
which needs ``onnxscript`` (+ ``onnx_ir``), a package fedge does not otherwise depend on and that
is not installed with it. For fedge's task models both exporters give the same graph (Conv, Relu,
MaxPool, Flatten/Reshape, Gemm) and the same outputs (max abs diff 1e-6 on the digits test split),
but the TorchScript exporter (``dynamo=False``) needs no extra dependency and exports in 0.03 s
instead of 2.4 s — it runs at the end of every run. So the default is ``torchscript``; it is
deprecated upstream, hence ``exporter="dynamo"`` is one flag away (FedgeError with the install
line when ``onnxscript`` is missing) and the manifest records which exporter made each bundle.

Opset 17: every op these models use is unchanged since opset 13, int8 QDQ quantization needs
≥13, and 17 runs on onnxruntime ≥1.14 — the widest range of edge runtimes. (The dynamo exporter
starts at opset 18.)
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable

import numpy as np
import onnx
import torch
from torch import nn

from fedge.errors import FedgeError
from fedge.export.bundle import EXPORTERS
from fedge.tasks import Task

OPSET = {"torchscript": 17, "dynamo": 18}
BATCH_AXIS = "batch"
ONNX_MAX_PARAMETER_BYTES = 2**31 - 64 * 2**20
"""Parameter bytes an ONNX model in one protobuf can hold: protobuf refuses messages of 2 GiB and
more, and the graph itself needs a little. Larger models would need ONNX's external data files,
which a bundle (one signed ``model.onnx``, parity-checked and served by the daemon) does not carry."""


def check_exportable(model: nn.Module, limit: int = ONNX_MAX_PARAMETER_BYTES) -> None:
    """Refuse, before any export work, a model whose parameters do not fit one ONNX protobuf."""
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if size > limit:
        raise FedgeError(
            f"the model holds {size / 1e9:.2f} GB of parameters and buffers; a bundle's ONNX file is "
            f"one protobuf, which holds less than 2 GiB: export skipped",
            "serve this model with torch from the run's checkpoints; bundles cover models under 2 GiB",
        )


def to_onnx(model: nn.Module, task: Task, exporter: str = "torchscript") -> bytes:
    """Export ``model`` (in eval mode) with a dynamic batch axis; returns compacted ONNX bytes."""
    if exporter not in EXPORTERS:
        raise FedgeError(f"unknown exporter {exporter!r}", f"use one of: {', '.join(EXPORTERS)}")
    model.eval()
    example = (torch.zeros(1, *task.input_shape, dtype=torch.float32),)
    names = ([task.input_name], [task.output_name])
    try:
        if exporter == "dynamo":
            proto = _dynamo(model, example, names)
        else:
            buf = io.BytesIO()
            with warnings.catch_warnings():  # the deprecation notice: this exporter is chosen on purpose
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    model,
                    example,
                    buf,  # type: ignore[arg-type]  # file-likes work (and are documented for this exporter)
                    dynamo=False,
                    input_names=names[0],
                    output_names=names[1],
                    opset_version=OPSET[exporter],
                    dynamic_axes={task.input_name: {0: BATCH_AXIS}, task.output_name: {0: BATCH_AXIS}},
                    do_constant_folding=True,
                )
            proto = onnx.load_from_string(buf.getvalue())
    except FedgeError:
        raise
    except Exception as exc:
        hint = "try --exporter dynamo" if exporter == "torchscript" else "try --exporter torchscript"
        raise FedgeError(f"ONNX export of the {task.name} model failed: {exc}", hint) from None
    onnx.checker.check_model(proto)
    return compact(proto).SerializeToString()


def _dynamo(
    model: nn.Module, example: tuple[torch.Tensor, ...], names: tuple[list[str], list[str]]
) -> onnx.ModelProto:
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        raise FedgeError(
            "the dynamo exporter needs the onnxscript package",
            "pip install onnxscript, or use --exporter torchscript (the default)",
        ) from None
    program = torch.onnx.export(
        model,
        example,
        dynamo=True,
        opset_version=OPSET["dynamo"],
        dynamic_shapes=({0: torch.export.Dim(BATCH_AXIS)},),
        verbose=False,
        input_names=names[0],
        output_names=names[1],
    )
    assert program is not None
    return program.model_proto


def compact(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop what only debugging needs: long tensor/node names, doc strings, value_info, metadata.

    Devices download every byte; on a 10k-parameter model the names and unused opset imports
    that exporters and quantizers leave are ~15% of an int8 file. Graph inputs and outputs keep
    their names (the serving contract).
    """
    graph = model.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    renamed: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return renamed.setdefault(name, f"t{len(renamed)}")

    for init in graph.initializer:
        init.name = short(init.name)
        init.doc_string = ""
    for node in graph.node:
        node.name = ""
        node.doc_string = ""
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    del graph.value_info[:]
    del model.metadata_props[:]
    model.doc_string = graph.doc_string = ""
    used = {n.domain for n in graph.node} | {""}
    opsets = [o for o in model.opset_import if o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(opsets)
    return model


def batches(x: np.ndarray, size: int = 256) -> Iterable[np.ndarray]:
    """``x`` in slices of ``size`` rows (bounded memory for big test splits)."""
    for start in range(0, len(x), size):
        yield x[start : start + size]


def torch_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """The torch model's outputs on ``x`` (eval mode, no grad)."""
    model.eval()
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(np.ascontiguousarray(b))).numpy() for b in batches(x)])


def session(onnx_bytes: bytes, threads: int = 1) -> object:
    """An onnxruntime CPU session with full graph optimization and ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def ort_logits(onnx_bytes: bytes, x: np.ndarray, input_name: str) -> np.ndarray:
    """onnxruntime's outputs on ``x``."""
    sess = session(onnx_bytes)
    return np.concatenate([sess.run(None, {input_name: b})[0] for b in batches(x)])  # type: ignore[attr-defined]


def parity(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Max absolute difference and argmax agreement between two output batches."""
    return {
        "max-abs-diff": float(np.max(np.abs(reference - other))) if reference.size else 0.0,
        "argmax-agreement": float(np.mean(reference.argmax(axis=1) == other.argmax(axis=1))),
    }


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    """Fraction of rows whose argmax is the label."""
    return float(np.mean(logits.argmax(axis=1) == y))
