"""The CNI plugin (spec 1.0.0: ADD, DEL, CHECK, VERSION), chained after the pod network's main plugin.

The runtime runs it once per call: ``CNI_*`` variables in the environment, the network config (with
``prevResult``) on stdin, the result or a CNI error JSON (``{cniVersion, code, msg, details}``, non-zero
exit) on stdout. Who decides whether a pod is enrolled is the conflist entry's ``enrollment``:

- ``"store"`` (the default; the local cluster): the plugin, from the embedded store, by the rule shared
  with istiod_lite. Enrolled: the node agent is told and the plugin waits while it installs redirection
  and hands the pod to ztunnel; if that fails, so does the ADD (the kubelet retries). Not enrolled, or not
  yet in the store: the pod passes through, and the agent is told best-effort so it learns the netns path
  for later. Fail closed: an unreadable store fails the ADD, since a pod that should be captured must not
  start uncaptured.
- ``"agent"`` (written by the node agent's host install on Kubernetes, where a node has no store): the
  plugin decides nothing and always waits for the node agent (``PluginEvent.agent_decides``). The agent
  decides by the same rule from its view of the API server, reading the Pod and its Namespace live when
  its view does not have the pod yet (or has an earlier pod of that name), captures the pod when it is
  enrolled, and replies. Its error, or no agent, fails the ADD (fail closed); its ``ok`` passes the pod
  (captured, or not enrolled).

Not a Kubernetes pod (no ``K8S_POD_*`` args): passes through in both modes. Passing through prints
``prevResult`` unchanged. DEL never fails (the runtime must be able to tear down); CHECK validates the
call and passes. Must not: touch the pod's network itself (the agent does), or print anything else on
stdout.

Start-up is paid per pod (a fresh process for every ADD and DEL), so this module imports only what a
call needs: msgspec, ``plugin_config`` (the network config), ``wire`` (the event format and the blocking
client), the errors and, on an ADD that reads the store only (never in ``"agent"`` mode), the enrolment
rule (``enroll.pod_facts``)
and a read-only look at the store (``meshcore.store.sqlite_read.read_objects``: plain sqlite3, one
snapshot, the same SQL and file checks as ``SqliteStore``, never creating or changing the file). No
structlog, asyncio, YAML or ztunnel settings: log lines are JSON written to stderr by ``log``. In
``"store"`` mode the store stays the plugin's own source of truth for enrolment (the agent's view may lag a
just-created pod, which must not start uncaptured); in ``"agent"`` mode the agent covers that lag with its
live read, and fails the ADD when it cannot make one.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec

from meshcore.store.errors import StoreError
from meshcore.store.paths import default_state_dir, store_path
from meshcore.store.resource import ResourceRef
from ztunnel.cni.errors import (
    CniAgentUnavailable,
    CniEnrollFailed,
    CniEnrollUndecided,
    CniEnvInvalid,
    CniError,
    CniStoreUnavailable,
    EventError,
)
from ztunnel.cni.plugin_config import (
    ENROLLMENT_AGENT,
    SUPPORTED_CNI_VERSIONS,
    PluginConfig,
    decode_plugin_config,
)
from ztunnel.cni.wire import EventReply, PluginEvent, send_event

LOGGER = "ztunnel.cni.plugin"

CNI_COMMAND = "CNI_COMMAND"
CNI_CONTAINERID = "CNI_CONTAINERID"
CNI_NETNS = "CNI_NETNS"
CNI_IFNAME = "CNI_IFNAME"
CNI_ARGS = "CNI_ARGS"
CNI_PATH = "CNI_PATH"
K8S_POD_NAME = "K8S_POD_NAME"
K8S_POD_NAMESPACE = "K8S_POD_NAMESPACE"
K8S_POD_UID = "K8S_POD_UID"

DEFAULT_CNI_VERSION = "1.0.0"
BEST_EFFORT_TIMEOUT = 1.0  # a pass-through pod never waits longer than this for the agent

Command = Literal["ADD", "DEL", "CHECK", "VERSION"]
_COMMANDS: tuple[Command, ...] = ("ADD", "DEL", "CHECK", "VERSION")


@dataclass(frozen=True, slots=True)
class Invocation:
    """One call of the plugin, parsed and checked."""

    command: Command
    config: PluginConfig | None  # None for VERSION
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    # CNI_ARGS as key -> value (K8S_POD_NAME, K8S_POD_NAMESPACE, IgnoreUnknown, ...).
    args: Mapping[str, str] = field(default_factory=dict)

    @property
    def pod(self) -> tuple[str, str] | None:
        """(namespace, name) of the Kubernetes pod, or None when the runtime did not say."""
        ns, name = self.args.get(K8S_POD_NAMESPACE, ""), self.args.get(K8S_POD_NAME, "")
        return (ns, name) if ns and name else None


# -- parsing -------------------------------------------------------------------------------------------


def parse_cni_args(text: str) -> dict[str, str]:
    """``K=V;K=V`` (CNI_ARGS) as a dict; ``CniEnvInvalid`` for a pair without ``=``."""
    out: dict[str, str] = {}
    for pair in text.split(";"):
        if not pair.strip():
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CniEnvInvalid(CNI_ARGS, f"{pair!r} is not KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def parse_invocation(env: Mapping[str, str], stdin: bytes) -> Invocation:
    """The call described by ``env`` and ``stdin``; raises a ``CniError`` saying what is wrong."""
    command = env.get(CNI_COMMAND, "")
    if command not in _COMMANDS:
        shown = repr(command) if command else "not set"
        raise CniEnvInvalid(CNI_COMMAND, f"{shown}; expected one of {', '.join(_COMMANDS)}")
    if command == "VERSION":
        return Invocation("VERSION", None)
    config = decode_plugin_config(stdin)
    container_id = env.get(CNI_CONTAINERID, "").strip()
    if not container_id:
        raise CniEnvInvalid(CNI_CONTAINERID, "not set")
    ifname = env.get(CNI_IFNAME, "").strip()
    if not ifname:
        raise CniEnvInvalid(CNI_IFNAME, "not set")
    netns = env.get(CNI_NETNS, "").strip()
    if command in ("ADD", "CHECK"):
        if not netns:
            raise CniEnvInvalid(CNI_NETNS, "not set; ADD and CHECK need the pod's network namespace path")
        if not os.path.isabs(netns):
            raise CniEnvInvalid(CNI_NETNS, f"{netns!r} is not an absolute path")
    args = parse_cni_args(env.get(CNI_ARGS, ""))
    return Invocation(command, config, container_id, netns, ifname, args)


# -- results -------------------------------------------------------------------------------------------


def version_result() -> bytes:
    return msgspec.json.encode(
        {"cniVersion": DEFAULT_CNI_VERSION, "supportedVersions": list(SUPPORTED_CNI_VERSIONS)}
    )


def error_result(error: CniError, cni_version: str = DEFAULT_CNI_VERSION) -> bytes:
    doc = {"cniVersion": cni_version, "code": error.code, "msg": error.msg}
    if error.details:
        doc["details"] = error.details
    return msgspec.json.encode(doc)


def success_result(config: PluginConfig) -> bytes:
    """``prevResult`` unchanged; a minimal result when there is none (not chained)."""
    prev = config.prev_result_json
    return prev if prev is not None else msgspec.json.encode({"cniVersion": config.cni_version})


def pod_ips(config: PluginConfig) -> tuple[str, ...]:
    """The pod's IPs from ``prevResult.ips[].address`` (prefix length dropped), if any."""
    prev = config.prev_result_json
    if prev is None:
        return ()
    try:
        doc = msgspec.json.decode(prev)
    except msgspec.DecodeError:
        return ()
    ips = doc.get("ips") if isinstance(doc, dict) else None
    if not isinstance(ips, list):
        return ()
    return tuple(
        str(ip["address"]).partition("/")[0] for ip in ips if isinstance(ip, dict) and ip.get("address")
    )


