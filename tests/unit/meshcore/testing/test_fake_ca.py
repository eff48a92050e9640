from datetime import UTC, datetime, timedelta

import pytest

from meshcore.identity import SpiffeId
from meshcore.testing.fake_ca import FakeCa
from meshcore.tls import certs

NOW = datetime(2026, 3, 1, tzinfo=UTC)
ALICE = SpiffeId("cluster.local", "default", "alice")


async def test_fetch_returns_a_fresh_bundle_signed_by_the_root_and_counts_calls():
    ca = FakeCa(clock=lambda: NOW)
    first, second = await ca.fetch(ALICE), await ca.fetch(ALICE)
    assert first.identity == second.identity == ALICE
    assert first.key_pem != second.key_pem
    assert first.not_before == NOW
    certs.load_chain(first.chain_pem[0])[0].verify_directly_issued_by(ca.root)
    assert ca.fetch_count == 2
    assert ca.fetches[ALICE] == 2


def test_issue_can_make_expired_and_future_certificates():
    ca = FakeCa(clock=lambda: NOW)
    expired = ca.issue(ALICE, timedelta(hours=1), not_before=NOW - timedelta(hours=2))
    future = ca.issue(ALICE, not_before=NOW + timedelta(days=1))
    assert not expired.is_valid_at(NOW)
    assert not future.is_valid_at(NOW)


def test_foreign_ca_has_another_root_and_trust_domain():
    ca, foreign = FakeCa(), FakeCa.foreign()
    assert foreign.trust_domain != ca.trust_domain
    assert foreign.roots_pem != ca.roots_pem


async def test_fail_next_scripts_errors_then_recovers():
    ca = FakeCa()
    ca.fail_next(ConnectionError("CA down"), times=2)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            await ca.fetch(ALICE)
    assert (await ca.fetch(ALICE)).identity == ALICE
    assert ca.fetch_count == 3
