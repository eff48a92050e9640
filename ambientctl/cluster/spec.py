"""What the operator asks of the local cluster: cluster.yaml, pods and service ports, with defaults.

``ClusterSpec`` is the whole of cluster.yaml (field names follow kind's ``Cluster`` config where they
overlap: ``networking.podSubnet``, ``networking.serviceSubnet``). Unknown fields are refused, so a typo
is an error rather than a silently ignored setting. Every check names the failing field
(``$.networking.podSubnet``) and raises ``InvalidClusterSpec``. Pure: parsing and validation only; the
file is read by ``load_cluster_spec`` and nothing else here touches the system.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from meshcore.store import name_problem

from .errors import InvalidClusterSpec

API_VERSION = "ambientctl.mesh/v1alpha1"
KIND = "Cluster"
DEFAULT_PREFIX = "am-"
MAX_NODES = 100
# Interface names are at most 15 bytes (IFNAMSIZ - 1); the longest we build is <prefix>v<8 hex>.
MAX_PREFIX_LEN = 6
_PREFIX = re.compile(r"^[a-z][a-z0-9]{0,4}-$")
_DOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# Each node routes one /24 of the pod subnet (10.244.N.0/24 for node N).
NODE_POD_PREFIXLEN = 24

PortNumber = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Protocol = Literal["TCP", "UDP"]


class Networking(msgspec.Struct, frozen=True, kw_only=True, rename="camel", forbid_unknown_fields=True):
    # Node addresses (node N = host N of this subnet); istiod_lite listens on its last usable address.
    node_subnet: str = "172.30.0.0/24"
    # Split into /24s: node N routes the Nth (10.244.N.0/24); the 0th is never used.
    pod_subnet: str = "10.244.0.0/16"
    # Service VIPs (DNAT in every node, kube-proxy style).
    service_subnet: str = "10.96.0.0/16"
    cluster_domain: str = "cluster.local"


class ClusterSpec(msgspec.Struct, frozen=True, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """cluster.yaml. Every field has a default: an empty file (or none) is a two-node cluster."""

    api_version: str = API_VERSION
    kind: str = KIND
    nodes: Annotated[int, msgspec.Meta(ge=1, le=MAX_NODES)] = 2
    # Starts the name of every namespace, link, nft table and /etc/netns entry the cluster makes, so
    # `down` can sweep by it. Tests use their own ("t1x9-") so parallel runs never touch each other.
    prefix: str = DEFAULT_PREFIX
    networking: Networking = msgspec.field(default_factory=Networking)


class PodPort(msgspec.Struct, frozen=True, kw_only=True):
    """A container port: what a Service's named targetPort resolves against."""

    port: PortNumber
    name: str | None = None
    protocol: Protocol = "TCP"


class ContainerSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One container of a pod: its own process in the pod's network namespace (empty ``command``: no
    process, the container only holds its place, as a pause container does)."""

    name: str
    command: tuple[str, ...] = ()
    env: dict[str, str] = {}
    # name -> "podIP" | "hostIP", as PodSpec.env_from_status.
    env_from_status: dict[str, str] = {}
    # "": the root directory "/" (never the directory the kubelet or `cluster up` ran in).
    working_dir: str = ""
    # securityContext.runAsUser / runAsGroup after the pod's and the container's were merged (the
    # container's wins); None: root (uid 0 / gid 0), as a container of an image without USER.
    run_as_user: int | None = None
    run_as_group: int | None = None


# The one container of a pod built in code with ``PodSpec(command=...)`` (no ``containers``).
DEFAULT_CONTAINER = "main"
# Kubernetes' default ``spec.terminationGracePeriodSeconds``: how long a pod's containers may take to
# exit on SIGTERM before SIGKILL (a container that exits on SIGTERM goes at once; 0: SIGKILL at once).
DEFAULT_TERMINATION_GRACE_S = 30


class PodSpec(msgspec.Struct, frozen=True):
    """A pod of the local cluster: one network namespace on one node, with its containers' processes in
    it. ``containers`` and ``init_containers`` are what runs; a pod built in code with only ``command``
    (and ``env``, ``working_dir``) has one container of that command, named ``main``. When
    ``containers`` is given, ``command``/``env``/``working_dir`` repeat its first container's."""

    name: str
    namespace: str
    node: str
    # argv run inside the pod netns (through `ip netns exec`, so /etc/netns/<netns>/hosts applies);
    # empty: the pod is a network namespace only.
    command: tuple[str, ...] = ()
    labels: dict[str, str] = {}
    service_account: str = "default"
    ports: tuple[PodPort, ...] = ()
    env: dict[str, str] = {}
    # The store object's uid (the downward API's metadata.uid), exported as POD_UID: it tells this
    # cluster's pods from another local cluster's pods of the same namespace/name on the machine.
    uid: str = ""
    # Environment variables whose value is known only once the pod exists: name -> "podIP" | "hostIP"
    # (a manifest's env valueFrom.fieldRef status.podIP / status.hostIP).
    env_from_status: dict[str, str] = {}
    # The process's working directory ("": "/").
    working_dir: str = ""
    containers: tuple[ContainerSpec, ...] = ()
    # Run one at a time, each to completion, before ``containers`` start.
    init_containers: tuple[ContainerSpec, ...] = ()
    # ``spec.terminationGracePeriodSeconds``: SIGTERM, this long, then SIGKILL (0: SIGKILL at once).
    termination_grace_s: int = DEFAULT_TERMINATION_GRACE_S

    def app_containers(self) -> tuple[ContainerSpec, ...]:
        """The app containers (from ``command`` when the pod was built without ``containers``)."""
        if self.containers:
            return self.containers
        if not self.command:
            return ()
        return (
            ContainerSpec(
                name=DEFAULT_CONTAINER,
                command=self.command,
                env=self.env,
                env_from_status=self.env_from_status,
                working_dir=self.working_dir,
            ),
        )

    def container(self, name: str) -> ContainerSpec | None:
        """The app or init container of that name."""
        return next((c for c in (*self.init_containers, *self.app_containers()) if c.name == name), None)

    def first_containers(self) -> tuple[ContainerSpec, ...]:
        """What starts with the pod's sandbox: its first init container, else every app container."""
        return self.init_containers[:1] if self.init_containers else self.app_containers()


class ServicePort(msgspec.Struct, frozen=True, kw_only=True):
    """One port of a service VIP and the endpoint port it is DNATed to."""

    port: PortNumber
    target_port: PortNumber
    protocol: Protocol = "TCP"
    name: str | None = None


