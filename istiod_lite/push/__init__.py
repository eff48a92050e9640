"""istiod_lite/push (filled in by its owner)."""
