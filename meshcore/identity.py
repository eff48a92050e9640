"""SPIFFE identities of mesh workloads: ``spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>``.

Pure value object. Parsing is strict: anything that is not exactly that shape (other path segments,
query, fragment, port, user info, empty or non-DNS-label parts, upper case trust domain) is refused
with ``InvalidSpiffeId`` whose message says what is wrong. Equality and hashing are by the three parts,
so a parsed and a constructed identity compare equal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCHEME = "spiffe://"

# Trust domains are lower-case DNS-ish names (SPIFFE ID spec §2.1): letters, digits, dot, dash, underscore.
_TRUST_DOMAIN_RE = re.compile(r"^[a-z0-9._-]{1,255}$")
# Kubernetes namespaces and service accounts are DNS-1123 labels/subdomains.
_K8S_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class InvalidSpiffeId(ValueError):
    """A string that is not a mesh SPIFFE identity; the message says which part is wrong."""


@dataclass(frozen=True, slots=True, order=True)
class SpiffeId:
    """A workload identity: trust domain, namespace and service account."""

    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        if not _TRUST_DOMAIN_RE.match(self.trust_domain):
            raise InvalidSpiffeId(
                f"trust domain {self.trust_domain!r} is not a lower-case DNS name "
                "(letters, digits, '.', '-', '_')"
            )
        for what, value in (("namespace", self.namespace), ("service account", self.service_account)):
            if not _K8S_NAME_RE.match(value):
                raise InvalidSpiffeId(f"{what} {value!r} is not a valid Kubernetes name (DNS-1123)")

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        """Parse ``spiffe://td/ns/NS/sa/SA``; raise ``InvalidSpiffeId`` for anything else."""
        if not isinstance(uri, str):
            raise InvalidSpiffeId(f"expected a string, got {type(uri).__name__}")
        if not uri.startswith(SCHEME):
            raise InvalidSpiffeId(f"{uri!r} does not start with {SCHEME!r}")
        rest = uri[len(SCHEME) :]
        if any(c in rest for c in "?#@:%") or any(c.isspace() for c in rest):
            raise InvalidSpiffeId(f"{uri!r} has a query, fragment, port, user info or escape; not allowed")
        parts = rest.split("/")
        if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa":
            raise InvalidSpiffeId(f"{uri!r} is not of the form spiffe://<trust-domain>/ns/<namespace>/sa/<sa>")
        return cls(trust_domain=parts[0], namespace=parts[2], service_account=parts[4])

    @classmethod
    def try_parse(cls, uri: str) -> SpiffeId | None:
        """Like ``parse`` but returns None instead of raising."""
        try:
            return cls.parse(uri)
        except InvalidSpiffeId:
            return None

    def __str__(self) -> str:
        return f"{SCHEME}{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @property
    def uri(self) -> str:
        """The canonical URI form, as carried in certificate URI SANs."""
        return str(self)

    @property
    def principal(self) -> str:
        """The form AuthorizationPolicy principals use: ``<td>/ns/<ns>/sa/<sa>`` (no scheme)."""
        return str(self)[len(SCHEME) :]
