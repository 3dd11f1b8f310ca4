"""Export: a run's checkpoint → ONNX (fp32, optional int8) → a signed model bundle.

Public API::

    export_bundle(run_dir, round=None, out=None, int8=False, signing_key=None) -> ExportResult

and ``fedge model export|verify`` on the command line. Verification lives in
:mod:`fedge.security.bundles` (devices verify without importing torch). Names are resolved
lazily so that ``fedge --help`` does not import protobuf and cryptography through this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedge.export.bundle import ExportResult, RunInfo, export_bundle, read_run

__all__ = ["ExportResult", "RunInfo", "export_bundle", "read_run"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from fedge.export import bundle

        return getattr(bundle, name)
    raise AttributeError(f"module 'fedge.export' has no attribute {name!r}")
