"""``ambient-cni`` as installed on a Kubernetes node's host: the plugin's ``enrollment: agent`` mode in one
module that needs nothing but the host's ``python3`` (>= 3.8, standard library only).

Role: the node agent's host install (``install.host_plugin_executable``) writes this module's source, behind
a ``/bin/sh`` preamble that finds ``python3`` and runs it isolated (``-I -S``: no user site, no
``PYTHON*`` variables, no site-packages), into the host's CNI bin directory. The container runtime runs it on
the host, where the image's venv and msgspec do not exist. One CNI call per process: ``CNI_*`` in the
environment, the network config (with ``prevResult``) on stdin, the result or a CNI error JSON
(``{cniVersion, code, msg, details}``, non-zero exit) on stdout; log lines are JSON on stderr.

- ADD of a Kubernetes pod: sends the node agent the same event line as ``plugin.py`` in agent mode (the
  fields of ``wire.PluginEvent`` with ``agent_decides`` and ``wait`` true) and reads its ``EventReply``
  line. ``ok``: prints ``prevResult`` unchanged. The agent's error: code 100 when it found the pod enrolled,
  else 11; no agent, no reply in time or a reply that does not decode: 11 (fail closed; the kubelet
  retries). A call without ``K8S_POD_*`` args passes through.
- DEL: tells the agent best-effort and never fails (the runtime must be able to tear down).
- CHECK: checks the call and passes. VERSION: the supported versions.
- ``enrollment: store`` (the local cluster's mode: the plugin reads the embedded store) is not offered on a
  host, which has no store: refused with code 7, naming the fix.

Invariants: imports only json, os, socket, sys, time; the syntax and library of Python 3.8; no
``from __future__`` import (the installed file puts the shell preamble's string first). Codes, messages
and the event's field names are those of ``errors.py``, ``plugin.py`` and ``wire.py``; the unit tests hold
the two sides together (a line written here decodes with ``wire.decode_event``, a reply ``wire`` encodes
decodes here, and both plugins answer the same calls with the same JSON).
"""
# ruff: noqa: UP006, UP007, UP031, UP035, UP041, UP045  (Python 3.8 on the host: typing generics, socket.timeout)

import json
import os
import socket
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple

LOGGER = "ztunnel.cni.hostplugin"
SUPPORTED_CNI_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")
DEFAULT_CNI_VERSION = "1.0.0"
DEFAULT_EVENT_SOCKET = "/var/run/ambient-cni/pluginevent.sock"
DEFAULT_EVENT_TIMEOUT = 30.0
MAX_CONFIG_BYTES = 1 << 20
MAX_LINE = 64 * 1024
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION")
MIN_PYTHON = (3, 8)

# The CNI error codes of errors.py (1-11 the spec's, 100 ours).
CNI_INCOMPATIBLE_VERSION = 1
CNI_INVALID_ENV = 4
CNI_IO_FAILURE = 5
CNI_DECODE_FAILURE = 6
CNI_INVALID_CONFIG = 7
CNI_TRY_AGAIN_LATER = 11
CNI_ENROLL_FAILED = 100

RETRY_HINT = "the node agent's log has the details; the kubelet will retry"


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details


class AgentError(Exception):
    """The agent could not be reached, did not reply in time, or replied with something that is no reply."""


def env_invalid(variable: str, problem: str) -> CniError:
    return CniError(CNI_INVALID_ENV, "%s: %s" % (variable, problem),
                    "the runtime (kubelet/containerd) must set it for this command")


def config_invalid(problem: str) -> CniError:
    return CniError(CNI_INVALID_CONFIG, "invalid network configuration: %s" % problem,
                    "fix the plugin's entry in the conflist")


# -- parsing -------------------------------------------------------------------------------------------


def parse_cni_args(text: str) -> Dict[str, str]:
    out = {}  # type: Dict[str, str]
    for pair in text.split(";"):
        if not pair.strip():
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise env_invalid("CNI_ARGS", "%r is not KEY=VALUE" % pair)
        out[key.strip()] = value.strip()
    return out


