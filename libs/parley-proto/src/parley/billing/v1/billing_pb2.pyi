import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Dimension(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIMENSION_UNSPECIFIED: _ClassVar[Dimension]
    DIMENSION_DAY: _ClassVar[Dimension]
    DIMENSION_SESSION: _ClassVar[Dimension]
    DIMENSION_SERVICE: _ClassVar[Dimension]
    DIMENSION_MODEL: _ClassVar[Dimension]
    DIMENSION_USAGE_TYPE: _ClassVar[Dimension]

class BudgetState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BUDGET_STATE_UNSPECIFIED: _ClassVar[BudgetState]
    BUDGET_STATE_OK: _ClassVar[BudgetState]
    BUDGET_STATE_SOFT_EXCEEDED: _ClassVar[BudgetState]
    BUDGET_STATE_HARD_EXCEEDED: _ClassVar[BudgetState]
    BUDGET_STATE_NO_BUDGET: _ClassVar[BudgetState]
DIMENSION_UNSPECIFIED: Dimension
DIMENSION_DAY: Dimension
DIMENSION_SESSION: Dimension
DIMENSION_SERVICE: Dimension
DIMENSION_MODEL: Dimension
DIMENSION_USAGE_TYPE: Dimension
BUDGET_STATE_UNSPECIFIED: BudgetState
BUDGET_STATE_OK: BudgetState
BUDGET_STATE_SOFT_EXCEEDED: BudgetState
BUDGET_STATE_HARD_EXCEEDED: BudgetState
BUDGET_STATE_NO_BUDGET: BudgetState

class LlmUsage(_message.Message):
    __slots__ = ("provider", "model_id", "tier", "input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens", "images", "fallback_used", "latency_ms")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHE_WRITE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_USED_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    provider: str
    model_id: str
    tier: str
    input_tokens: int
    cached_input_tokens: int
    cache_write_tokens: int
    output_tokens: int
    images: int
    fallback_used: bool
    latency_ms: float
    def __init__(self, provider: _Optional[str] = ..., model_id: _Optional[str] = ..., tier: _Optional[str] = ..., input_tokens: _Optional[int] = ..., cached_input_tokens: _Optional[int] = ..., cache_write_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., images: _Optional[int] = ..., fallback_used: _Optional[bool] = ..., latency_ms: _Optional[float] = ...) -> None: ...

class VisionUsage(_message.Message):
    __slots__ = ("track_id", "frames_seen", "dropped_rate", "dropped_duplicate", "frames_kept", "image_tokens_sent", "naive_image_tokens", "source_fps", "model_id")
    TRACK_ID_FIELD_NUMBER: _ClassVar[int]
    FRAMES_SEEN_FIELD_NUMBER: _ClassVar[int]
    DROPPED_RATE_FIELD_NUMBER: _ClassVar[int]
    DROPPED_DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    FRAMES_KEPT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_TOKENS_SENT_FIELD_NUMBER: _ClassVar[int]
    NAIVE_IMAGE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FPS_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    track_id: str
    frames_seen: int
    dropped_rate: int
    dropped_duplicate: int
    frames_kept: int
    image_tokens_sent: int
    naive_image_tokens: int
    source_fps: float
    model_id: str
    def __init__(self, track_id: _Optional[str] = ..., frames_seen: _Optional[int] = ..., dropped_rate: _Optional[int] = ..., dropped_duplicate: _Optional[int] = ..., frames_kept: _Optional[int] = ..., image_tokens_sent: _Optional[int] = ..., naive_image_tokens: _Optional[int] = ..., source_fps: _Optional[float] = ..., model_id: _Optional[str] = ...) -> None: ...

class SttUsage(_message.Message):
    __slots__ = ("provider", "model_id", "audio_seconds")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIO_SECONDS_FIELD_NUMBER: _ClassVar[int]
    provider: str
    model_id: str
    audio_seconds: float
    def __init__(self, provider: _Optional[str] = ..., model_id: _Optional[str] = ..., audio_seconds: _Optional[float] = ...) -> None: ...

class TtsUsage(_message.Message):
    __slots__ = ("provider", "model_id", "characters")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    CHARACTERS_FIELD_NUMBER: _ClassVar[int]
    provider: str
    model_id: str
    characters: int
    def __init__(self, provider: _Optional[str] = ..., model_id: _Optional[str] = ..., characters: _Optional[int] = ...) -> None: ...

class EmbeddingUsage(_message.Message):
    __slots__ = ("provider", "model_id", "tokens", "cached_texts", "embedded_texts")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_TEXTS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDED_TEXTS_FIELD_NUMBER: _ClassVar[int]
    provider: str
    model_id: str
    tokens: int
    cached_texts: int
    embedded_texts: int
    def __init__(self, provider: _Optional[str] = ..., model_id: _Optional[str] = ..., tokens: _Optional[int] = ..., cached_texts: _Optional[int] = ..., embedded_texts: _Optional[int] = ...) -> None: ...

class SessionUsage(_message.Message):
    __slots__ = ("minutes",)
    MINUTES_FIELD_NUMBER: _ClassVar[int]
    minutes: float
    def __init__(self, minutes: _Optional[float] = ...) -> None: ...

class UsageEvent(_message.Message):
    __slots__ = ("idempotency_key", "occurred_at", "session_id", "service", "llm", "vision", "stt", "tts", "embedding", "session")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    LLM_FIELD_NUMBER: _ClassVar[int]
    VISION_FIELD_NUMBER: _ClassVar[int]
    STT_FIELD_NUMBER: _ClassVar[int]
    TTS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    occurred_at: _timestamp_pb2.Timestamp
    session_id: str
    service: str
    llm: LlmUsage
    vision: VisionUsage
    stt: SttUsage
    tts: TtsUsage
    embedding: EmbeddingUsage
    session: SessionUsage
    def __init__(self, idempotency_key: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., session_id: _Optional[str] = ..., service: _Optional[str] = ..., llm: _Optional[_Union[LlmUsage, _Mapping]] = ..., vision: _Optional[_Union[VisionUsage, _Mapping]] = ..., stt: _Optional[_Union[SttUsage, _Mapping]] = ..., tts: _Optional[_Union[TtsUsage, _Mapping]] = ..., embedding: _Optional[_Union[EmbeddingUsage, _Mapping]] = ..., session: _Optional[_Union[SessionUsage, _Mapping]] = ...) -> None: ...

class IngestUsageRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[UsageEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[UsageEvent, _Mapping]]] = ...) -> None: ...

