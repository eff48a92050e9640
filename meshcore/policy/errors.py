"""Errors of the policy package: bad policy data and bad connection facts.

Both are *input* errors, raised where the input is built or validated (xDS apply time for policies,
connection accept time for facts), never from ``evaluate_l4`` itself: evaluation fails closed instead
of raising, so one bad policy cannot take down a listener.
"""

from __future__ import annotations


class PolicyError(ValueError):
    """Base class of every error raised by ``meshcore.policy``."""


class InvalidPolicyError(PolicyError):
    """An Authorization that cannot be enforced as written (e.g. a malformed CIDR).

    ``policy`` is the ``namespace/name`` key, ``field`` the offending field path.
    """

    def __init__(self, policy: str, field: str, problem: str) -> None:
        self.policy = policy
        self.field = field
        self.problem = problem
        super().__init__(
            f"authorization policy {policy}: {field}: {problem}; fix the AuthorizationPolicy "
            "(until then it fails closed: an ALLOW never matches, a DENY matches every connection)"
        )


class InvalidConnFactsError(PolicyError):
    """Connection facts that do not describe a TCP connection (bad IP literal or port)."""

    def __init__(self, field: str, value: object, problem: str) -> None:
        self.field = field
        self.value = value
        super().__init__(f"connection {field}={value!r}: {problem}")
