"""The usage client every service uses to report metered events to billing-svc.

`UsageRecorder.record()` never blocks and never fails the caller's work: events are appended to
a durable local spool and shipped in batches by a background task that retries until billing-svc
acknowledges them.

How it keeps every event (DurableUsageRecorder):

- `record()` checks and serializes the event and hands it to a writer thread (a queue put).
  The writer appends whatever has queued up to the current spool segment in one write and
  fsyncs it (group commit), so an event is on disk within milliseconds.
- A shipper task on the caller's event loop reads the spool in order, sends each tenant's
  events as one IngestUsage batch signed as that tenant, and retries with jittered exponential
  backoff until billing-svc acknowledges. Only then does the acknowledged position (the
  cursor) move and fully acknowledged segments get deleted.
- A process that dies (SIGKILL, OOM, node loss with the spool on a volume) resumes from the
  cursor when it starts again and re-sends what was not acknowledged; billing-svc counts each
  idempotency key once, so re-sends are harmless. A torn last write is cut off at restart.
- An event billing-svc refuses as invalid (INVALID_ARGUMENT names its index) or for an unknown
  tenant (NOT_FOUND) is moved to `dead-letter.log` in the spool folder (same framing as the
  segments) with an error log and a metric, and the rest of the batch is re-sent: one bad
  event never blocks the others.
- The spool is bounded (PARLEY_USAGE_SPOOL_MAX_BYTES). A warning is logged when it grows past
  PARLEY_USAGE_SPOOL_WARN_BYTES and at each doubling; beyond the bound new events are refused
  (logged and counted in `parley_usage_events_dropped_total{reason="spool_full"}`).
  `parley_usage_spool_events` and `parley_usage_spool_bytes` show what is waiting.

Settings (environment): BILLING_ADDR (host:port; unset = NullUsageRecorder with a warning),
PARLEY_USAGE_SPOOL_DIR (put it on a volume that outlives the container, e.g. an emptyDir),
PARLEY_USAGE_SPOOL_MAX_BYTES, PARLEY_USAGE_SPOOL_WARN_BYTES, PARLEY_USAGE_SEGMENT_BYTES,
PARLEY_USAGE_BATCH_MAX_EVENTS, PARLEY_USAGE_LINGER_S, PARLEY_USAGE_RPC_TIMEOUT_S,
PARLEY_USAGE_BACKOFF_MAX_S.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import fcntl
import logging
import os
import queue
import random
import re
import struct
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc
from parley.billing.v1 import billing_pb2
from prometheus_client import Counter, Gauge
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .auth import TokenSigner
from .client import make_channel
from .context import TENANT_HEADER
from .tenants import TENANT_ID_RE

logger = logging.getLogger(__name__)

INGEST_METHOD = "/parley.billing.v1.BillingService/IngestUsage"
BAD_EVENT_TRAILER = "x-parley-bad-event-index"
_BAD_INDEX_RE = re.compile(r"events\[(\d+)\]")

SPOOL_EVENTS = Gauge(
    "parley_usage_spool_events", "Usage events spooled and not yet acknowledged", ["service"]
)
SPOOL_BYTES = Gauge(
    "parley_usage_spool_bytes", "Bytes of usage events spooled and not yet acknowledged",
    ["service"],
)
RECORDED = Counter("parley_usage_events_recorded", "Usage events accepted by record()",
                   ["service"])
SHIPPED = Counter("parley_usage_events_shipped",
                  "Usage events acknowledged by billing-svc (duplicates included)", ["service"])
DROPPED = Counter("parley_usage_events_dropped",
                  "Usage events refused by record() (spool full, bad tenant, ...)",
                  ["service", "reason"])
DEAD_LETTERED = Counter("parley_usage_events_dead_lettered",
                        "Usage events billing-svc refused for good (kept in dead-letter.log)",
                        ["service", "reason"])
DUPLICATE_ACKS = Counter("parley_usage_events_duplicate_acks",
                         "Events billing-svc already had (re-sends after a lost answer)",
                         ["service"])
SHIP_FAILURES = Counter("parley_usage_ship_failures",
                        "IngestUsage attempts that failed and will be retried",
                        ["service", "code"])


class UsageRecorder(Protocol):
    def record(self, tenant_id: str, event: billing_pb2.UsageEvent) -> None: ...

    async def flush(self, timeout: float | None = None) -> bool: ...

    async def close(self) -> None: ...


class NullUsageRecorder:
    """Bills nothing. Keeps the most recent events in memory (bounded) for tests to inspect."""

    max_events = 10_000

    def __init__(self) -> None:
        self.events: list[tuple[str, billing_pb2.UsageEvent]] = []

    def record(self, tenant_id: str, event: billing_pb2.UsageEvent) -> None:
        if len(self.events) >= self.max_events:
            # A long-running service without BILLING_ADDR must not grow without bound.
            del self.events[: self.max_events // 2]
        self.events.append((tenant_id, event))

    async def flush(self, timeout: float | None = None) -> bool:
        await asyncio.sleep(0)
        return True

    async def close(self) -> None:
        return None


class UsageClientSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PARLEY_USAGE_", extra="ignore")

    billing_addr: str = Field(
        default="", validation_alias=AliasChoices("BILLING_ADDR", "PARLEY_BILLING_ADDR")
    )
    spool_dir: str = Field(
        default_factory=lambda: os.path.join(tempfile.gettempdir(), "parley-usage-spool")
    )
    spool_max_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    spool_warn_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    segment_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    batch_max_events: int = Field(default=1000, gt=0, le=5000)
    batch_max_bytes: int = Field(default=2 * 1024 * 1024, gt=0)
    linger_s: float = Field(default=0.05, ge=0)
    rpc_timeout_s: float = Field(default=10.0, gt=0)
    backoff_base_s: float = Field(default=0.05, gt=0)
    backoff_max_s: float = Field(default=5.0, gt=0)
    # How long close() keeps shipping before leaving the rest on disk for the next start.
    close_timeout_s: float = Field(default=2.0, ge=0)


# ---------------------------------------------------------------------------------------------
# Spool files: segments of frames [u32 length][u32 crc32][u16 tenant length][tenant][event]

_HEADER = struct.Struct("<II")
_TLEN = struct.Struct("<H")


def encode_frame(tenant: str, event: bytes) -> bytes:
    t = tenant.encode()
    payload = _TLEN.pack(len(t)) + t + event
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def iter_frames(data: bytes, start: int = 0) -> Iterator[tuple[int, str, bytes]]:
    """(end offset, tenant, event bytes) of each whole, intact frame; stops at the first
    torn or corrupt one."""
    pos, size = start, len(data)
    while pos + _HEADER.size <= size:
        length, crc = _HEADER.unpack_from(data, pos)
        body = pos + _HEADER.size
        end = body + length
        if length < _TLEN.size or end > size:
            return
        payload = data[body:end]
        if zlib.crc32(payload) != crc:
            return
        (tlen,) = _TLEN.unpack_from(payload, 0)
        tenant = payload[_TLEN.size:_TLEN.size + tlen].decode(errors="replace")
        yield end, tenant, payload[_TLEN.size + tlen:]
        pos = end


@dataclass(frozen=True, slots=True)
class SpoolBatch:
    records: list[tuple[str, bytes]]
    end: tuple[int, int]
    nbytes: int


class Spool:
    """An append-only, segmented, crash-safe queue of frames on local disk. Thread-safe."""

    def __init__(self, directory: Path, *, segment_bytes: int) -> None:
        self.dir = directory
        self._segment_bytes = segment_bytes
        # _lock guards the bookkeeping; _append_lock serialises appends.
        self._lock = threading.Lock()
        self._append_lock = threading.Lock()
        self.dir.mkdir(parents=True, exist_ok=True)
        # Sizes of the segments from the cursor's on (the active one included).
        self._sizes: dict[int, int] = {}
        self._events = 0
        self._bytes = 0
        self._cursor = self._load_cursor()
        self._recover()
        self._active = max(self._sizes, default=self._cursor[0]) + 1
        self._fd = self._open_segment(self._active)
        self._sizes[self._active] = 0

    # -- files

    def _seg_path(self, n: int) -> Path:
        return self.dir / f"seg-{n:010d}.log"

    def _segments(self) -> list[int]:
        out = []
        for p in self.dir.glob("seg-*.log"):
            try:
                out.append(int(p.stem.split("-", 1)[1]))
            except ValueError:
                continue
        return sorted(out)

    def _load_cursor(self) -> tuple[int, int]:
        try:
            seg, off = (self.dir / "cursor").read_text().split()
            return int(seg), int(off)
        except (OSError, ValueError):
            return (0, 0)

    def _save_cursor(self) -> None:
        # Not fsynced: a lost cursor only makes the next start re-send acknowledged events,
        # which billing-svc deduplicates.
        tmp = self.dir / "cursor.tmp"
        tmp.write_text(f"{self._cursor[0]} {self._cursor[1]}\n")
        os.replace(tmp, self.dir / "cursor")

    def _recover(self) -> None:
        cseg, coff = self._cursor
        for n in self._segments():
            path = self._seg_path(n)
            if n < cseg:
                path.unlink(missing_ok=True)
                continue
            data = path.read_bytes()
            valid, count = 0, 0
            for end, _, _ in iter_frames(data):
                valid = end
                if n > cseg or end > coff:
                    count += 1
            if valid < len(data):
                logger.warning("usage spool: cutting a torn or corrupt tail",
                               extra={"segment": path.name, "kept": valid, "size": len(data)})
                with open(path, "r+b") as fh:
                    fh.truncate(valid)
                    os.fsync(fh.fileno())
            self._sizes[n] = valid
            self._events += count
            self._bytes += max(0, valid - (coff if n == cseg else 0))
        if cseg not in self._sizes:
            # The cursor's segment is gone (fully acknowledged): start at the next one.
            later = [n for n in self._sizes if n > cseg]
            self._cursor = (min(later), 0) if later else (cseg, 0)

    def _open_segment(self, n: int) -> int:
        fd = os.open(self._seg_path(n), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        dfd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dfd)  # the new file's directory entry
        finally:
            os.close(dfd)
        return fd

    # -- writer side

    def append(self, frames: list[bytes]) -> None:
        """Write and fsync a group of frames (the writer thread's group commit)."""
        data = b"".join(frames)
        with self._append_lock:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            os.fsync(self._fd)
            with self._lock:
                self._sizes[self._active] += len(data)
                self._events += len(frames)
                self._bytes += len(data)
                rotate = self._sizes[self._active] >= self._segment_bytes
            if rotate:
                fd = self._open_segment(self._active + 1)
                os.close(self._fd)
                with self._lock:
                    self._fd = fd
                    self._active += 1
                    self._sizes[self._active] = 0

    # -- shipper side

    def read(self, max_events: int, max_bytes: int) -> SpoolBatch | None:
        """The next unacknowledged records, oldest first (does not move the cursor)."""
        records: list[tuple[str, bytes]] = []
        nbytes = 0
        with self._lock:
            seg, off = self._cursor
            sizes = dict(self._sizes)
        while len(records) < max_events and nbytes < max_bytes:
            limit = sizes.get(seg)
            if limit is None or off >= limit:
                nxt = [n for n in sizes if n > seg]
                if not nxt:
                    break
                seg, off = min(nxt), 0
                continue
            window = min(limit - off, max(max_bytes - nbytes, 64 * 1024))
            with open(self._seg_path(seg), "rb") as fh:
                fh.seek(off)
                data = fh.read(window)
                if len(data) >= _HEADER.size:
                    # A frame larger than the window: read all of it.
                    need = _HEADER.size + _HEADER.unpack_from(data, 0)[0]
                    if len(data) < need <= limit - off:
                        data += fh.read(need - len(data))
            pos = 0
            for end, tenant, event in iter_frames(data):
                records.append((tenant, event))
                nbytes += end - pos
                pos = end
                if len(records) >= max_events or nbytes >= max_bytes:
                    break
            if pos == 0:
                # Corrupt data inside a segment (not a torn tail): skip the rest of it.
                logger.error("usage spool: corrupt segment, skipping its remainder",
                             extra={"segment": seg, "offset": off})
                off = limit
                continue
            off += pos
        if not records:
            return None
        return SpoolBatch(records, (seg, off), nbytes)

    def ack(self, batch: SpoolBatch) -> None:
        """Move the cursor past `batch` and delete segments it finished."""
        with self._lock:
            seg, off = batch.end
            self._events -= len(batch.records)
            self._bytes -= batch.nbytes
            done = [n for n in self._sizes if n < seg]
            if seg != self._active and off >= self._sizes.get(seg, 0):
                done.append(seg)
            for n in done:
                self._sizes.pop(n, None)
            if seg in done:
                seg, off = min(n for n in self._sizes if n > seg), 0
            self._cursor = (seg, off)
            self._save_cursor()
        for n in done:
            self._seg_path(n).unlink(missing_ok=True)

    def dead_letter(self, frames: list[bytes]) -> None:
        with open(self.dir / "dead-letter.log", "ab") as fh:
            fh.write(b"".join(frames))
            fh.flush()
            os.fsync(fh.fileno())

    @property
    def pending(self) -> tuple[int, int]:
        """(events, bytes) written and not acknowledged."""
        with self._lock:
            return self._events, self._bytes

    def close(self) -> None:
        with self._lock:
            try:
                os.close(self._fd)
            except OSError:
                pass


_MAX_SLOTS = 256


def _slot_prefix(service: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", service) or "service"


def _try_lock(folder: Path) -> int | None:
    """An exclusive lock on `folder` for this process, or None while a live process holds it."""
    fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _lock_slot(base: Path, service: str) -> tuple[Path, int]:
    """A spool folder for this process: `<base>/<service>-<n>`, the first one no live process
    holds (a restarted process takes over its predecessor's folder)."""
    base.mkdir(parents=True, exist_ok=True)
    safe = _slot_prefix(service)
    for n in range(_MAX_SLOTS):
        folder = base / f"{safe}-{n}"
        folder.mkdir(exist_ok=True)
        fd = _try_lock(folder)
        if fd is not None:
            return folder, fd
    raise RuntimeError(f"no free usage spool folder under {base} ({_MAX_SLOTS} in use)")


async def ship_orphaned_spools(
    service: str,
    signer: TokenSigner | None,
    *,
    settings: UsageClientSettings | None = None,
    timeout_s: float = 30.0,
) -> int:
    """Ships the events that ended processes left in `<spool_dir>/<service>-<n>` folders no live
    process holds; returns how many were acknowledged (or dead-lettered).

    A process takes the lowest free folder, so a restarted one resumes its predecessor's events;
    a service that runs many short-lived processes (the agent worker's job processes) can leave
    a higher-numbered folder that no later process happens to take. Its supervisor calls this
    now and then. A folder being shipped is locked, so a new process simply takes another one.
    """
    settings = settings or UsageClientSettings()
    base = Path(settings.spool_dir)
    if not settings.billing_addr or not base.is_dir():
        return 0
    pattern = re.compile(re.escape(_slot_prefix(service)) + r"-\d+")
    shipped = 0
    for folder in sorted(base.iterdir()):
        if not (pattern.fullmatch(folder.name) and folder.is_dir()):
            continue
        fd = _try_lock(folder)
        if fd is None:
            continue  # a live process's folder
        recorder = DurableUsageRecorder(
            service=service, signer=signer, settings=settings, slot=(folder, fd)
        )
        try:
            pending = recorder.spool.pending[0]
            if pending:
                logger.info("usage spool: shipping a folder left by an ended process",
                            extra={"spool": str(folder), "events": pending})
                await recorder.flush(timeout_s)
                shipped += recorder._consumed
        finally:
            await recorder.close()
    return shipped


# ---------------------------------------------------------------------------------------------


class DurableUsageRecorder:
    """Spools usage events on local disk and ships them to billing-svc until acknowledged."""

    def __init__(
        self,
        *,
        service: str,
        signer: TokenSigner | None,
        settings: UsageClientSettings,
        channel: grpc.aio.Channel | None = None,
        slot: tuple[Path, int] | None = None,
    ) -> None:
        self.service = service
        self._signer = signer
        self._s = settings
        # `slot`: a folder already locked by the caller (ship_orphaned_spools), else our own
        self.dir, self._lock_fd = slot or _lock_slot(Path(settings.spool_dir), service)
        self.spool = Spool(self.dir, segment_bytes=settings.segment_bytes)
        self._channel = channel
        self._own_channel = channel is None
        self._queue: queue.SimpleQueue[tuple[str, bytes] | None] = queue.SimpleQueue()
        self._queued_bytes = 0
        self._count_lock = threading.Lock()
        events, nbytes = self.spool.pending
        # Events handed to record() (or recovered) and events that left the spool; flush()
        # waits for the second to catch up with the first.
        self._recorded = events
        self._consumed = 0
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._progress: asyncio.Event | None = None
        self._flushing = 0
        self._task: asyncio.Task[None] | None = None
        self._warned_at = 0
        self._drop_logged: dict[str, float] = {}
        self._failure_logged = 0.0
        self._m_events = SPOOL_EVENTS.labels(service)
        self._m_bytes = SPOOL_BYTES.labels(service)
        self._m_recorded = RECORDED.labels(service)
        self._m_shipped = SHIPPED.labels(service)
        self._update_gauges()
        self._writer = threading.Thread(target=self._write_loop, name=f"usage-spool-{service}",
                                        daemon=True)
        self._writer.start()
        if events:
            logger.info("usage spool: resuming unacknowledged events",
                        extra={"events": events, "bytes": nbytes, "spool": str(self.dir)})
        self._maybe_start()

    # -- the caller's side

    def record(self, tenant_id: str, event: billing_pb2.UsageEvent) -> None:
        """Queue one event for billing. Never blocks on I/O, never raises."""
        try:
            if not isinstance(tenant_id, str) or not TENANT_ID_RE.match(tenant_id):
                self._drop("bad_tenant", "usage event without a valid tenant id dropped")
                return
            if not event.idempotency_key or not event.HasField("occurred_at") or (
                not event.service
            ):
                copy = billing_pb2.UsageEvent()
                copy.CopyFrom(event)
                if not copy.idempotency_key:
                    # Unique per record() call, and stable across re-sends (it is spooled).
                    copy.idempotency_key = f"{self.service}:{uuid.uuid4().hex}"
                if not copy.HasField("occurred_at"):
                    copy.occurred_at.FromDatetime(dt.datetime.now(dt.UTC))
                if not copy.service:
                    copy.service = self.service
                event = copy
            data = event.SerializeToString()
            size = len(data) + len(tenant_id) + 10
            events, spooled = self.spool.pending
            if spooled + self._queued_bytes + size > self._s.spool_max_bytes:
                self._drop("spool_full",
                           "usage spool is full: event refused (billing-svc unreachable?)")
                return
            if self._closed:
                self._drop("closed", "usage event recorded after close() dropped: close the "
                           "recorder after the work that records usage")
                return
            with self._count_lock:
                self._recorded += 1
                self._queued_bytes += size
            self._queue.put((tenant_id, data))
            self._m_recorded.inc()
            self._maybe_start()
        except Exception:
            logger.exception("usage event could not be recorded")
            DROPPED.labels(self.service, "error").inc()

    def _drop(self, reason: str, message: str) -> None:
        DROPPED.labels(self.service, reason).inc()
        now = time.monotonic()
        # At most one log line per reason every 10 s; the counter has the exact number.
        if now - self._drop_logged.get(reason, -1e9) > 10:
            self._drop_logged[reason] = now
            logger.error(message, extra={"reason": reason, "spool": str(self.dir)})

    def _maybe_start(self) -> None:
        if self._task is not None or self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._loop = loop
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        # A fresh context: the shipper must not inherit the request (tenant, deadline) of the
        # call that happened to start it.
        self._task = loop.create_task(self._ship_loop(), context=contextvars.Context())

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything recorded so far has been acknowledged (or dead-lettered)."""
        self._maybe_start()
        target = self._recorded
        if self._task is None or self._progress is None or self._wake is None:
            return self._consumed >= target
        self._flushing += 1
        self._wake.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while self._consumed < target:
                if self._task.done():
                    return False
                self._progress.clear()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                try:
                    await asyncio.wait_for(self._progress.wait(), remaining)
                except TimeoutError:
                    return self._consumed >= target
            return True
        finally:
            self._flushing -= 1

    async def close(self) -> None:
        """Ship what it can within PARLEY_USAGE_CLOSE_TIMEOUT_S, then stop; the rest stays on
        disk and is sent by the next process using this spool."""
        if self._closed:
            return
        try:
            if self._task is not None and self._s.close_timeout_s > 0:
                await self.flush(self._s.close_timeout_s)
        finally:
            self._closed = True
            self._queue.put(None)
            await asyncio.to_thread(self._writer.join, 10)
            if self._task is not None:
                self._task.cancel()
                try:
                    await self._task
                except (asyncio.CancelledError, Exception):
                    pass
            if self._channel is not None and self._own_channel:
                await self._channel.close()
            self.spool.close()
            os.close(self._lock_fd)
            self._update_gauges()

    # -- the writer thread

    def _write_loop(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            group: list[tuple[str, bytes]] = []
            if item is None:
                stop = True
            else:
                group.append(item)
            # Group commit: everything queued meanwhile goes in the same write and fsync.
            while len(group) < 5000:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    continue
                group.append(nxt)
            if not group:
                continue
            frames = [encode_frame(t, e) for t, e in group]
            while True:
                try:
                    self.spool.append(frames)
                    break
                except OSError:
                    # Disk full or failing: keep the events in memory and try again.
                    logger.exception("usage spool write failed; retrying")
                    time.sleep(1.0)
            with self._count_lock:
                self._queued_bytes -= sum(len(e) + len(t) + 10 for t, e in group)
            self._update_gauges()
            self._notify()

    def _notify(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return
        try:
            loop.call_soon_threadsafe(self._on_written)
        except RuntimeError:
            pass  # the loop is closed

    def _on_written(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _update_gauges(self) -> None:
        events, nbytes = self.spool.pending
        self._m_events.set(events)
        self._m_bytes.set(nbytes)
        warn = self._s.spool_warn_bytes
        if nbytes >= warn and nbytes >= 2 * self._warned_at:
            self._warned_at = max(nbytes, warn)
            logger.warning(
                "usage spool is growing: billing-svc is not acknowledging fast enough",
                extra={"events": events, "bytes": nbytes, "max_bytes": self._s.spool_max_bytes,
                       "spool": str(self.dir)},
            )
        elif nbytes < warn // 2 and self._warned_at:
            self._warned_at = 0
            logger.info("usage spool drained", extra={"events": events, "bytes": nbytes})

    # -- the shipper task

    async def _ship_loop(self) -> None:
        assert self._wake is not None and self._progress is not None
        while True:
            try:
                batch = self.spool.read(self._s.batch_max_events, self._s.batch_max_bytes)
                if batch is None:
                    self._wake.clear()
                    batch = self.spool.read(self._s.batch_max_events, self._s.batch_max_bytes)
                if batch is None:
                    await self._wake.wait()
                    if self._s.linger_s and not self._flushing:
                        # Let a batch fill up a little rather than send one event per RPC.
                        await asyncio.sleep(self._s.linger_s)
                    continue
                await self._ship(batch)
                self.spool.ack(batch)
                self._consumed += len(batch.records)
                self._m_shipped.inc(len(batch.records))
                self._update_gauges()
                self._progress.set()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A local failure (disk, a bug): keep the events, log, and try again.
                logger.exception("usage shipper failed; retrying in 1s")
                await asyncio.sleep(1.0)

    def _stub(self) -> Any:
        if self._channel is None:
            self._channel = make_channel(self._s.billing_addr, signer=self._signer)
        return self._channel.unary_unary(
            INGEST_METHOD,
            request_serializer=None,  # requests are pre-encoded bytes
            response_deserializer=billing_pb2.IngestUsageResponse.FromString,
        )

    async def _ship(self, batch: SpoolBatch) -> None:
        by_tenant: dict[str, list[bytes]] = {}
        for tenant, event in batch.records:
            by_tenant.setdefault(tenant, []).append(event)
        await asyncio.gather(*(self._ship_tenant(t, evs) for t, evs in by_tenant.items()))

    async def _ship_tenant(self, tenant: str, events: list[bytes]) -> None:
        """Send one tenant's events until acknowledged; dead-letter what billing refuses."""
        attempt = 0
        while events:
            try:
                response = await self._stub()(
                    _encode_request(events),
                    metadata=((TENANT_HEADER, tenant),),
                    timeout=self._s.rpc_timeout_s,
                )
                if response.duplicates:
                    DUPLICATE_ACKS.labels(self.service).inc(response.duplicates)
                return
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    index = _bad_index(exc, len(events))
                    if index is None:
                        self._dead_letter(tenant, events, "invalid_batch", exc)
                        return
                    self._dead_letter(tenant, [events[index]], "invalid_event", exc)
                    events = events[:index] + events[index + 1:]
                    continue
                if code == grpc.StatusCode.NOT_FOUND:
                    self._dead_letter(tenant, events, "unknown_tenant", exc)
                    return
                self._log_failure(tenant, code, exc.details() or "")
            except Exception as exc:  # noqa: BLE001 - a shipper must not die on surprises
                self._log_failure(tenant, None, repr(exc))
            attempt += 1
            cap = min(self._s.backoff_max_s, self._s.backoff_base_s * 2 ** min(attempt, 20))
            await asyncio.sleep(random.uniform(cap / 4, cap))

    def _log_failure(self, tenant: str, code: grpc.StatusCode | None, detail: str) -> None:
        name = code.name if code is not None else "ERROR"
        SHIP_FAILURES.labels(self.service, name).inc()
        now = time.monotonic()
        if now - self._failure_logged > 10:
            self._failure_logged = now
            auth = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
            level = logging.ERROR if code in auth else logging.WARNING
            logger.log(level, "usage shipping failed; retrying with backoff",
                       extra={"code": name, "detail": detail[:300], "tenant": tenant,
                              "address": self._s.billing_addr})

    def _dead_letter(self, tenant: str, events: list[bytes], reason: str,
                     exc: grpc.aio.AioRpcError) -> None:
        self.spool.dead_letter([encode_frame(tenant, e) for e in events])
        DEAD_LETTERED.labels(self.service, reason).inc(len(events))
        logger.error("billing-svc refused usage events; moved to the dead-letter file",
                     extra={"reason": reason, "events": len(events), "tenant": tenant,
                            "detail": (exc.details() or "")[:300],
                            "file": str(self.dir / "dead-letter.log")})


def _encode_request(events: list[bytes]) -> bytes:
    """IngestUsageRequest bytes from already-encoded events (field 1, length-delimited)."""
    out = bytearray()
    for e in events:
        out += b"\x0a"
        n = len(e)
        while n >= 0x80:
            out.append((n & 0x7F) | 0x80)
            n >>= 7
        out.append(n)
        out += e
    return bytes(out)


def _bad_index(exc: grpc.aio.AioRpcError, size: int) -> int | None:
    for key, value in exc.trailing_metadata() or ():
        if key == BAD_EVENT_TRAILER:
            try:
                index = int(value)
            except (TypeError, ValueError):
                break
            return index if 0 <= index < size else None
    match = _BAD_INDEX_RE.search(exc.details() or "")
    if match:
        index = int(match.group(1))
        return index if 0 <= index < size else None
    return None


def make_usage_recorder(
    service: str,
    signer: TokenSigner | None = None,
    *,
    settings: UsageClientSettings | None = None,
) -> UsageRecorder:
    """The recorder a service should use: ships to BILLING_ADDR through a durable spool.

    Without BILLING_ADDR, a NullUsageRecorder (nothing is billed; a warning says so).
    """
    settings = settings or UsageClientSettings()
    if not settings.billing_addr:
        logger.warning("BILLING_ADDR is not set: usage events will not reach billing-svc")
        return NullUsageRecorder()
    try:
        return DurableUsageRecorder(service=service, signer=signer, settings=settings)
    except OSError as exc:
        raise RuntimeError(
            f"cannot use the usage spool folder {settings.spool_dir!r}: {exc}; set "
            "PARLEY_USAGE_SPOOL_DIR to a writable folder"
        ) from exc
