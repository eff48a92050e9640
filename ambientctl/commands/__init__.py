"""ambientctl's command modules. Each module exposes ``register(app: typer.Typer) -> None`` and is listed
in ``ambientctl.cli.COMMAND_MODULES``; shared plumbing (state dir, store, errors, output) is in
``common``. Commands reach the mesh only through its public faces (store, admin HTTP, gRPC, processes).
"""
