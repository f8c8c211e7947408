from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Item(_message.Message):
    __slots__ = ("id", "name", "payload")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    payload: bytes
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., payload: _Optional[bytes] = ...) -> None: ...

class Behaviour(_message.Message):
    __slots__ = ("delay_ms", "fail_code", "fail_message", "fail_detail")
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    FAIL_CODE_FIELD_NUMBER: _ClassVar[int]
    FAIL_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FAIL_DETAIL_FIELD_NUMBER: _ClassVar[int]
    delay_ms: int
    fail_code: int
    fail_message: str
    fail_detail: str
    def __init__(self, delay_ms: _Optional[int] = ..., fail_code: _Optional[int] = ..., fail_message: _Optional[str] = ..., fail_detail: _Optional[str] = ...) -> None: ...

class GetItemRequest(_message.Message):
    __slots__ = ("id", "payload_size", "behaviour")
    ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SIZE_FIELD_NUMBER: _ClassVar[int]
    BEHAVIOUR_FIELD_NUMBER: _ClassVar[int]
    id: str
    payload_size: int
    behaviour: Behaviour
    def __init__(self, id: _Optional[str] = ..., payload_size: _Optional[int] = ..., behaviour: _Optional[_Union[Behaviour, _Mapping]] = ...) -> None: ...

class PutItemsReply(_message.Message):
    __slots__ = ("count", "total_bytes", "ids")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    count: int
    total_bytes: int
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, count: _Optional[int] = ..., total_bytes: _Optional[int] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class WatchItemsRequest(_message.Message):
    __slots__ = ("count", "payload_size", "behaviour")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SIZE_FIELD_NUMBER: _ClassVar[int]
    BEHAVIOUR_FIELD_NUMBER: _ClassVar[int]
    count: int
    payload_size: int
    behaviour: Behaviour
    def __init__(self, count: _Optional[int] = ..., payload_size: _Optional[int] = ..., behaviour: _Optional[_Union[Behaviour, _Mapping]] = ...) -> None: ...
