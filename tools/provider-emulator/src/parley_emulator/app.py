"""ASGI application: the emulated provider APIs plus the admin API."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import admin, anthropic_api, gemini_api, voyage_api
from .state import EmulatorConfig, EmulatorState
from .stream import install_log_filter

GEMINI_VERSIONS = frozenset({"v1", "v1beta", "v1alpha"})


def _versioned(handler: admin.Handler) -> admin.Handler:
    async def wrapped(request: Request) -> Response:
        if request.path_params.get("version") not in GEMINI_VERSIONS:
            return gemini_api.error_response(404, f"Unknown API version in {request.url.path}")
        return await handler(request)

    return wrapped


def create_app(config: EmulatorConfig | None = None) -> Starlette:
    """Build the emulator app. ``app.state.emulator`` is its :class:`EmulatorState`."""
    install_log_filter()
    routes = [
        Route("/healthz", admin.healthz, methods=["GET"]),
        # Anthropic
        Route("/v1/messages", anthropic_api.messages, methods=["POST"]),
        Route("/v1/messages/count_tokens", anthropic_api.count_tokens, methods=["POST"]),
        # Voyage
        Route("/v1/embeddings", voyage_api.embeddings, methods=["POST"]),
        Route("/v1/rerank", voyage_api.rerank, methods=["POST"]),
        # Gemini
        Route("/{version}/models/{target}", _versioned(gemini_api.model_action),
              methods=["POST"]),
        Route("/{version}/cachedContents", _versioned(gemini_api.create_cache), methods=["POST"]),
        Route("/{version}/cachedContents", _versioned(gemini_api.list_caches), methods=["GET"]),
        Route("/{version}/cachedContents/{cache_id}", _versioned(gemini_api.get_cache),
              methods=["GET"]),
        Route("/{version}/cachedContents/{cache_id}", _versioned(gemini_api.delete_cache),
              methods=["DELETE"]),
        Route("/{version}/cachedContents/{cache_id}", _versioned(gemini_api.update_cache),
              methods=["PATCH"]),
        # Admin
        Route("/admin/faults", admin.set_faults, methods=["POST"]),
        Route("/admin/faults", admin.get_faults, methods=["GET"]),
        Route("/admin/faults", admin.clear_faults, methods=["DELETE"]),
        Route("/admin/stats", admin.get_stats, methods=["GET"]),
        Route("/admin/reset", admin.reset, methods=["POST"]),
        Route("/admin/requests", admin.get_requests, methods=["GET"]),
        Route("/admin/clock", admin.clock, methods=["POST"]),
        Route("/admin/config", admin.get_config, methods=["GET"]),
        Route("/admin/config", admin.set_config, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.emulator = EmulatorState(config)
    return app
