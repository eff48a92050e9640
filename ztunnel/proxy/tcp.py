"""Plain TCP dialling for the data path: to the application (inbound) and to passthrough destinations.

``dial`` takes its socket from the proxy's ``SocketFactory`` (so in-pod mode dials from inside the pod's
namespace with no change here), connects with a deadline, and returns a ``TcpStream``. Every
failure becomes ``UpstreamConnectFailed`` saying where and why (refused, timed out, unreachable), which
the callers turn into a 503 (inbound) or a SOCKS5 failure reply (outbound). Nothing is logged here: the
caller owns the access-log line for the connection.
"""

from __future__ import annotations

import asyncio
import errno
import socket

from meshcore.aio.streams import TcpStream
from ztunnel.proxy.errors import UpstreamConnectFailed
from ztunnel.sockets import SocketFactory

CONNECT_TIMEOUT = 10.0  # ztunnel's TCP connect timeout


def format_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def dial(
    sockets: SocketFactory,
    host: str,
    port: int,
    *,
    source_ip: str | None = None,
    timeout: float = CONNECT_TIMEOUT,  # noqa: ASYNC109 - a connect deadline, not a cancel scope
) -> TcpStream:
    """Connect to ``host:port`` (an IP literal); raises ``UpstreamConnectFailed``."""
    target = format_addr(host, port)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = sockets.new_socket(family, source_ip=source_ip)
    except OSError as exc:
        raise UpstreamConnectFailed(target, f"cannot create a socket: {exc.strerror or exc}") from exc
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, (host, port))
        stream = await TcpStream.from_socket(sock)
    except TimeoutError:
        sock.close()
        raise UpstreamConnectFailed(target, f"timed out after {timeout:g}s", timed_out=True) from None
    except OSError as exc:
        sock.close()
        refused = exc.errno == errno.ECONNREFUSED
        detail = "connection refused (is the application listening on that port?)" if refused else (
            exc.strerror or str(exc)
        )
        raise UpstreamConnectFailed(target, detail, refused=refused) from exc
    except BaseException:
        sock.close()
        raise
    return stream
