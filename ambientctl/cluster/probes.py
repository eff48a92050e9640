"""readinessProbe for the local cluster's kubelet: parse a container's probe, run one check.

``parse_probe`` turns a container's ``readinessProbe`` (``spec.containers[i]``) into a ``Probe`` (Kubernetes' defaults:
periodSeconds 10, timeoutSeconds 1, successThreshold 1, failureThreshold 3, initialDelaySeconds 0; a named
port resolved against the container's ports) or raises ``InvalidClusterSpec`` naming the field.
``run_probe`` performs one check: ``httpGet`` (HTTP/1.1 GET, a status 200-399 passes) and ``tcpSocket``
(a connection is accepted) from a socket created inside the pod's network namespace to ``127.0.0.1`` (or
``host``) at the port: on a real node the kubelet probes the pod IP from the node, but inside the pod the
mesh's redirection is not in the way and an app bound to ``0.0.0.0`` answers the same; ``exec`` runs the
command in the pod's netns (exit 0 passes). A probe never raises: any failure is a failed check, logged
with the reason. The check blocks for at most ``timeoutSeconds`` (plus setting up the netns thread).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import msgspec
import structlog

from meshcore.aio.netns import NetnsError, NetnsHandle

from .errors import InvalidClusterSpec

log = structlog.get_logger("ambientctl.cluster.probes")

ProbeKind = Literal["httpGet", "tcpSocket", "exec"]


class Probe(msgspec.Struct, frozen=True, kw_only=True):
    kind: ProbeKind
    port: int = 0
    host: str = "127.0.0.1"
    path: str = "/"
    headers: tuple[tuple[str, str], ...] = ()
    command: tuple[str, ...] = ()
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3


def _number(raw: Mapping[str, Any], key: str, default: int, minimum: int, where: str, source: str) -> int:
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InvalidClusterSpec(source, f"{where}.{key}", f"must be a whole number >= {minimum}")
    return value


def _port(value: object, ports: Sequence[Mapping[str, Any]], where: str, source: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
        return value
    if isinstance(value, str):
        if value.isdigit() and 1 <= int(value) <= 65535:
            return int(value)
        for port in ports:
            if port.get("name") == value and isinstance(port.get("containerPort"), int):
                return int(port["containerPort"])
        raise InvalidClusterSpec(source, f"{where}.port", f"no containerPort is named {value!r}")
    raise InvalidClusterSpec(source, f"{where}.port", "give a port number or a containerPort name")


def parse_probe(container: Mapping[str, Any], source: str, index: int = 0) -> Probe | None:
    """The readinessProbe of container ``index`` of the pod, or None when it has none."""
    raw = container.get("readinessProbe")
    if raw is None:
        return None
    where = f"$.spec.containers[{index}].readinessProbe"
    if not isinstance(raw, Mapping):
        raise InvalidClusterSpec(source, where, "must be a mapping")
    handlers = [k for k in ("httpGet", "tcpSocket", "exec", "grpc") if k in raw]
    if len(handlers) != 1:
        raise InvalidClusterSpec(source, where, "give exactly one of httpGet, tcpSocket, exec")
    kind = handlers[0]
    if kind == "grpc":
        raise InvalidClusterSpec(
            source, f"{where}.grpc", "grpc probes are not supported by the local cluster"
        )
    ports = [p for p in container.get("ports") or () if isinstance(p, Mapping)]
    timing = {
        "initial_delay": float(_number(raw, "initialDelaySeconds", 0, 0, where, source)),
        "period": float(_number(raw, "periodSeconds", 10, 1, where, source)),
        "timeout": float(_number(raw, "timeoutSeconds", 1, 1, where, source)),
        "success_threshold": _number(raw, "successThreshold", 1, 1, where, source),
        "failure_threshold": _number(raw, "failureThreshold", 3, 1, where, source),
    }
    handler = raw[kind]
    if not isinstance(handler, Mapping):
        raise InvalidClusterSpec(source, f"{where}.{kind}", "must be a mapping")
    if kind == "exec":
        command = handler.get("command")
        if not isinstance(command, list) or not command or not all(isinstance(c, str) for c in command):
            raise InvalidClusterSpec(source, f"{where}.exec.command", "must be a non-empty list of strings")
        return Probe(kind="exec", command=tuple(command), **timing)  # type: ignore[arg-type]
    port = _port(handler.get("port"), ports, f"{where}.{kind}", source)
    host = handler.get("host") or "127.0.0.1"
    if kind == "tcpSocket":
        return Probe(kind="tcpSocket", port=port, host=str(host), **timing)  # type: ignore[arg-type]
    if handler.get("scheme", "HTTP") != "HTTP":
        raise InvalidClusterSpec(source, f"{where}.httpGet.scheme", "only HTTP probes are supported")
    headers = tuple(
        (str(h.get("name")), str(h.get("value", "")))
        for h in handler.get("httpHeaders") or ()
        if isinstance(h, Mapping) and h.get("name")
    )
    path = str(handler.get("path") or "/")
    return Probe(kind="httpGet", port=port, host=str(host), path=path, headers=headers, **timing)  # type: ignore[arg-type]


def _tcp_check(host: str, port: int, timeout: float) -> None:
    with socket.create_connection((host, port), timeout=timeout):
        pass


def _http_check(host: str, port: int, path: str, headers: tuple[tuple[str, str], ...], timeout: float) -> int:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}:{port}",
            "User-Agent: kube-probe/1",
            "Connection: close",
        ]
        lines += [f"{k}: {v}" for k, v in headers]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n" not in head and len(head) < 4096:
            chunk = sock.recv(1024)
            if not chunk:
                break
            head += chunk
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise OSError(f"not an HTTP response: {head[:40]!r}")
    return int(status_line[1])


def run_probe(probe: Probe, netns_path: str, exec_in_pod: Callable[[Sequence[str], float], int]) -> bool:
    """One check of ``probe`` against the pod whose netns is ``netns_path``; True when it passed."""
    try:
        if probe.kind == "exec":
            return exec_in_pod(probe.command, probe.timeout) == 0
        with NetnsHandle.open(netns_path) as handle:
            if probe.kind == "tcpSocket":
                handle.run(_tcp_check, probe.host, probe.port, probe.timeout)
                return True
            status = handle.run(_http_check, probe.host, probe.port, probe.path, probe.headers, probe.timeout)
            return 200 <= status < 400
    except (OSError, NetnsError, ValueError) as e:
        log.info("readiness probe failed", kind=probe.kind, port=probe.port, error=str(e))
        return False
