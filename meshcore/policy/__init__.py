"""Pure authorization evaluation: connection facts and policies in, a ``Decision`` out.

``evaluate_l4`` implements Istio's L4 AuthorizationPolicy semantics as ztunnel enforces them at the
destination; ``evaluate_l7`` the HTTP semantics a waypoint enforces per request (``RequestFacts``). Nothing here does I/O or reads a clock; callers log and count what the decision says.
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
from meshcore.policy.l7 import (
    CompiledL7Policy,
    L7PolicyCache,
    compile_l7_policy,
    evaluate_l7,
    select_l7_policies,
)
from meshcore.policy.request import InvalidRequestFactsError, RequestFacts

__all__ = [
    "POLICY_CHANGE_MESSAGE",
    "POLICY_REJECTION_PREFIX",
    "CompiledL7Policy",
    "CompiledPolicy",
    "ConnFacts",
    "Decision",
    "DenyReason",
    "DryRunHit",
    "InvalidConnFactsError",
    "InvalidPolicyError",
    "InvalidRequestFactsError",
    "L7PolicyCache",
    "PolicyCache",
    "PolicyError",
    "RequestFacts",
    "compile_l7_policy",
    "compile_policy",
    "evaluate_l4",
    "evaluate_l7",
    "select_l7_policies",
]
