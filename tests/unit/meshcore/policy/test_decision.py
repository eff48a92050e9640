"""Decision values carry ztunnel's access-log error strings."""

from __future__ import annotations

import pytest

from meshcore.policy import POLICY_CHANGE_MESSAGE, Decision, DenyReason


@pytest.mark.parametrize(
    ("reason", "policy", "message"),
    [
        (
            DenyReason.EXPLICITLY_DENIED,
            "ns/deny-all",
            "connection closed due to policy rejection: explicitly denied by: ns/deny-all",
        ),
        (
            DenyReason.NOT_ALLOWED,
            None,
            "connection closed due to policy rejection: allow policies exist, but none allowed",
        ),
        (DenyReason.NO_WORKLOAD, None, "connection closed due to policy rejection: workload not found"),
        (DenyReason.WORKLOAD_MISMATCH, None, "connection closed due to policy rejection: workload mismatch"),
    ],
    ids=[
        "an explicit denial names the policy",
        "a denial by allow policies says none allowed",
        "an unknown destination workload says workload not found",
        "a mismatched destination says workload mismatch",
    ],
)
def test_deny_messages_match_ztunnel(reason: DenyReason, policy: str | None, message: str) -> None:
    decision = Decision.deny(reason, policy)
    assert not decision.allowed
    assert decision.reason is reason
    assert decision.message == message


def test_an_allow_has_no_reason_and_no_message() -> None:
    decision = Decision.allow("ns/allow")
    assert decision.allowed and decision.reason is None and decision.message == ""
    assert decision.policy == "ns/allow"


def test_an_explicit_denial_without_a_policy_is_a_bug() -> None:
    with pytest.raises(ValueError, match="must name the DENY policy"):
        Decision.deny(DenyReason.EXPLICITLY_DENIED)


def test_late_rejection_message_matches_ztunnel() -> None:
    assert POLICY_CHANGE_MESSAGE == "connection closed due to policy change"
