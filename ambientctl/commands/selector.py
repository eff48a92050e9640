"""kubectl's ``-l/--selector`` label selectors, parsed into a predicate over labels.

Grammar (what kubectl accepts): requirements separated by commas, each one of ``key=value``,
``key==value``, ``key!=value``, ``key in (v1,v2)``, ``key notin (v1,v2)``, ``key`` (exists), ``!key`` (does
not exist). ``!=`` and ``notin`` also match objects without the key, as in Kubernetes. Keys and values are
checked as Kubernetes checks label keys and values. Pure; ``SelectorError`` says what is wrong and where.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import msgspec

from meshcore.store.fields import label_value_problem, qualified_name_problem


class SelectorError(ValueError):
    """A selector that does not parse; the message names the offending part."""


class Requirement(msgspec.Struct, frozen=True):
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        if self.op == "exists":
            return value is not None
        if self.op == "!exists":
            return value is None
        if self.op in ("=", "in"):
            return value is not None and value in self.values
        return value is None or value not in self.values  # "!=", "notin"


_SET = re.compile(r"^\s*(!?)\s*([^\s!=(),]+)\s+(in|notin)\s*\(([^()]*)\)\s*$")
_EQ = re.compile(r"^\s*([^\s!=(),]+)\s*(==|=|!=)\s*([^\s!=(),]*)\s*$")
_EXISTS = re.compile(r"^\s*(!?)\s*([^\s!=(),]+)\s*$")


def _split(text: str) -> list[str]:
    """Split at commas outside parentheses."""
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"unbalanced ')' in {text!r}")
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    if depth:
        raise SelectorError(f"unbalanced '(' in {text!r}")
    parts.append(current)
    return parts


def parse_selector(text: str) -> tuple[Requirement, ...]:
    """The requirements of a selector (all must match); raises ``SelectorError``."""
    if not text.strip():
        return ()
    requirements = []
    for part in _split(text):
        if m := _SET.match(part):
            if m.group(1):
                raise SelectorError(f"{part.strip()!r}: '!' goes with a bare key only (!key)")
            key, op = m.group(2), m.group(3)
            values = tuple(v.strip() for v in m.group(4).split(",") if v.strip())
            if not values:
                raise SelectorError(f"{part.strip()!r}: give at least one value in the parentheses")
            req = Requirement(key, op, values)
        elif m := _EQ.match(part):
            req = Requirement(m.group(1), "!=" if m.group(2) == "!=" else "=", (m.group(3),))
        elif m := _EXISTS.match(part):
            req = Requirement(m.group(2), "!exists" if m.group(1) else "exists")
        else:
            raise SelectorError(
                f"{part.strip()!r} is not a requirement: use key=value, key!=value, "
                "key in (a,b), key notin (a,b), key or !key"
            )
        problem = qualified_name_problem(req.key)
        if problem is None:
            problem = next((p for v in req.values if (p := label_value_problem(v))), None)
        if problem is not None:
            raise SelectorError(f"{part.strip()!r}: {problem}")
        requirements.append(req)
    return tuple(requirements)


def selector_matches(requirements: tuple[Requirement, ...], labels: Mapping[str, str]) -> bool:
    return all(r.matches(labels) for r in requirements)
