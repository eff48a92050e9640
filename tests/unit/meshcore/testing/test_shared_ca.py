"""FAKE_CA with FAKE_CA_DIR: processes pointed at one directory share a root and trust each other's leaves."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

from meshcore.identity import SpiffeId
from meshcore.testing.shared_ca import CERT_FILE, KEY_FILE, ROOT_DIR, SharedFakeCa
from meshcore.tls import certs

ALICE = SpiffeId("cluster.local", "default", "alice")


async def test_two_cas_on_one_directory_sign_with_one_root_and_keep_its_key_private(tmp_path: Path) -> None:
    first = SharedFakeCa(tmp_path / "ca", "cluster.local")
    second = SharedFakeCa(tmp_path / "ca", "cluster.local")
    assert first.roots_pem == second.roots_pem
    bundle = await second.fetch(ALICE)
    certs.load_chain(bundle.chain_pem)[0].verify_directly_issued_by(first.root)
    assert bundle.identity == ALICE and bundle.roots_pem == first.roots_pem
    assert stat.S_IMODE((tmp_path / "ca" / ROOT_DIR / KEY_FILE).stat().st_mode) == 0o600
    assert (tmp_path / "ca" / ROOT_DIR / CERT_FILE).exists()


async def test_a_leaf_is_valid_from_a_minute_ago_for_the_ttl(tmp_path: Path) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    bundle = await SharedFakeCa(tmp_path, "cluster.local", ttl=timedelta(hours=2)).fetch(ALICE)
    after = datetime.now(UTC)
    assert before - timedelta(minutes=1, seconds=1) <= bundle.not_before <= after - timedelta(minutes=1)
    assert bundle.lifetime == timedelta(hours=2, minutes=1)
