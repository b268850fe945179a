"""parley-kb."""
