"""``ambientctl bug-report``: one ``tar.gz`` with what a maintainer needs to understand the mesh, on the
local cluster or (``--kubeconfig``/``--context``) on a Kubernetes cluster.

What goes in: istiod-lite's ``/debug/syncz``, ``/debug/registryz`` and metrics; each node's ztunnel
``/config_dump`` and metrics and its node agent's ``/debug/pods`` and metrics; each waypoint pod's
``/config_dump`` and metrics; the tail of every component's and pod's log; the versions (package,
Python, kernel, nft, ip, and each proxy's ``ISTIO_VERSION`` as istiod-lite sees it); ``check``'s
results; the cluster's status; and every resource in the store. On Kubernetes the endpoints are reached
through the API server's pod port-forward, the logs are the tail of each istio-system pod's and waypoint
pod's containers (``pods/log``), and the cluster's status is its istio-system pods; ``MANIFEST.txt`` lists
each member and
every part that could not be gathered, with the reason (a report of a broken cluster is the usual one,
so a part that fails never fails the report, and is never silently missing).

Invariant: no key material leaves the machine. Every member is text and goes through ``redact``
(pure, unit-tested): PEM private-key blocks are cut out, and so is the content of every key file found
in the state directory (whole, and each line of its base64 body, so a key logged without its PEM
armour is caught too); Secrets' ``data``/``stringData`` values and JSON fields named like a private key
are replaced. A member that still holds ``PRIVATE KEY`` after that is left out and named in the
manifest (fail closed). Certificates and their public keys are kept: they are what expiry and identity
problems are read from. The archive is written with mode 0600.
"""

from __future__ import annotations

import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import msgspec

from ambientctl.cluster import ClusterError
from meshcore.store import SqliteStore, Store, StoreError

from .checks import gather_kubernetes, gather_mesh
from .reach import (
    AGENT_ADMIN,
    AGENT_MONITORING,
    ISTIOD,
    ISTIOD_MONITORING,
    WAYPOINT_ADMIN,
    WAYPOINT_STATS,
    ZTUNNEL_ADMIN,
    ZTUNNEL_STATS,
    ReachError,
    Target,
)
from .remote import ISTIO_SYSTEM, KubeReach, LogSource, MeshView, default_container
from .syncstatus import proxy_rows

PACKAGE = "ambient-mesh"
REDACTED = "[redacted]"
KEY_MARKER = "PRIVATE KEY"
PRIVATE_KEY_PEM = re.compile(
    r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(?:-----END \1PRIVATE KEY-----|\Z)", re.DOTALL
)
# Lines of a key's base64 body shorter than this are not scrubbed on their own (too likely to occur
# by chance in other text; a PEM body line is 64 characters).
MIN_SECRET_LINE = 24
# JSON fields whose values are dropped whatever they hold.
SECRET_FIELD = re.compile(r"(private[_-]?key|key[_-]?pem|^key$|secret[_-]?key)", re.IGNORECASE)
KEY_FILE_MAX = 1 << 16  # a key file is a few KiB; larger files are not keys
LOG_TAIL = 4 << 20  # bytes of each log kept (its end)
KUBE_LOG_TAIL_LINES = 20_000  # on Kubernetes, lines of each container's log kept (its end)
TOOL_TIMEOUT_S = 5.0


# --- redaction (pure) -----------------------------------------------------------------------------------


def key_material(key_texts: Iterable[str]) -> list[str]:
    """What to scrub for each key file's text: the whole text and each long line of its base64 body,
    longest first (so a whole key is replaced before its parts)."""
    out: set[str] = set()
    for text in key_texts:
        stripped = text.strip()
        if stripped:
            out.add(stripped)
        for line in stripped.splitlines():
            line = line.strip()
            if len(line) >= MIN_SECRET_LINE and not line.startswith("-----"):
                out.add(line)
    return sorted(out, key=lambda s: (-len(s), s))


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """``text`` without PEM private-key blocks and without any of ``secrets`` (see ``key_material``)."""
    text = PRIVATE_KEY_PEM.sub("[redacted: a private key]", text)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def redact_json(value: Any) -> Any:
    """A copy of ``value`` with every field named like a private key replaced (recursively)."""
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if isinstance(k, str) and SECRET_FIELD.search(k) and v not in (None, "") else redact_json(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact_json(v) for v in value]
    return value