class IngestUsageResponse(_message.Message):
    __slots__ = ("accepted", "duplicates")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    duplicates: int
    def __init__(self, accepted: _Optional[int] = ..., duplicates: _Optional[int] = ...) -> None: ...

class GetCostReportRequest(_message.Message):
    __slots__ = ("to", "group_by")
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    to: _timestamp_pb2.Timestamp
    group_by: _containers.RepeatedScalarFieldContainer[Dimension]
    def __init__(self, to: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., group_by: _Optional[_Iterable[_Union[Dimension, str]]] = ..., **kwargs) -> None: ...

class CostRow(_message.Message):
    __slots__ = ("keys", "cost_usd", "events")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[str]
    cost_usd: float
    events: int
    def __init__(self, keys: _Optional[_Iterable[str]] = ..., cost_usd: _Optional[float] = ..., events: _Optional[int] = ...) -> None: ...

class GetCostReportResponse(_message.Message):
    __slots__ = ("rows", "total_usd")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_USD_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[CostRow]
    total_usd: float
    def __init__(self, rows: _Optional[_Iterable[_Union[CostRow, _Mapping]]] = ..., total_usd: _Optional[float] = ...) -> None: ...

class LeverSaving(_message.Message):
    __slots__ = ("lever", "saved_usd")
    LEVER_FIELD_NUMBER: _ClassVar[int]
    SAVED_USD_FIELD_NUMBER: _ClassVar[int]
    lever: str
    saved_usd: float
    def __init__(self, lever: _Optional[str] = ..., saved_usd: _Optional[float] = ...) -> None: ...

class Savings(_message.Message):
    __slots__ = ("actual_usd", "naive_usd", "levers")
    ACTUAL_USD_FIELD_NUMBER: _ClassVar[int]
    NAIVE_USD_FIELD_NUMBER: _ClassVar[int]
    LEVERS_FIELD_NUMBER: _ClassVar[int]
    actual_usd: float
    naive_usd: float
    levers: _containers.RepeatedCompositeFieldContainer[LeverSaving]
    def __init__(self, actual_usd: _Optional[float] = ..., naive_usd: _Optional[float] = ..., levers: _Optional[_Iterable[_Union[LeverSaving, _Mapping]]] = ...) -> None: ...

