"""The CNI plugin and the node agent (istio-cni's roles): get enrolled pods captured and handed to ztunnel.

``plugin`` is the CNI plugin a kubelet (or the local cluster) chains after the pod network: it tells the
agent about each pod sandbox over ``events``. ``agent`` is the long-running node agent: it watches the
store for this node's pods, decides with the pure ``enroll.plan`` which to capture or release, applies
redirection in the pod netns (``ztunnel.redirect``) and hands pods to ztunnel over ZDS (``zds_server``),
finding netns paths through ``podnetns``. Settings in ``config``, errors in ``errors``, a fake ztunnel
for tests in ``testing``. The plugin is a process per pod, so what it needs has light modules of its own
(``plugin_config``: its network config; ``wire``: the event format and the blocking client).
"""
