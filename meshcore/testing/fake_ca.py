"""An in-memory CA for tests: a ``CertificateProvider`` that signs anything, instantly, with its own root.

Built on the same signing primitives as istiod_lite's CA (``meshcore.tls.certs``) so its certificates
look like real mesh certificates (one URI SAN, empty subject, client+server usage), but it checks
nothing: tests that need node authorization use istiod_lite's CA. ``issue`` makes certificates with any
validity (expired, not yet valid) for rotation and rejection tests; ``foreign()`` makes a CA with
another root and trust domain, whose certificates the mesh must refuse. ``fail_next`` scripts errors
for backoff tests. Counters record every fetch.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from meshcore.identity import SpiffeId
from meshcore.tls import certs


class FakeCa:
    """Signs ``CertBundle``s for any identity; ``clock`` gives the "now" fetches use (UTC)."""

    def __init__(
        self,
        trust_domain: str = "cluster.local",
        *,
        ttl: timedelta = timedelta(hours=24),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.trust_domain = trust_domain
        self.ttl = ttl
        self._clock = clock
        self._key = certs.generate_key()
        now = clock()
        self.root = certs.build_ca_certificate(
            self._key,
            common_name=f"fake CA for {trust_domain}",
            organization=trust_domain,
            not_before=now - timedelta(days=365),
            not_after=now + timedelta(days=3650),
        )
        self.roots_pem = certs.cert_to_pem(self.root)
        self.fetch_count = 0
        self.fetches: collections.Counter[SpiffeId] = collections.Counter()
        self._failures: collections.deque[Exception] = collections.deque()

    @classmethod
    def foreign(cls, trust_domain: str = "foreign.local") -> FakeCa:
        """A CA with another root and, by default, another trust domain."""
        return cls(trust_domain)

    def fail_next(self, error: Exception, times: int = 1) -> None:
        """Make the next ``times`` fetches raise ``error`` (after being counted)."""
        self._failures.extend([error] * times)

    async def fetch(self, identity: SpiffeId) -> certs.CertBundle:
        """``CertificateProvider.fetch``: a fresh key and a certificate valid from now for ``ttl``."""
        self.fetch_count += 1
        self.fetches[identity] += 1
        if self._failures:
            raise self._failures.popleft()
        return self.issue(identity)

    def issue(
        self, identity: SpiffeId, ttl: timedelta | None = None, *, not_before: datetime | None = None
    ) -> certs.CertBundle:
        """A bundle for ``identity`` valid ``[not_before, not_before + ttl]`` (defaults: now, ``self.ttl``)."""
        start = not_before if not_before is not None else self._clock()
        return certs.issue_workload_bundle(
            identity,
            issuer_cert=self.root,
            issuer_key=self._key,
            not_before=start,
            not_after=start + (ttl if ttl is not None else self.ttl),
        )

    def issue_with_sans(self, uris: list[str], ttl: timedelta | None = None) -> certs.CertBundle:
        """A bundle whose leaf carries arbitrary URI SANs (none, several, non-SPIFFE): for rejection tests.

        ``identity`` of the result is a placeholder since the leaf does not name exactly one identity.
        """
        now = self._clock()
        key = certs.generate_key()
        leaf = certs.build_leaf_certificate(
            key.public_key(),
            issuer_cert=self.root,
            issuer_key=self._key,
            not_before=now,
            not_after=now + (ttl if ttl is not None else self.ttl),
            uris=uris,
            dns_names=[] if uris else ["no-uri-san.invalid"],
        )
        return certs.CertBundle(
            key_pem=certs.key_to_pem(key),
            chain_pem=(certs.cert_to_pem(leaf),),
            roots_pem=self.roots_pem,
            identity=SpiffeId(self.trust_domain, "invalid", "invalid"),
            serial=leaf.serial_number,
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
        )