# -- the two boundaries: the store and the agent --------------------------------------------------------

Enrollment = Callable[[PluginConfig, str, str], bool | None]
Notify = Callable[[PluginConfig, PluginEvent, float], EventReply]


def store_enrollment(config: PluginConfig, namespace: str, name: str) -> bool | None:
    """Whether the pod is enrolled, read from the embedded store; None when the store has no such pod.

    Raises ``CniStoreUnavailable`` when the store cannot be read (no file: never created here)."""
    # Imported here, not at the top: only this path needs sqlite3 and the enrolment rule's module, and
    # every DEL (and every VERSION, CHECK, non-Kubernetes ADD) is a process of its own that skips them.
    from meshcore.store.sqlite_read import read_objects
    from ztunnel.cni.enroll import pod_facts

    if config.state_dir:
        state_dir = Path(config.state_dir).expanduser()
    else:
        state_dir = default_state_dir(os.environ, os.geteuid() == 0, Path.home())
    db = store_path(state_dir)
    if not db.is_file():
        raise CniStoreUnavailable(str(db), "no store file there")
    try:
        # Read-only, one snapshot; the same SQL and file checks as SqliteStore (meshcore.store.sqlite_read).
        pod, ns = read_objects(
            db, [ResourceRef("Pod", namespace, name), ResourceRef("Namespace", "", namespace)]
        )
    except StoreError as e:
        raise CniStoreUnavailable(str(db), str(e)) from None
    if pod is None:
        return None
    return pod_facts(pod, ns.labels if ns is not None else {}).enrolled


def notify_agent(config: PluginConfig, event: PluginEvent, timeout: float) -> EventReply:
    return send_event(config.cni_event_address, event, timeout)


# -- logging -------------------------------------------------------------------------------------------


