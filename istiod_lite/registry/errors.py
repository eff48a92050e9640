"""What the registry reports about resources it cannot take as written: problems and errors.

A ``Problem`` is a value, not an exception: ``compute`` returns every problem it found next to the
snapshot, so one bad resource is reported (and counted and logged by the caller, which owns I/O) while
every other resource still converts. Messages say what is wrong, what the registry did instead, and how
to fix it, in the style of Istio's policy status messages.

The exceptions are raised inside one resource's conversion and caught at that resource's boundary in
``index.compute``; they never escape ``compute``. Nothing here logs or touches the store.
"""

from __future__ import annotations

import enum

import msgspec

from meshcore.store.resource import ResourceRef


class Severity(enum.StrEnum):
    """How much a problem matters to the operator."""

    INFO = "info"  # nothing is wrong; the resource is simply not for ztunnel (e.g. a waypoint policy)
    WARNING = "warning"  # converted, but enforced differently than written (e.g. L7 rules dropped)
    ERROR = "error"  # malformed input; skipped or replaced by a fail-closed stand-in


class Reason(enum.StrEnum):
    """Machine-readable cause; ``UnsupportedValue`` is the reason Istio writes in policy status."""

    UNSUPPORTED_VALUE = "UnsupportedValue"
    NOT_FOR_ZTUNNEL = "NotForZtunnel"
    UNRESOLVED_TARGET_PORT = "UnresolvedTargetPort"
    INVALID_VALUE = "InvalidValue"
    INVALID_RESOURCE = "InvalidResource"
    # Waypoints (registry.waypoints): a Gateway that is no usable waypoint, and labels naming one.
    INVALID_WAYPOINT = "InvalidWaypoint"
    WAYPOINT_CONFLICT = "WaypointConflict"
    WAYPOINT_NOT_READY = "WaypointNotReady"
    WAYPOINT_NOT_FOUND = "WaypointNotFound"
    WAYPOINT_NOT_ALLOWED = "WaypointNotAllowed"


class Problem(msgspec.Struct, frozen=True):
    """One finding about one resource, suitable for a status condition or a log line."""

    ref: ResourceRef
    severity: Severity
    reason: Reason
    message: str

    def __str__(self) -> str:
        return f"{self.ref}: {self.message}"


class RegistryError(ValueError):
    """Base class: a resource the registry cannot convert as written. Carries the resource's ref."""

    def __init__(self, ref: ResourceRef, message: str) -> None:
        super().__init__(message)
        self.ref = ref
        self.message = message

    def to_problem(self) -> Problem:
        return Problem(self.ref, Severity.ERROR, Reason.INVALID_RESOURCE, self.message)


class InvalidPod(RegistryError):
    """A Pod whose IP, service account or spec cannot be used; no Workload is built for it."""


class InvalidService(RegistryError):
    """A Service whose cluster IP or ports cannot be used; no Service is built for it."""


class InvalidPolicy(RegistryError):
    """An AuthorizationPolicy part that cannot be read; replaced by its fail-closed stand-in."""
