"""AuthorizationPolicy -> the ``status.conditions`` istiod writes on it in ambient mode (pure).

Two condition types, Istio's names and reasons, our wording:

- ``ZtunnelAccepted``, on a policy ztunnel enforces (a selector, namespace or root-namespace policy; no
  targetRefs). True/``Accepted``: enforced as written. True/``UnsupportedValue`` or True/``InvalidValue``:
  enforced in a changed form that is never more permissive (HTTP fields: an ALLOW rule omitted, a DENY
  rule kept with its L4 part; an unreadable rule omitted or made deny-all; an unreadable selector widened
  to the namespace); the message says what and how to fix it. False: ztunnel enforces nothing of it
  (CUSTOM, AUDIT or an unknown action; a DENY whose every rule lost its HTTP part and so matches nothing).
- ``WaypointAccepted``, on a policy with targetRefs. Per target: ``Accepted`` when a waypoint takes it
  (a waypoint Gateway, or a Service bound to a waypoint), ``TargetNotFound`` (no such waypoint or Service),
  ``AncestorNotBound`` (a Service without a waypoint: the message says which label binds one). One target:
  its result; several, or refused targetRefs beside them: True when any is bound (``Accepted``, or
  ``PartiallyInvalid`` naming the others), else False/``Invalid``. Rule parts the waypoint cannot enforce
  as written (CUSTOM, JWT fields...) turn a bound ``Accepted`` into ``UnsupportedValue``/``InvalidValue``.

Inputs are what ``policies.convert_policy`` and ``l7policies.compile_l7_policy`` decided (``PolicyFacts``)
and the registry's waypoints, Services and waypoint bindings. ``merge_status`` makes the status to write:
each condition carries ``observedGeneration`` and keeps its ``lastTransitionTime`` while its status is
unchanged (Kubernetes' rule), so recomputing after our own write gives ``None`` (nothing to write): a
status write never causes another. Conditions of other types are left as they are. No I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from istiod_lite.registry.errors import Problem, Reason, Severity
from istiod_lite.registry.l7policies import DEFAULT_CLUSTER_DOMAIN, compile_l7_policy
from istiod_lite.registry.policies import convert_policy, rule_can_match
from istiod_lite.registry.waypoints import Binding, Waypoint
from meshcore.model import Action, Authorization, Service
from meshcore.model.l7 import L7Authorization, L7Target
from meshcore.store.resource import Resource

ZTUNNEL_ACCEPTED = "ZtunnelAccepted"
WAYPOINT_ACCEPTED = "WaypointAccepted"
OWNED_TYPES = frozenset({ZTUNNEL_ACCEPTED, WAYPOINT_ACCEPTED})

# Reasons (Istio's where it has one: pilot's ambient policy status).
ACCEPTED = "Accepted"
UNSUPPORTED_VALUE = Reason.UNSUPPORTED_VALUE.value
INVALID_VALUE = Reason.INVALID_VALUE.value
TARGET_NOT_FOUND = "TargetNotFound"
ANCESTOR_NOT_BOUND = "AncestorNotBound"
INVALID = "Invalid"
PARTIALLY_INVALID = "PartiallyInvalid"

MAX_MESSAGE = 2048  # Kubernetes allows 32768; a status line should stay readable
_TARGET_FIELD = "spec.targetRef"  # how l7policies starts the message of a refused target (targetRef/targetRefs[i])


@dataclass(frozen=True, slots=True)
class PolicyCondition:
    """One condition before it is written (no generation, no time)."""

    type: str  # ZTUNNEL_ACCEPTED or WAYPOINT_ACCEPTED
    status: bool  # True: a proxy enforces the policy (perhaps changed, see reason); False: none does
    reason: str  # ACCEPTED when enforced as written
    message: str

    @property
    def warning(self) -> bool:
        """Whether the user should hear about it: not enforced, or not as written."""
        return not self.status or self.reason != ACCEPTED


@dataclass(frozen=True, slots=True)
class PolicyFacts:
    """What the registry's converters decided about one AuthorizationPolicy."""

    action: str  # spec.action as written ("ALLOW" when absent)
    for_ztunnel: bool  # convert_policy took it (no targetRefs)
    ztunnel: Authorization | None  # what ztunnel enforces (None: nothing)
    ztunnel_problems: tuple[Problem, ...]
    for_waypoint: bool  # compile_l7_policy took it (it has targetRefs)
    waypoint: L7Authorization | None  # what waypoints enforce (None: no usable target)
    waypoint_problems: tuple[Problem, ...]


