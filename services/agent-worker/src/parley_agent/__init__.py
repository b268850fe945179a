"""parley-agent-worker."""
