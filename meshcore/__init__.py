"""meshcore: the code every binary of the mesh shares.

Layering (checked by import-linter, see pyproject.toml):

* ``identity``, ``model``, ``state``, ``policy``, ``hbone``, ``xds``, ``tls.verify`` are sans-IO cores:
  they import no ``asyncio``, ``socket``, ``grpc`` or ``pyroute2``; time arrives as ``now``.
* ``aio`` holds every asyncio shell (relay, HBONE client/server/pool, xDS and CA clients, StateCell).
* ``store`` is the resource store (embedded SQLite now, Kubernetes later).
* ``testing`` is the test kit; only tests and explicit fake modes import it.
* meshcore never imports ``ztunnel``, ``waypoint``, ``istiod_lite`` or ``ambientctl``.
"""
