"""Finding a pod's network namespace: what CNI events told us (kept across agent restarts), else a /proc scan.

Sources, in order: (1) the CNI plugin's event for the pod (``CNI_NETNS``), recorded in a ``NetnsMap``
persisted as a small JSON file (0600, replaced atomically, so a crash leaves the old or the new map);
(2) ``find_pod_netns``: the processes whose environment names the pod (``POD_NAME``/``POD_NAMESPACE``, as
the local cluster and the downward API set them), preferring a named ``/var/run/netns`` path for the same
namespace. Each entry keeps the namespace's identity (dev, inode), so a path that now names a different
namespace (a recreated pod sandbox) is recognised as stale rather than captured by mistake.
Invariants: a corrupt map file is reported and replaced, never fatal; nothing here enters a namespace.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import structlog

from meshcore.aio.netns import NETNS_RUN_DIR, NetnsId

log = structlog.get_logger("ztunnel.cni.podnetns")

MAP_VERSION = 1
POD_NAME_ENV = b"POD_NAME"
POD_NAMESPACE_ENV = b"POD_NAMESPACE"
POD_UID_ENV = b"POD_UID"
MAX_ENVIRON_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class NetnsEntry:
    """Where one pod's network namespace is, and which namespace that path named when recorded."""

    path: str
    # str(NetnsId) of the namespace at ``path`` when it was recorded.
    netns_id: str
    # The sandbox container of the CNI ADD that reported it ("" when found by a scan).
    container_id: str = ""


def netns_id_of(path: str) -> NetnsId | None:
    """The identity of the namespace at ``path``; None when the path does not exist (any more)."""
    try:
        return NetnsId.of_path(path)
    except OSError:
        return None


class NetnsMap:
    """Pod (namespace, name) -> ``NetnsEntry``, persisted at ``path`` (None: in memory only)."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._entries: dict[tuple[str, str], NetnsEntry] = {}

    def load(self) -> list[str]:
        """Read the file, dropping entries whose path is gone or names another namespace now.
        Returns what was wrong (a corrupt file counts as empty and is replaced on the next write)."""
        self._entries = {}
        if self._path is None or not self._path.exists():
            return []
        problems: list[str] = []
        try:
            doc = json.loads(self._path.read_bytes())
            if (
                not isinstance(doc, dict)
                or doc.get("version") != MAP_VERSION
                or not isinstance(doc.get("pods"), dict)
            ):
                raise ValueError(f"not a version-{MAP_VERSION} pod netns map")
            for key, raw in doc["pods"].items():
                namespace, sep, name = str(key).partition("/")
                if not sep or not isinstance(raw, dict):
                    problems.append(f"entry {key!r} is malformed; dropped")
                    continue
                entry = NetnsEntry(
                    str(raw.get("path", "")), str(raw.get("netns_id", "")), str(raw.get("container_id", ""))
                )
                current = netns_id_of(entry.path) if entry.path else None
                if current is None or str(current) != entry.netns_id:
                    problems.append(f"{key}: {entry.path} no longer names the recorded namespace; dropped")
                    continue
                self._entries[(namespace, name)] = entry
        except (OSError, ValueError) as e:
            problems.append(f"{self._path}: {e}; starting with an empty map")
            self._entries = {}
        return problems

    def get(self, namespace: str, name: str) -> NetnsEntry | None:
        return self._entries.get((namespace, name))

    def items(self) -> Iterator[tuple[tuple[str, str], NetnsEntry]]:
        return iter(list(self._entries.items()))

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, namespace: str, name: str, entry: NetnsEntry) -> bool:
        """Remember ``entry`` for the pod; True when that changed anything (then it is saved)."""
        if self._entries.get((namespace, name)) == entry:
            return False
        self._entries[(namespace, name)] = entry
        self._save()
        return True

    def forget(self, namespace: str, name: str, container_id: str = "") -> NetnsEntry | None:
        """Drop the pod's entry (only if it came from ``container_id``, when given); returns it."""
        entry = self._entries.get((namespace, name))
        if entry is None or (container_id and entry.container_id and entry.container_id != container_id):
            return None
        del self._entries[(namespace, name)]
        self._save()
        return entry

    def _save(self) -> None:
        if self._path is None:
            return
        doc = {
            "version": MAP_VERSION,
            "pods": {f"{ns}/{name}": asdict(e) for (ns, name), e in sorted(self._entries.items())},
        }
        self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # mkstemp creates the file 0600; rename makes the replacement atomic.
        fd, tmp = tempfile.mkstemp(prefix=".pods-", dir=self._path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(json.dumps(doc, indent=1).encode())
            os.replace(tmp, self._path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise


def _environ_names(data: bytes) -> tuple[bytes | None, bytes | None, bytes | None]:
    name = namespace = uid = None
    for item in data.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if not sep:
            continue
        if key == POD_NAME_ENV:
            name = value
        elif key == POD_NAMESPACE_ENV:
            namespace = value
        elif key == POD_UID_ENV:
            uid = value
    return name, namespace, uid


def named_netns_path(netns_id: NetnsId, run_dir: str = NETNS_RUN_DIR) -> str | None:
    """A ``/var/run/netns/<name>`` bind mount of the same namespace, if there is one (a stable path)."""
    try:
        names = sorted(os.listdir(run_dir))
    except OSError:
        return None
    for name in names:
        path = os.path.join(run_dir, name)
        if netns_id_of(path) == netns_id:
            return path
    return None


def find_pod_netns(
    namespace: str,
    name: str,
    *,
    proc_root: Path = Path("/proc"),
    exclude: NetnsId | None = None,
    run_dir: str = NETNS_RUN_DIR,
    uid: str = "",
) -> NetnsEntry | None:
    """The namespace of a process whose environment says it is pod ``namespace/name``; None if no such
    process lives outside ``exclude`` (our own namespace: a host-network process is never a pod's).

    With ``uid`` (the pod object's uid), a process whose environment carries a different ``POD_UID`` is
    not this pod: another cluster's pod of the same namespace/name on the same machine (several local
    clusters, or a recreated pod) must never be captured, or later released, by mistake."""
    want = (name.encode(), namespace.encode())
    want_uid = uid.encode()
    try:
        pids = [p for p in os.listdir(proc_root) if p.isdigit()]
    except OSError:
        return None
    for pid in sorted(pids, key=int):
        try:
            with open(proc_root / pid / "environ", "rb") as f:
                data = f.read(MAX_ENVIRON_BYTES)
        except OSError:
            continue  # exited, or a kernel thread
        env_name, env_namespace, env_uid = _environ_names(data)
        if (env_name, env_namespace) != want:
            continue
        if want_uid and env_uid is not None and env_uid != want_uid:
            continue
        ns_path = str(proc_root / pid / "ns" / "net")
        found = netns_id_of(ns_path)
        if found is None or found == exclude:
            continue
        return NetnsEntry(path=named_netns_path(found, run_dir) or ns_path, netns_id=str(found))
    return None
