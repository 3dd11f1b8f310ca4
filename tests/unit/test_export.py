"""ONNX export, int8 and signed bundles — checked independently of what the exporter reports."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedge.errors import FedgeError
from fedge.export import export_bundle
from fedge.export.quantize import Variant, choose
from fedge.protos.v1 import model_pb2
from fedge.security import init_pki
from fedge.security.bundles import BundleError, open_bundle, verify_dir
from fedge.server.exports import check_config, parse_export
from fedge.tasks import load_task, task_data
from tests.conftest import fedge_cli
from tests.model_runs import INT8_VARIANTS, check_int8_as_ruled, make_run_dir

TASK = load_task("digits")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run_dir(tmp_path_factory.mktemp("runs"), rounds=2)


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def bundle(run_dir: Path, key: Ed25519PrivateKey, tmp_path_factory: pytest.TempPathFactory):
    return export_bundle(run_dir, None, tmp_path_factory.mktemp("bundle"), int8=True, signing_key=key)


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def _torch(run_dir: Path, rnd: int, x: np.ndarray) -> np.ndarray:
    model = TASK.build_model()
    model.load_state_dict(torch.load(run_dir / "checkpoints" / f"round-{rnd:04d}.pt", weights_only=True))
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def test_fp32_matches_torch_on_the_whole_digits_test_split(run_dir: Path, bundle) -> None:
    _, (x_test, y_test) = task_data(TASK, 0)
    reference = _torch(run_dir, 2, x_test)
    exported = _ort(bundle.bundle_dir / "model.onnx", x_test)
    assert np.max(np.abs(reference - exported)) <= 1e-4
    assert np.mean(reference.argmax(1) == exported.argmax(1)) == 1.0
    # The same figures are what the signed manifest carries.
    m = bundle.manifest.metrics
    assert m["fp32.max-abs-diff"] <= 1e-4 and m["fp32.argmax-agreement"] == 1.0
    assert m["fp32.tolerance"] == pytest.approx(1e-4 * max(1.0, float(np.abs(reference).max())))
    assert m["test-samples"] == len(y_test) and bundle.manifest.round == 2


def test_batch_axis_is_dynamic_and_names_come_from_the_task(bundle) -> None:
    model = onnx.load(bundle.bundle_dir / "model.onnx")
    assert [i.name for i in model.graph.input] == [TASK.input_name]
    assert [o.name for o in model.graph.output] == [TASK.output_name]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert model.opset_import[0].version == 17
    _, (x_test, _) = task_data(TASK, 0)
    for n in (1, 7, 64):
        assert _ort(bundle.bundle_dir / "model.onnx", x_test[:n]).shape == (n, TASK.num_classes)
    spec = bundle.manifest.input
    assert list(spec.shape) == [-1, 1, 8, 8] and spec.scale == 16.0 and spec.name == "input"
    assert bundle.manifest.exporter["exporter"] == "torchscript"


def test_int8_shipped_as_ruled_and_within_one_point_of_fp32(bundle) -> None:
    _, (x_test, y_test) = task_data(TASK, 0)
    fp32 = np.mean(_ort(bundle.bundle_dir / "model.onnx", x_test).argmax(1) == y_test)
    m = bundle.manifest.metrics
    assert m["fp32.accuracy"] == pytest.approx(fp32)
    for name in INT8_VARIANTS:
        assert f"{name}.batch1-us" in m, name  # every candidate was measured and recorded
    if check_int8_as_ruled(bundle.manifest, bundle.bundle_dir) is None:
        return  # under load every variant can measure slower than fp32: then fp32 alone ships
    int8 = np.mean(_ort(bundle.bundle_dir / "model.int8.onnx", x_test).argmax(1) == y_test)
    assert int8 >= fp32 - 0.01, (fp32, int8)
    assert m["int8.accuracy"] == pytest.approx(int8)
    assert m["int8.bytes"] < (bundle.bundle_dir / "model.onnx").stat().st_size


def test_int8_choice_rule() -> None:
    fp32 = Variant("fp32", b"x" * 100, accuracy=0.95, batch1_us=10.0)
    slow_small = Variant("a", b"x" * 10, accuracy=0.95, batch1_us=40.0)
    fast_big = Variant("b", b"x" * 60, accuracy=0.95, batch1_us=9.0)
    fast_small = Variant("c", b"x" * 30, accuracy=0.945, batch1_us=10.3)
    inaccurate = Variant("d", b"x" * 5, accuracy=0.90, batch1_us=5.0)
    # No slower than fp32 (5% noise allowance) and within one point → the smallest of those.
    assert choose(fp32, [slow_small, fast_big, fast_small, inaccurate]).chosen is fast_small
    # All accurate ones slower, or none accurate: nothing, and the reason names the rule that failed.
    slower = choose(fp32, [slow_small, Variant("e", b"", accuracy=0.95, batch1_us=20.0)])
    assert (
        slower.chosen is None
        and slower.reason.startswith("latency rule failed")
        and "e 20.0 µs" in slower.reason
    )
    inaccurate_only = choose(fp32, [inaccurate])
    assert inaccurate_only.chosen is None and inaccurate_only.reason.startswith("accuracy rule failed")


def test_bundle_signature_and_hashes(bundle, key: Ed25519PrivateKey, tmp_path: Path) -> None:
    assert verify_dir(bundle.bundle_dir, key.public_key()).version == bundle.version
    other = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(BundleError) as err:
        verify_dir(bundle.bundle_dir, other)
    assert err.value.reason == "bad-signature"
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in bundle.bundle_dir.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError) as err:
        verify_dir(copy, key.public_key())
    assert err.value.reason == "hash-mismatch"
    # The manifest changed after signing (here: it names another round) is refused too.
    signed = model_pb2.ModelBundle.FromString((bundle.bundle_dir / "bundle.pb").read_bytes())
    manifest = model_pb2.BundleManifest.FromString(signed.manifest)
    manifest.round += 1
    signed.manifest = manifest.SerializeToString()
    with pytest.raises(BundleError) as err:
        open_bundle(signed.SerializeToString(), key.public_key())
    assert err.value.reason == "bad-signature"


def test_unsigned_bundles_only_where_allowed(run_dir: Path, tmp_path: Path) -> None:
    result = export_bundle(run_dir, 1, tmp_path / "b")
    assert not result.signed and result.version.startswith("4242.1-")
    with pytest.raises(BundleError) as err:
        verify_dir(result.bundle_dir, Ed25519PrivateKey.generate().public_key())
    assert err.value.reason == "unsigned"
    with pytest.raises(BundleError):
        verify_dir(result.bundle_dir, None)
    assert verify_dir(result.bundle_dir, None, allow_unsigned=True).round == 1


def test_export_settings() -> None:
    assert parse_export("final") == ("final", 0) and parse_export("every:3") == ("every", 3)
    assert parse_export("OFF") == ("off", 0)
    for bad in ("every:0", "every", "sometimes", "every:-1"):
        with pytest.raises(FedgeError):
            parse_export(bad)
    with pytest.raises(FedgeError):
        check_config({"export-int8": "yes"})


@pytest.fixture(scope="module")
def state(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A server state dir whose runs/ holds the run (as `fedge server start` lays it out)."""
    root = tmp_path_factory.mktemp("state")
    (root / "runs").mkdir()
    (root / "runs" / run_dir.name).symlink_to(run_dir)
    return root