class LineItem(_message.Message):
    __slots__ = ("usage_type", "service", "model_id", "quantity", "unit", "cost_usd", "price_version")
    USAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    PRICE_VERSION_FIELD_NUMBER: _ClassVar[int]
    usage_type: str
    service: str
    model_id: str
    quantity: float
    unit: str
    cost_usd: float
    price_version: str
    def __init__(self, usage_type: _Optional[str] = ..., service: _Optional[str] = ..., model_id: _Optional[str] = ..., quantity: _Optional[float] = ..., unit: _Optional[str] = ..., cost_usd: _Optional[float] = ..., price_version: _Optional[str] = ...) -> None: ...

class GetSessionBillRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class GetSessionBillResponse(_message.Message):
    __slots__ = ("session_id", "items", "total_usd", "savings", "first_event_at", "last_event_at")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_USD_FIELD_NUMBER: _ClassVar[int]
    SAVINGS_FIELD_NUMBER: _ClassVar[int]
    FIRST_EVENT_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_EVENT_AT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    items: _containers.RepeatedCompositeFieldContainer[LineItem]
    total_usd: float
    savings: Savings
    first_event_at: _timestamp_pb2.Timestamp
    last_event_at: _timestamp_pb2.Timestamp
    def __init__(self, session_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[LineItem, _Mapping]]] = ..., total_usd: _Optional[float] = ..., savings: _Optional[_Union[Savings, _Mapping]] = ..., first_event_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_event_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetSavingsRequest(_message.Message):
    __slots__ = ("to",)
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    to: _timestamp_pb2.Timestamp
    def __init__(self, to: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., **kwargs) -> None: ...

class GetSavingsResponse(_message.Message):
    __slots__ = ("savings",)
    SAVINGS_FIELD_NUMBER: _ClassVar[int]
    savings: Savings
    def __init__(self, savings: _Optional[_Union[Savings, _Mapping]] = ...) -> None: ...

class Budget(_message.Message):
    __slots__ = ("monthly_limit_usd", "soft_limit_ratio", "hard_limit")
    MONTHLY_LIMIT_USD_FIELD_NUMBER: _ClassVar[int]
    SOFT_LIMIT_RATIO_FIELD_NUMBER: _ClassVar[int]
    HARD_LIMIT_FIELD_NUMBER: _ClassVar[int]
    monthly_limit_usd: float
    soft_limit_ratio: float
    hard_limit: bool
    def __init__(self, monthly_limit_usd: _Optional[float] = ..., soft_limit_ratio: _Optional[float] = ..., hard_limit: _Optional[bool] = ...) -> None: ...

class SetBudgetRequest(_message.Message):
    __slots__ = ("budget",)
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    budget: Budget
    def __init__(self, budget: _Optional[_Union[Budget, _Mapping]] = ...) -> None: ...

class SetBudgetResponse(_message.Message):
    __slots__ = ("budget",)
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    budget: Budget
    def __init__(self, budget: _Optional[_Union[Budget, _Mapping]] = ...) -> None: ...

class GetBudgetRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetBudgetResponse(_message.Message):
    __slots__ = ("budget", "spent_this_month_usd")
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    SPENT_THIS_MONTH_USD_FIELD_NUMBER: _ClassVar[int]
    budget: Budget
    spent_this_month_usd: float
    def __init__(self, budget: _Optional[_Union[Budget, _Mapping]] = ..., spent_this_month_usd: _Optional[float] = ...) -> None: ...

class CheckBudgetRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CheckBudgetResponse(_message.Message):
    __slots__ = ("state", "spent_this_month_usd", "monthly_limit_usd")
    STATE_FIELD_NUMBER: _ClassVar[int]
    SPENT_THIS_MONTH_USD_FIELD_NUMBER: _ClassVar[int]
    MONTHLY_LIMIT_USD_FIELD_NUMBER: _ClassVar[int]
    state: BudgetState
    spent_this_month_usd: float
    monthly_limit_usd: float
    def __init__(self, state: _Optional[_Union[BudgetState, str]] = ..., spent_this_month_usd: _Optional[float] = ..., monthly_limit_usd: _Optional[float] = ...) -> None: ...
