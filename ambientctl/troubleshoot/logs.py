"""Logs across the local cluster's components and nodes, and live access records (``logs``, ``tap``).

Components log structlog's console lines (``<iso time>Z [<level>] <event>  key=value ...``) to
``<cluster dir>/logs/<name>.log``. ``parse_line`` (pure) reads one into a ``LogRecord`` (time, level,
event, fields; a line it cannot read keeps its text and no time, and is never dropped by the parser);
the filters are pure predicates: ``since``, ``denied`` (refused connections and requests: ztunnel's
"connection complete" with an ``error`` and "connection failed", the waypoint's requests answered 403 and
its refused connections), ``concerns`` (a pod or a service named as source, destination or subject).
``LogSource`` names the files of a component (``ztunnel``, ``node-agent`` per node, ``istiod``,
``waypoint`` pods found in the store) and ``read``/``follow`` merge their lines by time. ``follow``
polls the files and is bounded by the caller (a deadline or Ctrl-C); it never blocks a test.
"""

from __future__ import annotations

import ast
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

COMPONENTS = ("ztunnel", "waypoint", "istiod", "node-agent")
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
ACCESS_SCOPE = "access"
FOLLOW_POLL_S = 0.2

_HEAD = re.compile(r"^(?P<time>\d{4}-\d\d-\d\dT[\d:.]+Z?)\s+\[(?P<level>[a-z]+)\s*\]\s+(?P<rest>.*)$")
# key=value where value is a quoted Python literal or a run of non-blanks.
_FIELD = re.compile(r"""(?P<key>[A-Za-z_][\w.]*)=(?P<value>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\S*)""")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True, slots=True)
class LogRecord:
    source: str  # the component the line came from (``ztunnel-node-1``, ``waypoint shop/waypoint-x``)
    raw: str
    time: datetime | None = None
    level: str = ""
    event: str = ""
    fields: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_access(self) -> bool:
        return self.fields.get("scope") == ACCESS_SCOPE


def parse_duration(text: str) -> timedelta:
    """``30s``, ``10m``, ``1.5h``, ``2d``, ``500ms`` -> timedelta; anything else is a ValueError."""
    m = _DURATION.match(text.strip())
    if m is None:
        raise ValueError(f"--since {text!r}: write a duration such as 30s, 10m, 2h or 1d")
    return timedelta(seconds=float(m.group(1)) * _UNIT_S[m.group(2)])


def _value(text: str) -> str:
    if text[:1] in ("'", '"'):
        try:
            return str(ast.literal_eval(text))
        except (ValueError, SyntaxError):
            return text.strip("'\"")
    return text


def parse_line(line: str, source: str = "") -> LogRecord:
    """One console log line; a line in another shape keeps its text with no time (shown, not parsed)."""
    text = line.rstrip("\n")
    m = _HEAD.match(text)
    if m is None:
        return LogRecord(source, text)
    try:
        when: datetime | None = datetime.fromisoformat(m.group("time").replace("Z", "+00:00"))
    except ValueError:
        when = None
    if when is not None and when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    rest = m.group("rest")
    first = _FIELD.search(rest)
    # The event is what precedes the first key=value (an event may itself contain spaces).
    event = (rest[: first.start()] if first else rest).strip()
    fields = {f.group("key"): _value(f.group("value")) for f in _FIELD.finditer(rest, first.start() if first else len(rest))}
    return LogRecord(source, text, when, m.group("level"), event, fields)


# --- filters (pure) -------------------------------------------------------------------------------------


def since(record: LogRecord, cutoff: datetime) -> bool:
    """Records at or after ``cutoff``; a line without time follows the line before it (kept here)."""
    return record.time is None or record.time >= cutoff


def denied(record: LogRecord) -> bool:
    """A refused connection or request, as the access logs report them."""
    if not record.is_access:
        return False
    if record.event in ("connection failed", "connection refused"):
        return True
    if record.event == "connection complete" and "error" in record.fields:
        return True
    if record.event == "request complete":
        code = record.fields.get("response_code", "")
        return code == "403" or record.fields.get("detail", "").startswith("rbac_access_denied")
    return False


def concerns(record: LogRecord, *, pod: tuple[str, str] | None = None, service: str | None = None) -> bool:
    """Whether the line is about pod ``(namespace, name)`` or service (a hostname or its prefix)."""
    f = record.fields
    if pod is not None:
        ns, name = pod
        if f.get("pod") == f"{ns}/{name}" or f.get("name") == f"{ns}/{name}":
            return True
        for side in ("src", "dst"):
            if f.get(f"{side}.workload") == name and f.get(f"{side}.namespace", ns) == ns:
                return True
        if f.get("workload", "").endswith(f"/{ns}/{name}"):
            return True
    if service is not None:
        host = f.get("dst.service", "")
        if host and (host == service or host.startswith(service + ".")):
            return True
    return False


# --- sources --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogFile:
    source: str
    path: Path


