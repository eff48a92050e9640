"""meshcore/tls (filled in by its owner)."""
