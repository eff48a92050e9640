"""ztunnel.redirect.libnft and the nft backends of apply: how nft's error output is condensed, that the
library and the binary report a refused command alike, and how a runner is chosen (library, else binary).

Only commands nft refuses while parsing are run here, so nothing reaches the kernel and no netns or root
is needed; applying real rules through each backend is tests/netns/test_redirect_apply.py.
"""

from __future__ import annotations

import shutil

import pytest

from ztunnel.redirect import LibnftablesUnavailable, NftablesMissing, NftCommandFailed
from ztunnel.redirect.apply import NftBinary, nft_runner
from ztunnel.redirect.libnft import Libnftables, summarize_error


def _library() -> Libnftables:
    try:
        return Libnftables.load()
    except LibnftablesUnavailable as e:
        pytest.skip(str(e))


SYNTAX_ERROR = "Error: syntax error, unexpected inet, expecting string\nadd tabel inet zzz\n          ^^^^\n"


@pytest.mark.parametrize(
    ("text", "status", "expected"),
    [
        (SYNTAX_ERROR, "x", "Error: syntax error, unexpected inet, expecting string; add tabel inet zzz"),
        (
            "/dev/stdin:2:19-26: Error: Could not process rule: No such file or directory\n"
            "delete table inet nope\n                  ^^^^^^^^\n",
            "x",
            "Error: Could not process rule: No such file or directory; delete table inet nope",
        ),
        (
            "Error: a\nline one\n  ^^^~~~\n\nError: b\nline  two\t here\n     ^^\n",
            "x",
            "Error: a; line one; Error: b; line two here",
        ),
        ("", "exit status 1", "no message (exit status 1)"),
        ("  \n\t\n", "libnftables status -1", "no message (libnftables status -1)"),
    ],
    ids=[
        "a syntax error keeps the message and the quoted input, not the carets",
        "the binary's input location prefix is dropped so both backends read alike",
        "several errors are joined in order with whitespace collapsed",
        "no output at all says how nft ended",
        "whitespace-only output counts as none",
    ],
)
def test_error_output_is_condensed_to_one_line(text: str, status: str, expected: str) -> None:
    assert summarize_error(text, status) == expected


def test_a_long_error_is_cut_to_the_limit() -> None:
    summary = summarize_error("Error: " + "x" * 1000, "x", limit=100)
    assert len(summary) == 100 and summary.endswith("...") and summary.startswith("Error: xxx")


def test_the_library_reports_a_refused_command_from_its_error_buffer() -> None:
    lib = _library()
    with pytest.raises(NftCommandFailed) as info:
        lib.run("add tabel inet zzz")
    assert info.value.reason == "Error: syntax error, unexpected inet, expecting string; add tabel inet zzz"
    assert str(info.value) == f"nft failed: {info.value.reason}"


def test_the_library_refuses_input_with_a_nul_byte_before_calling_nft() -> None:
    with pytest.raises(NftCommandFailed, match="NUL"):
        _library().run("list tables\0")


def test_the_library_and_the_binary_word_a_refused_command_alike() -> None:
    if shutil.which("nft") is None:
        pytest.skip("the nft binary is not installed")
    errors = []
    for runner in (_library(), NftBinary("nft")):
        with pytest.raises(NftCommandFailed) as info:
            runner.run("add table inet ok\nadd tabel inet zzz\n")
        errors.append(info.value.reason)
    assert errors[0] == errors[1]
    assert "syntax error" in errors[0]


def test_a_missing_library_is_a_clear_error_that_names_the_fallback() -> None:
    with pytest.raises(LibnftablesUnavailable) as info:
        Libnftables.load("libnftables-not-here.so.1")
    assert "libnftables-not-here.so.1" in str(info.value) and "nft binary" in str(info.value)


@pytest.mark.parametrize(
    ("path", "error", "match"),
    [
        ("/nonexistent/nft", NftablesMissing, "apt-get install nftables"),
        ("/bin/false", NftCommandFailed, r"no message \(exit status 1\)"),
    ],
    ids=["a missing nft binary says how to install it", "a failing binary with no output says its status"],
)
def test_binary_backend_errors(path: str, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        NftBinary(path).run("list tables")


def test_runner_choice_prefers_the_library_and_falls_back_to_the_binary() -> None:
    lib = _library()
    assert isinstance(nft_runner(None), Libnftables)
    fallback = nft_runner(None, library="libnftables-not-here.so.1", timeout=3.0)
    assert isinstance(fallback, NftBinary) and (fallback.path, fallback.timeout) == ("nft", 3.0)
    assert isinstance(nft_runner("/usr/sbin/nft"), NftBinary)
    assert nft_runner(lib) is lib
    assert lib.in_process and not NftBinary().in_process