def redact_resource(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A resource document for the report: a Secret's values are replaced (its keys are kept, so what it
    holds can still be discussed), everything else goes through ``redact_json``."""
    out: dict[str, Any] = redact_json(doc)
    if doc.get("kind") == "Secret":
        for holder in (out, out.get("spec")):
            if isinstance(holder, dict):
                for name in ("data", "stringData"):
                    values = holder.get(name)
                    if isinstance(values, Mapping):
                        holder[name] = {k: REDACTED for k in values}
    return out


# --- the archive ----------------------------------------------------------------------------------------


@dataclass
class Report:
    """Members (archive name -> text) and the parts that could not be gathered (name -> why)."""

    members: dict[str, str] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, text: str) -> None:
        self.members[name] = text

    def add_json(self, name: str, value: Any) -> None:
        self.members[name] = json.dumps(redact_json(value), indent=2, sort_keys=True, default=str) + "\n"

    def attempt(self, name: str, produce: Callable[[], str]) -> None:
        """``produce`` the member, or record why it could not be."""
        try:
            self.members[name] = produce()
        except (ReachError, ClusterError, OSError, ValueError, subprocess.SubprocessError) as e:
            self.missing[name] = str(e) or type(e).__name__


def write_archive(report: Report, path: Path, secrets: Sequence[str], *, created: datetime) -> list[str]:
    """Write ``report`` to ``path`` (tar.gz, mode 0600) under a top directory named after the file;
    returns the members left out because they still held key material after redaction."""
    top = path.name.removesuffix(".tar.gz").removesuffix(".tgz") or "bug-report"
    withheld: list[str] = []
    kept: dict[str, bytes] = {}
    for name, text in sorted(report.members.items()):
        clean = redact(text, secrets)
        if KEY_MARKER in clean:
            withheld.append(name)
            continue
        kept[name] = clean.encode()
    manifest = [f"ambientctl bug-report, created {created:%Y-%m-%dT%H:%M:%SZ}", "", "files:"]
    manifest += [f"  {name} ({len(data)} bytes)" for name, data in kept.items()]
    gaps = {**report.missing, **{n: "left out: it still held key material after redaction" for n in withheld}}
    if gaps:
        manifest += ["", "not included:"] + [f"  {name}: {why}" for name, why in sorted(gaps.items())]
    kept["MANIFEST.txt"] = redact("\n".join(manifest) + "\n", secrets).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, data in kept.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            info.mtime = int(created.timestamp())
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(data))
    return withheld


# --- gathering ------------------------------------------------------------------------------------------


def find_key_files(root: Path) -> list[Path]:
    """Small regular files under ``root`` that are a PEM private key (they start with a PEM header and hold
    one; symlinks are not followed)."""
    found: list[Path] = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            try:
                if p.is_symlink() or not p.is_file() or p.stat().st_size > KEY_FILE_MAX:
                    continue
                data = p.read_bytes()
                if data.lstrip().startswith(b"-----BEGIN") and KEY_MARKER.encode() in data:
                    found.append(p)
            except OSError:
                continue
    return sorted(found)


def _tail(path: Path, limit: int = LOG_TAIL) -> str:
    with path.open("rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(0, size - limit))
        data = fh.read(limit)
    prefix = f"[first {size - limit} bytes left out]\n" if size > limit else ""
    return prefix + data.decode("utf-8", "replace")


def _tool_version(argv: Sequence[str]) -> str:
    tool = shutil.which(argv[0])
    if tool is None:
        return "not installed"
    try:
        done = subprocess.run([tool, *argv[1:]], capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"error: {e}"
    return (done.stdout or done.stderr).strip()


def _version() -> str:
    try:
        return package_version(PACKAGE)
    except PackageNotFoundError:
        return "unknown (not installed as a package)"


def _text(answer_status: int, text: str, where: str) -> str:
    if answer_status != 200:
        raise ValueError(f"{where} answered HTTP {answer_status}: {text.strip()[:200]}")
    return text


def _get(reach: Any, target: Target, port: int, path: str) -> Callable[[], str]:
    def fetch() -> str:
        answer = reach.get(target, port, path)
        return _text(answer.status, answer.text, f"{target} :{port}{path}")

    return fetch


def _pretty(fetch: Callable[[], str]) -> Callable[[], str]:
    """A JSON endpoint's answer, re-indented and with private-key fields replaced."""

    def produce() -> str:
        return json.dumps(redact_json(json.loads(fetch())), indent=2, sort_keys=True) + "\n"

    return produce


