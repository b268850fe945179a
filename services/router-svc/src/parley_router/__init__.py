"""parley-router: per-turn LLM routing (complexity tiers, failover, rate limits, caching)."""

from .complexity import LinearComplexityModel, SeedHeuristic, Tier
from .router import TurnRouter

__all__ = ["LinearComplexityModel", "SeedHeuristic", "Tier", "TurnRouter"]
