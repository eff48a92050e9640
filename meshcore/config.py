"""Settings parsing shared by every binary: typed errors that name the variable to fix, and parsers for
the value shapes our environment variables and flags take (durations, listen addresses, gRPC targets,
booleans, ports, log levels). Pure: no I/O; each parser raises ``ConfigError`` with an actionable message.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from meshcore.logs import LEVELS

_DURATION_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


class ConfigError(ValueError):
    """A setting that cannot be used; ``variable`` names the environment variable (or flag) to fix."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable
        self.detail = message


@dataclass(frozen=True, slots=True)
class HostPort:
    """A listen address; ``port`` 0 asks the kernel for a free port (tests)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_duration(value: str, variable: str) -> float:
    """Seconds from ``5``, ``5s``, ``500ms``, ``10m``, ``24h`` or ``1d``."""
    match = _DURATION_RE.match(value)
    if match is None:
        raise ConfigError(variable, f"{value!r} is not a duration; write e.g. 5s, 500ms, 10m or 24h")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_host_port(value: str, variable: str, *, default_host: str) -> HostPort:
    """``host:port``, ``[v6]:port`` or ``:port`` (``default_host``); the host must be an IP literal."""
    text = value.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(variable, f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:15000)")
    host = host or default_host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(variable, f"host {host!r} is not an IP address; listeners bind IP literals") from None
    return HostPort(host, int(port))


def parse_grpc_target(value: str, variable: str) -> str:
    """A gRPC ``host:port`` from ``host:port`` or ``https://host:port`` (Istio writes the scheme)."""
    text = value.strip()
    if text.startswith("http://"):
        raise ConfigError(
            variable, f"{value!r} is plaintext; the control plane is reached over TLS (use https:// or host:port)"
        )
    text = text.removeprefix("https://").rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(variable, f"{value!r} is not HOST:PORT (e.g. istiod.istio-system.svc:15012)")
    return text


def parse_bool(value: str, variable: str) -> bool:
    """``true``/``1``/``yes``/``on`` or ``false``/``0``/``no``/``off``/empty, any case."""
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ConfigError(variable, f"{value!r} is not a boolean; use true or false")


def parse_port(value: str, variable: str, *, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if not value.strip().isdigit() or not low <= int(value) <= 65535:
        raise ConfigError(variable, f"{value!r} is not a TCP port ({low}..65535)")
    return int(value)


def parse_positive_int(value: str, variable: str) -> int:
    if not value.strip().isdigit() or int(value) < 1:
        raise ConfigError(variable, f"{value!r} is not a positive integer")
    return int(value)


def parse_log_level(value: str, variable: str) -> str:
    level = value.strip().lower()
    if level not in LEVELS:
        raise ConfigError(variable, f"{level!r} is not one of {', '.join(LEVELS)}")
    return level


def parse_log_format(value: str, variable: str) -> str:
    fmt = value.strip().lower()
    if fmt not in ("console", "json"):
        raise ConfigError(variable, f"{fmt!r} is not console or json")
    return fmt


def parse_admin_address(
    value: str,
    variable: str,
    *,
    allow_remote: bool,
    allow_variable: str,
    exposes: str = "can change log levels and stop the proxy",
) -> HostPort:
    """An admin listen address: loopback only unless ``allow_remote`` (the admin port is unauthenticated;
    ``exposes`` says what it gives away, e.g. log levels and stopping the process, so exposing it must be an
    explicit choice)."""
    addr = parse_host_port(value, variable, default_host="127.0.0.1")
    if not allow_remote and not ipaddress.ip_address(addr.host).is_loopback:
        raise ConfigError(
            variable,
            f"{addr} is not a loopback address; the admin port is unauthenticated and {exposes}, "
            f"so it binds loopback only unless {allow_variable}=true",
        )
    return addr
