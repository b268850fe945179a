from parley.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FrameFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FRAME_FORMAT_UNSPECIFIED: _ClassVar[FrameFormat]
    FRAME_FORMAT_I420: _ClassVar[FrameFormat]
    FRAME_FORMAT_RGBA: _ClassVar[FrameFormat]
    FRAME_FORMAT_RGB24: _ClassVar[FrameFormat]
    FRAME_FORMAT_JPEG: _ClassVar[FrameFormat]
    FRAME_FORMAT_BGRA: _ClassVar[FrameFormat]
    FRAME_FORMAT_NV12: _ClassVar[FrameFormat]

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    DECISION_KEEP: _ClassVar[Decision]
    DECISION_DROP_RATE: _ClassVar[Decision]
    DECISION_DROP_DUPLICATE: _ClassVar[Decision]
    DECISION_KEEP_STALE_FORCED: _ClassVar[Decision]
    DECISION_REJECTED: _ClassVar[Decision]
FRAME_FORMAT_UNSPECIFIED: FrameFormat
FRAME_FORMAT_I420: FrameFormat
FRAME_FORMAT_RGBA: FrameFormat
FRAME_FORMAT_RGB24: FrameFormat
FRAME_FORMAT_JPEG: FrameFormat
FRAME_FORMAT_BGRA: FrameFormat
FRAME_FORMAT_NV12: FrameFormat
DECISION_UNSPECIFIED: Decision
DECISION_KEEP: Decision
DECISION_DROP_RATE: Decision
DECISION_DROP_DUPLICATE: Decision
DECISION_KEEP_STALE_FORCED: Decision
DECISION_REJECTED: Decision

class VisionSettings(_message.Message):
    __slots__ = ("speaking_fps", "idle_fps", "hamming_threshold", "tile_hamming_threshold", "max_staleness_s", "jpeg_quality", "max_image_side")
    SPEAKING_FPS_FIELD_NUMBER: _ClassVar[int]
    IDLE_FPS_FIELD_NUMBER: _ClassVar[int]
    HAMMING_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TILE_HAMMING_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MAX_STALENESS_S_FIELD_NUMBER: _ClassVar[int]
    JPEG_QUALITY_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_SIDE_FIELD_NUMBER: _ClassVar[int]
    speaking_fps: float
    idle_fps: float
    hamming_threshold: int
    tile_hamming_threshold: int
    max_staleness_s: float
    jpeg_quality: int
    max_image_side: int
    def __init__(self, speaking_fps: _Optional[float] = ..., idle_fps: _Optional[float] = ..., hamming_threshold: _Optional[int] = ..., tile_hamming_threshold: _Optional[int] = ..., max_staleness_s: _Optional[float] = ..., jpeg_quality: _Optional[int] = ..., max_image_side: _Optional[int] = ...) -> None: ...

