"""parley-billing."""
