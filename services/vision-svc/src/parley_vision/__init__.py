"""parley-vision."""