def _kube_logs(report: Report, kube: KubeReach, waypoints: Sequence[tuple[str, str]]) -> None:
    """The tail of every container log of istio-system's pods and of the waypoint pods, as
    ``logs/<namespace>.<pod>.<container>.log``."""
    pods = list(kube.pods())
    for ns in sorted({ns for ns, _ in waypoints}):
        pods += [p for p in kube.pods(ns) if (ns, str((p.get("metadata") or {}).get("name"))) in waypoints]
    if not pods:
        report.missing["logs/"] = f"no pod in {ISTIO_SYSTEM} and no waypoint pod"
    for pod in pods:
        meta = pod.get("metadata") or {}
        ns, name = str(meta.get("namespace") or ISTIO_SYSTEM), str(meta.get("name"))
        containers = [str(c.get("name")) for c in (pod.get("spec") or {}).get("containers") or [] if isinstance(c, dict)]
        for container in containers or [default_container(pod) or ""]:
            source = LogSource(f"{ns}/{name}", ns, name, container or None)
            report.attempt(f"logs/{ns}.{name}.{container}.log",
                           partial(kube.log, source, tail_lines=KUBE_LOG_TAIL_LINES))  # fmt: skip


def gather(view: MeshView, store: Callable[[], Store], *, with_checks: bool = True) -> Report:
    """Everything the module docstring lists, from the cluster ``view`` reaches and the store (opened by
    ``store()`` when its resources are read; never raises for a part that cannot be read: it is recorded
    in ``Report.missing``)."""
    report = Report()
    reach = view.reach
    waypoints: list[tuple[str, str]] = []
    try:
        waypoints = view.waypoints()
    except (ReachError, ClusterError, OSError) as e:
        report.missing["waypoints/"] = str(e)
    istiod = Target(ISTIOD)
    syncz: Any = None
    try:
        syncz = json.loads(_get(reach, istiod, ISTIOD_MONITORING, "/debug/syncz")())
        report.add_json("istiod/syncz.json", syncz)
    except (ReachError, ValueError) as e:
        report.missing["istiod/syncz.json"] = str(e)
    report.attempt("istiod/registryz.json", _pretty(_get(reach, istiod, ISTIOD_MONITORING, "/debug/registryz")))
    report.attempt("istiod/metrics.txt", _get(reach, istiod, ISTIOD_MONITORING, "/metrics"))

    nodes: list[str] = []
    try:
        nodes = view.nodes()
    except ReachError as e:
        report.missing["nodes/"] = str(e)
    for n in nodes:
        node = Target("node", node=n)
        report.attempt(f"nodes/{n}/ztunnel-config_dump.json", _pretty(_get(reach, node, ZTUNNEL_ADMIN, "/config_dump")))
        report.attempt(f"nodes/{n}/ztunnel-metrics.txt", _get(reach, node, ZTUNNEL_STATS, "/metrics"))
        report.attempt(f"nodes/{n}/node-agent-pods.json", _pretty(_get(reach, node, AGENT_ADMIN, "/debug/pods")))
        report.attempt(f"nodes/{n}/node-agent-metrics.txt", _get(reach, node, AGENT_MONITORING, "/metrics"))
    for ns, name in waypoints:
        pod = Target("pod", namespace=ns, name=name)
        base = f"waypoints/{ns}/{name}"
        report.attempt(f"{base}/config_dump.json", _pretty(_get(reach, pod, WAYPOINT_ADMIN, "/config_dump")))
        report.attempt(f"{base}/metrics.txt", _get(reach, pod, WAYPOINT_STATS, "/metrics"))

    cluster, kube = view.cluster, view.kube
    if cluster is not None:
        log_dir = cluster.procs.log_dir
        logs = sorted(log_dir.glob("*.log")) if log_dir.is_dir() else []
        if not logs:
            report.missing["logs/"] = f"no log files in {log_dir}"
        for log in logs:
            report.attempt(f"logs/{log.name}", partial(_tail, log))
    elif kube is not None:
        try:
            _kube_logs(report, kube, waypoints)
        except ReachError as e:
            report.missing["logs/"] = str(e)

    proxies: list[dict[str, str]] = []
    if syncz is not None:
        try:
            proxies = [{"name": r.name, "kind": r.kind, "version": r.version} for r in proxy_rows(syncz, "istiod-lite")]
        except ValueError as e:
            report.missing["versions.json (proxies)"] = str(e)
    report.add_json(
        "versions.json",
        {
            "ambient-mesh": _version(),
            "python": sys.version,
            "platform": platform.platform(),
            "kernel": platform.release(),
            "nft": _tool_version(["nft", "--version"]),
            "ip": _tool_version(["ip", "-V"]),
            "proxies": proxies,
        },
    )
    if cluster is not None:
        report.attempt("cluster/status.json", lambda: msgspec.json.format(msgspec.json.encode(cluster.status())).decode() + "\n")
    elif kube is not None:
        report.attempt(f"cluster/{ISTIO_SYSTEM}-pods.json", lambda: json.dumps(
            [redact_resource(p) for p in kube.pods()], indent=2, sort_keys=True) + "\n")
    try:
        listed = store().list()
    except StoreError as e:  # a store that cannot be opened or listed (the API server's refusal): named
        report.missing["resources.json"] = str(e) or type(e).__name__
    else:
        resources = [redact_resource(r.to_dict()) for r in sorted(listed, key=lambda r: (r.kind, r.namespace, r.name))]
        report.add("resources.json", json.dumps(resources, indent=2) + "\n")
    if with_checks:
        started = time.monotonic()
        try:
            if kube is not None:
                results, _ = gather_kubernetes(kube)
            elif cluster is not None and isinstance(opened := store(), SqliteStore):
                results, _ = gather_mesh(cluster, opened, view.reach)
            else:
                raise ValueError("checks need the local cluster's own store")
            report.add_json("check.json", {"seconds": round(time.monotonic() - started, 3),
                                           "results": [r.to_json() for r in results]})  # fmt: skip
        except (ReachError, ClusterError, StoreError, OSError, ValueError) as e:
            report.missing["check.json"] = str(e)
    return report


def default_path(now: datetime | None = None) -> Path:
    when = now or datetime.now(UTC)
    return Path.cwd() / f"ambient-bug-report-{when:%Y%m%dT%H%M%SZ}.tar.gz"


def secrets_in(state_dir: Path) -> list[str]:
    """``key_material`` of every key file under the state directory."""
    texts = []
    for p in find_key_files(state_dir):
        try:
            texts.append(p.read_text(errors="replace"))
        except OSError:
            continue
    return key_material(texts)