def policy_facts(
    resource: Resource, *, root_namespace: str, cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
) -> PolicyFacts:
    """Run both converters on one AuthorizationPolicy (pure, never raises for bad input)."""
    converted, problems = convert_policy(resource, root_namespace=root_namespace)
    compiled = compile_l7_policy(resource, cluster_domain=cluster_domain)
    action = resource.spec.get("action") if isinstance(resource.spec, dict) else None
    return PolicyFacts(
        action=action if isinstance(action, str) and action else "ALLOW",
        for_ztunnel=not any(p.reason == Reason.NOT_FOR_ZTUNNEL for p in problems),
        ztunnel=converted.authorization if converted is not None else None,
        ztunnel_problems=tuple(problems),
        for_waypoint=compiled.authorization is not None or bool(compiled.problems),
        waypoint=compiled.authorization,
        waypoint_problems=tuple(compiled.problems),
    )


def policy_conditions(
    facts: PolicyFacts,
    *,
    waypoints: Mapping[str, Waypoint],
    services: Mapping[str, Service],
    bindings: Mapping[str, Binding],
) -> list[PolicyCondition]:
    """The conditions of one policy: ``waypoints`` by ``ns/name``, ``services`` and ``bindings`` by
    service key (``ns/hostname``), as in the registry snapshot."""
    out: list[PolicyCondition] = []
    if facts.for_ztunnel:
        out.append(ztunnel_condition(facts))
    if facts.for_waypoint:
        out.append(waypoint_condition(facts, waypoints=waypoints, services=services, bindings=bindings))
    return out


def ztunnel_condition(facts: PolicyFacts) -> PolicyCondition:
    problems = [p for p in facts.ztunnel_problems if p.severity != Severity.INFO]
    said = _join(p.message for p in problems)
    if facts.ztunnel is None:
        reason = problems[0].reason.value if problems else UNSUPPORTED_VALUE
        if facts.action == "CUSTOM":
            fix = "ext-authz providers are not supported here: use an ALLOW or DENY policy"
        elif facts.action == "AUDIT":
            fix = "bind it to a waypoint with targetRefs to audit requests"
        else:
            fix = "fix spec.action"
        return PolicyCondition(ZTUNNEL_ACCEPTED, False, reason, _cap(f"{said}, so ztunnel does not enforce this policy: {fix}"))
    if not problems:
        return PolicyCondition(ZTUNNEL_ACCEPTED, True, ACCEPTED, "enforced by ztunnel as written")
    errors = [p for p in problems if p.severity == Severity.ERROR]
    reason = (errors[0] if errors else problems[0]).reason.value
    no_effect = (
        facts.ztunnel.action == Action.DENY
        and any(p.reason == Reason.UNSUPPORTED_VALUE for p in problems)
        and not any(rule_can_match(r) for r in facts.ztunnel.rules)
    )
    return PolicyCondition(ZTUNNEL_ACCEPTED, not no_effect, reason, _cap(said))


def waypoint_condition(
    facts: PolicyFacts,
    *,
    waypoints: Mapping[str, Waypoint],
    services: Mapping[str, Service],
    bindings: Mapping[str, Binding],
) -> PolicyCondition:
    problems = [p for p in facts.waypoint_problems if p.severity != Severity.INFO]
    refused_targets = [p for p in problems if p.message.startswith(_TARGET_FIELD)]
    rule_problems = [p for p in problems if p not in refused_targets]
    targets = facts.waypoint.targets if facts.waypoint is not None else ()
    results = [_target_result(t, waypoints, services, bindings) for t in targets]

    if not results:  # no usable target: the converter's problems say why
        return PolicyCondition(WAYPOINT_ACCEPTED, False, INVALID, _cap(_join(p.message for p in problems)))
    if len(results) == 1 and not refused_targets:
        status, reason, message = results[0]
    else:
        bound = [m for ok, _, m in results if ok]
        unbound = [m for ok, _, m in results if not ok] + [p.message for p in refused_targets]
        status = bool(bound)
        reason = (ACCEPTED if not unbound else PARTIALLY_INVALID) if status else INVALID
        message = _join([*bound, *(f"not enforced for: {m}" for m in unbound)])
    if rule_problems:
        message = _join([message, *(p.message for p in rule_problems)])
        if status and reason == ACCEPTED:
            errors = [p for p in rule_problems if p.severity == Severity.ERROR]
            reason = (errors[0] if errors else rule_problems[0]).reason.value
    return PolicyCondition(WAYPOINT_ACCEPTED, status, reason, _cap(message))


