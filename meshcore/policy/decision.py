"""``Decision``: the value an authorization check returns, and why.

A decision carries everything the caller needs to act and to explain: allowed or not, the reason
(``DenyReason``, ztunnel's ``AuthorizationRejectionError``), the ``namespace/name`` of the policy that
decided, the access-log error string exactly as ztunnel writes it, and the dry-run policies that
matched (they never change the outcome, only the log) and, for L7, the AUDIT policies that matched.
Pure values; the I/O shell logs and counts.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from meshcore.model.authorization import Action

# ztunnel's proxy::Error::AuthorizationPolicyRejection prefixes the rejection reason with this.
POLICY_REJECTION_PREFIX = "connection closed due to policy rejection: "
# ztunnel's proxy::Error::AuthorizationPolicyLateRejection: a live connection closed because a policy
# change now denies it.
POLICY_CHANGE_MESSAGE = "connection closed due to policy change"


class DenyReason(enum.Enum):
    """Why a connection was refused. Values are ztunnel's rejection texts (without the prefix)."""

    # A non-dry-run DENY policy matched.
    EXPLICITLY_DENIED = "explicitly denied by"
    # ALLOW policies select the workload but none matched.
    NOT_ALLOWED = "allow policies exist, but none allowed"
    # The destination is not a workload we know (set by the caller, not by evaluate_l4).
    NO_WORKLOAD = "workload not found"
    # The destination address belongs to another workload than expected (set by the caller).
    WORKLOAD_MISMATCH = "workload mismatch"
    # A policy the workload names has not arrived yet: refused until it does (fail closed: it may be a
    # DENY). Set by the caller, not by evaluate_l4.
    POLICY_PENDING = "a policy selecting the workload has not arrived from the control plane yet"


@dataclass(frozen=True, slots=True)
class DryRunHit:
    """A dry-run policy that matched: logged, never enforced."""

    policy: str  # namespace/name
    action: Action


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of an authorization check."""

    # True when the connection may proceed.
    allowed: bool
    # Why it was denied; None when allowed.
    reason: DenyReason | None = None
    # ``namespace/name`` of the policy that decided: the matching DENY, or the first matching ALLOW.
    # None when no single policy decided (no ALLOW policies at all, or none of them matched).
    policy: str | None = None
    # The access-log ``error`` string (empty when allowed).
    message: str = ""
    # Dry-run policies that matched this connection, in evaluation order.
    dry_run_hits: tuple[DryRunHit, ...] = ()
    # ``namespace/name`` of the AUDIT policies that matched (L7 only); they never change the outcome.
    audited_by: tuple[str, ...] = ()

    @classmethod
    def allow(
        cls,
        policy: str | None = None,
        dry_run_hits: tuple[DryRunHit, ...] = (),
        audited_by: tuple[str, ...] = (),
    ) -> Decision:
        return cls(allowed=True, policy=policy, dry_run_hits=dry_run_hits, audited_by=audited_by)

    @classmethod
    def deny(
        cls,
        reason: DenyReason,
        policy: str | None = None,
        dry_run_hits: tuple[DryRunHit, ...] = (),
        audited_by: tuple[str, ...] = (),
    ) -> Decision:
        """A denial whose message is ztunnel's access-log error for ``reason``."""
        if reason is DenyReason.EXPLICITLY_DENIED:
            if policy is None:
                raise ValueError("an explicit denial must name the DENY policy that matched")
            text = f"{reason.value}: {policy}"
        else:
            text = reason.value
        return cls(
            allowed=False,
            reason=reason,
            policy=policy,
            message=POLICY_REJECTION_PREFIX + text,
            dry_run_hits=dry_run_hits,
            audited_by=audited_by,
        )
