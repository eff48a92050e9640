"""istiod_lite/ca (filled in by its owner)."""
