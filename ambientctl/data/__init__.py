"""Data files shipped with ambientctl (the demo mesh)."""
