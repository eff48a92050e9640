"""Reading resources from YAML text, files, directories and stdin (what ``ambientctl apply -f`` takes).

Multi-document YAML (``---``), empty documents skipped but counted (so "document 3" is the third
``---`` section a person sees), ``kind: List`` unpacked. All or nothing: the first invalid document
raises ``InvalidResource`` and nothing is returned, so a caller never applies half a file. A key given
twice in one mapping is refused with both lines (PyYAML would keep the last silently; kubectl refuses
it too). Reading is the only I/O here; validation is ``schema.build_resource``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

import yaml

from .errors import InvalidResource, SourceNotReadable
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


def load_documents(text: str, source: str) -> list[Resource]:
    """Every resource in ``text`` (``source`` names it in errors: a file name or ``-``)."""
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
            if isinstance(doc, dict) and doc.get("kind") == "List":
                resources.extend(_list_items(doc, source, index))
            else:
                resources.append(build_resource(doc, source, index))
    except yaml.YAMLError as e:
        raise InvalidResource(source, index + 1, _yaml_reason(e)) from None
    return resources


def load_paths(paths: list[str], stdin: TextIO | None = None) -> list[Resource]:
    """Every resource in the given files, directories (their ``*.yaml``/``*.yml``/``*.json``, sorted,
    not recursive) and ``-`` (stdin), in order. Raises ``SourceNotReadable`` or ``InvalidResource``."""
    resources: list[Resource] = []
    for raw in paths:
        if raw == STDIN:
            resources.extend(load_documents((stdin or sys.stdin).read(), STDIN))
            continue
        path = Path(raw)
        if path.is_dir():
            files = [(p, str(p)) for p in sorted(path.iterdir()) if p.suffix in YAML_SUFFIXES and p.is_file()]
        else:
            files = [(path, raw)]
        for file, shown in files:
            resources.extend(load_documents(_read(file, shown), shown))
    return resources


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


def _list_items(doc: dict[str, Any], source: str, index: int) -> list[Resource]:
    items = doc.get("items")
    if items is None:
        return []
    if not isinstance(items, list):
        raise InvalidResource(source, index, "expected a list of resources", what="List", path="$.items")
    return [build_resource(item, source, index, item=i) for i, item in enumerate(items, start=1)]


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
