"""``FAKE_CA``: sign workload certificates in-process, for tests and local runs without istiod_lite.

``fake_certificate_provider`` (the binaries' explicit FAKE_CA mode: ztunnel's and the waypoint's) returns
the test kit's in-memory ``FakeCa`` (its own root: fine for one process) or, with ``FAKE_CA_DIR``, a ``SharedFakeCa`` whose root key and certificate live in that
directory, so several ztunnel processes pointed at it (the L4 benchmark's two nodes) trust each other.
The first process creates the root atomically (written to a private temporary directory, then renamed
into place; a loser of the race uses the winner's). The key file is 0600 in a 0700 directory. Never for
production: it signs any identity it is asked for, with no node authorization.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from meshcore.aio.ca_client import CertificateProvider
from meshcore.identity import SpiffeId
from meshcore.tls import certs

ROOT_DIR = "fake-ca-root"
KEY_FILE = "ca-key.pem"
CERT_FILE = "ca-cert.pem"


class SharedFakeCa:
    """A ``CertificateProvider`` signing with a root shared through a directory."""

    def __init__(self, directory: Path, trust_domain: str, *, ttl: timedelta = timedelta(hours=24)) -> None:
        self.trust_domain = trust_domain
        self.ttl = ttl
        root = _ensure_root(directory, trust_domain)
        self._key = certs.load_private_key((root / KEY_FILE).read_text("ascii"))
        self.root = certs.load_chain((root / CERT_FILE).read_text("ascii"))[0]
        self.roots_pem = certs.cert_to_pem(self.root)

    async def fetch(self, identity: SpiffeId) -> certs.CertBundle:
        now = datetime.now(UTC)
        return certs.issue_workload_bundle(
            identity,
            issuer_cert=self.root,
            issuer_key=self._key,
            not_before=now - timedelta(minutes=1),
            not_after=now + self.ttl,
        )


def _ensure_root(directory: Path, trust_domain: str) -> Path:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = directory / ROOT_DIR
    if (target / CERT_FILE).exists():
        return target
    tmp = Path(tempfile.mkdtemp(prefix=".fake-ca-", dir=directory))  # mode 0700
    try:
        key = certs.generate_key()
        now = datetime.now(UTC)
        root = certs.build_ca_certificate(
            key,
            common_name=f"ztunnel fake CA for {trust_domain}",
            organization=trust_domain,
            not_before=now - timedelta(days=1),
            not_after=now + timedelta(days=3650),
        )
        fd = os.open(tmp / KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(certs.key_to_pem(key))
        (tmp / CERT_FILE).write_text(certs.cert_to_pem(root), "ascii")
        try:
            os.rename(tmp, target)  # atomic: readers see both files or neither
        except OSError:
            if not (target / CERT_FILE).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def fake_certificate_provider(trust_domain: str, directory: Path | None, ttl_seconds: int) -> CertificateProvider:
    """The FAKE_CA provider (see the module docstring)."""
    ttl = timedelta(seconds=ttl_seconds)
    if directory is not None:
        return SharedFakeCa(directory, trust_domain, ttl=ttl)
    from meshcore.testing.fake_ca import FakeCa  # the test kit, only behind the explicit FAKE_CA flag

    return FakeCa(trust_domain, ttl=ttl)
