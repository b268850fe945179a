"""parley-agent-worker: Parley's LiveKit Agents worker.

Kept free of imports: `python -m parley_agent` must configure Prometheus' multiprocess directory
before anything imports prometheus_client. Import the modules directly:
`parley_agent.worker.build_server`, `parley_agent.router_llm.RouterLLM`, `parley_agent.sim`, ...
"""

__all__ = [
    "agents",
    "config",
    "coordination",
    "espeak_tts",
    "local_stt",
    "metadata",
    "notetaker",
    "router_llm",
    "runner",
    "session",
    "signing",
    "sim",
    "speech",
    "tenancy",
    "testing",
    "tools",
    "usage",
    "vision",
    "worker",
]
