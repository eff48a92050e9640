"""Pods of the local cluster from the command line, as kubectl has them: ``exec`` and a pod's logs.

``ambientctl exec POD [-n NS] [-c C] -- CMD...`` runs CMD inside the pod as its container runs (its
network namespace and /etc/hosts, its user and group from securityContext, its env and workingDir;
``Cluster.exec_command``), with the terminal attached, and exits with CMD's exit code. Without ``-c`` it
runs as the first container (kubectl's default), saying so on stderr when the pod has several.

``ambientctl logs POD [-n NS] [-c C] [-f] [--tail N] [--previous]`` (dispatched here by the top-level
``logs`` when a POD is given) prints one container's output: ``-c`` picks it; without it the pod's only
app container, else an error listing them as kubectl does (``a container name must be specified for
pod X, choose one of: [a b]``). ``--previous`` shows the run before the last restart. ``-f`` keeps
printing what is appended, across restarts (the log file is replaced), until Ctrl-C or the pod is gone.
Pod logs are the processes' raw output without timestamps, so ``--since`` is refused for them with that
reason rather than ignored. POD is ``NAME``, ``pod/NAME`` or ``NS/NAME``.

With ``--kubeconfig``/``--context`` (the source ``troubleshoot.remote.reach_for`` chooses), ``logs POD`` reads
the API server's ``pods/log`` (``container``, ``follow``, ``tailLines``, ``sinceSeconds``, ``previous``):
the API server picks or refuses the container and answers ``--previous``, and its refusal is printed as
it said it. ``exec`` runs the command through the API server's ``pods/exec`` (``KubeReach.exec``, over
WebSocket as kubectl does): without ``-c`` kubectl's default container (the default-container annotation,
else the first; "Defaulted container" on stderr when the pod has several), stdout and stderr relayed as
they come, stdin streamed when it is not a terminal (no terminal is allocated: ``tty=false``), and
ambientctl exits with the command's exit code. A missing pod, an unknown container and the API server's
refusals are one error line (exit 1).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from ambientctl.cluster import Cluster
from ambientctl.cluster.cluster import PREVIOUS_LOG_SUFFIX
from ambientctl.cluster.errors import ClusterError
from ambientctl.cluster.spec import PodSpec
from ambientctl.cluster.state import PodRecord
from ambientctl.troubleshoot.logs import parse_duration
from ambientctl.troubleshoot.reach import ReachError
from ambientctl.troubleshoot.remote import KubeReach, LogSource, reach_for

from .common import CliError, CliState, cli_state

FOLLOW_POLL_S = 0.2


def register(app: typer.Typer) -> None:
    app.command("exec")(exec_in_pod)


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except ClusterError as e:
        raise CliError(str(e)) from None


def pod_ref(text: str, namespace: str | None) -> tuple[str, str]:
    """(namespace, name) from ``NAME``, ``pod/NAME`` or ``NS/NAME`` (``-n`` or ``default`` otherwise)."""
    rest = text.removeprefix("pod/").removeprefix("pods/")
    ns, sep, name = rest.partition("/")
    if not sep:
        return namespace or "default", rest
    if not ns or not name or "/" in name:
        raise CliError(f"{text!r}: name the pod as NAME (with -n NAMESPACE) or NAMESPACE/NAME")
    if namespace is not None and namespace != ns:
        raise CliError(f"{text!r} names namespace {ns!r} but -n says {namespace!r}")
    return ns, name


def _find(cluster: Cluster, namespace: str, name: str) -> PodRecord:
    with _errors():
        if not cluster.is_up():
            raise CliError("the local cluster is not up: no pod runs (`ambientctl cluster up` starts it)")
        record = cluster.find_pod(name, namespace)
    if record is None:
        raise CliError(f'pods "{name}" not found in namespace {namespace!r} of the local cluster')
    return record


def choose_container(pod: PodSpec, container: str | None) -> str:
    """The container ``-c`` names (it must exist), else the pod's only app container; several: the
    error kubectl gives, listing them (and the init containers)."""
    apps = [c.name for c in pod.app_containers()]
    inits = [c.name for c in pod.init_containers]
    if container is not None:
        if container not in (*apps, *inits):
            raise CliError(f"container {container} is not valid for pod {pod.name}")
        return container
    if len(apps) == 1:
        return apps[0]
    if not apps:
        raise CliError(f"pod {pod.name} runs no container (a network namespace only): it has no logs")
    listed = f"choose one of: [{' '.join(apps)}]"
    if inits:
        listed += f" or one of the init containers: [{' '.join(inits)}]"
    raise CliError(f"a container name must be specified for pod {pod.name}, {listed}")


def exec_in_pod(
    ctx: typer.Context,
    pod: Annotated[str, typer.Argument(help="Pod: NAME, pod/NAME or NAMESPACE/NAME.")],
    command: Annotated[list[str], typer.Argument(help="Command and arguments (after --).")],
    namespace: Annotated[str | None, typer.Option("-n", "--namespace", help="Pod namespace.")] = None,
    container: Annotated[
        str | None, typer.Option("-c", "--container", help="Container (default: the first).")
    ] = None,
) -> None:
    """Run a command in a pod as its container runs (netns, user, env, workingDir): exec POD -- CMD..."""
    ns, name = pod_ref(pod, namespace)
    state = cli_state(ctx)
    if state.on_kubernetes:
        raise typer.Exit(_kube_exec(state, ns, name, command, container))
    cluster = Cluster(cli_state(ctx).state_dir())
    record = _find(cluster, ns, name)
    apps = [c.name for c in record.spec.app_containers()]
    if container is None and len(apps) > 1:
        typer.echo(f'Defaulted container "{apps[0]}" out of: {", ".join(apps)}', err=True)
    if container is not None:
        choose_container(record.spec, container)
    with _errors():
        run = cluster.exec_command(name, ns, command, container)
    try:
        code = subprocess.call(run.argv, env=run.env, cwd=run.cwd)
    except FileNotFoundError:
        raise CliError(f"{run.argv[0]} not found: apt-get install iproute2") from None
    raise typer.Exit(code)


def _kube_exec(state: CliState, namespace: str, name: str, command: list[str], container: str | None) -> int:
    """``exec`` on Kubernetes: the command's exit code (module docstring)."""

    def defaulted(chosen: str, containers: list[str]) -> None:
        typer.echo(f'Defaulted container "{chosen}" out of: {", ".join(containers)}', err=True)

    stdin = None if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer
    try:
        kube = reach_for(state).kube
        assert kube is not None  # on_kubernetes
        return kube.exec(namespace, name, command, container=container, stdin=stdin, stdout=sys.stdout.buffer,
                         stderr=sys.stderr.buffer, defaulted=defaulted)  # fmt: skip
    except ReachError as e:
        raise CliError(str(e)) from None


