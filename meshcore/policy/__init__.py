"""meshcore/policy (filled in by its owner)."""
