"""Where the state directory is: flag, environment, root default, XDG default; created private."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from meshcore.store import STATE_DIR_ENV, StoreUnavailable, resolve_state_dir, store_path
from meshcore.store.paths import ROOT_STATE_DIR, default_state_dir

HOME = Path("/home/ann")


@pytest.mark.parametrize(
    ("env", "is_root", "expected"),
    [
        ({STATE_DIR_ENV: "/srv/mesh"}, True, Path("/srv/mesh")),
        ({}, True, ROOT_STATE_DIR),
        ({"XDG_STATE_HOME": "/xdg"}, False, Path("/xdg/ambient-mesh")),
        ({"XDG_STATE_HOME": "relative"}, False, HOME / ".local/state/ambient-mesh"),
        ({}, False, HOME / ".local/state/ambient-mesh"),
    ],
    ids=[
        "the environment variable wins over the root default",
        "root uses /var/lib/ambient-mesh",
        "a user uses XDG_STATE_HOME when set",
        "a relative XDG_STATE_HOME is ignored as the XDG spec says",
        "a user without XDG_STATE_HOME uses ~/.local/state",
    ],
)
def test_default_state_dir(env: dict[str, str], is_root: bool, expected: Path) -> None:
    assert default_state_dir(env, is_root, HOME) == expected


def test_flag_wins_over_environment_and_directory_is_created_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "from-env"))
    got = resolve_state_dir(str(tmp_path / "from-flag" / "nested"))
    assert got == tmp_path / "from-flag" / "nested"
    assert stat.S_IMODE(got.stat().st_mode) == 0o700
    assert not (tmp_path / "from-env").exists()
    assert store_path(got) == got / "store.db"


def test_environment_is_used_without_a_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "env"))
    assert resolve_state_dir(None) == tmp_path / "env"


def test_a_file_in_the_way_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(StoreUnavailable, match="is not a directory"):
        resolve_state_dir(str(tmp_path / "f"))
