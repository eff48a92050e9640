"""Reading resources from YAML text, files, directories and stdin (what ``ambientctl apply -f`` takes).

Multi-document YAML (``---``), empty documents skipped but counted (so "document 3" is the third
``---`` section a person sees), ``kind: List`` unpacked. ``load_paths``/``load_documents`` are all or
nothing: the first invalid document raises ``InvalidResource`` and nothing is returned. ``collect_paths``
is kubectl's way: every valid document is returned with every problem beside it (an invalid document is
skipped alone; a YAML syntax error ends its file, since the rest of the stream cannot be read; an
unreadable file is skipped alone), so a caller can apply the valid objects and list the invalid ones. A key given
twice in one mapping is refused with both lines (PyYAML would keep the last silently; kubectl refuses
it too). Reading is the only I/O here; validation is ``schema.build_resource``.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import yaml

from .errors import InvalidResource, ResourceError, SourceNotReadable
from .resource import Resource
from .schema import build_resource

# The libyaml parser when PyYAML was built with it (much faster on big files); same safe semantics.
_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(_BaseLoader):  # type: ignore[misc]
    """The safe loader, refusing a key that appears twice in one mapping.

    Checked on the mapping's own keys before ``<<`` merges are flattened: a key given explicitly may
    override a merged one (that is what merge keys are for), but two explicit ones are a mistake.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                if key in first:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key {key!r} (first at line {first[key].start_mark.line + 1}); "
                        "a mapping holds each key once: remove or merge one of them",
                        key_node.start_mark,
                    )
                first[key] = key_node
        result: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return result

STDIN = "-"
YAML_SUFFIXES = (".yaml", ".yml", ".json")
# Values per document, counted with aliases expanded: YAML anchors can make a small text stand for an
# exponentially large document ("billion laughs"); refuse it before anything walks it unbounded.
MAX_VALUES_PER_DOCUMENT = 200_000


class Loaded(NamedTuple):
    """What ``collect_paths`` read: the valid resources in order, and each problem found."""

    resources: list[Resource]
    errors: list[ResourceError]


def collect_paths(paths: list[str], stdin: TextIO | None = None) -> Loaded:
    """Like ``load_paths``, but an invalid document or unreadable file is reported, not raised."""
    resources: list[Resource] = []
    errors: list[ResourceError] = []
    for raw in paths:
        try:
            sources = _sources(raw, stdin)
        except SourceNotReadable as e:
            errors.append(e)
            continue
        for read, shown in sources:
            try:
                text = read()
            except SourceNotReadable as e:
                errors.append(e)
                continue
            resources.extend(load_documents(text, shown, errors=errors))
    return Loaded(resources, errors)


def load_documents(text: str, source: str, *, errors: list[ResourceError] | None = None) -> list[Resource]:
    """Every resource in ``text`` (``source`` names it in errors: a file name or ``-``).

    With ``errors``, an invalid document is appended there and skipped (the others still load) instead of
    raising; a YAML syntax error is appended and ends the text."""
    resources: list[Resource] = []
    index = 0
    try:
        for doc in yaml.load_all(text, Loader=_Loader):
            index += 1
            if doc is None:
                continue
            if not _within_budget(doc, MAX_VALUES_PER_DOCUMENT):
                raise InvalidResource(
                    source,
                    index,
                    f"more than {MAX_VALUES_PER_DOCUMENT} values once YAML aliases are expanded; "
                    "split it or drop the aliases",
                )
            try:
                if isinstance(doc, dict) and doc.get("kind") == "List":
                    resources.extend(_list_items(doc, source, index, errors))
                else:
                    resources.append(build_resource(doc, source, index))
            except InvalidResource as e:
                if errors is None:
                    raise
                errors.append(e)
    except yaml.YAMLError as e:
        error = InvalidResource(source, index + 1, _yaml_reason(e))
        if errors is None:
            raise error from None
        errors.append(error)
    return resources


def load_paths(paths: list[str], stdin: TextIO | None = None) -> list[Resource]:
    """Every resource in the given files, directories (their ``*.yaml``/``*.yml``/``*.json``, sorted,
    not recursive) and ``-`` (stdin), in order. Raises ``SourceNotReadable`` or ``InvalidResource``."""
    resources: list[Resource] = []
    for raw in paths:
        for read, shown in _sources(raw, stdin):
            resources.extend(load_documents(read(), shown))
    return resources


def _sources(raw: str, stdin: TextIO | None) -> list[tuple[Callable[[], str], str]]:
    """``(read, shown name)`` of each file ``raw`` stands for: stdin, a file, or a directory's YAML files."""
    if raw == STDIN:
        return [(lambda: (stdin or sys.stdin).read(), STDIN)]
    path = Path(raw)
    if path.is_dir():
        try:
            files = [(p, str(p)) for p in sorted(path.iterdir()) if p.suffix in YAML_SUFFIXES and p.is_file()]
        except OSError as e:
            raise SourceNotReadable(f"{raw}: {e.strerror}") from None
    else:
        files = [(path, raw)]
    return [(functools.partial(_read, file, shown), shown) for file, shown in files]


def _read(path: Path, shown: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SourceNotReadable(f"{shown}: no such file or directory") from None
    except PermissionError:
        raise SourceNotReadable(f"{shown}: permission denied") from None
    except UnicodeDecodeError as e:
        raise SourceNotReadable(f"{shown}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise SourceNotReadable(f"{shown}: {e.strerror}") from None


def _list_items(
    doc: dict[str, Any], source: str, index: int, errors: list[ResourceError] | None
) -> list[Resource]:
    items = doc.get("items")
    if items is None:
        return []
    if not isinstance(items, list):
        raise InvalidResource(source, index, "expected a list of resources", what="List", path="$.items")
    resources = []
    for i, item in enumerate(items, start=1):
        try:
            resources.append(build_resource(item, source, index, item=i))
        except InvalidResource as e:
            if errors is None:
                raise
            errors.append(e)
    return resources


def _within_budget(doc: object, budget: int) -> bool:
    """Whether ``doc`` has at most ``budget`` values, aliases counted each time they are used."""
    stack = [doc]
    while stack:
        budget -= 1
        if budget < 0:
            return False
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return True


def _yaml_reason(e: yaml.YAMLError) -> str:
    if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None:
        mark = e.problem_mark
        problem = e.problem or "syntax error"
        context = f" ({e.context})" if e.context else ""
        return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}{context}"
    return f"invalid YAML: {e}"