def parse_cluster_spec(text: str | bytes, source: str = "cluster.yaml") -> ClusterSpec:
    """Parse and validate cluster.yaml's text; an empty document means all defaults."""
    import yaml  # local: only this function parses YAML

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InvalidClusterSpec(source, "$", f"not valid YAML: {e}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise InvalidClusterSpec(source, "$", f"expected a mapping, got {type(doc).__name__}")
    try:
        spec = msgspec.convert(doc, ClusterSpec)
    except msgspec.ValidationError as e:
        path, reason = _split_msgspec(str(e))
        raise InvalidClusterSpec(source, path, reason) from None
    validate_cluster_spec(spec, source)
    return spec


def load_cluster_spec(path: Path) -> ClusterSpec:
    try:
        text = path.read_bytes()
    except OSError as e:
        raise InvalidClusterSpec(str(path), "$", f"cannot read: {e.strerror}") from None
    return parse_cluster_spec(text, str(path))


def validate_cluster_spec(spec: ClusterSpec, source: str = "cluster spec") -> None:
    """The checks msgspec cannot express: versions, prefix, subnet sizes and overlaps."""

    def fail(path: str, reason: str) -> InvalidClusterSpec:
        return InvalidClusterSpec(source, path, reason)

    if spec.api_version != API_VERSION:
        raise fail("$.apiVersion", f"unsupported {spec.api_version!r}: use {API_VERSION}")
    if spec.kind != KIND:
        raise fail("$.kind", f"expected {KIND}, got {spec.kind!r}")
    # Repeats the field's constraint: a spec built in code (``--nodes``) is never decoded by msgspec.
    if not 1 <= spec.nodes <= MAX_NODES:
        raise fail("$.nodes", f"{spec.nodes} is out of range: use 1 to {MAX_NODES}")
    if not _PREFIX.match(spec.prefix):
        raise fail(
            "$.prefix",
            f"{spec.prefix!r} is not a valid prefix: use 2 to {MAX_PREFIX_LEN} characters, a lower-case "
            "letter, then letters or digits, ending in '-' (interface names are limited to 15 bytes)",
        )
    net = spec.networking
    nodes = _network(source, "$.networking.nodeSubnet", net.node_subnet)
    pods = _network(source, "$.networking.podSubnet", net.pod_subnet)
    services = _network(source, "$.networking.serviceSubnet", net.service_subnet)
    # Node hosts 1..N plus istiod_lite's address (the last usable one).
    if nodes.num_addresses - 2 < spec.nodes + 1:
        raise fail("$.networking.nodeSubnet", f"{nodes} has no room for {spec.nodes} nodes and istiod_lite")
    if pods.prefixlen > NODE_POD_PREFIXLEN - 1:
        raise fail("$.networking.podSubnet", f"{pods} is too small: each node takes a /{NODE_POD_PREFIXLEN}")
    if 2 ** (NODE_POD_PREFIXLEN - pods.prefixlen) - 1 < spec.nodes:
        raise fail("$.networking.podSubnet", f"{pods} has room for fewer than {spec.nodes} node /24s")
    if services.prefixlen > 28:
        raise fail(
            "$.networking.serviceSubnet", f"{services} is too small for service VIPs: use /28 or larger"
        )
    named = (("nodeSubnet", nodes), ("podSubnet", pods), ("serviceSubnet", services))
    for i, (name_a, a) in enumerate(named):
        for name_b, b in named[i + 1 :]:
            if a.overlaps(b):
                raise fail(f"$.networking.{name_b}", f"{b} overlaps {name_a} {a}")
    if len(net.cluster_domain) > 253 or not _DOMAIN.match(net.cluster_domain):
        raise fail("$.networking.clusterDomain", f"{net.cluster_domain!r} is not a DNS domain")


def validate_pod(pod: PodSpec) -> None:
    """Names as Kubernetes accepts them; a pod is refused alone, nothing else is touched."""
    source = f"pod {pod.namespace}/{pod.name}"
    for path, value, label in (
        ("name", pod.name, False),
        ("namespace", pod.namespace, True),
        ("serviceAccount", pod.service_account, False),
    ):
        problem = name_problem(value, label=label)
        if problem:
            raise InvalidClusterSpec(source, path, problem)
    if pod.command and not pod.command[0]:
        raise InvalidClusterSpec(source, "command[0]", "empty program name")
    names: set[str] = set()
    for group, containers in (("initContainers", pod.init_containers), ("containers", pod.containers)):
        for i, container in enumerate(containers):
            at = f"{group}[{i}]"
            problem = name_problem(container.name, label=True)
            if problem:
                raise InvalidClusterSpec(source, f"{at}.name", problem)
            if container.name in names:
                raise InvalidClusterSpec(
                    source, f"{at}.name", f"{container.name!r} is used by another container"
                )
            names.add(container.name)
            if container.command and not container.command[0]:
                raise InvalidClusterSpec(source, f"{at}.command[0]", "empty program name")
            for field, value in (
                ("runAsUser", container.run_as_user),
                ("runAsGroup", container.run_as_group),
            ):
                if value is not None and not 0 <= value <= 2**31 - 1:
                    raise InvalidClusterSpec(
                        source, f"{at}.securityContext.{field}", f"{value} is out of range"
                    )
    seen: set[tuple[int, str]] = set()
    for i, port in enumerate(pod.ports):
        if (port.port, port.protocol) in seen:
            raise InvalidClusterSpec(source, f"ports[{i}]", f"{port.port}/{port.protocol} listed twice")
        seen.add((port.port, port.protocol))


def _network(source: str, path: str, value: str) -> ipaddress.IPv4Network:
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError as e:
        raise InvalidClusterSpec(source, path, f"{value!r} is not a subnet: {e}") from None
    if not isinstance(network, ipaddress.IPv4Network):
        raise InvalidClusterSpec(source, path, f"{value} is IPv6: the local cluster is IPv4-only")
    return network


def _split_msgspec(message: str) -> tuple[str, str]:
    """msgspec says "Expected `int`, got `str` - at `$.nodes`": split into (path, reason)."""
    reason, sep, where = message.rpartition(" - at `")
    if not sep:
        return "$", message
    return where.rstrip("`"), reason
