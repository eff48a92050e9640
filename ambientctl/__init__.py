"""ambientctl: the operator CLI. Applies config to the store, enables ambient per namespace,
reads proxies' admin endpoints, and runs the local cluster. Reaches other binaries only through
their public faces (store, HTTP admin, gRPC, processes)."""
