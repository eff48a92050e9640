"""istiod_lite's certificate authority: Istio's ``IstioCertificateService`` with node authorization.

``storage`` loads or creates the CA material, ``authority`` signs (pure given ``now``), ``nodeauth``
decides who may have which identity (pure), ``service`` is the gRPC shell on 15012 with its metrics,
``errors`` holds the typed refusals and storage errors.
"""