class StreamConfig(_message.Message):
    __slots__ = ("session_id", "participant_id", "track_id", "source", "source_fps", "settings")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    TRACK_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FPS_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    participant_id: str
    track_id: str
    source: _common_pb2.TrackSource
    source_fps: float
    settings: VisionSettings
    def __init__(self, session_id: _Optional[str] = ..., participant_id: _Optional[str] = ..., track_id: _Optional[str] = ..., source: _Optional[_Union[_common_pb2.TrackSource, str]] = ..., source_fps: _Optional[float] = ..., settings: _Optional[_Union[VisionSettings, _Mapping]] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("sequence", "timestamp_us", "format", "width", "height", "strides", "data", "speaking", "unchanged_skipped")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_US_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    STRIDES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SPEAKING_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    timestamp_us: int
    format: FrameFormat
    width: int
    height: int
    strides: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    speaking: bool
    unchanged_skipped: int
    def __init__(self, sequence: _Optional[int] = ..., timestamp_us: _Optional[int] = ..., format: _Optional[_Union[FrameFormat, str]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., strides: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ..., speaking: _Optional[bool] = ..., unchanged_skipped: _Optional[int] = ...) -> None: ...

class ProcessFramesRequest(_message.Message):
    __slots__ = ("config", "frame")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    config: StreamConfig
    frame: Frame
    def __init__(self, config: _Optional[_Union[StreamConfig, _Mapping]] = ..., frame: _Optional[_Union[Frame, _Mapping]] = ...) -> None: ...

class KeptFrame(_message.Message):
    __slots__ = ("image", "byte_size", "estimated_image_tokens", "interestingness")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    BYTE_SIZE_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_IMAGE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    INTERESTINGNESS_FIELD_NUMBER: _ClassVar[int]
    image: _common_pb2.Image
    byte_size: int
    estimated_image_tokens: int
    interestingness: float
    def __init__(self, image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., byte_size: _Optional[int] = ..., estimated_image_tokens: _Optional[int] = ..., interestingness: _Optional[float] = ...) -> None: ...

class FrameDecision(_message.Message):
    __slots__ = ("sequence", "timestamp_us", "decision", "reason", "hamming_distance", "changed_tiles", "kept", "error_code", "error_message")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_US_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    HAMMING_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    CHANGED_TILES_FIELD_NUMBER: _ClassVar[int]
    KEPT_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    timestamp_us: int
    decision: Decision
    reason: str
    hamming_distance: int
    changed_tiles: int
    kept: KeptFrame
    error_code: str
    error_message: str
    def __init__(self, sequence: _Optional[int] = ..., timestamp_us: _Optional[int] = ..., decision: _Optional[_Union[Decision, str]] = ..., reason: _Optional[str] = ..., hamming_distance: _Optional[int] = ..., changed_tiles: _Optional[int] = ..., kept: _Optional[_Union[KeptFrame, _Mapping]] = ..., error_code: _Optional[str] = ..., error_message: _Optional[str] = ...) -> None: ...

class FrameStats(_message.Message):
    __slots__ = ("frames_seen", "dropped_rate", "dropped_duplicate", "kept", "kept_stale_forced", "rejected", "bytes_sent", "image_tokens_sent", "naive_image_tokens", "naive_bytes")
    FRAMES_SEEN_FIELD_NUMBER: _ClassVar[int]
    DROPPED_RATE_FIELD_NUMBER: _ClassVar[int]
    DROPPED_DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    KEPT_FIELD_NUMBER: _ClassVar[int]
    KEPT_STALE_FORCED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_TOKENS_SENT_FIELD_NUMBER: _ClassVar[int]
    NAIVE_IMAGE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NAIVE_BYTES_FIELD_NUMBER: _ClassVar[int]
    frames_seen: int
    dropped_rate: int
    dropped_duplicate: int
    kept: int
    kept_stale_forced: int
    rejected: int
    bytes_sent: int
    image_tokens_sent: int
    naive_image_tokens: int
    naive_bytes: int
    def __init__(self, frames_seen: _Optional[int] = ..., dropped_rate: _Optional[int] = ..., dropped_duplicate: _Optional[int] = ..., kept: _Optional[int] = ..., kept_stale_forced: _Optional[int] = ..., rejected: _Optional[int] = ..., bytes_sent: _Optional[int] = ..., image_tokens_sent: _Optional[int] = ..., naive_image_tokens: _Optional[int] = ..., naive_bytes: _Optional[int] = ...) -> None: ...

class StreamStats(_message.Message):
    __slots__ = ("session_id", "track_id", "stats")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TRACK_ID_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    track_id: str
    stats: FrameStats
    def __init__(self, session_id: _Optional[str] = ..., track_id: _Optional[str] = ..., stats: _Optional[_Union[FrameStats, _Mapping]] = ...) -> None: ...

class ProcessFramesResponse(_message.Message):
    __slots__ = ("decision", "stats")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    decision: FrameDecision
    stats: StreamStats
    def __init__(self, decision: _Optional[_Union[FrameDecision, _Mapping]] = ..., stats: _Optional[_Union[StreamStats, _Mapping]] = ...) -> None: ...

class GetTenantStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetTenantStatsResponse(_message.Message):
    __slots__ = ("stats", "active_streams")
    STATS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_STREAMS_FIELD_NUMBER: _ClassVar[int]
    stats: FrameStats
    active_streams: int
    def __init__(self, stats: _Optional[_Union[FrameStats, _Mapping]] = ..., active_streams: _Optional[int] = ...) -> None: ...