def parse_config(data: bytes) -> Dict[str, Any]:
    """The network config on stdin, checked as ``plugin_config.decode_plugin_config`` checks it."""
    if len(data) > MAX_CONFIG_BYTES:
        raise CniError(CNI_DECODE_FAILURE, "cannot decode the network configuration on stdin: %d bytes, over "
                       "the %d-byte limit" % (len(data), MAX_CONFIG_BYTES))
    if not data.strip():
        raise CniError(CNI_DECODE_FAILURE, "cannot decode the network configuration on stdin: stdin is empty")
    try:
        doc = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CniError(CNI_DECODE_FAILURE, "cannot decode the network configuration on stdin: %s" % e) from None
    if not isinstance(doc, dict):
        raise CniError(CNI_DECODE_FAILURE, "cannot decode the network configuration on stdin: expected a JSON "
                       "object, got %s" % type(doc).__name__)
    version = doc.get("cniVersion")
    if not isinstance(version, str):
        raise config_invalid("cniVersion must be a string")
    if version not in SUPPORTED_CNI_VERSIONS:
        raise CniError(CNI_INCOMPATIBLE_VERSION, "CNI version %r is not supported" % version,
                       "this plugin speaks %s; set cniVersion in the network config to one of them"
                       % ", ".join(SUPPORTED_CNI_VERSIONS))
    enrollment = doc.get("enrollment", "store")
    if enrollment != "agent":
        raise config_invalid(
            "enrollment %r is not offered by the ambient-cni installed on a node's host (it has no embedded "
            "store to read); the node agent's host install writes \"enrollment\": \"agent\"" % (enrollment,))
    address = doc.get("cni_event_address", DEFAULT_EVENT_SOCKET)
    if not isinstance(address, str) or not address:
        raise config_invalid("cni_event_address must be the path of the node agent's event socket")
    timeout = doc.get("event_timeout", DEFAULT_EVENT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise config_invalid("event_timeout must be a number of seconds")
    if not timeout > 0:
        raise config_invalid("event_timeout must be a positive number of seconds, got %s" % float(timeout))
    return doc


def prev_result(config: Mapping[str, Any]) -> Optional[Any]:
    return config.get("prevResult")


def pod_ips(config: Mapping[str, Any]) -> List[str]:
    prev = prev_result(config)
    ips = prev.get("ips") if isinstance(prev, dict) else None
    if not isinstance(ips, list):
        return []
    return [str(ip["address"]).partition("/")[0] for ip in ips if isinstance(ip, dict) and ip.get("address")]


# -- the wire (wire.py's format, in the standard library) ------------------------------------------------


def encode_event(fields: Mapping[str, Any]) -> bytes:
    """One event line, the fields in ``wire.PluginEvent``'s order."""
    names = ("cmd", "pod_namespace", "pod_name", "container_id", "netns", "ifname", "pod_uid", "pod_ips",
             "wait", "agent_decides")
    return json.dumps({k: fields[k] for k in names}, separators=(",", ":")).encode("utf-8") + b"\n"


def decode_reply(line: bytes) -> Dict[str, Any]:
    """An ``EventReply`` line as a dict (ok, error, captured, enrolled); ``AgentError`` if it is not one."""
    try:
        doc = json.loads(line.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise AgentError("malformed agent reply: %s" % e) from None
    if not isinstance(doc, dict):
        raise AgentError("malformed agent reply: expected a JSON object")
    if "ok" not in doc:
        raise AgentError("malformed agent reply: no `ok` field")
    reply = {"ok": doc["ok"], "error": doc.get("error", ""), "captured": doc.get("captured", False),
             "enrolled": doc.get("enrolled", False)}
    for key, kind in (("ok", bool), ("error", str), ("captured", bool), ("enrolled", bool)):
        if not isinstance(reply[key], kind):
            raise AgentError("malformed agent reply: `%s` is not a %s" % (key, kind.__name__))
    return reply


def send_event(path: str, line: bytes, timeout: float) -> Dict[str, Any]:
    """Send one event line to the agent at ``path``; its reply within ``timeout`` seconds, or ``AgentError``."""
    deadline = time.monotonic() + timeout
    where = "node agent event socket %s: " % path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(line)
            buf = bytearray()
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise socket.timeout()
                sock.settimeout(left)
                chunk = sock.recv(65536)
                if not chunk:
                    raise AgentError(where + "the agent closed the connection without replying")
                buf += chunk
                if len(buf) > MAX_LINE:
                    raise AgentError("malformed agent reply: over %d bytes" % MAX_LINE)
    except socket.timeout:  # TimeoutError's alias from 3.10 on; its own class on 3.8 and 3.9
        raise AgentError(where + "no reply within %gs" % timeout) from None
    except FileNotFoundError:
        raise AgentError(where + "no such socket (is the node agent running?)") from None
    except OSError as e:
        raise AgentError(where + (e.strerror or str(e))) from None
    return decode_reply(bytes(buf[: buf.index(b"\n")]))


# -- logging -------------------------------------------------------------------------------------------


def log(level: str, event: str, **fields: Any) -> None:
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + ".%06dZ" % int(now % 1 * 1e6)
    line = dict(fields, event=event, level=level, logger=LOGGER, timestamp=stamp)
    try:
        sys.stderr.write(json.dumps(line) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


# -- commands ------------------------------------------------------------------------------------------


def error_result(error: CniError, cni_version: str = DEFAULT_CNI_VERSION) -> bytes:
    doc = {"cniVersion": cni_version, "code": error.code, "msg": error.msg}  # type: Dict[str, Any]
    if error.details:
        doc["details"] = error.details
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


def success_result(config: Mapping[str, Any]) -> bytes:
    prev = prev_result(config)
    if prev is None:
        prev = {"cniVersion": config["cniVersion"]}
    return json.dumps(prev, separators=(",", ":")).encode("utf-8")


def pod_event(cmd: str, env: Mapping[str, str], args: Mapping[str, str], config: Mapping[str, Any]) -> bytes:
    return encode_event({
        "cmd": cmd, "pod_namespace": args["K8S_POD_NAMESPACE"], "pod_name": args["K8S_POD_NAME"],
        "container_id": env.get("CNI_CONTAINERID", "").strip(), "netns": env.get("CNI_NETNS", "").strip(),
        "ifname": env.get("CNI_IFNAME", "").strip(), "pod_uid": args.get("K8S_POD_UID", ""),
        "pod_ips": pod_ips(config), "wait": True, "agent_decides": cmd == "add",
    })


def kubernetes_pod(args: Mapping[str, str]) -> Optional[str]:
    ns, name = args.get("K8S_POD_NAMESPACE", ""), args.get("K8S_POD_NAME", "")
    return "%s/%s" % (ns, name) if ns and name else None


def parse_call(command: str, env: Mapping[str, str], stdin: bytes) -> Tuple[Dict[str, Any], Dict[str, str]]:
    config = parse_config(stdin)
    for variable in ("CNI_CONTAINERID", "CNI_IFNAME"):
        if not env.get(variable, "").strip():
            raise env_invalid(variable, "not set")
    netns = env.get("CNI_NETNS", "").strip()
    if command in ("ADD", "CHECK"):
        if not netns:
            raise env_invalid("CNI_NETNS", "not set; ADD and CHECK need the pod's network namespace path")
        if not os.path.isabs(netns):
            raise env_invalid("CNI_NETNS", "%r is not an absolute path" % netns)
    return config, parse_cni_args(env.get("CNI_ARGS", ""))


def cmd_add(env: Mapping[str, str], config: Mapping[str, Any], args: Mapping[str, str]) -> bytes:
    pod = kubernetes_pod(args)
    if pod is None:
        return success_result(config)  # not a Kubernetes pod: nothing of ours
    address = config.get("cni_event_address", DEFAULT_EVENT_SOCKET)
    try:
        reply = send_event(address, pod_event("add", env, args, config),
                           float(config.get("event_timeout", DEFAULT_EVENT_TIMEOUT)))
    except AgentError as e:
        raise CniError(CNI_TRY_AGAIN_LATER, "the ambient node agent at %s is not reachable: %s" % (address, e),
                       "is the node agent (ztunnel-node-agent) running on this node? the kubelet will retry") \
            from None
    if not reply["ok"]:
        problem = reply["error"] or "no reason given"
        if reply["enrolled"]:
            raise CniError(CNI_ENROLL_FAILED, "pod %s is enrolled in the ambient mesh but could not be captured: "
                           "%s" % (pod, problem), RETRY_HINT)
        raise CniError(CNI_TRY_AGAIN_LATER, "the node agent could not decide whether pod %s is enrolled in the "
                       "ambient mesh: %s" % (pod, problem),
                       "the pod does not start uncaptured (fail closed); " + RETRY_HINT)
    if reply["captured"]:
        log("info", "pod captured", pod=pod, captured=True, decided_by="agent")
    else:
        log("info", "pod not enrolled; passed through", pod=pod, enrolled=reply["enrolled"], decided_by="agent")
    return success_result(config)


def cmd_del(env: Mapping[str, str], stdin: bytes) -> bytes:
    """Best effort: the agent releases the pod before the runtime deletes the netns; never an error."""
    try:
        config, args = parse_call("DEL", env, stdin)
        if kubernetes_pod(args) is not None:
            address = config.get("cni_event_address", DEFAULT_EVENT_SOCKET)
            send_event(address, pod_event("del", env, args, config),
                       float(config.get("event_timeout", DEFAULT_EVENT_TIMEOUT)))
    except (CniError, AgentError) as e:
        log("info", "node agent not told", cmd="del", error=str(e))
    return b""


def run(env: Mapping[str, str], stdin: bytes) -> Tuple[bytes, int]:
    """(stdout, exit status) of one plugin call."""
    command = env.get("CNI_COMMAND", "")
    cni_version = DEFAULT_CNI_VERSION
    try:
        if command not in COMMANDS:
            raise env_invalid("CNI_COMMAND", "%s; expected one of %s"
                              % (repr(command) if command else "not set", ", ".join(COMMANDS)))
        if command == "VERSION":
            doc = {"cniVersion": DEFAULT_CNI_VERSION, "supportedVersions": list(SUPPORTED_CNI_VERSIONS)}
            return json.dumps(doc, separators=(",", ":")).encode("utf-8"), 0
        if command == "DEL":
            return cmd_del(env, stdin), 0
        config, args = parse_call(command, env, stdin)
        cni_version = config["cniVersion"]
        if command == "ADD":
            return cmd_add(env, config, args), 0
        return b"", 0  # CHECK: the call is valid; the agent keeps the pod's capture in shape itself
    except CniError as e:
        log("warning", "CNI call failed", command=command, code=e.code, error=e.msg)
        return error_result(e, cni_version), 1


def main() -> None:
    if sys.version_info < MIN_PYTHON:
        err = CniError(CNI_IO_FAILURE, "ambient-cni needs python3 >= 3.8 on the node's host, found %d.%d"
                       % sys.version_info[:2], "install a newer python3 on the node")
        sys.stdout.buffer.write(error_result(err))
        sys.exit(1)
    command = os.environ.get("CNI_COMMAND", "")
    stdin = b"" if command == "VERSION" else sys.stdin.buffer.read()
    out, status = run(os.environ, stdin)
    sys.stdout.buffer.write(out)
    sys.stdout.buffer.flush()
    sys.exit(status)


if __name__ == "__main__":
    main()
