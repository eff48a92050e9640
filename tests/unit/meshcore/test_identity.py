import pytest

from meshcore.identity import InvalidSpiffeId, SpiffeId


def test_parse_and_format_round_trip():
    uri = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
    sid = SpiffeId.parse(uri)
    assert sid == SpiffeId("cluster.local", "default", "bookinfo-productpage")
    assert str(sid) == uri
    assert sid.principal == "cluster.local/ns/default/sa/bookinfo-productpage"
    assert hash(sid) == hash(SpiffeId.parse(uri))


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://cluster.local/ns/default",
        "spiffe://cluster.local/ns/default/sa/x/extra",
        "spiffe://cluster.local/sa/default/ns/x",
        "http://cluster.local/ns/default/sa/x",
        "spiffe://Cluster.Local/ns/default/sa/x",
        "spiffe://cluster.local:443/ns/default/sa/x",
        "spiffe://cluster.local/ns/default/sa/x?q=1",
        "spiffe://cluster.local/ns//sa/x",
        "spiffe://cluster.local/ns/Default/sa/x",
        "spiffe:///ns/default/sa/x",
        "spiffe://cluster.local/ns/default/sa/x#frag",
        "",
    ],
    ids=lambda u: f"rejects {u!r}",
)
def test_strict_parse_rejects(uri):
    with pytest.raises(InvalidSpiffeId):
        SpiffeId.parse(uri)
    assert SpiffeId.try_parse(uri) is None


def test_ordering_and_inequality():
    a = SpiffeId("td", "a", "x")
    b = SpiffeId("td", "b", "x")
    assert a != b and a < b