def log(level: str, event: str, **fields: Any) -> None:
    """One JSON line on stderr (the runtime keeps it in its own log), in the shape of the mesh's JSON logs
    (``meshcore.logs``): the plugin does not load structlog, which would double its start-up."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
    line = {**fields, "event": event, "level": level, "logger": LOGGER, "timestamp": stamp}
    try:
        sys.stderr.write(msgspec.json.encode(line).decode() + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # no stderr (closed by the runtime): the result on stdout is what counts


# -- commands ------------------------------------------------------------------------------------------


def _event(inv: Invocation, cmd: Literal["add", "del"], wait: bool, agent_decides: bool = False) -> PluginEvent:
    assert inv.config is not None and inv.pod is not None
    namespace, name = inv.pod
    return PluginEvent(
        cmd=cmd,
        pod_namespace=namespace,
        pod_name=name,
        container_id=inv.container_id,
        netns=inv.netns,
        ifname=inv.ifname,
        pod_uid=inv.args.get(K8S_POD_UID, ""),
        pod_ips=pod_ips(inv.config),
        wait=wait,
        agent_decides=agent_decides,
    )


def _best_effort(notify: Notify, config: PluginConfig, event: PluginEvent, timeout: float) -> None:
    try:
        notify(config, event, timeout)
    except EventError as e:
        log(
            "info",
            "node agent not told",
            pod=f"{event.pod_namespace}/{event.pod_name}",
            cmd=event.cmd,
            error=str(e),
        )


def cmd_add(inv: Invocation, enrollment: Enrollment, notify: Notify) -> bytes:
    assert inv.config is not None
    config = inv.config
    if inv.pod is None:
        return success_result(config)  # not a Kubernetes pod: nothing of ours
    namespace, name = inv.pod
    if config.enrollment == ENROLLMENT_AGENT:
        return _add_decided_by_agent(inv, notify)
    enrolled = enrollment(config, namespace, name)
    if not enrolled:
        _best_effort(
            notify, config, _event(inv, "add", wait=False), min(BEST_EFFORT_TIMEOUT, config.event_timeout)
        )
        return success_result(config)
    try:
        reply = notify(config, _event(inv, "add", wait=True), config.event_timeout)
    except EventError as e:
        raise CniAgentUnavailable(config.cni_event_address, str(e)) from None
    if not reply.ok:
        raise CniEnrollFailed(f"{namespace}/{name}", reply.error or "no reason given")
    log("info", "pod captured", pod=f"{namespace}/{name}", captured=reply.captured)
    return success_result(config)


def _add_decided_by_agent(inv: Invocation, notify: Notify) -> bytes:
    """``enrollment: agent``: the agent decides and replies; no reply or its error fails the ADD."""
    assert inv.config is not None and inv.pod is not None
    config = inv.config
    pod = "/".join(inv.pod)
    try:
        reply = notify(config, _event(inv, "add", wait=True, agent_decides=True), config.event_timeout)
    except EventError as e:
        raise CniAgentUnavailable(config.cni_event_address, str(e)) from None
    if not reply.ok:
        problem = reply.error or "no reason given"
        raise CniEnrollFailed(pod, problem) if reply.enrolled else CniEnrollUndecided(pod, problem)
    if reply.captured:
        log("info", "pod captured", pod=pod, captured=True, decided_by="agent")
    else:
        log("info", "pod not enrolled; passed through", pod=pod, enrolled=reply.enrolled, decided_by="agent")
    return success_result(config)


def cmd_del(inv: Invocation, notify: Notify) -> bytes:
    assert inv.config is not None
    if inv.pod is not None:
        # The agent releases the pod (ztunnel closes its sockets) before the runtime deletes the netns.
        _best_effort(notify, inv.config, _event(inv, "del", wait=True), inv.config.event_timeout)
    return b""


def run(
    env: Mapping[str, str],
    stdin: bytes,
    *,
    enrollment: Enrollment = store_enrollment,
    notify: Notify = notify_agent,
) -> tuple[bytes, int]:
    """(stdout, exit status) of one plugin call."""
    cni_version = DEFAULT_CNI_VERSION
    try:
        inv = parse_invocation(env, stdin)
        if inv.config is not None:
            cni_version = inv.config.cni_version
        if inv.command == "VERSION":
            return version_result(), 0
        if inv.command == "ADD":
            return cmd_add(inv, enrollment, notify), 0
        if inv.command == "DEL":
            return cmd_del(inv, notify), 0
        return b"", 0  # CHECK: the call is valid; the agent keeps the pod's capture in shape itself
    except CniError as e:
        log("warning", "CNI call failed", command=env.get(CNI_COMMAND, ""), code=e.code, error=e.msg)
        return error_result(e, cni_version), 1


def main() -> None:
    """``ambient-cni``: one CNI call (the runtime's environment and stdin) -> stdout and exit status."""
    command = os.environ.get(CNI_COMMAND, "")
    stdin = b"" if command == "VERSION" else sys.stdin.buffer.read()
    out, status = run(os.environ, stdin)
    sys.stdout.buffer.write(out)
    sys.stdout.buffer.flush()
    sys.exit(status)


if __name__ == "__main__":
    main()
