"""Provider adapters over the official SDKs."""

from .base import CallContext, ChatProvider, ProviderError, ProviderErrorKind

__all__ = ["CallContext", "ChatProvider", "ProviderError", "ProviderErrorKind"]
