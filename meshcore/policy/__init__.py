"""Pure authorization evaluation: connection facts and policies in, a ``Decision`` out.

``evaluate_l4`` implements Istio's L4 AuthorizationPolicy semantics as ztunnel enforces them at the
destination. Nothing here does I/O or reads a clock; callers log and count what the decision says.
"""

from meshcore.policy.decision import (
    POLICY_CHANGE_MESSAGE,
    POLICY_REJECTION_PREFIX,
    Decision,
    DenyReason,
    DryRunHit,
)
from meshcore.policy.errors import InvalidConnFactsError, InvalidPolicyError, PolicyError
from meshcore.policy.facts import ConnFacts
from meshcore.policy.l4 import CompiledPolicy, PolicyCache, compile_policy, evaluate_l4

__all__ = [
    "POLICY_CHANGE_MESSAGE",
    "POLICY_REJECTION_PREFIX",
    "CompiledPolicy",
    "ConnFacts",
    "Decision",
    "DenyReason",
    "DryRunHit",
    "InvalidConnFactsError",
    "InvalidPolicyError",
    "PolicyCache",
    "PolicyError",
    "compile_policy",
    "evaluate_l4",
]
