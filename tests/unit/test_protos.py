"""The committed generated code is exactly what the .proto sources produce."""

from __future__ import annotations

from pathlib import Path

from fedge.protogen import PACKAGE_OUT, generate


def test_regenerating_protos_yields_identical_files(tmp_path: Path) -> None:
    written = generate(tmp_path)
    committed = sorted(p.name for p in (PACKAGE_OUT / "v1").iterdir() if p.is_file())
    assert sorted(p.name for p in written) == committed
    for path in written:
        assert path.read_bytes() == (PACKAGE_OUT / "v1" / path.name).read_bytes(), path.name
