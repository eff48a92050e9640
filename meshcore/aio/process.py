"""Process scaffolding every proxy binary shares: flags over environment variables, the run loop that
drains on SIGTERM/SIGINT or an admin ``/quitquitquit``, background tasks with an owner, operator HTTP
listeners.

- ``env_flag_parser(prog, description, flags, fake_ca=...)``: one ``--some-name`` flag per environment
  variable ``SOME_NAME`` (flags win over the environment in each binary's ``parse_config``).
- ``main(prog, parser, parse_config, make_service, drain_of, startup_error)``: parse, one line and exit 2
  on a configuration or start-up problem, structlog set up, uvloop when installed, run the service until
  signalled, drain for the configured duration, stop.
- ``BackgroundTasks``: tasks spawned by a component and cancelled by it; a task that fails is logged.
- ``serve_operator_http``: bind an admin/metrics/readiness ``HttpServer``, turning a bind failure into
  the caller's start-up error naming the address.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol, TypeVar

import structlog

from meshcore.aio.httpserver import Handler, HttpServer

log = structlog.get_logger("meshcore.process")

C = TypeVar("C")


class Service(Protocol):
    async def start(self) -> None: ...

    async def wait_stop_requested(self) -> None: ...

    async def drain(self, deadline: float) -> None: ...

    async def stop(self) -> None: ...


def env_flag_parser(
    prog: str, description: str, flags: Mapping[str, str], *, fake_ca: str | None = None
) -> argparse.ArgumentParser:
    """An argparse parser with ``--x-y`` for each variable ``X_Y`` in ``flags`` (variable -> help)."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    for name, text in flags.items():
        p.add_argument("--" + name.lower().replace("_", "-"), dest=name, help=f"{text} (env {name})")
    if fake_ca is not None:
        p.add_argument("--fake-ca", dest=fake_ca, action="store_const", const="true",
                       help=f"sign certificates in-process, for tests (env {fake_ca})")
    return p


async def serve_until_signalled(service: Service, drain_seconds: float) -> int:
    """Start ``service``; on SIGTERM/SIGINT or its own stop request, drain for ``drain_seconds``, stop."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    quit_requested = asyncio.ensure_future(service.wait_stop_requested())
    signalled = asyncio.ensure_future(stop.wait())
    await asyncio.wait({quit_requested, signalled}, return_when=asyncio.FIRST_COMPLETED)
    quit_requested.cancel()
    signalled.cancel()
    await service.drain(loop.time() + drain_seconds)
    await service.stop()
    return 0


def main(
    prog: str,
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    parse_config: Callable[[Mapping[str, str]], C],
    make_service: Callable[[C], Service],
    *,
    drain_seconds: Callable[[C], float],
    logging_of: Callable[[C], tuple[str, str]],
    config_error: type[Exception],
    startup_error: type[Exception],
) -> None:
    """A binary's ``main``: see the module docstring. Exits 2 with one line on a bad setting or start-up."""
    from prometheus_client import disable_created_metrics

    from meshcore.logs import configure_logging

    args = vars(parser.parse_args(argv))
    try:
        config = parse_config({k: v for k, v in args.items() if v is not None})
    except config_error as e:
        print(f"{prog}: {e}", file=sys.stderr)
        sys.exit(2)
    configure_logging(*logging_of(config))
    disable_created_metrics()  # type: ignore[no-untyped-call]  # Istio's metrics have no *_created series
    try:
        import uvloop
    except ImportError:
        uvloop = None  # type: ignore[assignment]
    try:
        coro = serve_until_signalled(make_service(config), drain_seconds(config))
        sys.exit(uvloop.run(coro) if uvloop is not None else asyncio.run(coro))
    except startup_error as e:
        print(f"{prog}: {e}", file=sys.stderr)
        sys.exit(2)


class BackgroundTasks:
    """Tasks a component owns: ``spawn`` names them, a failure is logged, ``cancel_all`` ends them."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"{self._prefix}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", task=task.get_name(), error=repr(task.exception()))

    async def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    def __len__(self) -> int:
        return len(self._tasks)


async def serve_operator_http(
    name: str, addr: Any, routes: Mapping[str, Handler], servers: list[HttpServer],
    startup_error: Callable[[str], Exception],
) -> tuple[str, int]:
    """Bind an operator-facing HTTP server on ``addr`` (``.host``, ``.port``); appended to ``servers``."""
    server = HttpServer(dict(routes), name=name)
    try:
        bound = await server.start(addr.host, addr.port)
    except OSError as exc:
        raise startup_error(f"{name} address {addr}: cannot listen: {exc.strerror or exc}") from exc
    servers.append(server)
    return bound
