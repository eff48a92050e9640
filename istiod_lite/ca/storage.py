"""Where the CA's key and certificates come from: a self-signed root kept in the state dir, or files
an operator plugs in (Istio's ``cacerts``: ca-cert, ca-key, cert-chain, root-cert). On Kubernetes the
same material lives in a Secret (``ca.secret``, which uses ``generate_root`` and ``material_from_pem``).

Self-signed mode keeps ``<state_dir>/ca/root-key.pem`` (0600) and ``root-cert.pem`` in a 0700 directory,
created on first start and reloaded unchanged afterwards, so certificates issued before a restart
stay valid. Files are written to a temporary name and renamed, so a crash never leaves half a file;
a key without a certificate (or the reverse) is refused rather than silently replaced, because a new
root invalidates every certificate in the mesh. A group/world-readable key in our own directory is
refused too. Plugged-in files are only read (Kubernetes secret mounts are often 0644; not our call).
Every problem is a ``CaStorageError`` naming the file and what to do; a damaged root file in our own
directory says to restore it, never to regenerate first (that would cut off every workload).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509

from istiod_lite.ca.authority import CertificateAuthority
from istiod_lite.ca.errors import CaFileUnreadable, CaMaterialInvalid, CaStorageError
from meshcore.aio.ca_client import CREDENTIAL_CHAIN_FILE, CREDENTIAL_KEY_FILE, CREDENTIAL_ROOT_FILE
from meshcore.tls import certs
from meshcore.tls.errors import CertificateError

CA_DIR = "ca"
ROOT_KEY_FILE = "root-key.pem"
ROOT_CERT_FILE = "root-cert.pem"
ROOT_TTL = timedelta(days=3650)  # Istio's self-signed root default: 10 years
_RESTORE_ROOT = (
    "restore {ca_dir} from a backup (only if there is none: move both root-key.pem and root-cert.pem aside "
    "to generate a new root, which invalidates every certificate issued so far)"
)


@dataclass(frozen=True, slots=True)
class CaMaterial:
    """What a ``CertificateAuthority`` is built from."""

    key: certs.SigningKey = field(repr=False)
    cert: x509.Certificate  # the signing certificate
    chain: tuple[x509.Certificate, ...]  # between cert and the root, exclusive
    roots: tuple[x509.Certificate, ...]
    source: str  # for logs: which files, or "generated"

    def authority(self, trust_domain: str, **kw: timedelta) -> CertificateAuthority:
        return CertificateAuthority(self.key, self.cert, trust_domain, chain=self.chain, roots=self.roots, **kw)


def generate_root(*, trust_domain: str, now: datetime) -> CaMaterial:
    """A new self-signed root (Istio's default lifetime), kept nowhere yet."""
    key = certs.generate_key()
    root = certs.build_ca_certificate(
        key,
        common_name="istiod-lite root CA",
        organization=trust_domain,
        not_before=now - timedelta(minutes=1),
        not_after=now + ROOT_TTL,
    )
    return CaMaterial(key=key, cert=root, chain=(), roots=(root,), source="generated")


def load_or_create_root(state_dir: Path, *, trust_domain: str, now: datetime) -> CaMaterial:
    """The self-signed root in ``<state_dir>/ca``: loaded when present, generated on first start."""
    ca_dir = state_dir / CA_DIR
    key_path, cert_path = ca_dir / ROOT_KEY_FILE, ca_dir / ROOT_CERT_FILE
    have_key, have_cert = key_path.exists(), cert_path.exists()
    if have_key != have_cert:
        present, missing = (key_path, cert_path) if have_key else (cert_path, key_path)
        raise CaMaterialInvalid(
            f"{present} exists but {missing} does not; restore the missing file, or delete both to generate "
            "a new root (this invalidates every certificate issued so far)"
        )
    if not have_key:
        made = generate_root(trust_domain=trust_domain, now=now)
        ca_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_file(key_path, certs.key_to_pem(made.key), mode=0o600)
        _write_file(cert_path, certs.cert_to_pem(made.cert), mode=0o644)
        return made

    mode = stat.S_IMODE(key_path.stat().st_mode)
    if mode & 0o077:
        raise CaMaterialInvalid(
            f"{key_path} has mode {mode:04o}; the CA key must be private: chmod 600 {key_path}"
        )
    try:
        key = _load_key(key_path)
        root = _load_certs(cert_path)[0]
    except CaStorageError as e:
        raise type(e)(f"{e}; {_RESTORE_ROOT.format(ca_dir=ca_dir)}") from e
    if not certs.public_key_matches(key, root):
        raise CaMaterialInvalid(f"{key_path} does not match {cert_path}; restore the pair that belongs together")
    _check_issued(root, root, cert_path)
    return CaMaterial(key=key, cert=root, chain=(), roots=(root,), source=str(ca_dir))


def load_plugged(
    cert_path: Path, key_path: Path, *, chain_path: Path | None = None, root_path: Path | None = None
) -> CaMaterial:
    """An operator's CA: signing cert and key, optional chain up to the root, optional root file.

    ``chain_path`` may repeat the signing cert first and the root last (Istio's cert-chain.pem does);
    both are recognised. Without ``root_path`` the root is the self-signed signing cert, or the last
    certificate of the chain when that one is self-signed. Each link must be signed by the next.
    """
    key = (str(key_path), _read(key_path))  # the key first: its problem is the one to name
    return material_from_pem(
        cert=(str(cert_path), _read(cert_path)),
        key=key,
        chain=(str(chain_path), _read(chain_path)) if chain_path else None,
        root=(str(root_path), _read(root_path)) if root_path else None,
    )


Named = tuple[str, bytes]  # (where it came from, for messages; its PEM)


def material_from_pem(*, cert: Named, key: Named, chain: Named | None = None, root: Named | None = None) -> CaMaterial:
    """``load_plugged``'s checks on PEM from anywhere (files, a Secret's keys): each part is named by where
    it came from in every message."""
    signing_key = _parse_key(*key)
    signing = _parse_certs(*cert)[0]
    if not certs.public_key_matches(signing_key, signing):
        raise CaMaterialInvalid(f"{key[0]} does not match {cert[0]}")
    links = list(_parse_certs(*chain)) if chain else []
    if links and links[0] == signing:
        links.pop(0)
    roots = list(_parse_certs(*root)) if root else []
    if not roots:
        if _self_signed(signing):
            roots = [signing]
        elif links and _self_signed(links[-1]):
            roots = [links[-1]]
        else:
            raise CaMaterialInvalid(f"cannot find the root for {cert[0]}: pass the root certificate (root-cert.pem)")
    if links and links[-1] in roots:
        links.pop()
    where = chain[0] if chain else cert[0]
    if signing not in roots:
        path = [signing, *links]
        for child, parent in zip(path, [*links, None], strict=True):
            if parent is not None:
                _check_issued(child, parent, where)
        if not any(certs.is_issued_by(path[-1], r) for r in roots):
            raise CaMaterialInvalid(
                f"{path[-1].subject.rfc4514_string()} is not signed by any root in {root[0] if root else where}; "
                "pass the complete chain up to the root"
            )
    source = ", ".join(p[0] for p in (cert, key, chain, root) if p)
    return CaMaterial(key=signing_key, cert=signing, chain=tuple(links), roots=tuple(roots), source=source)


def write_credential(directory: Path, key_pem: str, chain_pem: Sequence[str], roots_pem: str) -> None:
    """Write a credential as key.pem (0600), cert-chain.pem and root-cert.pem in a 0700 ``directory``."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_file(directory / CREDENTIAL_KEY_FILE, key_pem, mode=0o600)
    _write_file(directory / CREDENTIAL_CHAIN_FILE, "".join(_nl(p) for p in chain_pem), mode=0o644)
    _write_file(directory / CREDENTIAL_ROOT_FILE, roots_pem, mode=0o644)


def _write_file(path: Path, text: str, *, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is masked by umask and ignored for an existing file
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    os.replace(tmp, path)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise CaFileUnreadable(f"cannot read CA file {path}: {e.strerror}") from e


def _load_key(path: Path) -> certs.SigningKey:
    return _parse_key(str(path), _read(path))


def _load_certs(path: Path) -> list[x509.Certificate]:
    return _parse_certs(str(path), _read(path))


def _parse_key(where: str, pem: bytes) -> certs.SigningKey:
    try:
        return certs.load_private_key(pem)
    except CertificateError as e:
        raise CaMaterialInvalid(f"{where}: {e}") from e


def _parse_certs(where: str, pem: bytes) -> list[x509.Certificate]:
    try:
        return certs.load_chain(pem)
    except CertificateError as e:
        raise CaMaterialInvalid(f"{where}: {e}") from e


def _self_signed(cert: x509.Certificate) -> bool:
    return certs.is_issued_by(cert, cert)


def _check_issued(child: x509.Certificate, parent: x509.Certificate, where: Path | str) -> None:
    if not certs.is_issued_by(child, parent):
        raise CaMaterialInvalid(
            f"{where}: {child.subject.rfc4514_string()} is not signed by {parent.subject.rfc4514_string()}"
        )


def _nl(pem: str) -> str:
    return pem if pem.endswith("\n") else pem + "\n"
