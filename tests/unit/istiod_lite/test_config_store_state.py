"""The start-up check on the state directory: a missing or emptied store beside an existing CA root is
refused unless --allow-empty-store; every ordinary state directory passes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from istiod_lite.ca.storage import load_or_create_root
from istiod_lite.config import ConfigError, EmptyStoreRefused, check_store_state, parse_config
from meshcore.store import SqliteStore


def nothing(_: Path) -> None:
    pass


def ca(d: Path) -> None:
    load_or_create_root(d, trust_domain="cluster.local", now=datetime.now(UTC))


def fresh_store(d: Path) -> None:
    SqliteStore(d / "store.db").close()


def ca_and_fresh_store(d: Path) -> None:
    ca(d)
    fresh_store(d)


def ca_and_emptied_store(d: Path) -> None:
    ca(d)
    (d / "store.db").write_bytes(b"")


def empty_ca_dir_only(d: Path) -> None:
    (d / "ca").mkdir()


@pytest.mark.parametrize(
    ("prepare", "allow", "outcome"),
    [
        (nothing, False, "fine"),
        (fresh_store, False, "fine"),
        (ca_and_fresh_store, False, "fine"),
        (empty_ca_dir_only, False, "fine"),
        (ca, False, "refused"),
        (ca_and_emptied_store, False, "refused"),
        (ca, True, "allowed"),
        (ca_and_emptied_store, True, "allowed"),
    ],
    ids=[
        "a first start in an empty directory is fine",
        "a store without a CA yet is fine",
        "a created store that was never written is fine beside its CA",
        "an empty ca directory (no root yet) is no evidence of state",
        "a missing store beside a CA root is refused",
        "a zero-byte store beside a CA root is refused",
        "the flag allows a missing store beside a CA root, and says it did",
        "the flag allows a zero-byte store beside a CA root, and says it did",
    ],
)
def test_check_store_state(tmp_path: Path, prepare: Callable[[Path], None], allow: bool, outcome: str) -> None:
    prepare(tmp_path)
    config = parse_config(state_dir=str(tmp_path), allow_empty_store=allow, env={})
    if outcome == "refused":
        with pytest.raises(EmptyStoreRefused) as caught:
            check_store_state(config)
        message = str(caught.value)
        assert str(tmp_path / "store.db") in message and str(tmp_path / "ca") in message
        assert "starting empty would drop every namespace, pod, service and policy" in message
        assert "--allow-empty-store" in message
    else:
        assert check_store_state(config) is (outcome == "allowed")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, ("sqlite", None, None)),
        ({"STORE": "kubernetes"}, ("kubernetes", None, None)),
        ({"STORE": "Kubernetes", "KUBECONFIG": "/k/config", "KUBE_CONTEXT": "prod"}, ("kubernetes", "/k/config", "prod")),
    ],
    ids=["the embedded store is the default", "STORE=kubernetes picks the API server",
         "a kubeconfig and its context are taken from the environment"],
)
def test_the_store_setting_picks_the_backend(tmp_path: Path, env: dict[str, str], expected: tuple[object, ...]) -> None:
    config = parse_config(state_dir=str(tmp_path), env=env)
    assert (config.store, config.kubeconfig, config.kube_context) == expected


def test_an_unknown_store_is_refused_naming_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"STORE='etcd': expected one of sqlite, kubernetes"):
        parse_config(state_dir=str(tmp_path), env={"STORE": "etcd"})


def test_the_state_directory_check_does_not_apply_to_the_kubernetes_store(tmp_path: Path) -> None:
    ca(tmp_path)  # a CA root and no store.db: refused with sqlite, normal with kubernetes
    assert check_store_state(parse_config(state_dir=str(tmp_path), env={"STORE": "kubernetes"})) is False
