"""Local stack on real processes: PostgreSQL+pgvector (embedded), Redis, LiveKit, emulator."""
