"""The router's path index picks exactly what a linear scan of the route table picks (property test)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore.model.traffic import BackendRef, PathMatch, RouteMatch, RouteRule, ServiceTraffic, ValueMatch
from waypoint import router
from waypoint.l7.model import ConnectionFacts, Request

HOST = "echo.demo.svc.cluster.local"
segments = st.sampled_from(["", "a", "b", "ab", "a/b", "b/"])
paths = st.builds(lambda parts: "/" + "/".join(parts), st.lists(segments, max_size=3))
path_matches = st.one_of(
    st.none(),
    st.builds(PathMatch, st.sampled_from(["exact", "prefix", "string_prefix"]), paths),
    st.builds(PathMatch, st.just("regex"), st.sampled_from(["/a.*", "/b", ".*"])),
)
entries = st.builds(
    RouteMatch,
    path=path_matches,
    headers=st.lists(st.builds(ValueMatch, st.just("x-a"), st.just("exact"), st.sampled_from(["1", "2"])),
                     max_size=1).map(tuple),
    query_params=st.lists(st.builds(ValueMatch, st.just("q"), st.just("exact"), st.sampled_from(["1", "2"])),
                          max_size=1).map(tuple),
    method=st.sampled_from(["", "GET"]),
)
rules = st.builds(
    lambda ms: RouteRule("HTTPRoute demo/r", matches=tuple(ms), backends=(BackendRef("demo", HOST),)),
    st.lists(entries, max_size=4),
)
tables = st.builds(lambda rs: ServiceTraffic("demo", HOST, routes=tuple(rs)), st.lists(rules, max_size=6))
requests = st.builds(
    lambda path, query, header, method: Request(
        method, "http", "echo", path + query, (("x-a", header),) if header else (), "1.1", "id",
        ConnectionFacts(),
    ),
    paths, st.sampled_from(["", "?q=1", "?q=2"]), st.sampled_from(["", "1", "2"]), st.sampled_from(["GET", "POST"]),
)


def linear_scan(traffic: ServiceTraffic, request: Request) -> tuple[int, RouteMatch | None]:
    """The reference: every entry of every rule in order, the first match wins."""
    facts = router._facts(request, 0)
    for i, rule in enumerate(traffic.routes):
        if not rule.matches:
            return i, None
        for m in rule.matches:
            if router._matches(m, facts):
                return i, m
    return -1, None


@settings(max_examples=300, deadline=None)
@given(tables, requests)
def test_the_indexed_table_chooses_the_rule_and_entry_a_linear_scan_chooses(
    table: ServiceTraffic, request: Request
) -> None:
    got = router.match_rule(table, request)
    want = linear_scan(table, request)
    assert got[0] == want[0]
    assert got[1] is want[1]
