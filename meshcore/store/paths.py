"""Where the embedded store lives: one state directory shared by ambientctl and istiod_lite.

Resolution order: the ``--state-dir`` flag, then ``$AMBIENT_STATE_DIR``, then ``/var/lib/ambient-mesh``
for root, else ``$XDG_STATE_HOME/ambient-mesh`` or ``~/.local/state/ambient-mesh``. The directory is
created private (0700) when missing; an existing directory's mode is left alone (it may be the
operator's choice). Only path arithmetic and ``mkdir`` here: opening the store is ``sqlite.py``'s job.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from .errors import StoreUnavailable

STATE_DIR_ENV = "AMBIENT_STATE_DIR"
ROOT_STATE_DIR = Path("/var/lib/ambient-mesh")
STORE_FILE = "store.db"


def default_state_dir(env: Mapping[str, str], is_root: bool, home: Path) -> Path:
    """The state directory when no flag is given (pure: environment, euid and home passed in)."""
    if env.get(STATE_DIR_ENV):
        return Path(env[STATE_DIR_ENV]).expanduser()
    if is_root:
        return ROOT_STATE_DIR
    xdg = env.get("XDG_STATE_HOME")
    # The XDG spec says relative values are invalid and must be ignored.
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "ambient-mesh"
    return home / ".local" / "state" / "ambient-mesh"


def resolve_state_dir(flag: str | None) -> Path:
    """The state directory to use, created (0700) if missing; ``StoreUnavailable`` if it cannot be."""
    if flag:
        path = Path(flag).expanduser()
    else:
        path = default_state_dir(os.environ, os.geteuid() == 0, Path.home())
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise StoreUnavailable(f"state directory {path} exists and is not a directory") from None
    except OSError as e:
        raise StoreUnavailable(
            f"cannot create state directory {path}: {e.strerror}; "
            f"choose another with --state-dir or {STATE_DIR_ENV}"
        ) from None
    if not path.is_dir():
        raise StoreUnavailable(f"state directory {path} exists and is not a directory")
    return path


def store_path(state_dir: Path) -> Path:
    """The store database inside a state directory."""
    return state_dir / STORE_FILE
