"""Service-to-service authentication: short-lived HS256 JWTs naming the caller and tenant.

Each service signs with its own key id (`kid`); receivers hold a keyring of trusted keys, so a
key can be rotated by adding the new one everywhere before switching the signer.

A key belongs to one caller: the kid is the caller's name, optionally followed by `:` and a
version for rotation (`router-svc`, `router-svc:2026-12`). A token's `iss` must be that owner,
so a holder of one key cannot pass itself off as another caller to the allow-lists
(`PARLEY_AUTH_ALLOWED_CALLERS`, kb's operator callers) by writing another name into `iss`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

from .errors import Unauthenticated

ALGORITHM = "HS256"
_LEEWAY_S = 5


def key_owner(kid: str) -> str:
    """The caller a key id belongs to: the kid up to an optional `:<version>`."""
    return kid.split(":", 1)[0]


@dataclass(frozen=True, slots=True)
class ServiceIdentity:
    """Who is calling and on whose behalf."""

    service: str
    tenant: str | None
    expires_at: float


class TokenSigner:
    """Mints tokens for outbound calls; caches one per (tenant, audience) until near expiry."""

    def __init__(self, *, service: str, kid: str, secret: str, ttl_s: int = 300) -> None:
        if not secret:
            raise ValueError(f"no signing secret for kid {kid!r}")
        if key_owner(kid) != service:
            raise ValueError(
                f"kid {kid!r} does not belong to {service!r}: a caller signs with its own key, "
                f"named {service!r} or '{service}:<version>'"
            )
        self._service = service
        self._kid = kid
        self._secret = secret
        self._ttl = ttl_s
        self._cache: dict[tuple[str | None, str], tuple[float, str]] = {}

    @property
    def service(self) -> str:
        return self._service

    def token(self, *, tenant: str | None, audience: str = "parley") -> str:
        now = time.time()
        key = (tenant, audience)
        hit = self._cache.get(key)
        if hit is not None and hit[0] - now > self._ttl / 4:
            return hit[1]
        exp = now + self._ttl
        claims: dict[str, object] = {
            "iss": self._service,
            "sub": self._service,
            "aud": audience,
            "iat": int(now),
            "exp": int(exp),
        }
        if tenant is not None:
            claims["tenant"] = tenant
        token = jwt.encode(claims, self._secret, algorithm=ALGORITHM, headers={"kid": self._kid})
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (exp, token)
        return token


class TokenVerifier:
    """Checks a bearer token against the keyring; raises Unauthenticated with the reason."""

    def __init__(
        self,
        *,
        keys: dict[str, str],
        audience: str | None = None,
        allowed_callers: list[str] | None = None,
    ) -> None:
        self._keys = dict(keys)
        self._audiences = ["parley"] + ([audience] if audience else [])
        self._allowed = set(allowed_callers or [])
        self._cache: dict[str, ServiceIdentity] = {}

    def verify(self, token: str) -> ServiceIdentity:
        cached = self._cache.get(token)
        if cached is not None:
            if cached.expires_at + _LEEWAY_S > time.time():
                return cached
            del self._cache[token]
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"malformed token: {exc}") from None
        kid = header.get("kid")
        if header.get("alg") != ALGORITHM:
            raise Unauthenticated("token algorithm must be HS256")
        secret = self._keys.get(kid) if isinstance(kid, str) else None
        if secret is None:
            raise Unauthenticated(f"token signed with unknown key id {kid!r}")
        try:
            claims = jwt.decode(
                token,
                secret,
                algorithms=[ALGORITHM],
                audience=self._audiences,
                leeway=_LEEWAY_S,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token expired: mint a new one") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("token signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"invalid token: {exc}") from None
        service = str(claims["iss"])
        assert isinstance(kid, str)
        if service != key_owner(kid):
            raise Unauthenticated(
                f"token issuer {service!r} does not own its signing key {kid!r}: a caller signs "
                "with its own key (kid '<caller>' or '<caller>:<version>')"
            )
        if self._allowed and service not in self._allowed:
            raise Unauthenticated(f"caller {service!r} is not allowed to call this service")
        tenant = claims.get("tenant")
        ident = ServiceIdentity(
            service=service,
            tenant=str(tenant) if tenant is not None else None,
            expires_at=float(claims["exp"]),
        )
        if len(self._cache) > 50_000:
            self._cache.clear()
        self._cache[token] = ident
        return ident
