"""Benchmark: full registry recompute for a large cluster (10,000 pods, 1,000 services).

Prints the time of ``istiod_lite.registry.compute`` and of ``diff`` after one pod changes. Run with
``.venv/bin/python bench/registry_compute.py [--pods N] [--services N] [--namespaces N]``.
Never part of the test run.
"""

from __future__ import annotations

import argparse
import time

from istiod_lite.registry import compute, diff
from meshcore.store.resource import Resource


def build_cluster(pods: int, services: int, namespaces: int) -> list[Resource]:
    """Namespaces (half in ambient), services with selectors and named ports, pods behind them, policies."""
    resources: list[Resource] = []
    per_ns_svc = max(1, services // namespaces)
    for n in range(namespaces):
        ns = f"ns-{n}"
        labels = {"istio.io/dataplane-mode": "ambient"} if n % 2 == 0 else {}
        resources.append(Resource(kind="Namespace", name=ns, labels=labels))
        resources.append(
            Resource(
                kind="AuthorizationPolicy",
                name="allow-frontend",
                namespace=ns,
                spec={
                    "selector": {"matchLabels": {"tier": "backend"}},
                    "rules": [{"from": [{"source": {"principals": [f"cluster.local/ns/{ns}/sa/frontend"]}}]}],
                },
            )
        )
        for s in range(per_ns_svc):
            resources.append(
                Resource(
                    kind="Service",
                    name=f"svc-{s}",
                    namespace=ns,
                    spec={
                        "clusterIP": f"10.96.{n}.{s % 250 + 1}",
                        "selector": {"app": f"app-{s}"},
                        "ports": [{"name": "http", "port": 80, "targetPort": "http"}, {"port": 9090}],
                    },
                )
            )
    for p in range(pods):
        n = p % namespaces
        s = (p // namespaces) % per_ns_svc
        resources.append(
            Resource(
                kind="Pod",
                name=f"app-{s}-{p}",
                namespace=f"ns-{n}",
                labels={"app": f"app-{s}", "tier": "backend" if p % 3 else "frontend", "version": "v1"},
                spec={
                    "nodeName": f"node-{p % 100}",
                    "serviceAccountName": f"app-{s}",
                    "containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}],
                },
                status={"phase": "Running", "podIP": f"10.{p >> 16 & 255}.{p >> 8 & 255}.{p & 255}"},
            )
        )
    return resources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--services", type=int, default=1_000)
    parser.add_argument("--namespaces", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    resources = build_cluster(args.pods, args.services, args.namespaces)
    timings = []
    snapshot = None
    for _ in range(args.runs):
        start = time.perf_counter()
        snapshot = compute(resources)
        timings.append(time.perf_counter() - start)
    assert snapshot is not None
    print(
        f"compute: {len(snapshot.workloads)} workloads, {len(snapshot.services)} services, "
        f"{len(snapshot.policies)} policies: best {min(timings) * 1000:.0f} ms, "
        f"median {sorted(timings)[len(timings) // 2] * 1000:.0f} ms over {args.runs} runs"
    )

    changed_pod = next(r for r in resources if r.kind == "Pod")
    moved = Resource(
        kind="Pod",
        name=changed_pod.name,
        namespace=changed_pod.namespace,
        labels=changed_pod.labels,
        spec=changed_pod.spec,
        status={"phase": "Pending", "podIP": changed_pod.status["podIP"]},
    )
    after = compute([moved if r is changed_pod else r for r in resources])
    start = time.perf_counter()
    changed, removed = diff(snapshot, after)
    elapsed = time.perf_counter() - start
    total = sum(len(v) for v in changed.values()) + sum(len(v) for v in removed.values())
    print(f"diff after one pod changed: {total} resource(s) to push, {elapsed * 1000:.1f} ms")


if __name__ == "__main__":
    main()
