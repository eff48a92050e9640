"""The demos behind ``ambientctl demo``: ``cluster`` (the default: the mesh on a two-node local cluster,
root) and ``control_plane`` (``--control-plane``: istiod-lite, xDS and the CA with real processes, no root).
"""
