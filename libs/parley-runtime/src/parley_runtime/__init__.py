"""parley-runtime."""
