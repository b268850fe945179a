"""parley-vision: decides which video frames are worth sending to a model.

Adaptive frame rate, perceptual-hash and cell-level dedup against the last kept frame, JPEG
encoding of kept frames, per-stream and per-tenant stats, usage reports to billing.
"""

from .dedup import ChangeReport, ContentKind, FrameDeduplicator
from .encode import EncodedFrame, KeptFrameEncoder, estimate_image_tokens, interestingness
from .frames import FrameDecoder, FrameLayout, FrameRejected, PixelFormat, RawFrame
from .phash import FrameSignature, compute_signature, phash_luma
from .rate import AdaptiveRateGate, StreamClock
from .selector import DecisionKind, FrameDecision, FrameInput, TrackFrameSelector
from .stats import FrameStats, TenantStatsBook
from .tenant_config import VisionConfig, load_vision_configs

__all__ = [
    "AdaptiveRateGate",
    "ChangeReport",
    "ContentKind",
    "DecisionKind",
    "EncodedFrame",
    "FrameDecision",
    "FrameDecoder",
    "FrameDeduplicator",
    "FrameInput",
    "FrameLayout",
    "FrameRejected",
    "FrameSignature",
    "FrameStats",
    "KeptFrameEncoder",
    "PixelFormat",
    "RawFrame",
    "StreamClock",
    "TenantStatsBook",
    "TrackFrameSelector",
    "VisionConfig",
    "compute_signature",
    "estimate_image_tokens",
    "interestingness",
    "load_vision_configs",
    "phash_luma",
]
