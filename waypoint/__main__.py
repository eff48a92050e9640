"""``waypoint``: the L7 proxy's entry point. The waypoint is not built yet; this says so clearly."""

from __future__ import annotations

import sys


def main() -> None:
    print(
        "waypoint: the L7 waypoint proxy is not implemented yet; ztunnel (L4) and istiod-lite are. "
        "See docs/architecture.md.",
        file=sys.stderr,
    )
    sys.exit(2)


if __name__ == "__main__":
    main()
