from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelBundle(_message.Message):
    __slots__ = ("manifest", "signature", "key_id")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    manifest: bytes
    signature: bytes
    key_id: str
    def __init__(self, manifest: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., key_id: _Optional[str] = ...) -> None: ...

class BundleManifest(_message.Message):
    __slots__ = ("format", "version", "run_id", "round", "task", "created_at", "files", "serve", "input", "output", "metrics", "exporter")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class ExporterEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    SERVE_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    EXPORTER_FIELD_NUMBER: _ClassVar[int]
    format: int
    version: str
    run_id: int
    round: int
    task: str
    created_at: float
    files: _containers.RepeatedCompositeFieldContainer[BundleFile]
    serve: str
    input: InputSpec
    output: OutputSpec
    metrics: _containers.ScalarMap[str, float]
    exporter: _containers.ScalarMap[str, str]
    def __init__(self, format: _Optional[int] = ..., version: _Optional[str] = ..., run_id: _Optional[int] = ..., round: _Optional[int] = ..., task: _Optional[str] = ..., created_at: _Optional[float] = ..., files: _Optional[_Iterable[_Union[BundleFile, _Mapping]]] = ..., serve: _Optional[str] = ..., input: _Optional[_Union[InputSpec, _Mapping]] = ..., output: _Optional[_Union[OutputSpec, _Mapping]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., exporter: _Optional[_Mapping[str, str]] = ...) -> None: ...

class BundleFile(_message.Message):
    __slots__ = ("name", "size", "sha256", "kind")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    sha256: bytes
    kind: str
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[bytes] = ..., kind: _Optional[str] = ...) -> None: ...

class InputSpec(_message.Message):
    __slots__ = ("name", "shape", "dtype", "scale")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    scale: float
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ..., scale: _Optional[float] = ...) -> None: ...

class OutputSpec(_message.Message):
    __slots__ = ("name", "num_classes", "kind")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    name: str
    num_classes: int
    kind: str
    def __init__(self, name: _Optional[str] = ..., num_classes: _Optional[int] = ..., kind: _Optional[str] = ...) -> None: ...
