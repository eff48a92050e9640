"""After ``apply``: istiod's warnings about the AuthorizationPolicies just applied, as kubectl prints an
admission webhook's warnings.

istiod_lite writes ``status.conditions`` on every AuthorizationPolicy (``ZtunnelAccepted`` for a policy
ztunnel enforces, ``WaypointAccepted`` for one with targetRefs), each with the ``observedGeneration`` it
was computed for. When istiod-lite runs (the local cluster's ``istiod`` component), ``apply`` polls the
store with a deadline (``WAIT_SECONDS``) until each applied policy's conditions observe its generation,
then prints every condition that is False or not ``Accepted`` as
``Warning: authorizationpolicy/<name>: <message>`` on stderr. The exit code never changes: the object was
stored. A policy istiod has not reached by the deadline gets one note; when istiod-lite is not running (or
the store is a Kubernetes cluster) nothing extra is said. Reads only the store; no sleep without a deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

import typer

from ambientctl.cluster import Cluster
from ambientctl.cluster.mesh import ISTIOD
from meshcore.store import Resource, ResourceRef, Store

from .common import cli_state, note

WAIT_SECONDS = 3.0
POLL_SECONDS = 0.05
POLICY = "AuthorizationPolicy"
# The condition types istiod_lite owns on an AuthorizationPolicy (istiod_lite.registry.policy_status).
CONDITION_TYPES = frozenset({"ZtunnelAccepted", "WaypointAccepted"})


def policy_warnings(policy: Resource) -> list[str] | None:
    """The messages of the policy's istiod conditions that are False or not ``Accepted``; None while
    istiod has not written conditions for the policy's current generation."""
    raw = policy.status.get("conditions")
    ours = [c for c in raw if isinstance(c, dict) and c.get("type") in CONDITION_TYPES] if isinstance(raw, list) else []
    if not ours or any(c.get("observedGeneration") != policy.generation for c in ours):
        return None
    return [
        str(c.get("message") or c.get("reason") or "not accepted")
        for c in ours
        if c.get("status") != "True" or c.get("reason") != "Accepted"
    ]


def wait_for_policy_status(
    store: Store,
    refs: Sequence[ResourceRef],
    *,
    timeout: float = WAIT_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[dict[ResourceRef, list[str]], list[ResourceRef]]:
    """Poll until every policy's status observes its generation, or the deadline passes.

    Returns (warnings of each policy istiod reached, in ``refs`` order; the refs it did not reach). A
    policy deleted meanwhile is in neither.
    """
    deadline = clock() + timeout
    pending = list(dict.fromkeys(refs))
    done: dict[ResourceRef, list[str]] = {}
    while True:
        waiting: list[ResourceRef] = []
        for ref in pending:
            policy = store.get(ref)
            if policy is None:
                continue
            found = policy_warnings(policy)
            if found is None:
                waiting.append(ref)
            else:
                done[ref] = found
        pending = waiting
        if not pending or clock() >= deadline:
            break
        sleep(min(POLL_SECONDS, max(0.0, deadline - clock())))
    return {ref: done[ref] for ref in refs if ref in done}, pending


def report_policy_status(
    store: Store,
    applied: Iterable[Resource],
    *,
    timeout: float = WAIT_SECONDS,
    emit: Callable[[str], None] = note,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Wait for istiod's status on the applied AuthorizationPolicies and print its warnings (call only
    when istiod-lite is running)."""
    refs = [r.ref for r in applied if r.kind == POLICY]
    if not refs:
        return
    done, pending = wait_for_policy_status(store, refs, timeout=timeout, clock=clock, sleep=sleep)
    for ref, messages in done.items():
        for message in messages:
            emit(f"Warning: authorizationpolicy/{ref.name}: {message}")
    if pending:
        names = ", ".join(f"authorizationpolicy/{ref.name}" for ref in pending)
        emit(
            f"note: istiod-lite has not written the status of {names} within {timeout:g}s; "
            "`ambientctl get ap -o yaml` shows its conditions once written"
        )


def istiod_running(ctx: typer.Context) -> bool:
    """Whether the local cluster's istiod-lite process runs (never on a Kubernetes store)."""
    state = cli_state(ctx)
    if state.on_kubernetes:
        return False
    try:
        return Cluster(state.state_dir()).find_component(ISTIOD) is not None
    except Exception:  # an unreadable cluster record: no istiod to wait for
        return False


def report_after_apply(ctx: typer.Context, applied: Iterable[Resource]) -> None:
    """``apply``'s last step: istiod's warnings for the AuthorizationPolicies among ``applied``."""
    policies = [r for r in applied if r.kind == POLICY]
    if policies and istiod_running(ctx):
        report_policy_status(cli_state(ctx).store(), policies)
