"""Benchmark: Deployments on the local cluster with the mesh — apply-to-Ready of 50 pods in 5 Deployments,
and a template change rolled across 10 replicas.

The cluster is ``ambientctl.cluster.testing.MeshCluster`` (two nodes, istiod-lite, node agents, ztunnels,
the kubelet with its Deployment controller). Namespace ``bench`` is enrolled in the mesh (ambient) so every
pod goes through the CNI plugin and gets its redirection, as a user's would. Each Deployment's pods run the
image stand-in (``ambientctl.apps.standin`` on containerPort 9080), the shape of an upstream sample.

1. Apply 5 Deployments of 10 replicas in one store write; time until all 50 pods report ``Ready`` (and,
   separately, until every one is captured: ``ambient.istio.io/redirection=enabled``).
2. Change the template of one 10-replica Deployment (a new ``version`` label); time until its 10 pods are
   all of the new template and Ready and no old pod is left (RollingUpdate, 25%/25%).

The time is sampled by polling the store every 20 ms. Needs root. Everything is removed at the end, also
on failure. Never part of the test run.

``--plugin-tree DIR`` (repeatable; ``.`` is this checkout) runs the whole measurement once per tree, in a
fresh cluster each, alternating over ``--rounds``, with that tree's ``ambient-cni`` (a wrapper like the
console script with the tree first on ``sys.path``, found through the kubelet's ``CNI_PATH``); everything
else runs from this checkout. That compares CNI plugins before/after in one run.

    .venv/bin/python bench/cluster_deployments.py [--deployments 5] [--replicas 10]
    .venv/bin/python bench/cluster_deployments.py --plugin-tree /tmp/before --plugin-tree . --rounds 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from ambientctl.cluster.deployments import OWNER_ANNOTATION, TEMPLATE_HASH_LABEL, template_hash
from ambientctl.cluster.mesh import MeshSettings
from ambientctl.cluster.testing import AMBIENT, REDIRECTION, MeshCluster, namespace
from meshcore.store import ResourceRef, load_documents

POLL_S = 0.02
ROOT = Path(__file__).resolve().parents[1]


def deployment(name: str, replicas: int, version: str) -> str:
    return f"""apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: bench}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}, version: {version}}}}}
    spec:
      containers:
      - name: app
        image: example.com/{name}:{version}
        ports: [{{containerPort: 9080}}]
"""


def ready(pod: object) -> bool:
    conditions = getattr(pod, "status", {}).get("conditions") or []
    return {"type": "Ready", "status": "True"} in conditions


def wait(what: str, check: object, timeout: float) -> float:
    start = time.monotonic()
    while not check():  # type: ignore[operator]
        if time.monotonic() - start > timeout:
            raise SystemExit(f"{what}: not within {timeout:g} s")
        time.sleep(POLL_S)
    return time.monotonic() - start


def plugin_dir(tree: Path) -> Path:
    """A directory holding an ``ambient-cni`` that imports from ``tree`` (as the console script does)."""
    directory = Path(tempfile.mkdtemp(prefix="cni-bin-"))
    script = directory / "ambient-cni"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(tree)!r})\n"
        "from ztunnel.cni.plugin import main\nsys.exit(main())\n"
    )
    script.chmod(0o755)
    return directory


def measure(args: argparse.Namespace, settings: MeshSettings | None) -> tuple[float, float, float]:
    """(apply -> all Ready, apply -> all captured, rollout) in seconds, on a fresh cluster."""
    total = args.deployments * args.replicas
    mc = MeshCluster.create(nodes=2, settings=settings)
    try:
        mc.apply(namespace("bench", AMBIENT))
        names = [f"app{i}" for i in range(args.deployments)]
        docs = "---\n".join(deployment(n, args.replicas, "v1") for n in names)

        def owned() -> list[object]:
            return [p for p in mc.store.list("Pod", "bench") if p.annotations.get(OWNER_ANNOTATION)]

        start = time.monotonic()
        mc.store.apply(load_documents(docs, "bench"))
        t_ready = wait(
            f"{total} pods Ready", lambda: sum(1 for p in owned() if ready(p)) == total, timeout=300
        )
        t_captured = time.monotonic() - start
        t_captured += wait(
            "all captured",
            lambda: all(getattr(p, "annotations", {}).get(REDIRECTION) == "enabled" for p in owned()),
            timeout=120,
        )
        print(f"apply -> {total} pods Ready: {t_ready:.2f} s; -> all captured: {t_captured:.2f} s")
        print(f"load average after: {os.getloadavg()[0]:.1f}")

        target = names[0]
        new_doc = load_documents(deployment(target, args.replicas, "v2"), "bench")[0]
        new_hash = template_hash(new_doc.spec["template"])
        ref = ResourceRef("Deployment", "bench", target)

        def rolled() -> bool:
            mine = [p for p in owned() if p.annotations.get(OWNER_ANNOTATION) == target]
            return (
                len(mine) == args.replicas
                and all(p.labels.get(TEMPLATE_HASH_LABEL) == new_hash and ready(p) for p in mine)  # type: ignore[attr-defined]
            )

        assert mc.store.get(ref) is not None
        mc.store.apply([new_doc])
        t_roll = wait(f"rollout of {args.replicas} replicas", rolled, timeout=300)
        print(f"template change rolled across {args.replicas} replicas: {t_roll:.2f} s")
        return t_ready, t_captured, t_roll
    finally:
        mc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--deployments", type=int, default=5)
    parser.add_argument("--replicas", type=int, default=10)
    parser.add_argument("--plugin-tree", action="append", default=[], help="a tree whose ambient-cni to use")
    parser.add_argument("--rounds", type=int, default=1, help="with --plugin-tree: passes over the trees")
    args = parser.parse_args()
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC, {os.cpu_count()} cpus, load {os.getloadavg()}"
    )
    print("# " + " ".join([sys.executable, *sys.argv]))
    if not args.plugin_tree:
        measure(args, None)
        return
    trees = [ROOT if t == "." else Path(t).resolve() for t in args.plugin_tree]
    dirs = {tree: plugin_dir(tree) for tree in trees}
    results: dict[Path, list[tuple[float, float, float]]] = {tree: [] for tree in trees}
    try:
        for _ in range(args.rounds):
            for tree in trees:
                print(f"\n## ambient-cni from {tree}")
                cni_path = os.pathsep.join([str(dirs[tree]), os.path.dirname(sys.executable), "/opt/cni/bin"])
                results[tree].append(measure(args, MeshSettings(extra_env={"CNI_PATH": cni_path})))
    finally:
        for directory in dirs.values():
            shutil.rmtree(directory, ignore_errors=True)
    print("\n| plugin tree | apply -> all Ready (s) | -> all captured (s) | rollout (s) |\n|---|---|---|---|")
    for tree, rows in results.items():
        cols = [", ".join(f"{row[i]:.2f}" for row in rows) for i in range(3)]
        print(f"| {tree} | {cols[0]} | {cols[1]} | {cols[2]} |")


if __name__ == "__main__":
    main()
