"""parley-router."""
