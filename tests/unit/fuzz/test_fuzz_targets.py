"""The fuzz targets of ``bench/fuzz_targets.py`` under hypothesis, and every crash the campaign found.

Each target takes one ``bytes`` input and raises only on a real bug (an exception the code under test
let out, or a broken invariant), so "the target does not raise" is the whole property; hypothesis
runs a modest number of inputs per target here (the million-input runs are ``bench/fuzz.py``,
recorded in docs/benchmarks.md ## Fuzzing). Inputs that once crashed a target stay as explicit
``@example``s, and each crash also has a direct regression test against the code it was in, built
from frames/bytes written out here (so it does not depend on how the targets decode their inputs).
The seed corpus committed under ``bench/fuzz_corpus/`` must pass its target too.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import hpack
import pytest
from hyperframe.frame import DataFrame, HeadersFrame, SettingsFrame
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from meshcore.hbone import HboneServerConn, TunnelRequested, TunnelRequestRefused, TunnelReset
from waypoint.l7.events import Refusal, ResponseHead, StreamReset
from waypoint.l7.http1 import Http1Client
from waypoint.l7.http2 import H2Client

ROOT = Path(__file__).resolve().parents[3]
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _load(name: str) -> ModuleType:
    """``bench/<name>.py`` as a module (bench/ is scripts, not a package)."""
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    return module


ft = _load("fuzz_targets")
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
inputs = st.binary(max_size=600)


# --- the seed corpus ------------------------------------------------------------------------------------


def _corpus() -> list[tuple[str, Path]]:
    return sorted((d.name, f) for d in (ROOT / "bench" / "fuzz_corpus").iterdir() for f in d.iterdir())


@pytest.mark.parametrize(("target", "path"), _corpus(), ids=lambda v: v.name if isinstance(v, Path) else v)
def test_every_committed_seed_passes_its_target(target: str, path: Path) -> None:
    ft.TARGETS[target](path.read_bytes())


def test_the_committed_corpus_is_what_the_seed_builders_make() -> None:
    committed = {d.name: sorted(f.name for f in d.iterdir()) for d in (ROOT / "bench" / "fuzz_corpus").iterdir()}
    built = {name: [f"seed-{i:03d}" for i in range(len(seeds))] for name, seeds in ft.seed_inputs().items()}
    assert committed == built
    assert set(built) == set(ft.TARGETS)


# --- targets under hypothesis (crash inputs kept as examples) -------------------------------------------


@FUZZ
@given(inputs)
def test_the_hbone_server_survives_arbitrary_bytes_after_its_preface(data: bytes) -> None:
    ft.fuzz_hbone_bytes(data)


@FUZZ
@given(inputs)
@example(  # a refused CONNECT whose stream h2 closed in the same read: StreamIDTooLowError from receive_data
    b"\x0f\x0f" + b"\x00\x00\x00\x00\x04\x00\x01\x05\x01\x02\x03\x04\x05\x0f\x0f" * 5
    + b"\x00\x00\x00\x00\x04\x00\x01\x05\x01\x02\x03\x04\x05"
)
def test_the_hbone_server_survives_arbitrary_frame_sequences(data: bytes) -> None:
    ft.fuzz_hbone_frames(data)


@FUZZ
@given(inputs)
def test_the_zds_decoder_rejects_bad_packets_with_typed_errors(data: bytes) -> None:
    ft.fuzz_zds(data)


@FUZZ
@given(inputs)
def test_xds_resources_are_applied_or_rejected_never_raised(data: bytes) -> None:
    ft.fuzz_xds(data)


@FUZZ
@given(inputs)
def test_the_cni_plugin_answers_arbitrary_stdin_with_a_result_or_a_cni_error(data: bytes) -> None:
    ft.fuzz_cni(data)


@FUZZ
@given(st.one_of(inputs, st.text(alphabet=st.sampled_from("{}[]:,-&*!|>'\"#\n  abkind01"), max_size=300).map(str.encode)))
def test_yaml_apply_refuses_bad_documents_with_invalid_resource(data: bytes) -> None:
    ft.fuzz_yaml(data)


@FUZZ
@given(inputs)
@example(b'"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 004 No Content\r\n\r\n')  # status 4 passed on
def test_the_waypoint_http1_parsers_only_refuse(data: bytes) -> None:
    ft.fuzz_http1(data)


@FUZZ
@given(inputs)
@example(b"%\x03\x00\x00\x00\x00\x04\x00\x01\x03\x01\x02\x03\x02\x03\x04\x05\x06\x07\x08\x07\x04\x00\x08\x00\x04\t\x03")
@example(b"%\x03\x00\x00\x00\x08\x8b\x00\x04\x00\x01\x03\x01|\x03")  # ':status: 1xx' (informational)
def test_the_waypoint_http2_sessions_only_refuse(data: bytes) -> None:
    ft.fuzz_http2(data)


# --- regression tests for the crashes found (direct, against the code that had the bug) ------------------


def _connect_block(encoder: hpack.Encoder, authority: str) -> bytes:
    return encoder.encode([(":method", "CONNECT"), (":authority", authority)])


@pytest.mark.parametrize("authority", ["localhost:80", "127.0.0.1:80"], ids=["refused", "valid"])
def test_hbone_a_request_whose_stream_is_closed_in_the_same_read_does_not_raise(authority: str) -> None:
    # HEADERS(3, END_STREAM) twice: h2 closes stream 3 itself; HEADERS(5) then makes it forget stream 3
    # before the first request is answered (400 for a bad authority): the answer must not raise.
    enc = hpack.Encoder()
    frames = [
        HeadersFrame(3, _connect_block(enc, authority), flags={"END_HEADERS", "END_STREAM"}),
        HeadersFrame(3, _connect_block(enc, authority), flags={"END_HEADERS", "END_STREAM"}),
        HeadersFrame(5, _connect_block(enc, "127.0.0.1:1"), flags={"END_HEADERS"}),
    ]
    conn = HboneServerConn(now=0.0)
    events = conn.receive_data(PREFACE + SettingsFrame(0).serialize() + b"".join(f.serialize() for f in frames))
    assert not conn.closed
    assert TunnelRequested(5, "127.0.0.1:1", events[-1].target, ()) == events[-1]  # later requests are served
    for event in events[:-1]:
        assert isinstance(event, TunnelRequestRefused | TunnelRequested | TunnelReset) or event.stream_id == 3
    assert 3 not in {e.stream_id for e in events if isinstance(e, TunnelRequested)} - {
        e.stream_id for e in events if isinstance(e, TunnelReset)
    }


def _h2_client_receiving(status: str) -> tuple[H2Client, int, list[object]]:
    client = H2Client(now=0.0)
    sid = client.send_request("GET", "http", "svc", "/", [], end_stream=True)
    client.data_to_send()
    block = hpack.Encoder().encode([(":status", status)])
    # A body after the head, the stream left open (it must be reset); none after a 1xx (h2 would call
    # DATA before a final response a connection error).
    body = b"" if status.startswith("1") else DataFrame(sid, b"body").serialize()
    events = client.receive_data(
        SettingsFrame(0).serialize() + HeadersFrame(sid, block, flags={"END_HEADERS"}).serialize() + body
    )
    return client, sid, events


@pytest.mark.parametrize("status", ["abc", "", "1xx", "99999999999999999999", "20", "600", "099", "+200"])
def test_h2_client_resets_a_stream_whose_status_is_not_a_valid_code(status: str) -> None:
    client, sid, events = _h2_client_receiving(status)
    assert not client.closed  # only that stream is lost
    assert events == [StreamReset(sid, 1)]  # PROTOCOL_ERROR; its body is dropped (and its window given back)
    assert b"\x00\x00\x04\x03" in client.data_to_send()  # RST_STREAM (length 4, type 3) to the upstream


def test_h2_client_still_reports_a_valid_status() -> None:
    _, sid, events = _h2_client_receiving("204")
    assert ResponseHead(sid, 204, [], end_stream=False) in events


@pytest.mark.parametrize("status", [b"004", b"099", b"600", b"999"])
def test_http1_client_refuses_an_upstream_status_outside_100_to_599(status: bytes) -> None:
    client = Http1Client()
    client.send_request("GET", "/", "svc", [], end_stream=True)
    events = client.receive_data(b"HTTP/1.1 " + status + b" Odd\r\nContent-Length: 0\r\n\r\n")
    assert len(events) == 1 and isinstance(events[0], Refusal)
    assert events[0].status == 502 and events[0].reason == "http1.invalid_status"
    assert not client.reusable
