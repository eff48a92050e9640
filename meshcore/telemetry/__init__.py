"""meshcore/telemetry (filled in by its owner)."""
