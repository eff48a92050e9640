import dataclasses
import ssl

import pytest

from meshcore.identity import SpiffeId
from meshcore.testing.fake_ca import FakeCa
from meshcore.tls import contexts
from meshcore.tls.errors import CertificateError

ALICE = SpiffeId("cluster.local", "default", "alice")


@pytest.fixture
def bundle():
    return FakeCa().issue(ALICE)


@pytest.mark.parametrize(
    "build",
    [contexts.client_context, contexts.server_context],
    ids=["the client context", "the server context"],
)
def test_contexts_are_tls13_only_with_mutual_verification_and_no_hostname_check(build, bundle):
    ctx = build(bundle)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    assert ctx.maximum_version == ssl.TLSVersion.TLSv1_3
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname is False
    assert ctx.verify_flags & ssl.VERIFY_X509_STRICT
    # Only the mesh root is trusted, nothing from the system store.
    assert [c["subject"] for c in ctx.get_ca_certs()] == [
        ((("organizationName", "cluster.local"),), (("commonName", "fake CA for cluster.local"),))
    ]


def test_server_context_disables_session_tickets(bundle):
    assert contexts.server_context(bundle).num_tickets == 0


def test_key_file_lives_only_during_loading(bundle, tmp_path, monkeypatch):
    monkeypatch.setattr(contexts, "_KEY_DIRS", (str(tmp_path),))
    contexts.client_context(bundle)
    assert list(tmp_path.iterdir()) == []


def test_a_key_that_does_not_match_the_chain_is_an_actionable_error(bundle):
    other = FakeCa().issue(ALICE)
    mixed = dataclasses.replace(bundle, key_pem=other.key_pem)
    with pytest.raises(CertificateError, match="do not load"):
        contexts.server_context(mixed)


def test_channel_credentials_need_key_and_chain_together(bundle):
    with pytest.raises(ValueError, match="both"):
        contexts.channel_credentials(bundle.roots_pem, key_pem=bundle.key_pem)
    assert contexts.channel_credentials(bundle.roots_pem, bundle.key_pem, bundle.chain_pem) is not None
    assert contexts.channel_options() == [("grpc.ssl_target_name_override", "istiod.istio-system.svc")]
