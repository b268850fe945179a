"""Parley's shared service runtime: settings, logging, tracing, metrics, auth, gRPC bootstrap."""

from .auth import ServiceIdentity, TokenSigner, TokenVerifier
from .client import make_channel
from .context import current, require_tenant, time_remaining
from .errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ParleyError,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from .server import GrpcServiceHost, bootstrap, make_signer, make_verifier
from .settings import ServiceSettings

__all__ = [
    "FailedPrecondition",
    "GrpcServiceHost",
    "InvalidArgument",
    "NotFound",
    "ParleyError",
    "PermissionDenied",
    "ResourceExhausted",
    "ServiceIdentity",
    "ServiceSettings",
    "TokenSigner",
    "TokenVerifier",
    "Unauthenticated",
    "Unavailable",
    "bootstrap",
    "current",
    "make_channel",
    "make_signer",
    "make_verifier",
    "require_tenant",
    "time_remaining",
]
