"""ctypes binding to libnftables (``libnftables.so.1``): nft commands run in-process, in the caller's netns.

Why: ``nft -f -`` costs a fork, an exec and the loading of nft and five libraries for every pod (~10 ms of
CPU each on a small node); the library does the same parse and the same single netlink transaction
inside our process, with the GIL released while it works.
Rules:
- A context opens its netlink socket in ``nft_ctx_new``, in the network namespace of the *thread* that
  calls it. ``run`` therefore creates, uses and frees its context on the calling thread within one call:
  call it from the pod netns's worker thread (``NetnsHandle.run``), and never keep a context across
  calls, threads or namespaces.
- Contexts are independent (parser, cache, netlink socket and sequence numbers are per context), but
  libnftables links libxtables, whose state is process-wide and not thread-safe: its one-time
  initialisation in ``nft_ctx_new`` is unguarded, and listings print iptables-nft (xt) expressions
  through it. ``_LIBRARY_LOCK`` (the one process-wide object here, as the state it guards is) is held
  for creating a context and for every listing; changes and freeing run concurrently, so the kernel's
  waits (an RCU grace period for deleted tables, socket release) of many pods overlap, as separate nft
  processes' would.
- Input goes through a memfd read as a file (as ``nft -f`` reads it), not ``nft_run_cmd_from_buffer``:
  for a buffer, nft quotes the buffer's first line under every error instead of the line at fault.
- Output and errors are buffered in the context, never written to our stdout/stderr; a failure is
  raised as ``NftCommandFailed`` with nft's own message, condensed by ``summarize_error`` exactly as the
  ``nft`` binary's stderr is, so both backends report the same errors.
Must not: load the library at import time (importing works where nftables is not installed).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import threading

from ztunnel.redirect.errors import LibnftablesUnavailable, NftCommandFailed

SONAME = "libnftables.so.1"
NFT_CTX_DEFAULT = 0  # flags of nft_ctx_new: a context with a netlink socket
NFT_CTX_OUTPUT_JSON = 1 << 4  # nft_ctx_output_set_flags: what `nft -j` sets
ERROR_LIMIT = 500
# The binary prefixes each message with where it read the input ("/dev/stdin:2:19-26: "); the library,
# reading a buffer, does not. Dropped so that both backends word an error alike.
_LOCATION = re.compile(r"^\S+:\d+:\d+(?:-\d+)?: ")

# libxtables (linked by libnftables) keeps process-wide state; see the module docstring.
_LIBRARY_LOCK = threading.Lock()

_c_ctx = ctypes.c_void_p
_SIGNATURES: dict[str, tuple[list[type], type | None]] = {
    "nft_ctx_new": ([ctypes.c_uint32], _c_ctx),
    "nft_ctx_free": ([_c_ctx], None),
    "nft_ctx_buffer_output": ([_c_ctx], ctypes.c_int),
    "nft_ctx_buffer_error": ([_c_ctx], ctypes.c_int),
    "nft_ctx_get_output_buffer": ([_c_ctx], ctypes.c_char_p),
    "nft_ctx_get_error_buffer": ([_c_ctx], ctypes.c_char_p),
    "nft_ctx_output_set_flags": ([_c_ctx, ctypes.c_uint], None),
    "nft_run_cmd_from_filename": ([_c_ctx, ctypes.c_char_p], ctypes.c_int),
}


def _is_marker(line: str) -> bool:
    """nft's caret line under the input it quotes (``      ^^^^~~~``)."""
    stripped = line.strip()
    return bool(stripped) and set(stripped) <= {"^", "~"}


def summarize_error(text: str, status: str, limit: int = ERROR_LIMIT) -> str:
    """nft's error output as one line: its messages and the input lines they quote, joined with ``; ``,
    caret marker lines, blank lines and input locations dropped, cut to ``limit`` characters; ``status``
    (how nft ended) when it printed nothing."""
    parts = [
        " ".join(_LOCATION.sub("", line).split())
        for line in text.splitlines()
        if line.strip() and not _is_marker(line)
    ]
    summary = "; ".join(parts) or f"no message ({status})"
    return summary if len(summary) <= limit else summary[: limit - 3] + "..."


class Libnftables:
    """The loaded library; ``run`` is its one operation. Build with ``load()``."""

    in_process = True

    def __init__(self, cdll: ctypes.CDLL, soname: str) -> None:
        self._lib = cdll
        self.soname = soname

    @classmethod
    def load(cls, soname: str = SONAME) -> Libnftables:
        """dlopen ``soname`` and declare the functions we call; ``LibnftablesUnavailable`` if it is not
        installed or lacks one of them (a libnftables older than 0.9.1)."""
        try:
            cdll = ctypes.CDLL(soname)
            for name, (argtypes, restype) in _SIGNATURES.items():
                fn = getattr(cdll, name)
                fn.argtypes = argtypes
                fn.restype = restype
        except (OSError, AttributeError) as e:
            raise LibnftablesUnavailable(soname, str(e)) from e
        return cls(cdll, soname)

    def __repr__(self) -> str:
        return f"Libnftables({self.soname!r})"

    def run(self, commands: str, *, json: bool = False) -> str:
        """Run ``commands`` (nft's input language, as ``nft -f``) as one transaction in the calling
        thread's netns and return what nft printed (JSON when ``json``, as ``nft -j``).

        Raises ``NftCommandFailed`` (nothing was changed: nft commits all or nothing)."""
        data = commands.encode()
        if b"\0" in data:
            raise NftCommandFailed("nft input contains a NUL byte")
        # From a file, not nft_run_cmd_from_buffer: for a buffer, nft quotes the buffer's *first* line
        # under every error; for a file it quotes the line at fault, as the binary does.
        memfd = os.memfd_create("nft-commands", os.MFD_CLOEXEC)
        try:
            with open(memfd, "wb", closefd=False) as f:
                f.write(data)
            path = f"/proc/self/fd/{memfd}".encode()
            return self._run_file(path, json, listing=json or commands.lstrip().startswith("list"))
        finally:
            os.close(memfd)

    def _run_file(self, path: bytes, json: bool, listing: bool) -> str:
        lib = self._lib
        with _LIBRARY_LOCK:
            ctx = lib.nft_ctx_new(NFT_CTX_DEFAULT)
        if not ctx:
            raise NftCommandFailed("nft_ctx_new failed (out of memory or no netlink socket)")
        try:
            if lib.nft_ctx_buffer_output(ctx) != 0 or lib.nft_ctx_buffer_error(ctx) != 0:
                raise NftCommandFailed("libnftables could not buffer its output")
            if json:
                lib.nft_ctx_output_set_flags(ctx, NFT_CTX_OUTPUT_JSON)
            with _LIBRARY_LOCK if listing else contextlib.nullcontext():
                status = lib.nft_run_cmd_from_filename(ctx, path)
            output: bytes | None = lib.nft_ctx_get_output_buffer(ctx)
            errors: bytes | None = lib.nft_ctx_get_error_buffer(ctx)
        finally:
            # Not under the lock: freeing closes the netlink socket, which after a commit can wait in
            # the kernel, and would hold up every other pod's apply.
            lib.nft_ctx_free(ctx)
        if status != 0:
            text = (errors or b"").decode(errors="replace")
            raise NftCommandFailed(summarize_error(text, f"libnftables status {status}"))
        return (output or b"").decode(errors="replace")
