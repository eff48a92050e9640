"""meshcore/hbone (filled in by its owner)."""
