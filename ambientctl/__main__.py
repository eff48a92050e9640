"""Console-script entry point: ``ambientctl`` (and ``python -m ambientctl``)."""

from __future__ import annotations

from ambientctl.cli import app


def main() -> None:
    app(prog_name="ambientctl")


if __name__ == "__main__":
    main()
