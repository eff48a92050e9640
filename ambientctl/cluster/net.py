"""IO: carries out ``plan`` steps in the kernel (pyroute2 netlink, nft, /etc/netns files) and sweeps.

Every step is idempotent: an existing netns, link or address counts as done and routes are replaced,
so applying a plan twice is applying it once. A failure raises ``NetworkApplyFailed`` naming the step
and the kernel's reason; the caller (``Cluster``) rolls back by deleting the namespaces it recorded.
Netlink sockets are opened inside each namespace by pyroute2 (``IPRoute(netns=...)``); sysctls are
written from a short-lived thread that has ``setns``-ed into the namespace (setns is per thread, so the
calling thread never changes namespace). nft runs as ``ip netns exec <ns> nft -f -``.
Nothing here knows about the store, pods' processes or the state file.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import structlog
from pyroute2 import IPRoute, NetlinkError
from pyroute2 import netns as pyroute2_netns

from .errors import NetworkApplyFailed, NftablesFailed
from .plan import (
    AddAddress,
    AddRoute,
    ApplyNftables,
    CreateBridge,
    CreateNetns,
    CreateVeth,
    LinkUp,
    SetMaster,
    SetSysctl,
    Step,
    WriteNetnsFile,
)

# Where `ip netns` and pyroute2 both keep named namespaces (bind mounts of nsfs files).
NETNS_DIR = Path(pyroute2_netns.NETNS_RUN_DIR)
ETC_NETNS_DIR = Path("/etc/netns")
NFT_TIMEOUT_S = 10.0

log = structlog.get_logger("ambientctl.cluster.net")


class NetworkDriver:
    """Applies steps and removes what carries a prefix; /etc/netns and the tools are injectable."""

    def __init__(
        self,
        *,
        etc_netns_dir: Path = ETC_NETNS_DIR,
        ip_tool: str = "ip",
        nft_tool: str = "nft",
    ) -> None:
        self.netns_dir = NETNS_DIR
        self.etc_netns_dir = etc_netns_dir
        self.ip_tool = ip_tool
        self.nft_tool = nft_tool

    # --- applying -------------------------------------------------------------------------------------

    def apply(self, steps: Iterable[Step]) -> None:
        """Carry out ``steps`` in order; stop at the first failure (``NetworkApplyFailed``/``NftablesFailed``)."""
        sockets: dict[str, Any] = {}
        try:
            for step in steps:
                try:
                    self._apply_one(step, sockets)
                except NetlinkError as e:
                    raise NetworkApplyFailed(step.describe(), _netlink_reason(e)) from None
                except OSError as e:
                    raise NetworkApplyFailed(step.describe(), e.strerror or str(e)) from None
        finally:
            for ipr in sockets.values():
                ipr.close()

    def _ipr(self, netns: str, sockets: dict[str, Any]) -> Any:
        ipr = sockets.get(netns)
        if ipr is None:
            if not self.netns_exists(netns):
                # pyroute2 would create a missing namespace; a vanished one is an error, never recreated here.
                raise NetworkApplyFailed(f"open network namespace {netns}", "it does not exist")
            ipr = sockets[netns] = IPRoute(netns=netns)
        return ipr

    def _index(self, ipr: Any, netns: str, ifname: str) -> int:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise NetworkApplyFailed(f"find {ifname} in {netns}", "no such interface")
        return int(found[0])

    def _apply_one(self, step: Step, sockets: dict[str, Any]) -> None:
        match step:
            case CreateNetns(netns=name):
                if not self.netns_exists(name):
                    pyroute2_netns.create(name)
            case SetSysctl(netns=name, key=key, value=value):
                self._write_sysctl(name, key, value)
            case CreateBridge(netns=name, ifname=ifname):
                ipr = self._ipr(name, sockets)
                if not ipr.link_lookup(ifname=ifname):
                    ipr.link("add", ifname=ifname, kind="bridge")
            case CreateVeth(netns=name, ifname=ifname, peer_netns=peer_ns, peer_ifname=peer_if):
                ipr = self._ipr(name, sockets)
                if not ipr.link_lookup(ifname=ifname):
                    if not self.netns_exists(peer_ns):
                        raise NetworkApplyFailed(
                            step.describe(), f"network namespace {peer_ns} does not exist"
                        )
                    # Created in place with its peer straight in the other namespace: never in the host's.
                    ipr.link(
                        "add", ifname=ifname, kind="veth", peer={"ifname": peer_if, "net_ns_fd": peer_ns}
                    )
            case SetMaster(netns=name, ifname=ifname, master=master):
                ipr = self._ipr(name, sockets)
                ipr.link("set", index=self._index(ipr, name, ifname), master=self._index(ipr, name, master))
            case AddAddress(netns=name, ifname=ifname, address=address, prefixlen=prefixlen):
                ipr = self._ipr(name, sockets)
                try:
                    ipr.addr(
                        "add", index=self._index(ipr, name, ifname), address=address, prefixlen=prefixlen
                    )
                except NetlinkError as e:
                    if e.code != errno.EEXIST:
                        raise
            case LinkUp(netns=name, ifname=ifname):
                ipr = self._ipr(name, sockets)
                ipr.link("set", index=self._index(ipr, name, ifname), state="up")
            case AddRoute(netns=name, dst=dst, gateway=gateway, ifname=ifname):
                ipr = self._ipr(name, sockets)
                route: dict[str, Any] = {"dst": dst}
                if ifname:
                    route["oif"] = self._index(ipr, name, ifname)
                if gateway:
                    route["gateway"] = gateway
                else:
                    route["scope"] = "link"
                ipr.route("replace", **route)
            case WriteNetnsFile(netns=name, filename=filename, content=content):
                self._write_netns_file(name, filename, content)
            case ApplyNftables(netns=name, ruleset=ruleset):
                self.apply_nftables(name, ruleset)

    def _write_sysctl(self, netns: str, key: str, value: str) -> None:
        path = self.netns_path(netns)

        def write() -> None:
            with open(f"/proc/sys/{key}", "w") as fh:
                fh.write(value)

        _run_in_netns_thread(path, write)

    def _write_netns_file(self, netns: str, filename: str, content: str) -> None:
        directory = self.etc_netns_dir / netns
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        # In place (same inode), never replace-by-rename: `ip netns exec` bind-mounted this very file over
        # the /etc/hosts of processes already running in the pod, and they must see the new services.
        with open(directory / filename, "w") as fh:
            fh.write(content)

    def apply_nftables(self, netns: str, ruleset: str) -> None:
        argv = [self.ip_tool, "netns", "exec", netns, self.nft_tool, "-f", "-"]
        try:
            done = subprocess.run(argv, input=ruleset, capture_output=True, text=True, timeout=NFT_TIMEOUT_S)
        except FileNotFoundError:
            raise NftablesFailed(
                netns, f"{self.ip_tool} not found: apt-get install nftables iproute2"
            ) from None
        except subprocess.TimeoutExpired:
            raise NftablesFailed(netns, f"nft did not finish within {NFT_TIMEOUT_S:.0f} s") from None
        if done.returncode != 0:
            raise NftablesFailed(netns, done.stderr.strip() or f"exit code {done.returncode}")

    # --- inspecting -----------------------------------------------------------------------------------

    def netns_path(self, name: str) -> Path:
        return self.netns_dir / name

    def netns_exists(self, name: str) -> bool:
        return self.netns_path(name).exists()

    def list_netns(self, prefix: str) -> list[str]:
        try:
            return sorted(p.name for p in self.netns_dir.iterdir() if p.name.startswith(prefix))
        except FileNotFoundError:
            return []

    def host_links(self, prefix: str) -> list[str]:
        """Links in the host netns whose name starts with ``prefix`` (we never make any: a sweep check)."""
        with IPRoute() as ipr:
            names = [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]
        return sorted(n for n in names if n and n.startswith(prefix))

    # --- removing -------------------------------------------------------------------------------------

    def delete_netns(self, name: str) -> bool:
        """Remove a namespace (its links, routes and nft tables go with it); False if it was not there."""
        path = self.netns_path(name)
        if not path.exists():
            return False
        try:
            pyroute2_netns.remove(name)
        except OSError as e:
            raise NetworkApplyFailed(f"delete network namespace {name}", e.strerror or str(e)) from None
        return True

    def delete_host_link(self, name: str) -> None:
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=name)
            if found:
                try:
                    ipr.link("del", index=found[0])
                except NetlinkError as e:
                    if e.code != errno.ENODEV:
                        raise NetworkApplyFailed(f"delete host link {name}", _netlink_reason(e)) from None

    def remove_netns_files(self, name: str) -> None:
        shutil.rmtree(self.etc_netns_dir / name, ignore_errors=True)

    def sweep_netns_files(self, prefix: str) -> list[str]:
        try:
            found = sorted(p.name for p in self.etc_netns_dir.iterdir() if p.name.startswith(prefix))
        except FileNotFoundError:
            return []
        for name in found:
            self.remove_netns_files(name)
        return found


def _netlink_reason(e: NetlinkError) -> str:
    return f"{os.strerror(e.code)} (netlink error {e.code})" if e.code else str(e)


def _run_in_netns_thread(netns_path: Path, fn: Callable[[], None]) -> None:
    """Run ``fn`` on a new thread that entered ``netns_path``; the thread (and its netns) end with it."""
    error: list[BaseException] = []

    def target() -> None:
        try:
            fd = os.open(netns_path, os.O_RDONLY)
            try:
                pyroute2_netns.setns(fd)
            finally:
                os.close(fd)
            fn()
        except BaseException as e:  # handed to the caller's thread
            error.append(e)

    thread = threading.Thread(target=target, name=f"netns:{netns_path.name}")
    thread.start()
    thread.join()
    if error:
        raise error[0]
