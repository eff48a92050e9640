"""Can this machine host the local cluster? One pure check, every problem with its remedy at once.

``find_host_problems`` takes the facts (euid, netns support, a ``which``) and returns messages, so the
decision is table-tested without root; ``check_host`` gathers the facts and raises ``HostNotSupported``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

from .errors import HostNotSupported

# tool -> Debian/Ubuntu package that provides it
REQUIRED_TOOLS = {"ip": "iproute2", "nft": "nftables"}


def find_host_problems(euid: int, has_netns: bool, which: Callable[[str], str | None]) -> list[str]:
    problems = []
    if euid != 0:
        problems.append(
            "not running as root (network namespaces, veth links and nftables need it): "
            "run ambientctl as root (for example with sudo)"
        )
    if not has_netns:
        problems.append(
            "the kernel has no network namespaces (/proc/self/ns/net is missing): "
            "use a Linux kernel built with CONFIG_NET_NS (any distribution kernel)"
        )
    missing = [tool for tool in REQUIRED_TOOLS if which(tool) is None]
    if missing:
        packages = " ".join(REQUIRED_TOOLS[tool] for tool in missing)
        problems.append(
            f"{' and '.join(f'`{tool}`' for tool in missing)} not found on PATH: "
            f"install with `apt-get install {packages}`"
        )
    return problems


def check_host() -> None:
    problems = find_host_problems(os.geteuid(), os.path.exists("/proc/self/ns/net"), shutil.which)
    if problems:
        raise HostNotSupported(problems)