def test_cli_export_then_verify_and_refuse_tampering(state: Path, tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    init_pki(pki)
    out = tmp_path / "out"
    done = fedge_cli(
        "model", "export", "--run", "4242", "--round", "1", "--state-dir", str(state),
        "--pki-dir", str(pki), "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "argmax agreement 100.00%" in done.stdout
    ok = fedge_cli("model", "verify", str(out), "--pki-dir", str(pki))
    assert ok.returncode == 0 and ok.stdout.startswith("ok: bundle 4242.1-"), ok.stderr
    data = bytearray((out / "model.onnx").read_bytes())
    data[100] ^= 0xFF
    (out / "model.onnx").write_bytes(bytes(data))
    bad = fedge_cli("model", "verify", str(out), "--pki-dir", str(pki))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("error: model.onnx of bundle 4242.1-") and "\nhint: " in bad.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--run", "999"], "no run 999 in"),
        (["--run", "4242", "--round", "9"], "no checkpoint for round 9"),
        (["--run", "4242", "--exporter", "tflite"], "unknown exporter 'tflite'"),
        (["--run", "4242", "--pki-dir", "/nonexistent"], "no fedge PKI in /nonexistent"),
        (["--run", "4242", "--round", "-1"], "--round must be"),
    ],
)
def test_cli_export_bad_input(state: Path, args: list[str], message: str) -> None:
    done = fedge_cli("model", "export", "--state-dir", str(state), *args)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert message in done.stderr and "hint: " in done.stderr


def test_cli_verify_needs_one_key(tmp_path: Path) -> None:
    done = fedge_cli("model", "verify", str(tmp_path))
    assert done.returncode == 2 and "verify needs exactly one trusted key" in done.stderr
    key_file = tmp_path / "k.pub"
    key_file.write_text("not a key")
    done = fedge_cli("model", "verify", str(tmp_path), "--key", str(key_file))
    assert done.returncode == 2 and "is not an Ed25519 public key" in done.stderr


def test_dynamo_exporter_when_onnxscript_is_installed(run_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxscript")
    result = export_bundle(run_dir, 2, tmp_path / "b", exporter="dynamo")
    assert result.manifest.metrics["fp32.max-abs-diff"] <= 1e-4
    assert result.manifest.exporter["exporter"] == "dynamo" and result.manifest.exporter["opset"] == "18"


def test_dynamo_exporter_without_onnxscript_is_a_clear_error(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # `import onnxscript` now fails
    with pytest.raises(FedgeError, match="needs the onnxscript package") as err:
        export_bundle(run_dir, 2, tmp_path / "b", exporter="dynamo")
    assert "--exporter torchscript" in err.value.hint


def test_export_loads_the_task_by_the_reference_the_run_recorded(tmp_path: Path) -> None:
    from fedge.export.bundle import read_run

    run_dir = tmp_path / "9"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text(
        'server-app = "fedge.server.app:app"\napp-dir = "/srv/apps"\n\n[run-config]\ntask = "mytask:TASK"\n'
    )
    (run_dir / "summary.json").write_text('{"task": "mytask:TASK", "task-name": "logreg", "rounds": 2}')
    info = read_run(run_dir)
    assert (info.task, info.app_dir, info.final_round) == ("mytask:TASK", "/srv/apps", 2)


def test_a_model_too_large_for_one_onnx_protobuf_is_refused_before_export() -> None:
    from fedge.export.onnx_export import check_exportable

    model = torch.nn.Sequential(torch.nn.Linear(100, 100), torch.nn.BatchNorm1d(100))
    size = 100 * 100 * 4 + 100 * 4 + 4 * 100 * 4 + 8  # weight, bias, BN weight/bias/mean/var, count
    check_exportable(model, limit=size)  # exactly at the limit: fits
    with pytest.raises(FedgeError, match="export skipped") as info:
        check_exportable(model, limit=size - 1)
    assert "2 GiB" in info.value.hint
