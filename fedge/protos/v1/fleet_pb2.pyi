from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EdgeFrame(_message.Message):
    __slots__ = ("hello", "reply", "heartbeat", "model_request", "model_status")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    MODEL_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MODEL_STATUS_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    reply: Chunk
    heartbeat: Heartbeat
    model_request: ModelRequest
    model_status: ModelStatus
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., reply: _Optional[_Union[Chunk, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., model_request: _Optional[_Union[ModelRequest, _Mapping]] = ..., model_status: _Optional[_Union[ModelStatus, _Mapping]] = ...) -> None: ...

class ServerFrame(_message.Message):
    __slots__ = ("welcome", "instruction", "heartbeat", "model_offer", "model_part")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    MODEL_OFFER_FIELD_NUMBER: _ClassVar[int]
    MODEL_PART_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    instruction: Chunk
    heartbeat: Heartbeat
    model_offer: ModelOffer
    model_part: ModelPart
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., instruction: _Optional[_Union[Chunk, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., model_offer: _Optional[_Union[ModelOffer, _Mapping]] = ..., model_part: _Optional[_Union[ModelPart, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("name", "version", "capabilities", "accelerator", "properties")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    ACCELERATOR_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    accelerator: str
    properties: DeviceProperties
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ..., accelerator: _Optional[str] = ..., properties: _Optional[_Union[DeviceProperties, _Mapping]] = ...) -> None: ...

class DeviceProperties(_message.Message):
    __slots__ = ("cores", "memory_bytes", "free_disk_bytes", "tags", "signals")
    class SignalsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CORES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    FREE_DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_FIELD_NUMBER: _ClassVar[int]
    cores: int
    memory_bytes: int
    free_disk_bytes: int
    tags: _containers.RepeatedScalarFieldContainer[str]
    signals: _containers.ScalarMap[str, str]
    def __init__(self, cores: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., free_disk_bytes: _Optional[int] = ..., tags: _Optional[_Iterable[str]] = ..., signals: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("node_id", "heartbeat_interval", "server_version")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    heartbeat_interval: float
    server_version: str
    def __init__(self, node_id: _Optional[int] = ..., heartbeat_interval: _Optional[float] = ..., server_version: _Optional[str] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("message_id", "index", "total", "data", "run")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    index: int
    total: int
    data: bytes
    run: RunContext
    def __init__(self, message_id: _Optional[str] = ..., index: _Optional[int] = ..., total: _Optional[int] = ..., data: _Optional[bytes] = ..., run: _Optional[_Union[RunContext, _Mapping]] = ...) -> None: ...

class RunContext(_message.Message):
    __slots__ = ("run_id", "run_config_json", "announcement", "round")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    ANNOUNCEMENT_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    run_config_json: str
    announcement: bytes
    round: int
    def __init__(self, run_id: _Optional[int] = ..., run_config_json: _Optional[str] = ..., announcement: _Optional[bytes] = ..., round: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("sent_at", "properties")
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    sent_at: float
    properties: DeviceProperties
    def __init__(self, sent_at: _Optional[float] = ..., properties: _Optional[_Union[DeviceProperties, _Mapping]] = ...) -> None: ...

class ModelOffer(_message.Message):
    __slots__ = ("version", "bundle")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    version: str
    bundle: bytes
    def __init__(self, version: _Optional[str] = ..., bundle: _Optional[bytes] = ...) -> None: ...

class ModelRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    def __init__(self, version: _Optional[str] = ...) -> None: ...

class ModelPart(_message.Message):
    __slots__ = ("version", "file", "index", "total", "data")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    version: str
    file: str
    index: int
    total: int
    data: bytes
    def __init__(self, version: _Optional[str] = ..., file: _Optional[str] = ..., index: _Optional[int] = ..., total: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class ModelStatus(_message.Message):
    __slots__ = ("version", "installed", "active", "error")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INSTALLED_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    version: str
    installed: bool
    active: str
    error: str
    def __init__(self, version: _Optional[str] = ..., installed: _Optional[bool] = ..., active: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...
