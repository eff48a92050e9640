"""RequestFacts: what construction derives and what it refuses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcore.identity import SpiffeId
from meshcore.policy import InvalidRequestFactsError, RequestFacts
from meshcore.testing.l7 import request


def facts(**kw: object) -> RequestFacts:
    args: dict[str, object] = {
        "source_ip": "10.0.0.1",
        "destination_ip": "10.96.0.10",
        "destination_port": 80,
        "method": "GET",
        "path": "/",
        "authority": "web",
    }
    args.update(kw)
    return RequestFacts(**args)  # type: ignore[arg-type]


DERIVED = [
    pytest.param({"path": "/a/b?x=1#f"}, "match_path", "/a/b", id="the match path drops the query string"),
    pytest.param(
        {"path": "/a#f?x"}, "match_path", "/a", id="the match path drops a fragment before a question mark"
    ),
    pytest.param({"path": "*"}, "match_path", "*", id="the asterisk form is kept"),
    pytest.param(
        {"authority": "Web.Demo:8080"}, "host", "web.demo:8080", id="the host is the lower-cased authority"
    ),
    pytest.param({"authority": "Web.Demo:8080"}, "hostname", "web.demo", id="the hostname drops the port"),
    pytest.param(
        {"authority": "[fd00::1]:80"}, "hostname", "[fd00::1]", id="the hostname keeps a bracketed IPv6"
    ),
    pytest.param(
        {"remote_ip": None}, "remote_addr", (4, 0x0A000001), id="remote ip defaults to the source ip"
    ),
    pytest.param(
        {"remote_ip": "::ffff:192.0.2.1"}, "remote_addr", (4, 0xC0000201), id="mapped IPv6 becomes IPv4"
    ),
    pytest.param(
        {"source_principal": SpiffeId("cluster.local", "ns1", "sa1")},
        "principal",
        "cluster.local/ns/ns1/sa/sa1",
        id="the principal is the identity without scheme",
    ),
    pytest.param(
        {"source_principal": SpiffeId("cluster.local", "ns1", "sa1")},
        "source_namespace",
        "ns1",
        id="the source namespace comes from the identity",
    ),
    pytest.param({}, "source_namespace", None, id="no identity has no source namespace"),
]


@pytest.mark.parametrize(("kw", "attr", "expected"), DERIVED)
def test_derived(kw: dict[str, object], attr: str, expected: object) -> None:
    assert getattr(facts(**kw), attr) == expected


def test_headers_are_lower_cased_merged_and_read_only() -> None:
    f = facts(headers={"X-A": ["1"], "x-a": "2", "Host": ["evil"]})
    assert f.header_values("x-a") == ("1", "2")
    assert f.header_values("host") is None
    with pytest.raises(TypeError):
        f.headers["x-b"] = ("3",)  # type: ignore[index]


def test_pseudo_headers_read_the_request_line() -> None:
    f = facts(method="PUT", path="/p?q", authority="a:1")
    assert (f.header_values(":method"), f.header_values(":path"), f.header_values(":authority")) == (
        ("PUT",),
        ("/p?q",),
        ("a:1",),
    )
    assert facts(authority="").header_values(":authority") is None


REFUSED = [
    pytest.param({"destination_port": 70000}, "destination_port", id="a port above 65535"),
    pytest.param({"destination_port": True}, "destination_port", id="a boolean port"),
    pytest.param({"source_ip": "10.0.0"}, "source_ip", id="a source ip that is not an address"),
    pytest.param({"remote_ip": "x"}, "remote_ip", id="a remote ip that is not an address"),
    pytest.param({"destination_ip": ""}, "destination_ip", id="an empty destination ip"),
    pytest.param({"method": ""}, "method", id="an empty method"),
    pytest.param({"method": "GE T"}, "method", id="a method with a space"),
    pytest.param({"path": "a/b"}, "path", id="a relative path"),
    pytest.param({"path": "http://x/a"}, "path", id="an absolute-form target"),
    pytest.param({"path": "/a b"}, "path", id="a path with a space"),
    pytest.param({"path": "/a\x00"}, "path", id="a path with a control character"),
    pytest.param({"authority": "a b"}, "authority", id="an authority with a space"),
    pytest.param({"authority": "a/b"}, "authority", id="an authority with a slash"),
    pytest.param({"headers": {"bad name": ["x"]}}, "headers", id="a header name that is not a token"),
    pytest.param({"headers": {"x": ["a\r\nb"]}}, "headers['x']", id="a header value with CRLF"),
    pytest.param(
        {"source_principal": "spiffe://x"}, "source_principal", id="a principal that is not a SpiffeId"
    ),
]


@pytest.mark.parametrize(("kw", "field"), REFUSED)
def test_refused(kw: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidRequestFactsError) as e:
        facts(**kw)
    assert e.value.field == field
    assert str(e.value).startswith(f"request {field}=")


@given(st.text(max_size=40))
def test_any_path_either_builds_or_is_refused_cleanly(path: str) -> None:
    try:
        f = facts(path=path)
    except InvalidRequestFactsError as e:
        assert e.field == "path"
    else:
        assert f.path.startswith(f.match_path)
        assert "?" not in f.match_path and "#" not in f.match_path


@given(st.text(max_size=30), st.text(max_size=30))
def test_any_header_either_builds_or_is_refused_cleanly(name: str, value: str) -> None:
    try:
        f = facts(headers={name: [value]})
    except InvalidRequestFactsError as e:
        assert e.field.startswith("headers")
    else:
        assert name.lower() == "host" or f.header_values(name.lower()) == (value,)


def test_the_builder_makes_an_mtls_request() -> None:
    assert request().principal == "cluster.local/ns/client-ns/sa/client"
