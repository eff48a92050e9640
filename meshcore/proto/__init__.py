"""Protocol buffers: our .proto sources (Istio and Envoy package names and field numbers) and the Python generated from them by scripts/gen-proto.sh (committed, never hand-edited)."""
