from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SealedPayload(_message.Message):
    __slots__ = ("header", "ciphertext", "signature")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    header: bytes
    ciphertext: bytes
    signature: bytes
    def __init__(self, header: _Optional[bytes] = ..., ciphertext: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SealHeader(_message.Message):
    __slots__ = ("run_id", "round", "node_id", "stage", "key_id", "enc", "nonce", "algorithm", "manifest")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ENC_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    round: int
    node_id: int
    stage: str
    key_id: str
    enc: bytes
    nonce: bytes
    algorithm: str
    manifest: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    def __init__(self, run_id: _Optional[int] = ..., round: _Optional[int] = ..., node_id: _Optional[int] = ..., stage: _Optional[str] = ..., key_id: _Optional[str] = ..., enc: _Optional[bytes] = ..., nonce: _Optional[bytes] = ..., algorithm: _Optional[str] = ..., manifest: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ...) -> None: ...

class TensorSpec(_message.Message):
    __slots__ = ("name", "dtype", "shape", "offset", "nbytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    NBYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    offset: int
    nbytes: int
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., offset: _Optional[int] = ..., nbytes: _Optional[int] = ...) -> None: ...

class AggregatorAnnouncement(_message.Message):
    __slots__ = ("run_id", "x25519_public", "key_id", "not_after", "signature")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    X25519_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    x25519_public: bytes
    key_id: str
    not_after: float
    signature: bytes
    def __init__(self, run_id: _Optional[int] = ..., x25519_public: _Optional[bytes] = ..., key_id: _Optional[str] = ..., not_after: _Optional[float] = ..., signature: _Optional[bytes] = ...) -> None: ...