def show_pod_logs(
    ctx: typer.Context,
    pod: str,
    *,
    namespace: str | None = None,
    container: str | None = None,
    follow: bool = False,
    since: str | None = None,
    tail: int | None = None,
    previous: bool = False,
) -> None:
    """``logs POD``: one container's log (see the module doc)."""
    if tail is not None and tail < 0:
        raise CliError("--tail must be 0 or more")
    if previous and follow:
        raise CliError("--previous and -f cannot be used together (the previous run has ended)")
    state = cli_state(ctx)
    if state.on_kubernetes:
        try:
            kube = reach_for(state).kube
        except ReachError as e:
            raise CliError(str(e)) from None
        assert kube is not None  # on_kubernetes
        return _kube_pod_logs(kube, LogSource("", *pod_ref(pod, namespace), container), follow=follow, since=since,
                              tail=tail, previous=previous)
    if since is not None:
        raise CliError(
            "--since is not supported for pod logs: the local cluster keeps a container's raw output "
            "without timestamps; use --tail N"
        )
    ns, name = pod_ref(pod, namespace)
    cluster = Cluster(cli_state(ctx).state_dir())
    record = _find(cluster, ns, name)
    chosen = choose_container(record.spec, container)
    path = cluster.container_log_path(record, chosen)
    if previous:
        path = path.with_name(path.name + PREVIOUS_LOG_SUFFIX)
        if not path.exists():
            raise CliError(f'previous terminated container "{chosen}" in pod "{name}" not found')
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = b""  # not started yet (waiting for its init containers)
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror}") from None
    out = sys.stdout.buffer
    out.write(last_lines(data, tail))
    out.flush()
    if follow:
        try:
            _follow(cluster, record, path, len(data))
        except KeyboardInterrupt:
            return


def _kube_pod_logs(kube: KubeReach, source: LogSource, *, follow: bool, since: str | None, tail: int | None,
                   previous: bool) -> None:  # fmt: skip
    """``logs POD`` on Kubernetes: the container's log through the API server's pods/log."""
    try:
        delta = parse_duration(since) if since is not None else None
    except ValueError as e:
        raise CliError(str(e)) from None
    since_seconds = -int(-delta.total_seconds() // 1) if delta is not None else None
    out = sys.stdout.buffer
    try:
        if not follow:
            out.write(kube.log(source, since_seconds=since_seconds, tail_lines=tail, previous=previous).encode())
            out.flush()
            return
        lines = kube.follow_logs([source], since_seconds=since_seconds, tail_lines=tail)
        try:
            for _, line in lines:
                out.write(line.encode() + b"\n")
                out.flush()
        except KeyboardInterrupt:
            return
        finally:
            lines.close()
    except ReachError as e:
        raise CliError(str(e)) from None


def last_lines(data: bytes, tail: int | None) -> bytes:
    """The last ``tail`` lines of ``data`` (all when None; a final line without newline counts)."""
    if tail is None:
        return data
    if tail == 0:
        return b""
    lines = data.splitlines(keepends=True)
    return b"".join(lines[-tail:])


def _follow(cluster: Cluster, record: PodRecord, path: Path, offset: int) -> None:
    """Print what is appended to ``path``; a restarted container's new file is read from its start.
    Ends when the pod is removed (or replaced by another of that name)."""
    out = sys.stdout.buffer
    inode = _inode(path)
    while True:
        current = _inode(path)
        if current != inode:
            inode, offset = current, 0
        if current is not None:
            with open(path, "rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
            if chunk:
                offset += len(chunk)
                out.write(chunk)
                out.flush()
        now = cluster.find_pod(record.spec.name, record.spec.namespace)
        if now is None or now.netns != record.netns or now.spec.uid != record.spec.uid:
            return
        time.sleep(FOLLOW_POLL_S)


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None
