"""Benchmark: the data-plane side of xDS in one process — decoding a full push and applying one-pod deltas.

Builds the cluster of ``bench/controlplane.py`` (10,000 pods, 1,000 services by default) through istiod's
own registry, serializes it as one delta-xDS response exactly as istiod would push it, and times, per
simulated client (each keeps its ``ProxyState`` alive, as the client processes of the control-plane
benchmark do, so garbage-collector cost grows as it would there):
- parse: ``DeltaDiscoveryResponse.FromString`` of the whole response;
- receive: ``DeltaXdsClientProtocol.receive`` (protocol checks, staged versions);
- apply: ``apply_delta`` of every resource onto an empty state (decode, validate, index);
then the median time of ``apply_delta`` for a one-workload delta (a new ``version`` label, as in the
control-plane benchmark's pod change) on the full state. Never part of the test run.

    .venv/bin/python bench/xds_apply.py [--pods 10000 --services 1000 --clients 10 --deltas 500]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))

from controlplane import cluster  # noqa: E402

from istiod_lite.registry import compute  # noqa: E402
from meshcore.model import Workload  # noqa: E402
from meshcore.model.convert import ADDRESS_TYPE_URL, address_to_proto, resource_name  # noqa: E402
from meshcore.proto import discovery_pb2  # noqa: E402
from meshcore.state import ProxyState, apply_delta  # noqa: E402
from meshcore.xds import ZTUNNEL_TYPE_URLS, DeltaXdsClientProtocol  # noqa: E402


def full_response(pods: int, services: int) -> tuple[bytes, Workload]:
    snapshot = compute(cluster(pods, services))
    response = discovery_pb2.DeltaDiscoveryResponse(type_url=ADDRESS_TYPE_URL, nonce="1")
    for model in [*snapshot.workloads.values(), *snapshot.services.values()]:
        resource = response.resources.add(name=resource_name(model), version="1")
        resource.resource.type_url = ADDRESS_TYPE_URL
        resource.resource.value = address_to_proto(model).SerializeToString()
    return response.SerializeToString(), next(iter(snapshot.workloads.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--services", type=int, default=1_000)
    parser.add_argument("--clients", type=int, default=10, help="states kept alive, as in one client process")
    parser.add_argument("--deltas", type=int, default=500)
    args = parser.parse_args()

    wire, sample = full_response(args.pods, args.services)
    print(f"full response: {len(wire):,} bytes, {args.pods + args.services:,} resources")
    states: list[ProxyState] = []
    rows = []
    for _ in range(args.clients):
        t0 = time.process_time()
        response = discovery_pb2.DeltaDiscoveryResponse.FromString(wire)
        t1 = time.process_time()
        protocol = DeltaXdsClientProtocol("bench", {}, ZTUNNEL_TYPE_URLS)
        protocol.start(now=0.0)
        received = protocol.receive(response)
        bodies = received.bodies
        t2 = time.process_time()
        state, rejected = apply_delta(ProxyState.empty(), ADDRESS_TYPE_URL, bodies, ())
        t3 = time.process_time()
        assert not rejected and len(state.workloads) == args.pods, rejected[:3]
        states.append(state)
        rows.append((t1 - t0, t2 - t1, t3 - t2))
    for name, i in (("parse", 0), ("receive", 1), ("apply", 2)):
        col = [r[i] * 1000 for r in rows]
        print(f"full push {name:8s}: median {statistics.median(col):6.1f} ms, max {max(col):6.1f} ms "
              f"over {args.clients} clients")
    totals = [sum(r) * 1000 for r in rows]
    print(f"full push total   : median {statistics.median(totals):6.1f} ms, max {max(totals):6.1f} ms")

    state = states[-1]
    bodies_by_revision = [
        {sample.uid: address_to_proto(msgspec.structs.replace(sample, canonical_revision=f"v{i}")).SerializeToString()}
        for i in range(2)
    ]
    timings = []
    for i in range(args.deltas):
        t0 = time.process_time()
        state, rejected = apply_delta(state, ADDRESS_TYPE_URL, bodies_by_revision[i % 2], ())
        timings.append(time.process_time() - t0)
        assert not rejected
    timings_us = [t * 1e6 for t in timings]
    print(f"one-workload delta: median {statistics.median(timings_us):6.0f} us, "
          f"p99 {sorted(timings_us)[int(len(timings_us) * 0.99)]:6.0f} us over {args.deltas}")


if __name__ == "__main__":
    main()
