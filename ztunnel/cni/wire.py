"""The plugin -> node agent event wire format and its sending side: one JSON line each way per connection.

Protocol (ours; Istio's plugin POSTs /cmdadd over HTTP on the same kind of socket): the plugin connects
to ``cni_event_address`` (SOCK_STREAM, mode 0600: only root may drive pod capture), writes one
``PluginEvent`` as a JSON object and a newline, and reads one ``EventReply`` line; then both close. A
line is at most ``MAX_LINE`` bytes. Fields added later have defaults meaning what a line without them
meant (an older plugin's event, an older agent's reply), so both sides decode the other's older lines. ``send_event`` is blocking, as the plugin is a short-lived process;
the agent's asyncio server is ``events.EventServer``. Apart from it because the plugin runs once per pod:
this module imports only msgspec, socket and the plugin's errors (no asyncio, no structlog).
"""

from __future__ import annotations

import socket
import time
from typing import Literal

import msgspec

from ztunnel.cni.errors import AgentUnreachable, EventMalformed

MAX_LINE = 64 * 1024


class PluginEvent(msgspec.Struct, frozen=True, kw_only=True):
    """What the plugin tells the agent about one CNI call for a Kubernetes pod."""

    cmd: Literal["add", "del"]
    pod_namespace: str
    pod_name: str
    container_id: str
    # The pod sandbox's netns path (CNI_NETNS); required for "add", optional for "del".
    netns: str = ""
    ifname: str = ""
    # K8S_POD_UID when the runtime passes it ("" otherwise).
    pod_uid: str = ""
    pod_ips: tuple[str, ...] = ()
    # True: the plugin waits for the outcome (it found the pod enrolled, or left the decision to the agent);
    # False: best effort.
    wait: bool = False
    # True: the plugin decided nothing (``enrollment: agent``): the agent decides from its view (read live
    # from the API server when the view lacks the pod) and fails the ADD when it cannot.
    agent_decides: bool = False


class EventReply(msgspec.Struct, frozen=True, kw_only=True):
    """The agent's answer: ``ok`` or ``error``; ``captured`` says whether the pod is now redirected,
    ``enrolled`` whether the agent found it enrolled (False from agents that predate the field)."""

    ok: bool
    error: str = ""
    captured: bool = False
    enrolled: bool = False


_event_decoder = msgspec.json.Decoder(PluginEvent)
_reply_decoder = msgspec.json.Decoder(EventReply)


def decode_event(line: bytes) -> PluginEvent:
    """One event line; ``EventMalformed`` for anything that is not a valid ``PluginEvent``."""
    try:
        event = _event_decoder.decode(line)
    except msgspec.DecodeError as e:  # ValidationError is a DecodeError
        raise EventMalformed("plugin event", str(e)) from None
    if not event.pod_namespace or not event.pod_name:
        raise EventMalformed("plugin event", "pod_namespace and pod_name are required")
    if event.cmd == "add" and not event.netns:
        raise EventMalformed("plugin event", "an add event needs the pod's netns path")
    return event


def encode_line(value: PluginEvent | EventReply) -> bytes:
    return msgspec.json.encode(value) + b"\n"


# -- plugin side -------------------------------------------------------------------------------------------


def send_event(path: str, event: PluginEvent, timeout: float) -> EventReply:
    """Send ``event`` to the agent at ``path`` and wait up to ``timeout`` seconds for its reply.

    Raises ``AgentUnreachable`` (no socket, refused, timed out, closed early) or ``EventMalformed``."""
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(encode_line(event))
            buf = bytearray()
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                chunk = sock.recv(65536)
                if not chunk:
                    raise AgentUnreachable(path, "the agent closed the connection without replying")
                buf += chunk
                if len(buf) > MAX_LINE:
                    raise EventMalformed("agent reply", f"over {MAX_LINE} bytes")
    except TimeoutError:
        raise AgentUnreachable(path, f"no reply within {timeout:g}s") from None
    except FileNotFoundError:
        raise AgentUnreachable(path, "no such socket (is the node agent running?)") from None
    except OSError as e:
        raise AgentUnreachable(path, e.strerror or str(e)) from None
    line = bytes(buf[: buf.index(b"\n")])
    try:
        return _reply_decoder.decode(line)
    except msgspec.DecodeError as e:
        raise EventMalformed("agent reply", str(e)) from None
