"""istiod_lite: the control plane. Watches cluster state (embedded SQLite store or the Kubernetes API),
computes workloads, services and policies, runs the CA and pushes config over delta xDS (gRPC, 15012)."""