def _target_result(
    target: L7Target,
    waypoints: Mapping[str, Waypoint],
    services: Mapping[str, Service],
    bindings: Mapping[str, Binding],
) -> tuple[bool, str, str]:
    """(bound, reason, message) for one usable target."""
    if target.kind == "gateway":
        namespace, _, name = target.name.partition("/")
        waypoint = waypoints.get(target.name)
        if waypoint is None:
            return False, TARGET_NOT_FOUND, (
                f"waypoint Gateway {target.name} was not found: create it (ambientctl waypoint apply -n {namespace} "
                f"--name {name}) or name an existing waypoint in targetRefs"
            )
        if waypoint.refused:
            return False, TARGET_NOT_FOUND, f"Gateway {target.name} is not a usable waypoint: {waypoint.refused}"
        if waypoint.not_ready:
            return True, ACCEPTED, f"bound to waypoint {target.name} (not ready yet: {waypoint.not_ready})"
        return True, ACCEPTED, f"bound to waypoint {target.name}"
    name, _, rest = target.name.partition(".")
    namespace = rest.partition(".")[0]
    key = f"{namespace}/{target.name}"
    service = services.get(key)
    if service is None:
        return False, TARGET_NOT_FOUND, f"Service {namespace}/{name} was not found: create it or fix the targetRef"
    binding = bindings.get(key)
    if service.waypoint is None:
        why = f" ({binding.reason})" if binding is not None and binding.reason else ""
        return False, ANCESTOR_NOT_BOUND, (
            f"Service {namespace}/{name} is not bound to a waypoint{why}, so no proxy enforces this policy for it: "
            f"label the Service or namespace {namespace} istio.io/use-waypoint=<waypoint name>"
        )
    via = binding.gateway if binding is not None and binding.gateway else "its waypoint"
    return True, ACCEPTED, f"bound to waypoint {via} through Service {namespace}/{name}"


def merge_status(
    old: Mapping[str, Any], conditions: Sequence[PolicyCondition], *, generation: int, now: str
) -> dict[str, Any] | None:
    """The status to write, or None when ``old`` already is it.

    Our condition types are replaced by ``conditions`` (one of ours no longer computed is dropped), the
    others kept in place. A condition keeps its ``lastTransitionTime`` while its status is unchanged.
    """
    raw = old.get("conditions")
    previous = [c for c in raw if isinstance(c, dict)] if isinstance(raw, list) else []
    by_type = {c.get("type"): c for c in previous}
    merged: list[dict[str, Any]] = [c for c in previous if c.get("type") not in OWNED_TYPES]
    for cond in conditions:
        status = "True" if cond.status else "False"
        before = by_type.get(cond.type)
        since = before.get("lastTransitionTime") if before is not None and before.get("status") == status else None
        merged.append(
            {
                "type": cond.type,
                "status": status,
                "observedGeneration": generation,
                "lastTransitionTime": since if isinstance(since, str) and since else now,
                "reason": cond.reason,
                "message": cond.message,
            }
        )
    new = {k: v for k, v in old.items() if k != "conditions"}
    if merged:
        new["conditions"] = merged
    return None if new == dict(old) else new


def _join(parts: Sequence[str] | Any) -> str:
    return "; ".join(p for p in parts if p)


def _cap(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"


__all__ = [
    "ACCEPTED",
    "ANCESTOR_NOT_BOUND",
    "INVALID",
    "OWNED_TYPES",
    "PARTIALLY_INVALID",
    "TARGET_NOT_FOUND",
    "WAYPOINT_ACCEPTED",
    "ZTUNNEL_ACCEPTED",
    "PolicyCondition",
    "PolicyFacts",
    "merge_status",
    "policy_conditions",
    "policy_facts",
]
