"""Shared pieces of the L4 benchmark: the test servers, the client side of each measurement, /proc probes.

The servers (``serve``) run in their own process so their CPU and file descriptors are not the
client's: an echo port (1 KiB request/response latency, idle tunnels) and a sink port (throughput:
the client sends an 8-byte big-endian length, then that many bytes; the sink answers 8 bytes once it
has them all, so no path has to carry a half-close). The clients are blocking sockets (one stream at a
time, as iperf does) except the idle-tunnel opener, which uses asyncio to open thousands at once.
CPU and memory come from /proc (utime+stime, VmRSS), so no extra package is needed. Nothing here is
imported by the mesh itself; this file is never part of the test run.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import os
import resource
import signal
import socket
import struct
import subprocess
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

CHUNK = 1 << 20
REQUEST_SIZE = 1024
_LEN = struct.Struct("!Q")
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


class BenchError(RuntimeError):
    """A path could not be measured (a process died, a port never opened, a peer answered wrongly)."""


# --- servers (run in a child process: ``serve(...)``) -------------------------------------------------


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class _Sink(asyncio.Protocol):
    """Reads an 8-byte length, then that many bytes, answers the 8-byte count; repeats."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        self.header = b""
        self.remaining = -1

    def data_received(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.remaining < 0:
                need = _LEN.size - len(self.header)
                self.header += bytes(view[:need])
                view = view[need:]
                if len(self.header) == _LEN.size:
                    (self.remaining,) = _LEN.unpack(self.header)
                    self.total = self.remaining
                    self.header = b""
                    if self.remaining == 0:
                        self._done()
                continue
            take = min(self.remaining, len(view))
            self.remaining -= take
            view = view[take:]
            if self.remaining == 0:
                self._done()

    def _done(self) -> None:
        self.transport.write(_LEN.pack(self.total))
        self.remaining = -1


def serve(host: str, echo_port: int, sink_port: int) -> None:
    """Run the echo and sink servers on ``host`` until killed (the child process's whole life)."""
    raise_nofile(65536)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # the plain loop also works, just slower
        pass

    async def main() -> None:
        loop = asyncio.get_running_loop()
        echo = await loop.create_server(_Echo, host, echo_port, backlog=4096, reuse_address=True)
        sink = await loop.create_server(_Sink, host, sink_port, backlog=4096, reuse_address=True)
        async with echo, sink:
            await asyncio.Event().wait()

    asyncio.run(main())


# --- clients ----------------------------------------------------------------------------------------

Connector = Callable[[], socket.socket]


def tcp_connector(host: str, port: int) -> Connector:
    def connect() -> socket.socket:
        sock = socket.create_connection((host, port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    return connect


def socks5_request(host: str, port: int) -> bytes:
    """The SOCKS5 CONNECT request (RFC 1928) for an IPv4/IPv6 literal."""
    ip = ipaddress.ip_address(host)
    atyp = b"\x01" if ip.version == 4 else b"\x04"
    return b"\x05\x01\x00" + atyp + ip.packed + struct.pack("!H", port)


def socks5_reply_length(head: bytes) -> int:
    """Bytes of the whole reply given its first 5 bytes (VER REP RSV ATYP + first address byte)."""
    atyp = head[3]
    if atyp == 1:
        return 10
    if atyp == 4:
        return 22
    if atyp == 3:
        return 7 + head[4]
    raise BenchError(f"SOCKS5 reply has an unknown address type {atyp}")


def socks5_connector(proxy: tuple[str, int], host: str, port: int, *, source: str | None = None) -> Connector:
    """Connect through a SOCKS5 proxy (no authentication) to ``host:port``, from ``source`` if given."""

    def connect() -> socket.socket:
        sock = socket.create_connection(proxy, timeout=30, source_address=(source, 0) if source else None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.sendall(b"\x05\x01\x00")
            if recv_exactly(sock, 2) != b"\x05\x00":
                raise BenchError("SOCKS5 proxy refused the no-authentication method")
            sock.sendall(socks5_request(host, port))
            head = recv_exactly(sock, 5)
            rest = recv_exactly(sock, socks5_reply_length(head) - 5)
            if head[1] != 0:
                raise BenchError(f"SOCKS5 CONNECT to {host}:{port} failed with reply code {head[1]}")
            del rest
        except BaseException:
            sock.close()
            raise
        return sock

    return connect


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise BenchError(f"peer closed after {got} of {n} bytes")
        got += k
    return bytes(buf)


def throughput_once(connect: Connector, nbytes: int) -> float:
    """Seconds to push ``nbytes`` to the sink and get its acknowledgement (connection set-up excluded)."""
    payload = memoryview(os.urandom(CHUNK))
    with connect() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        start = time.perf_counter()
        sock.sendall(_LEN.pack(nbytes))
        left = nbytes
        while left:
            n = min(left, CHUNK)
            sock.sendall(payload[:n])
            left -= n
        (acked,) = _LEN.unpack(recv_exactly(sock, _LEN.size))
        elapsed = time.perf_counter() - start
    if acked != nbytes:
        raise BenchError(f"sink acknowledged {acked} bytes, sent {nbytes}")
    return elapsed


def round_trips(connect: Connector, count: int, size: int = REQUEST_SIZE, warmup: int = 50) -> list[float]:
    """Seconds per request/response of ``size`` bytes, ``count`` times on one connection (after warm-up)."""
    request = os.urandom(size)
    samples: list[float] = []
    with connect() as sock:
        for i in range(warmup + count):
            start = time.perf_counter()
            sock.sendall(request)
            reply = recv_exactly(sock, size)
            elapsed = time.perf_counter() - start
            if reply != request:
                raise BenchError("echo returned different bytes")
            if i >= warmup:
                samples.append(elapsed)
    return samples


async def open_idle_tunnels(
    count: int,
    proxy: tuple[str, int],
    host: str,
    port: int,
    *,
    source: str | None = None,
    concurrency: int = 50,
    deadline: float = 300.0,
) -> list[asyncio.StreamWriter]:
    """Open ``count`` connections through SOCKS5, each proven end to end by a 1-byte echo; keep them open.

    At most ``concurrency`` are being opened at once: more than the proxy's accept backlog would only
    measure the backlog (ztunnel's listeners use 1024; asyncio's ``start_server`` default is 100).
    """
    sem = asyncio.Semaphore(concurrency)
    request = socks5_request(host, port)

    async def one() -> asyncio.StreamWriter:
        async with sem:
            phase = "connecting to the SOCKS5 port"
            writer: asyncio.StreamWriter | None = None
            try:
                reader, writer = await asyncio.open_connection(
                    *proxy, local_addr=(source, 0) if source else None
                )
                phase = "SOCKS5 greeting"
                writer.write(b"\x05\x01\x00")
                if await reader.readexactly(2) != b"\x05\x00":
                    raise BenchError("SOCKS5 proxy refused the no-authentication method")
                phase = "SOCKS5 CONNECT"
                writer.write(request)
                head = await reader.readexactly(5)
                await reader.readexactly(socks5_reply_length(head) - 5)
                if head[1] != 0:
                    raise BenchError(f"SOCKS5 CONNECT failed with reply code {head[1]}")
                phase = "1-byte echo"
                writer.write(b"x")
                if await reader.readexactly(1) != b"x":
                    raise BenchError("echo returned a different byte")
            except (OSError, asyncio.IncompleteReadError) as e:
                if writer is not None:
                    writer.close()
                raise BenchError(f"{phase}: {e!r}") from e
            except BaseException:
                if writer is not None:
                    writer.close()
                raise
            return writer

    tasks = [asyncio.ensure_future(one()) for _ in range(count)]
    done, pending = await asyncio.wait(tasks, timeout=deadline)
    for task in pending:
        task.cancel()
    writers: list[asyncio.StreamWriter] = []
    errors: list[BaseException] = []
    for task in done:
        if task.exception() is not None:
            errors.append(task.exception())  # type: ignore[arg-type]
        else:
            writers.append(task.result())
    if errors or pending:
        for w in writers:
            w.close()
        first = errors[0] if errors else TimeoutError(f"{len(pending)} still opening after {deadline}s")
        raise BenchError(f"opened {len(writers)} of {count} tunnels; first failure: {first!r}")
    return writers


# --- statistics and /proc ---------------------------------------------------------------------------


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty sample."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (its threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def _proc_net_address(ip: str, port: int) -> str:
    """``ip:port`` as /proc/net/tcp prints it (IPv4 as a little-endian 32-bit hex word)."""
    return f"{socket.inet_aton(ip)[::-1].hex().upper()}:{port:04X}"


def established_to(ip: str, port: int) -> int:
    """ESTABLISHED TCP sockets in this network namespace connected to ``ip:port`` (IPv4).

    Counted from the connecting side only, so one TLS connection counts once.
    """
    wanted = _proc_net_address(ip, port)
    total = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if parts[3] == "01" and parts[2] == wanted:
                total += 1
    return total


def raise_nofile(wanted: int) -> int:
    """Raise RLIMIT_NOFILE towards ``wanted`` (the hard limit too when allowed); return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def wait_port(host: str, port: int, *, timeout: float, alive: Callable[[], bool] = lambda: True) -> None:
    """Poll until ``host:port`` accepts a TCP connection, or raise (also when ``alive()`` turns false)."""
    deadline = time.monotonic() + timeout
    while True:
        if not alive():
            raise BenchError(f"process serving {host}:{port} exited before listening")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise BenchError(f"nothing listening on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


# --- allocation tracing (a process runs ``traced_main``; the bench asks for snapshots with SIGUSR1) ----


def traced_main(dump_dir: str, main: Callable[[], object], depth: int = 6) -> None:
    """Run ``main`` under tracemalloc; each SIGUSR1 writes ``<dump_dir>/<pid>-<n>.snap``."""
    tracemalloc.start(depth)
    taken = [0]

    def dump(_signum: int, _frame: object) -> None:
        path = os.path.join(dump_dir, f"{os.getpid()}-{taken[0]}.snap")
        taken[0] += 1
        tracemalloc.take_snapshot().dump(path + ".tmp")
        os.rename(path + ".tmp", path)

    signal.signal(signal.SIGUSR1, dump)
    main()


def request_snapshot(
    pid: int, dump_dir: str, n: int, poke: Callable[[], None], timeout: float = 120.0
) -> str:
    """SIGUSR1 ``pid`` and wait for its ``n``-th snapshot; ``poke`` makes its event loop run Python code
    (a signal handler runs only between bytecodes)."""
    path = os.path.join(dump_dir, f"{pid}-{n}.snap")
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise BenchError(f"no allocation snapshot from pid {pid} after {timeout}s")
        poke()
        time.sleep(0.2)
    return path


def allocation_growth(before: str, after: str, per: int, top: int = 12) -> list[str]:
    """Where live allocations grew between two snapshots, in bytes per ``per``: by file, then by line."""
    keep = [tracemalloc.Filter(False, tracemalloc.__file__)]
    old = tracemalloc.Snapshot.load(before).filter_traces(keep)
    new = tracemalloc.Snapshot.load(after).filter_traces(keep)
    by_file = new.compare_to(old, "filename")
    total = sum(d.size_diff for d in by_file)
    lines = [f"total growth {total / per:,.0f} B per tunnel; by file:"]
    lines += [
        f"{d.size_diff / per:8,.0f} B {d.count_diff / per:6.2f} blocks  {_short(d.traceback[0].filename)}"
        for d in by_file[:top]
    ]
    lines.append("by line (innermost frame):")
    lines += [
        f"{d.size_diff / per:8,.0f} B {d.count_diff / per:6.2f} blocks  "
        f"{_short(d.traceback[0].filename)}:{d.traceback[0].lineno}"
        for d in new.compare_to(old, "lineno")[:top]
    ]
    return lines


def _short(filename: str) -> str:
    for marker in ("site-packages/", "python3.11/", "/work/main/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]

    def render(self) -> str:
        widths = [max(len(h), *(len(r[i]) for r in self.rows)) for i, h in enumerate(self.headers)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(self.headers, widths, strict=True)).rstrip()]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in self.rows]
        return "\n".join(lines)

    def markdown(self) -> str:
        out = ["| " + " | ".join(self.headers) + " |", "|" + "---|" * len(self.headers)]
        out += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(out)


def source_revision(root: Path) -> str:
    """The commit the measured code is at (``+dirty`` with uncommitted changes), for the report header."""
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"
    return rev + ("+dirty" if dirty else "")
