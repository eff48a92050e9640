"""meshcore/store (filled in by its owner)."""
