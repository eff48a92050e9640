"""``ambientctl bug-report``'s redaction: the archive never holds a private key (PEM or bare base64 lines
of a key file in the state directory, a Secret's values, a JSON field named like a key), keeps
certificates, and leaves out (naming it) a member that still says PRIVATE KEY after redaction."""

from __future__ import annotations

import json
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from ambientctl.troubleshoot.bugreport import (
    REDACTED,
    Report,
    find_key_files,
    key_material,
    redact,
    redact_resource,
    secrets_in,
    write_archive,
)
from meshcore.tls import certs

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
KEY = certs.generate_key()
KEY_PEM = certs.key_to_pem(KEY)
CERT_PEM = certs.cert_to_pem(
    certs.build_ca_certificate(KEY, common_name="root", organization="cluster.local",
                               not_before=NOW - timedelta(days=1), not_after=NOW + timedelta(days=365))
)  # fmt: skip
KEY_BODY = [line for line in KEY_PEM.splitlines() if not line.startswith("-----")]


def read_archive(path: Path) -> dict[str, str]:
    with tarfile.open(path, "r:gz") as tar:
        out = {}
        for m in tar.getmembers():
            f = tar.extractfile(m)
            assert f is not None
            out[m.name.split("/", 1)[1]] = f.read().decode()
        return out


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    cred = tmp_path / "state" / "cluster" / "nodes" / "node-1" / "credential"
    cred.mkdir(parents=True)
    (cred / "key.pem").write_text(KEY_PEM)
    (cred / "root-cert.pem").write_text(CERT_PEM)
    (tmp_path / "state" / "ztunnel-node-1.log").write_text("started; PRIVATE KEY rotation is not a key\n")
    return tmp_path / "state"


def test_key_files_are_found_by_their_pem_header_only(state_dir: Path) -> None:
    assert [p.name for p in find_key_files(state_dir)] == ["key.pem"]


def test_the_archive_holds_no_key_material_and_keeps_certificates(state_dir: Path, tmp_path: Path) -> None:
    bare_line = KEY_BODY[0]
    report = Report()
    report.add("logs/ztunnel-node-1.log", f"loaded\n{KEY_PEM}\nthen a bare line {bare_line} logged\n")
    report.add_json("nodes/node-1/ztunnel-config_dump.json",
                    {"certificates": [{"certChain": [{"pem": CERT_PEM}], "privateKey": "MHcCAQEEI..."}]})  # fmt: skip
    report.add("resources.json", json.dumps([redact_resource(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cacerts"},
         "data": {"ca-key.pem": "LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0t", "ca-cert.pem": "LS0t"}}
    )]))  # fmt: skip
    report.missing["istiod/metrics.txt"] = "istiod :15014/metrics: ConnectionRefusedError"
    out = tmp_path / "out" / "report.tar.gz"

    withheld = write_archive(report, out, secrets_in(state_dir), created=NOW)

    assert withheld == []
    assert out.stat().st_mode & 0o777 == 0o600
    files = read_archive(out)
    everything = "\n".join(files.values())
    assert "PRIVATE KEY" not in everything
    for secret in [KEY_PEM.strip(), *KEY_BODY, "MHcCAQEEI", "LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0t"]:
        assert secret not in everything
    assert CERT_PEM.strip() in files["nodes/node-1/ztunnel-config_dump.json"].replace("\\n", "\n")
    secret = json.loads(files["resources.json"])[0]
    assert secret["data"] == {"ca-key.pem": REDACTED, "ca-cert.pem": REDACTED}
    assert "then a bare line [redacted] logged" in files["logs/ztunnel-node-1.log"]
    manifest = files["MANIFEST.txt"]
    assert "istiod/metrics.txt: istiod :15014/metrics: ConnectionRefusedError" in manifest
    assert "logs/ztunnel-node-1.log" in manifest


def test_a_member_still_naming_a_private_key_is_left_out_and_named(tmp_path: Path) -> None:
    report = Report()
    report.add("logs/odd.log", "-----BEGIN OPENSSH PRIVATE KEY----- truncated")  # no END: cut to the end
    report.add("logs/mangled.log", "key follows: PRIVATE KEY\nAAAA\n")  # no PEM armour: cannot be cut
    report.add("versions.json", "{}\n")

    withheld = write_archive(report, tmp_path / "r.tar.gz", [], created=NOW)

    assert withheld == ["logs/mangled.log"]
    files = read_archive(tmp_path / "r.tar.gz")
    assert set(files) == {"logs/odd.log", "versions.json", "MANIFEST.txt"}
    assert "PRIVATE KEY" not in files["logs/odd.log"]
    assert "logs/mangled.log: left out: it still held key material after redaction" in files["MANIFEST.txt"]


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"key_pem": "x", "cert_pem": "c"}, {"key_pem": REDACTED, "cert_pem": "c"}),
        ({"nested": [{"private_key": "x"}]}, {"nested": [{"private_key": REDACTED}]}),
        ({"key": "", "keyUsage": ["sign"]}, {"key": "", "keyUsage": ["sign"]}),
    ],
    ids=[
        "a key_pem field is replaced and a cert_pem kept",
        "a private_key field inside a list is replaced",
        "an empty key and a keyUsage list are kept as they are",
    ],
)
def test_json_fields_named_like_a_key_are_replaced(doc: dict[str, object], expected: dict[str, object]) -> None:
    assert redact_resource(doc) == expected


def test_key_material_is_whole_key_then_its_lines_longest_first() -> None:
    material = key_material([KEY_PEM])
    assert material[0] == KEY_PEM.strip()
    assert set(KEY_BODY) - {line for line in KEY_BODY if len(line) < 24} <= set(material)
    assert not any(m.startswith("-----") for m in material[1:])


@given(before=st.text(max_size=200), after=st.text(max_size=200))
def test_redact_removes_a_pem_key_whatever_surrounds_it(before: str, after: str) -> None:
    assume("PRIVATE KEY" not in before + after)
    text = redact(before + KEY_PEM + after, key_material([KEY_PEM]))
    assert "PRIVATE KEY" not in text
    assert all(line not in text for line in KEY_BODY if len(line) >= 24)
