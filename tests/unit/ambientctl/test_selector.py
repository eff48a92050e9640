"""kubectl's -l selectors: parsing tables, errors, and a property test that parsing never crashes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ambientctl.commands.selector import SelectorError, parse_selector, selector_matches

LABELS = {"app": "web", "version": "v1", "tier": ""}

MATCHES = [
    ("an empty selector matches everything", "", True),
    ("equality matches", "app=web", True),
    ("double equals is equality", "app==web", True),
    ("inequality of a present key", "app!=web", False),
    ("inequality matches a missing key", "team!=a", True),
    ("every requirement must hold", "app=web,version=v2", False),
    ("in matches a listed value", "version in (v1, v2)", True),
    ("notin refuses a listed value", "version notin (v1)", False),
    ("notin matches a missing key", "team notin (a)", True),
    ("a bare key means it exists", "tier", True),
    ("a negated key means it is absent", "!team", True),
    ("a negated present key does not match", "!app", False),
    ("set and equality mix with commas", "app=web,version in (v1,v3),!team", True),
]


@pytest.mark.parametrize(("text", "want"), [m[1:] for m in MATCHES], ids=[m[0] for m in MATCHES])
def test_selector_matches(text: str, want: bool) -> None:
    assert selector_matches(parse_selector(text), LABELS) is want


REFUSED = [
    ("an operator without a key is refused", "=web", "is not a requirement"),
    ("an unbalanced parenthesis is refused", "version in (v1", "unbalanced"),
    ("an empty value set is refused", "version in ()", "at least one value"),
    ("an invalid value is refused", "app=a b", "not a requirement"),
    ("an invalid key is refused", "-app=web", "the name part"),
    ("a negated set requirement is refused", "!version in (v1)", "'!' goes with a bare key"),
]


@pytest.mark.parametrize(("text", "words"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_bad_selectors_are_refused_with_the_part_named(text: str, words: str) -> None:
    with pytest.raises(SelectorError, match=words):
        parse_selector(text)


@given(st.text(max_size=60))
def test_parsing_any_text_either_works_or_says_why(text: str) -> None:
    try:
        requirements = parse_selector(text)
    except SelectorError:
        return
    selector_matches(requirements, LABELS)
