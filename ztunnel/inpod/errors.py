"""Errors of ztunnel's in-pod mode (the ZDS link to the node agent and per-pod proxies).

``ZdsProtocolError`` and its subclasses are *remote* misbehaviour: the peer sent something the ZDS
protocol does not allow. ztunnel answers it with a nack (``Ack.error`` = the message), counts it, and
reconnects; nothing else is disturbed. ``ZdsUsageError`` is a *local* bug (our code called the sans-IO
connection out of order) and should fail loudly. When decoding raises, the caller still owns and must
close every fd that arrived with the bad packet. ``PodError`` subclasses concern one handed-over pod:
its AddWorkload is nacked with the message, or it stays pending; every other pod is untouched.
"""

from __future__ import annotations

import errno


class ZdsError(Exception):
    """Base class for ZDS failures."""


class ZdsProtocolError(ZdsError):
    """The peer broke the ZDS protocol; the connection should be nacked and re-established."""


class ZdsMalformed(ZdsProtocolError):
    """A packet that is not a valid message of the expected type."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"malformed ZDS {what}: {reason}")
        self.reason = reason


class ZdsMissingField(ZdsProtocolError):
    """A message lacks a field the protocol requires (a uid, AddWorkload.workload_info)."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(f"ZDS {message} without {field}")
        self.field = field


class ZdsFdMismatch(ZdsProtocolError):
    """AddWorkload must carry exactly one fd (the pod netns) and every other message none."""

    def __init__(self, message: str, expected: int, got: int) -> None:
        super().__init__(f"ZDS {message} arrived with {got} file descriptor(s), expected {expected}")
        self.expected = expected
        self.got = got


class ZdsOutOfOrder(ZdsProtocolError):
    """A message the protocol does not allow at this point (Keep after the snapshot, a second request
    before the first was acked, anything before the hello)."""

    def __init__(self, message: str, state: str) -> None:
        super().__init__(f"ZDS {message} not allowed while {state}")
        self.state = state


class ZdsTruncated(ZdsProtocolError):
    """The packet or its ancillary data did not fit (MSG_TRUNC / MSG_CTRUNC); it cannot be trusted."""

    def __init__(self, what: str) -> None:
        super().__init__(f"ZDS packet truncated ({what}); dropped")


class ZdsUnsupportedVersion(ZdsProtocolError):
    """The peer speaks a ZDS version we do not."""

    def __init__(self, version: int) -> None:
        super().__init__(f"ZDS version {version} is not supported (only V1)")
        self.version = version


class ZdsUsageError(ZdsError, AssertionError):
    """A bug in our own code: the sans-IO connection was driven out of order or with bad values."""


class ZdsClosed(ZdsError):
    """The peer closed the ZDS socket (EOF); reconnect (ztunnel) or forget the connection (agent)."""

    def __init__(self) -> None:
        super().__init__("ZDS peer closed the connection")


# -- per-pod proxies (manager, sockets) -------------------------------------------------------------------


class PodError(Exception):
    """A handed-over pod cannot be served (yet); only that pod is affected, the others carry on."""


class PodNetnsUnavailable(PodError, OSError):
    """The pod's network namespace cannot be used: the fd is not a netns, ztunnel cannot enter it (it
    needs CAP_SYS_ADMIN), or the pod left and its handle is closed. An ``OSError``, so the data path
    treats it like any socket failure (the connection fails, the listener carries on)."""

    def __init__(self, pod: str, reason: str) -> None:
        super().__init__(errno.ENOENT, f"network namespace of pod {pod} is unusable: {reason}")
        self.pod = pod
        self.reason = reason


class PodIdentityInvalid(PodError):
    """The node agent's WorkloadInfo does not make a SPIFFE identity (namespace or service account)."""

    def __init__(self, uid: str, reason: str) -> None:
        super().__init__(f"pod {uid}: its namespace/service account do not form a workload identity: {reason}")
        self.uid = uid