def component_files(
    log_dir: Path, component: str, nodes: Sequence[str], waypoint_pods: Sequence[tuple[str, str]],
    *, node: str | None = None, pod: tuple[str, str] | None = None,
) -> list[LogFile]:  # fmt: skip
    """The log files of ``component`` (``COMPONENTS``), narrowed to one node or one waypoint pod."""
    if component not in COMPONENTS:
        raise ValueError(f"--component {component!r}: use one of {', '.join(COMPONENTS)}")
    if node is not None and node not in nodes:
        raise ValueError(f"--node {node!r} is not a node of the local cluster (nodes: {', '.join(nodes)})")
    if component == "istiod":
        names = [("istiod", "istiod")]
    elif component == "waypoint":
        pods = [p for p in waypoint_pods if pod is None or p == pod]
        if pod is not None and not pods:
            raise ValueError(f"{pod[0]}/{pod[1]} is not a waypoint pod (waypoints: "
                             f"{', '.join(f'{n}/{p}' for n, p in waypoint_pods) or 'none'})")  # fmt: skip
        names = [(f"{ns}-{name}", f"waypoint {ns}/{name}") for ns, name in pods]
    else:
        names = [(f"{component}-{n}", f"{component}-{n}") for n in nodes if node is None or n == node]
    return [LogFile(label, log_dir / f"{stem}.log") for stem, label in names]


def read(files: Iterable[LogFile], keep: Callable[[LogRecord], bool]) -> list[LogRecord]:
    """Every kept line of ``files``, merged by time (stable: lines without time stay after their file's
    previous line)."""
    out: list[tuple[datetime, int, LogRecord]] = []
    seq = 0
    for f in files:
        last = datetime.min.replace(tzinfo=UTC)
        try:
            with f.path.open(errors="replace") as fh:
                for line in fh:
                    record = parse_line(line, f.source)
                    last = record.time or last
                    seq += 1
                    if keep(record):
                        out.append((last, seq, record))
        except FileNotFoundError:
            continue
    return [r for _, _, r in sorted(out, key=lambda t: (t[0], t[1]))]


def follow(
    files: Sequence[LogFile], keep: Callable[[LogRecord], bool], *, from_end: bool = True,
    until: Callable[[], bool] = lambda: False, poll: float = FOLLOW_POLL_S,
) -> Iterator[LogRecord]:  # fmt: skip
    """New kept lines of ``files`` as they are written, until ``until()`` is true (checked every poll).

    The files' current ends are taken when this is called (not at the first ``next``), so a caller may
    announce it is following and everything written from then on is seen."""
    offsets: dict[Path, int] = {}
    for f in files:
        try:
            offsets[f.path] = f.path.stat().st_size if from_end else 0
        except FileNotFoundError:
            offsets[f.path] = 0
    return _follow(files, keep, offsets, until, poll)


def _follow(
    files: Sequence[LogFile], keep: Callable[[LogRecord], bool], offsets: dict[Path, int],
    until: Callable[[], bool], poll: float,
) -> Iterator[LogRecord]:  # fmt: skip
    partial: dict[Path, str] = {}
    while not until():
        got = False
        for f in files:
            try:
                with f.path.open("rb") as fh:
                    size = fh.seek(0, 2)
                    if size < offsets[f.path]:  # truncated or replaced: start over
                        offsets[f.path] = 0
                    fh.seek(offsets[f.path])
                    chunk = fh.read()
            except FileNotFoundError:
                continue
            if not chunk:
                continue
            offsets[f.path] += len(chunk)
            text = partial.pop(f.path, "") + chunk.decode("utf-8", "replace")
            lines = text.split("\n")
            if lines[-1]:
                partial[f.path] = lines[-1]
            for line in lines[:-1]:
                record = parse_line(line, f.source)
                if keep(record):
                    got = True
                    yield record
        if not got:
            time.sleep(poll)


# --- tap: one access record per line ----------------------------------------------------------------------


TAP_HEADERS = ["TIME", "REPORTER", "SOURCE", "DESTINATION", "IDENTITY", "STATUS", "BYTES", "DURATION"]


def tap_row(r: LogRecord) -> list[str]:
    f = r.fields
    src = f.get("src.workload") or f.get("src.addr") or f.get("src", "-")
    if f.get("src.namespace"):
        src = f"{f['src.namespace']}/{src}"
    dst = f.get("dst.service") or f.get("dst.workload") or f.get("dst.addr") or f.get("dst", "-")
    if r.event == "request complete":
        dst = f"{f.get('method', '')} {f.get('authority', dst)}{f.get('path', '')}".strip()
        status = f.get("response_code", "-") + (f" {f['response_flags']}" if f.get("response_flags", "-") != "-" else "")
    elif "error" in f:
        status = f"denied: {f['error']}" if "policy" in f["error"] else f"error: {f['error']}"
    else:
        status = "ok"
    sent, recv = f.get("bytes_sent", "-"), f.get("bytes_recv", "-")
    return [
        r.time.strftime("%H:%M:%S.%f")[:-3] if r.time else "-",
        r.source,
        src,
        dst,
        f.get("src.identity", "-"),
        status,
        f"{sent}/{recv}",
        f.get("duration", "-"),
    ]


def record_json(r: LogRecord) -> dict[str, Any]:
    return {
        "source": r.source,
        "time": r.time.isoformat() if r.time else None,
        "level": r.level,
        "event": r.event,
        "fields": dict(r.fields),
    }
