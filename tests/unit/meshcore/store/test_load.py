"""Reading YAML text, files, directories and stdin: multi-document, List, all-or-nothing, YAML errors."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcore.store import (
    KINDS,
    InvalidResource,
    SourceNotReadable,
    build_resource,
    load_documents,
    load_paths,
)

NS = "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n"
SA = "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: app, namespace: demo}\n"
BAD_SVC = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{port: http}]\n"


def test_multi_document_text_yields_every_resource_in_order_skipping_empty_documents() -> None:
    text = "# leading comment\n---\n" + NS + "---\n---\n" + SA
    resources = load_documents(text, "x.yaml")
    assert [str(r.ref) for r in resources] == ["Namespace/demo", "ServiceAccount/demo/app"]


def test_a_list_document_is_unpacked() -> None:
    text = (
        "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n"
        "- {apiVersion: v1, kind: Namespace, metadata: {name: b}}\n"
    )
    assert [r.name for r in load_documents(text, "-")] == ["a", "b"]


def test_documents_are_counted_as_a_person_counts_them_including_empty_ones() -> None:
    text = NS + "---\n# nothing here\n---\n" + BAD_SVC
    with pytest.raises(InvalidResource) as caught:
        load_documents(text, "services.yaml")
    assert str(caught.value) == (
        "services.yaml: document 3 (Service default/web): $.spec.ports[0].port: Expected int, got str"
    )


def test_unparseable_yaml_reports_line_and_column() -> None:
    text = NS + "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: x\n   bad: indent\n"
    with pytest.raises(InvalidResource) as caught:
        load_documents(text, "pods.yaml")
    message = str(caught.value)
    assert message.startswith("pods.yaml: document 2: invalid YAML at line 9, column 7")
    assert "mapping values are not allowed" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            NS + "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\nmetadata:\n  name: b\n",
            "dup.yaml: document 2: invalid YAML at line 9, column 1: duplicate key 'metadata' (first at line 7)",
        ),
        (
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  labels:\n    app: x\n    app: y\n",
            "dup.yaml: document 1: invalid YAML at line 7, column 5: duplicate key 'app' (first at line 6)",
        ),
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, name: b}\n",
            "dup.yaml: document 1: invalid YAML at line 3, column 21: duplicate key 'name' (first at line 3)",
        ),
        (
            '{"apiVersion": "v1", "kind": "Namespace", "kind": "Pod", "metadata": {"name": "a"}}\n',
            "dup.yaml: document 1: invalid YAML at line 1, column 43: duplicate key 'kind' (first at line 1)",
        ),
    ],
    ids=[
        "two metadata keys in one document are refused, naming both lines",
        "a label given twice is refused",
        "a duplicate in a flow mapping is refused",
        "a duplicate in JSON is refused",
    ],
)
def test_a_key_given_twice_in_one_mapping_is_refused_not_silently_overwritten(
    text: str, expected: str
) -> None:
    with pytest.raises(InvalidResource) as caught:
        load_documents(text, "dup.yaml")
    assert str(caught.value).startswith(expected)
    assert "remove or merge one of them" in str(caught.value)


def test_a_key_may_override_one_merged_in_with_yaml_merge_keys() -> None:
    text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  <<: {name: merged, labels: {a: b}}\n  name: own\n"
    (ns,) = load_documents(text, "merge.yaml")
    assert (ns.name, ns.labels) == ("own", {"a": "b"})


def test_equal_keys_in_different_mappings_are_fine() -> None:
    text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  labels: {name: x}\n  annotations: {name: y}\n"
    (ns,) = load_documents(text, "ok.yaml")
    assert (ns.labels, ns.annotations) == ({"name": "x"}, {"name": "y"})


def test_a_file_with_one_bad_document_returns_nothing(tmp_path: Path) -> None:
    f = tmp_path / "mixed.yaml"
    f.write_text(NS + "---\n" + BAD_SVC)
    with pytest.raises(InvalidResource, match="mixed.yaml: document 2"):
        load_paths([str(f)])


def test_a_directory_is_read_in_name_order_and_only_yaml_files(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text(SA)
    (tmp_path / "a.yml").write_text(NS)
    (tmp_path / "notes.txt").write_text("not yaml: [")
    resources = load_paths([str(tmp_path)])
    assert [r.kind for r in resources] == ["Namespace", "ServiceAccount"]


def test_a_bad_file_in_a_directory_is_named_by_its_path(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(NS)
    (tmp_path / "z.yaml").write_text(BAD_SVC)
    with pytest.raises(InvalidResource, match=r"z\.yaml: document 1"):
        load_paths([str(tmp_path)])


def test_dash_reads_stdin_and_names_it_dash() -> None:
    assert [r.name for r in load_paths(["-"], stdin=io.StringIO(NS))] == ["demo"]
    with pytest.raises(InvalidResource, match=r"^-: document 1"):
        load_paths(["-"], stdin=io.StringIO(BAD_SVC))


def test_a_missing_file_is_reported_by_the_name_given(tmp_path: Path) -> None:
    with pytest.raises(SourceNotReadable, match="nope.yaml: no such file or directory"):
        load_paths([str(tmp_path / "nope.yaml")])


def test_a_binary_file_is_refused_as_not_text(tmp_path: Path) -> None:
    f = tmp_path / "blob.yaml"
    f.write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(SourceNotReadable, match="not UTF-8"):
        load_paths([str(f)])


def test_an_alias_bomb_is_refused_quickly() -> None:
    lines = [
        "apiVersion: v1",
        "kind: Namespace",
        "metadata: {name: x}",
        "spec:",
        "  l0: &l0 [a, a, a, a, a, a, a, a, a]",
    ]
    for i in range(1, 10):
        refs = ", ".join([f"*l{i - 1}"] * 9)
        lines.append(f"  l{i}: &l{i} [{refs}]")
    with pytest.raises(InvalidResource, match="once YAML aliases are expanded"):
        load_documents("\n".join(lines) + "\n", "bomb.yaml")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
documents = st.fixed_dictionaries(
    {
        "apiVersion": st.sampled_from(["v1", "security.istio.io/v1", "gateway.networking.k8s.io/v1", "x"]),
        "kind": st.sampled_from([*KINDS, "List", "Other"]),
        "metadata": st.fixed_dictionaries({"name": st.sampled_from(["web", "Web", ""]) | json_values})
        | json_values,
    },
    optional={"spec": json_values, "status": json_values},
)


@given(st.text(max_size=200))
def test_any_text_either_loads_or_raises_invalid_resource(text: str) -> None:
    try:
        load_documents(text, "fuzz.yaml")
    except InvalidResource as e:
        assert str(e).startswith("fuzz.yaml: document ")


@given(documents)
def test_any_document_shape_either_validates_or_raises_invalid_resource(doc: dict[str, object]) -> None:
    try:
        resource = build_resource(doc, "fuzz.yaml", 1)
    except InvalidResource as e:
        assert str(e).startswith("fuzz.yaml: document 1")
    else:
        assert resource.kind in KINDS and resource.name == doc["metadata"]["name"]  # type: ignore[index]


def test_collect_paths_keeps_the_valid_documents_and_reports_each_invalid_one(tmp_path: Path) -> None:
    from meshcore.store import collect_paths

    good = tmp_path / "good.yaml"
    good.write_text(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n"
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: B}\n---\n"
        "kind: List\nitems: [{apiVersion: v1, kind: Namespace, metadata: {name: c}}, {kind: Nope}]\n"
    )
    broken = tmp_path / "broken.yaml"
    broken.write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: d}\n---\nkey: [unclosed\n")
    loaded = collect_paths([str(good), str(tmp_path / "missing.yaml"), str(broken)])
    assert [r.name for r in loaded.resources] == ["a", "c", "d"]
    assert [str(e).split(": ")[0:2] for e in loaded.errors] == [
        [str(good), "document 2 (Namespace B)"],
        [str(good), "document 3 (List item 2, Nope)"],
        [str(tmp_path / "missing.yaml"), "no such file or directory"],
        [str(broken), "document 2"],
    ]
