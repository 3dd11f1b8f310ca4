from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class RelayKeyRequest(_message.Message):
    __slots__ = ("run_id", "x25519_public")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    X25519_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    x25519_public: bytes
    def __init__(self, run_id: _Optional[int] = ..., x25519_public: _Optional[bytes] = ...) -> None: ...

class RelayKeyReply(_message.Message):
    __slots__ = ("announcement",)
    ANNOUNCEMENT_FIELD_NUMBER: _ClassVar[int]
    announcement: bytes
    def __init__(self, announcement: _Optional[bytes] = ...) -> None: ...
