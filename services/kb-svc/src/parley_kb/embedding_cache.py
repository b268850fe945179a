"""Embedding cache: an in-process LRU in front of a shared remote store (Redis in production).

Keys name the tenant (hashed), the model, the input type and a SHA-256 of tenant + text. The
tenant is part of the key on purpose: a cache shared across tenants would let one tenant learn,
from a faster answer or from `chunks_embedded`, that another tenant holds the exact same text.
A digest of the tenant id leads the key so that offboarding can delete all of a tenant's
entries (queries included) by prefix.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)

KEY_PREFIX = "parley:kb:emb:v2"


class RemoteVectorCache(Protocol):
    """A shared byte store with expiry (implemented over Redis in cache.py)."""

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    async def set_many(self, items: dict[str, bytes], ttl_s: int) -> None: ...

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with `prefix` (no glob characters); how many."""
        ...


def tenant_prefix(tenant_id: str) -> str:
    """The leading part of every key of the tenant: a digest of its id, so that its entries
    can be deleted together without the tenant's name appearing in the shared store."""
    digest = hashlib.sha256(f"parley-kb-tenant\x00{tenant_id}".encode()).hexdigest()[:24]
    return f"{KEY_PREFIX}:{digest}:"


def cache_key(model: str, input_type: str, tenant_id: str, text: str) -> str:
    digest = hashlib.sha256(f"{tenant_id}\x00{text}".encode()).hexdigest()
    return f"{tenant_prefix(tenant_id)}{model}:{input_type}:{digest}"


class LruVectorCache:
    """A bounded LRU of vectors (not thread-safe; used from the event loop only)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: OrderedDict[str, np.ndarray] = OrderedDict()

    def get(self, key: str) -> np.ndarray | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: str, value: np.ndarray) -> None:
        if self.capacity <= 0:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()

    def drop_prefix(self, prefix: str) -> int:
        doomed = [key for key in self._data if key.startswith(prefix)]
        for key in doomed:
            del self._data[key]
        return len(doomed)

    def __len__(self) -> int:
        return len(self._data)


class EmbeddingCache:
    """Two layers: memory, then the remote store. Remote failures degrade to a miss."""

    def __init__(
        self,
        *,
        dimensions: int,
        lru_capacity: int = 20_000,
        remote: RemoteVectorCache | None = None,
        ttl_s: int = 30 * 24 * 3600,
    ) -> None:
        self.dimensions = dimensions
        self.memory = LruVectorCache(lru_capacity)
        self.remote = remote
        self.ttl_s = ttl_s

    async def get_many(self, keys: Sequence[str]) -> dict[str, tuple[np.ndarray, str]]:
        """Found vectors by key, with the layer that had them ("memory" or "remote")."""
        found: dict[str, tuple[np.ndarray, str]] = {}
        missing: list[str] = []
        for key in keys:
            vec = self.memory.get(key)
            if vec is not None:
                found[key] = (vec, "memory")
            else:
                missing.append(key)
        if missing and self.remote is not None:
            try:
                values = await self.remote.get_many(missing)
            except Exception:
                logger.warning("embedding cache read failed; embedding instead", exc_info=True)
                values = [None] * len(missing)
            for key, raw in zip(missing, values, strict=True):
                vec = self._decode(raw)
                if vec is not None:
                    self.memory.put(key, vec)
                    found[key] = (vec, "remote")
        return found

    async def put_many(self, items: Iterable[tuple[str, np.ndarray]]) -> None:
        encoded: dict[str, bytes] = {}
        for key, vec in items:
            vec = np.ascontiguousarray(vec, dtype="<f4")
            self.memory.put(key, vec)
            encoded[key] = vec.tobytes()
        if encoded and self.remote is not None:
            try:
                await self.remote.set_many(encoded, self.ttl_s)
            except Exception:
                logger.warning("embedding cache write failed", exc_info=True)

    async def delete_tenant(self, tenant_id: str) -> int:
        """Forget every vector cached for the tenant, in memory and in the shared store."""
        prefix = tenant_prefix(tenant_id)
        deleted = self.memory.drop_prefix(prefix)
        if self.remote is not None:
            deleted += await self.remote.delete_prefix(prefix)
        return deleted

    def _decode(self, raw: bytes | None) -> np.ndarray | None:
        if raw is None or len(raw) != 4 * self.dimensions:
            return None
        return np.frombuffer(raw, dtype="<f4").copy()
