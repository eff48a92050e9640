"""istiod-lite's start-up on a bad state directory, run as operators run it: the real ``istiod-lite``
console script in a subprocess, on loopback with port 0.

A damaged store or CA file, or a store missing beside an existing CA, stops the process with exactly
one line on stderr naming the file and the fix, and exit code 2, never a traceback. The explicit
``--allow-empty-store`` flag is the only way to start empty beside an existing CA.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from istiod_lite.ca.storage import load_or_create_root
from istiod_lite.config import check_store_state, parse_config
from meshcore.store import SqliteStore, build_resource

ISTIOD = Path(sys.executable).with_name("istiod-lite")
LOOPBACK = ["--xds-address", "127.0.0.1:0", "--monitoring-address", "127.0.0.1:0", "--token-ca-address", "127.0.0.1:0"]
RUN_WITHIN = 60.0


def clean_env() -> dict[str, str]:
    """This environment without settings that would point istiod-lite elsewhere than the test's dir."""
    prefixes = ("AMBIENT_", "ISTIOD_", "CA_", "TRUST_DOMAIN", "LOG_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env["LOG_FORMAT"] = "console"
    return env


def run_istiod(state_dir: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    assert ISTIOD.exists(), f"{ISTIOD} missing: install the project into the venv (pip install -e .)"
    return subprocess.run(
        [str(ISTIOD), "--state-dir", str(state_dir), *LOOPBACK, *flags],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=RUN_WITHIN,  # kills it if it started serving instead of refusing
    )


def with_ca(state_dir: Path) -> None:
    load_or_create_root(state_dir, trust_domain="cluster.local", now=datetime.now(UTC))


def with_store(state_dir: Path) -> None:
    with SqliteStore(state_dir / "store.db") as store:
        store.apply([build_resource({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}})])


def garbage_store(d: Path) -> None:
    with_ca(d)
    (d / "store.db").write_bytes(b"\x00not a database at all\n" * 300)


def garbled_store_pages(d: Path) -> None:
    with_ca(d)
    with_store(d)
    with SqliteStore(d / "store.db") as store:
        store.apply(
            [
                build_resource(
                    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"n{i}", "labels": {"a": "b" * 60}}}
                )
                for i in range(300)
            ]
        )
    path = d / "store.db"
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.seek(4096)  # the header and schema page stay intact: the damage shows only when objects are read
        f.write(b"\xa5" * (size - 4096))


def garbage_ca_key(d: Path) -> None:
    with_ca(d)
    with_store(d)
    (d / "ca" / "root-key.pem").write_text("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n")


def emptied_ca_cert(d: Path) -> None:
    with_ca(d)
    with_store(d)
    (d / "ca" / "root-cert.pem").write_text("")


def missing_store_beside_ca(d: Path) -> None:
    with_ca(d)


def emptied_store_beside_ca(d: Path) -> None:
    with_ca(d)
    (d / "store.db").write_bytes(b"")


@pytest.mark.parametrize(
    ("damage", "names", "fix"),
    [
        (garbage_store, "store.db", "restore it from a backup, or move it aside"),
        (garbled_store_pages, "store.db", "restore it from a backup, or move it aside"),
        (garbage_ca_key, "ca/root-key.pem", "from a backup (only if there is none: move both"),
        (emptied_ca_cert, "ca/root-cert.pem", "from a backup (only if there is none: move both"),
        (missing_store_beside_ca, "store.db is missing", "start with --allow-empty-store"),
        (emptied_store_beside_ca, "store.db is empty (0 bytes)", "start with --allow-empty-store"),
    ],
    ids=[
        "a store file of garbage stops istiod-lite with one line naming it and the fix",
        "a store with garbled pages stops istiod-lite with one line naming it and the fix",
        "a damaged CA key stops istiod-lite with one line naming it and the fix",
        "an emptied CA certificate stops istiod-lite with one line naming it and the fix",
        "a missing store beside an existing CA is refused without the explicit flag",
        "an emptied store beside an existing CA is refused without the explicit flag",
    ],
)
def test_a_bad_state_dir_stops_istiod_lite_with_one_line_and_the_fix(
    tmp_path: Path, damage: Callable[[Path], None], names: str, fix: str
) -> None:
    damage(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    result = run_istiod(tmp_path)
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    (line,) = lines
    assert line.startswith("istiod-lite: ") and "Traceback" not in line
    assert f"{tmp_path}/{names}" in line and fix in line
    if "store" in names:
        assert "--allow-empty-store" in line
    after = {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name in before}
    assert after == before, "a refused start changes no file"


def test_the_explicit_flag_starts_an_empty_store_beside_an_existing_ca_and_says_so(tmp_path: Path) -> None:
    missing_store_beside_ca(tmp_path)
    root_before = (tmp_path / "ca" / "root-cert.pem").read_bytes()
    proc = subprocess.Popen(
        [str(ISTIOD), "--state-dir", str(tmp_path), *LOOPBACK, "--allow-empty-store"],
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + RUN_WITHIN
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stderr, selectors.EVENT_READ)
            while not any("istiod-lite serving" in line for line in lines):
                left = deadline - time.monotonic()
                assert left > 0 and proc.poll() is None, "".join(lines)
                if sel.select(timeout=left):
                    line = proc.stderr.readline()
                    assert line, "istiod-lite closed stderr before serving:\n" + "".join(lines)
                    lines.append(line)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=RUN_WITHIN) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert any("starting with an empty store although ca/ holds a root" in line for line in lines), lines
    assert (tmp_path / "store.db").exists()
    assert (tmp_path / "ca" / "root-cert.pem").read_bytes() == root_before, "the existing root is kept"



def test_a_node_credential_issued_before_the_first_start_does_not_make_the_start_refuse(tmp_path: Path) -> None:
    # node-credential generates the root when none exists; it creates the store too, so the CA is never
    # evidence of a lost store when the store simply was never created.
    issued = subprocess.run(
        [str(ISTIOD), "--state-dir", str(tmp_path), "node-credential", "node-1", "--out", str(tmp_path / "cred")],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=RUN_WITHIN,
    )
    assert issued.returncode == 0, issued.stderr
    assert (tmp_path / "ca" / "root-cert.pem").exists() and (tmp_path / "store.db").stat().st_size > 0
    assert check_store_state(parse_config(state_dir=str(tmp_path), env={})) is False
