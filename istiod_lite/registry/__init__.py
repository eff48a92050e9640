"""istiod_lite/registry (filled in by its owner)."""
