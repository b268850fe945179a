"""parley-provider-emulator."""
