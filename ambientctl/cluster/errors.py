"""Errors of the local cluster: each message says what is wrong and what the operator can do about it.

``ClusterError`` is the base; the CLI prints its message as one line and exits 1. Errors raised while
the kernel is being changed (``NetworkApplyFailed``, ``NftablesFailed``) name the namespace and the
object, so "which step failed" never needs a traceback. Bugs stay ordinary exceptions.
"""

from __future__ import annotations

from collections.abc import Sequence


class ClusterError(Exception):
    """A local-cluster failure the operator can act on."""


class InvalidClusterSpec(ClusterError):
    """cluster.yaml (or a pod/service request) does not describe a cluster we can build."""

    def __init__(self, source: str, path: str, reason: str) -> None:
        super().__init__(f"{source}: {path}: {reason}")
        self.source = source
        self.path = path
        self.reason = reason


class HostNotSupported(ClusterError):
    """This machine cannot host the local cluster (not root, no netns, a tool missing)."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("this machine cannot run the local cluster: " + "; ".join(problems))
        self.problems = tuple(problems)


class ClusterNotUp(ClusterError):
    def __init__(self, state_dir: str) -> None:
        super().__init__(
            f"no local cluster is up for state directory {state_dir}: run `ambientctl cluster up`"
        )


class ClusterAlreadyUp(ClusterError):
    """``up`` was asked for a different shape than the running cluster has."""

    def __init__(self, running: str, requested: str) -> None:
        super().__init__(
            f"a local cluster is already up ({running}); it cannot change to {requested} while running: "
            "run `ambientctl cluster down` first"
        )


class LeftoversFound(ClusterError):
    """Objects with our prefix exist but no state records them (a crash, or another state directory)."""

    def __init__(self, prefix: str, names: Sequence[str]) -> None:
        shown = ", ".join(sorted(names)[:5]) + (", ..." if len(names) > 5 else "")
        super().__init__(
            f"found network namespaces with prefix {prefix!r} that this state directory does not record "
            f"({shown}): remove them with `ambientctl cluster down --prefix {prefix}` "
            "or choose another prefix in cluster.yaml"
        )


class StateCorrupt(ClusterError):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(
            f"cluster state {path} is unreadable ({reason}): `ambientctl cluster down` removes the cluster "
            "by its name prefix and starts afresh"
        )


class UnknownNode(ClusterError):
    def __init__(self, node: str, known: Sequence[str]) -> None:
        listed = ", ".join(known) if known else "none"
        super().__init__(
            f"node {node!r} is not in the cluster (nodes: {listed}): use one of those names "
            "(`ambientctl cluster status` lists them)"
        )
        self.node = node


class NeedsRoot(ClusterError):
    """Not root: the cluster's files, network namespaces and processes belong to root."""

    def __init__(self, command: str) -> None:
        super().__init__(f"the local cluster needs root: run with sudo (`sudo ambientctl {command}`)")


class PrefixMismatch(ClusterError):
    """``--prefix`` names another cluster than the one this state directory records."""

    def __init__(self, state_dir: str, recorded: str, given: str) -> None:
        super().__init__(
            f"the cluster of state directory {state_dir} has prefix {recorded!r}, not {given!r}: "
            f"drop --prefix (or use --prefix {recorded}); a cluster with prefix {given!r} "
            "belongs to another --state-dir"
        )


class PodExists(ClusterError):
    def __init__(self, namespace: str, name: str) -> None:
        super().__init__(
            f"pod {namespace}/{name} already exists with a different spec: remove it first "
            "(pods are immutable, as in Kubernetes)"
        )


class PodTerminating(ClusterError):
    def __init__(self, namespace: str, name: str) -> None:
        super().__init__(
            f"pod {namespace}/{name} is still terminating: create it again once it is gone "
            "(its address and sandbox are released when its removal completes)"
        )


class PodNotFound(ClusterError):
    def __init__(self, namespace: str, name: str) -> None:
        super().__init__(f'pod "{name}" not found in namespace "{namespace}" of the local cluster')


class ServiceNotFound(ClusterError):
    def __init__(self, namespace: str, name: str) -> None:
        super().__init__(f'service "{name}" not found in namespace "{namespace}" of the local cluster')


class AddressExhausted(ClusterError):
    def __init__(self, what: str, cidr: str) -> None:
        super().__init__(f"no free {what} address left in {cidr}: remove some, or use a larger subnet")


class AddressConflict(ClusterError):
    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"address {address} cannot be used: {reason}")


class CommandNotFound(ClusterError):
    def __init__(self, command: str, what: str) -> None:
        super().__init__(
            f"{what}: command {command!r} not found on PATH (give an absolute path or install it)"
        )


class NetworkApplyFailed(ClusterError):
    """A netlink or filesystem step failed; the message names the step and the kernel's reason."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"cannot {step}: {reason}")
        self.step = step
        self.reason = reason


class NftablesFailed(ClusterError):
    def __init__(self, netns: str, reason: str) -> None:
        super().__init__(
            f"nft refused the service rules in network namespace {netns}: {reason} "
            "(is the kernel built with nftables NAT support, nf_nat/nft_nat?)"
        )


class ProcessStartFailed(ClusterError):
    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"cannot start {name}: {reason}")


class UnknownComponent(ClusterError):
    def __init__(self, name: str, known: Sequence[str]) -> None:
        if known:
            super().__init__(f"no logs for {name!r} (known: {', '.join(known)}): use one of those names")
        else:
            super().__init__(
                f"no logs for {name!r}: nothing has run yet (`ambientctl cluster up` starts the mesh)"
            )


class ClusterDegraded(ClusterError):
    """The state says "up" but parts of the cluster are gone (deleted by hand, or a reboot)."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__(
            "the local cluster is up but damaged (" + "; ".join(problems) + "): "
            "run `ambientctl cluster down` then `ambientctl cluster up`"
        )
        self.problems = tuple(problems)


class NameCollision(ClusterError):
    def __init__(self, what: str, other: str) -> None:
        super().__init__(f"{what}'s network names collide with {other}'s: rename one of them")


class ClusterBusy(ClusterError):
    def __init__(self, lock_path: str, waited: float) -> None:
        super().__init__(
            f"another ambientctl has been changing the local cluster for over {waited:g} s (lock {lock_path}): "
            "wait for it to finish, or stop it"
        )
