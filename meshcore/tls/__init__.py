"""Mesh TLS: keys, CSRs and certificates (``certs``), SPIFFE peer verification (``verify``, sans-IO),
ssl/gRPC contexts (``contexts``) and their errors (``errors``).

Import the submodules directly. This package ``__init__`` re-exports nothing on purpose: importing
``meshcore.tls.verify`` must not pull in ``ssl`` or ``grpc`` through ``contexts``.
"""
