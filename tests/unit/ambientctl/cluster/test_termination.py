"""Pod termination as Kubernetes does it: ``spec.terminationGracePeriodSeconds`` parsed (default 30, 0:
SIGKILL at once, bad values refused naming the field), carried on the pod's spec, no longer named as
unimplemented on apply, and honoured by ``ProcessSupervisor.stop_all`` (SIGTERM, the grace, SIGKILL)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ambientctl.cluster.errors import InvalidClusterSpec
from ambientctl.cluster.kubelet import pod_spec_from_resource, termination_grace
from ambientctl.cluster.procs import ProcessSupervisor
from ambientctl.cluster.spec import DEFAULT_TERMINATION_GRACE_S, PodSpec
from ambientctl.cluster.support import unimplemented_fields
from ambientctl.cluster.testing import wait_for
from meshcore.store import build_resource


def manifest(**spec: Any) -> Any:
    return build_resource(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [{"name": "c", "command": ["sleep", "1"]}], **spec},
        }
    )


GRACE = [
    ("an unset grace period is Kubernetes' default of 30 s", {}, 30),
    ("a grace period of 2 s is kept", {"terminationGracePeriodSeconds": 2}, 2),
    ("a grace period of 0 means SIGKILL at once", {"terminationGracePeriodSeconds": 0}, 0),
    ("an explicit null is the default", {"terminationGracePeriodSeconds": None}, 30),
]


@pytest.mark.parametrize(("spec", "expected"), [c[1:] for c in GRACE], ids=[c[0] for c in GRACE])
def test_the_grace_period_is_read_from_the_pod_spec(spec: dict[str, Any], expected: int) -> None:
    assert termination_grace(spec, "pod default/p") == expected
    pod = pod_spec_from_resource(manifest(**spec), default_node="node-1")
    assert pod.termination_grace_s == expected


REFUSED = [
    ("a negative grace period is refused", -1),
    ("a grace period given as a string is refused", "30"),
    ("a fractional grace period is refused", 1.5),
    ("a boolean grace period is refused", True),
]


@pytest.mark.parametrize("value", [c[1] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_a_bad_grace_period_is_refused_naming_the_field(value: object) -> None:
    with pytest.raises(InvalidClusterSpec, match=r"\$\.spec\.terminationGracePeriodSeconds"):
        pod_spec_from_resource(manifest(terminationGracePeriodSeconds=value), default_node="node-1")


@given(st.integers(min_value=0, max_value=2**31))
def test_every_whole_number_of_seconds_from_zero_is_kept(seconds: int) -> None:
    assert termination_grace({"terminationGracePeriodSeconds": seconds}, "pod default/p") == seconds


@given(st.integers(max_value=-1))
def test_every_negative_number_is_refused(seconds: int) -> None:
    with pytest.raises(InvalidClusterSpec, match="0 or more"):
        termination_grace({"terminationGracePeriodSeconds": seconds}, "pod default/p")


def test_a_pod_built_in_code_has_kubernetes_default_grace() -> None:
    assert PodSpec("p", "default", "node-1").termination_grace_s == DEFAULT_TERMINATION_GRACE_S == 30


def test_the_grace_period_is_not_named_as_unimplemented_on_apply() -> None:
    assert unimplemented_fields(manifest(terminationGracePeriodSeconds=5)) == []


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[ProcessSupervisor]:
    made = ProcessSupervisor(tmp_path / "run", tmp_path / "logs")
    yield made
    made.stop_all(made.pidfile_records(), grace=0)


# A process that notes each SIGTERM in a file and carries on: only SIGKILL ends it.
STUBBORN = (
    "import pathlib, signal, sys, time\n"
    "note = pathlib.Path(sys.argv[1])\n"
    "signal.signal(signal.SIGTERM, lambda *_: note.write_text(note.read_text() + 'TERM\\n'))\n"
    "note.write_text('started\\n')\n"
    "while True:\n"
    "    time.sleep(0.05)\n"
)


def start_stubborn(supervisor: ProcessSupervisor, note: Path) -> Any:
    record = supervisor.start(
        "stubborn", "", [sys.executable, "-c", STUBBORN, str(note)], log_name="stubborn"
    )
    assert wait_for("the process noted its start", lambda: note.exists() and "started" in note.read_text())
    return record


def test_a_process_that_ignores_sigterm_gets_sigterm_then_is_killed_after_the_grace(
    supervisor: ProcessSupervisor, tmp_path: Path
) -> None:
    note = tmp_path / "note"
    record = start_stubborn(supervisor, note)
    assert supervisor.stop_all([record], grace=0.5) == [record]
    assert not supervisor.is_running(record)
    assert note.read_text().splitlines() == ["started", "TERM"]  # asked, ignored it, then killed


def test_a_grace_of_zero_kills_at_once_without_sigterm(supervisor: ProcessSupervisor, tmp_path: Path) -> None:
    note = tmp_path / "note"
    record = start_stubborn(supervisor, note)
    assert supervisor.stop_all([record], grace=0) == [record]
    assert not supervisor.is_running(record)
    assert note.read_text().splitlines() == ["started"]


def test_a_process_that_exits_on_sigterm_is_stopped_by_it(supervisor: ProcessSupervisor) -> None:
    record = supervisor.start("sleeper", "", ["sleep", "300"], log_name="sleeper")
    # A 300 s grace is never waited out: sleep ends on SIGTERM (a hang here would trip the test timeout).
    assert supervisor.stop_all([record], grace=300) == [record]
    assert not supervisor.is_running(record)
