import os
import stat
from datetime import UTC, datetime, timedelta

import pytest

from istiod_lite.ca import storage
from istiod_lite.ca.errors import CaFileUnreadable, CaMaterialInvalid
from meshcore.aio.ca_client import load_node_credential
from meshcore.identity import SpiffeId
from meshcore.tls import certs

NOW = datetime(2026, 1, 1, tzinfo=UTC)
ALICE = SpiffeId("cluster.local", "default", "alice")


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_start_generates_a_private_root_and_restart_reloads_the_same(tmp_path):
    first = storage.load_or_create_root(tmp_path, trust_domain="cluster.local", now=NOW)
    ca_dir = tmp_path / "ca"
    assert first.source == "generated"
    assert _mode(ca_dir) == 0o700
    assert _mode(ca_dir / "root-key.pem") == 0o600
    assert sorted(p.name for p in ca_dir.iterdir()) == ["root-cert.pem", "root-key.pem"]

    again = storage.load_or_create_root(tmp_path, trust_domain="cluster.local", now=NOW + timedelta(days=1))
    assert again.cert == first.cert
    assert certs.key_to_pem(again.key) == certs.key_to_pem(first.key)
    # A certificate issued before the restart still chains to the reloaded root.
    chain = first.authority("cluster.local").sign_workload(certs.build_csr(certs.generate_key(), ALICE), ALICE, 0, NOW)
    certs.load_chain(chain[0])[0].verify_directly_issued_by(again.cert)


@pytest.mark.parametrize("missing", ["root-cert.pem", "root-key.pem"], ids=["key without cert", "cert without key"])
def test_half_a_root_is_refused_not_replaced(tmp_path, missing):
    storage.load_or_create_root(tmp_path, trust_domain="cluster.local", now=NOW)
    (tmp_path / "ca" / missing).unlink()
    with pytest.raises(CaMaterialInvalid, match="delete both"):
        storage.load_or_create_root(tmp_path, trust_domain="cluster.local", now=NOW)


def test_a_readable_root_key_is_refused(tmp_path):
    storage.load_or_create_root(tmp_path, trust_domain="cluster.local", now=NOW)
    os.chmod(tmp_path / "ca" / "root-key.pem", 0o644)
    with pytest.raises(CaMaterialInvalid, match="chmod 600"):
        storage.load_or_create_root(tmp_path, trust_domain="cluster.local", now=NOW)


def test_a_key_from_another_root_is_refused(tmp_path):
    storage.load_or_create_root(tmp_path, trust_domain="cluster.local", now=NOW)
    other = tmp_path / "other"
    storage.load_or_create_root(other, trust_domain="cluster.local", now=NOW)
    os.replace(other / "ca" / "root-key.pem", tmp_path / "ca" / "root-key.pem")
    with pytest.raises(CaMaterialInvalid, match="does not match"):
        storage.load_or_create_root(tmp_path, trust_domain="cluster.local", now=NOW)


@pytest.mark.parametrize(
    ("damaged", "content"),
    [("root-cert.pem", "not a certificate"), ("root-key.pem", "not a key"), ("root-cert.pem", "")],
    ids=[
        "a garbage root certificate is named, with the way to restore it",
        "a garbage root key is named, with the way to restore it",
        "an emptied root certificate is named, with the way to restore it",
    ],
)
def test_garbage_root_files_are_refused_with_the_file_name_and_the_fix(tmp_path, damaged, content):
    storage.load_or_create_root(tmp_path, trust_domain="cluster.local", now=NOW)
    path = tmp_path / "ca" / damaged
    path.write_text(content)
    with pytest.raises(CaMaterialInvalid) as caught:
        storage.load_or_create_root(tmp_path, trust_domain="cluster.local", now=NOW)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert f"restore {tmp_path / 'ca'} from a backup (only if there is none: move both" in message
    assert path.read_text() == content, "a damaged root is never replaced"


def _write_ca(tmp_path, name, key, cert):
    (tmp_path / f"{name}-key.pem").write_text(certs.key_to_pem(key))
    (tmp_path / f"{name}-cert.pem").write_text(certs.cert_to_pem(cert))
    return tmp_path / f"{name}-cert.pem", tmp_path / f"{name}-key.pem"


