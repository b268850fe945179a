"""parley-provider-emulator: local stand-in for the Anthropic, Gemini and Voyage HTTP APIs."""

from .app import create_app
from .runner import EmulatorProcess, EmulatorServer
from .state import EmulatorConfig, EmulatorState

__all__ = ["EmulatorConfig", "EmulatorProcess", "EmulatorServer", "EmulatorState", "create_app"]
