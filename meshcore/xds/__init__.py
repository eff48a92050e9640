"""meshcore/xds (filled in by its owner)."""