def _plugged_hierarchy(tmp_path):
    root_key = certs.generate_key()
    root = certs.build_ca_certificate(
        root_key, common_name="corp root", organization="corp", not_before=NOW, not_after=NOW + timedelta(days=99)
    )
    int_key = certs.generate_key()
    intermediate = certs.build_ca_certificate(
        int_key, common_name="mesh intermediate", organization="corp", not_before=NOW,
        not_after=NOW + timedelta(days=30), issuer=(root, root_key),
    )
    cert_path, key_path = _write_ca(tmp_path, "ca", int_key, intermediate)
    root_path = tmp_path / "root-cert.pem"
    root_path.write_text(certs.cert_to_pem(root))
    chain_path = tmp_path / "cert-chain.pem"
    chain_path.write_text(certs.cert_to_pem(intermediate) + certs.cert_to_pem(root))
    return root, intermediate, cert_path, key_path, chain_path, root_path


def test_plugged_self_signed_root(tmp_path):
    key = certs.generate_key()
    root = certs.build_ca_certificate(
        key, common_name="corp", organization="corp", not_before=NOW, not_after=NOW + timedelta(days=9)
    )
    material = storage.load_plugged(*_write_ca(tmp_path, "ca", key, root))
    assert material.roots == (root,) and material.chain == ()


def test_plugged_intermediate_with_istio_style_cert_chain(tmp_path):
    root, intermediate, cert_path, key_path, chain_path, _ = _plugged_hierarchy(tmp_path)
    material = storage.load_plugged(cert_path, key_path, chain_path=chain_path)
    assert material.cert == intermediate
    assert material.chain == ()
    assert material.roots == (root,)
    chain = material.authority("cluster.local").sign_workload(
        certs.build_csr(certs.generate_key(), ALICE), ALICE, 0, NOW
    )
    assert [certs.load_chain(p)[0] for p in chain[1:]] == [intermediate, root]


def test_plugged_intermediate_with_separate_root_file(tmp_path):
    root, _, cert_path, key_path, _, root_path = _plugged_hierarchy(tmp_path)
    assert storage.load_plugged(cert_path, key_path, root_path=root_path).roots == (root,)


def test_plugged_intermediate_without_root_is_refused(tmp_path):
    _, _, cert_path, key_path, _, _ = _plugged_hierarchy(tmp_path)
    with pytest.raises(CaMaterialInvalid, match="root"):
        storage.load_plugged(cert_path, key_path)


def test_plugged_intermediate_with_the_wrong_root_is_refused(tmp_path):
    _, _, cert_path, key_path, _, _ = _plugged_hierarchy(tmp_path)
    other_key = certs.generate_key()
    other = certs.build_ca_certificate(
        other_key, common_name="x", organization="x", not_before=NOW, not_after=NOW + timedelta(days=9)
    )
    wrong_root = tmp_path / "wrong-root.pem"
    wrong_root.write_text(certs.cert_to_pem(other))
    with pytest.raises(CaMaterialInvalid, match="not signed by any root"):
        storage.load_plugged(cert_path, key_path, root_path=wrong_root)


def test_unreadable_plugged_file_is_named(tmp_path):
    with pytest.raises(CaFileUnreadable, match="missing-key.pem"):
        storage.load_plugged(tmp_path / "missing-cert.pem", tmp_path / "missing-key.pem")


def test_written_node_credential_is_private_and_loads_back(tmp_path):
    material = storage.load_or_create_root(tmp_path, trust_domain="cluster.local", now=NOW)
    cred = material.authority("cluster.local").issue_node_credential("node-a", NOW)
    out = tmp_path / "nodes" / "node-a"
    storage.write_credential(out, cred.key_pem, cred.chain_pem, cred.roots_pem)
    assert _mode(out) == 0o700
    assert _mode(out / "key.pem") == 0o600
    key_pem, chain_pem, roots_pem = load_node_credential(out)
    assert key_pem == cred.key_pem
    assert roots_pem == cred.roots_pem
    assert certs.load_chain(chain_pem) == certs.load_chain(list(cred.chain_pem))
