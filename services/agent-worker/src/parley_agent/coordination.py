"""How agents in one room coordinate: JSON events on LiveKit data topics.

- `parley.turns`: the assistant publishes every finished turn (who spoke, the text, and for its
  own turns the tier and model that answered). The note-taker and any client may listen.
- `parley.notes`: the note-taker publishes rolling summaries of the conversation.

Events are small JSON objects with a `type`, the `session_id` and a per-publisher `seq`;
receivers drop what they cannot parse and what does not come from an agent participant.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from livekit import rtc

from .log import logger

TOPIC_TURNS = "parley.turns"
TOPIC_NOTES = "parley.notes"
# Reliable data packets are limited to ~15 KiB; keep well under it.
MAX_EVENT_BYTES = 14 * 1024


def encode_event(payload: dict[str, Any]) -> bytes:
    """JSON bytes under MAX_EVENT_BYTES, shortening the `text`/`summary` field if needed."""
    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    if len(data) <= MAX_EVENT_BYTES:
        return data
    for key in ("text", "summary"):
        value = payload.get(key)
        while isinstance(value, str) and value and len(data) > MAX_EVENT_BYTES:
            # characters can be several bytes: cut by the byte overflow, then re-check
            value = value[: max(0, len(value) - (len(data) - MAX_EVENT_BYTES) - 64)]
            payload = {**payload, key: value + "…", "truncated": True}
            data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        if len(data) <= MAX_EVENT_BYTES:
            return data
    raise ValueError("event too large for a data packet")


def decode_event(data: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        return None
    return value


@dataclass
class EventPublisher:
    """Publishes events on one topic with a monotonically increasing `seq`."""

    room: rtc.Room
    topic: str
    session_id: str
    seq: int = 0
    published: list[dict[str, Any]] = field(default_factory=list)

    async def publish(self, event_type: str, **fields: Any) -> dict[str, Any]:
        self.seq += 1
        payload = {
            "type": event_type, "session_id": self.session_id, "seq": self.seq,
            "ts": round(time.time(), 3), **fields,
        }
        data = encode_event(payload)
        try:
            await self.room.local_participant.publish_data(data, reliable=True, topic=self.topic)
        except Exception:
            logger.warning("data event not published", extra={"topic": self.topic},
                           exc_info=True)
        self.published.append(payload)
        return payload


def from_agent(packet: rtc.DataPacket) -> bool:
    p = packet.participant
    return p is not None and p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
