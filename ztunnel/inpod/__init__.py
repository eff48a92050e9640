"""ztunnel's in-pod mode: the node agent hands pods over ZDS (``protocol``, sans-IO; ``transport``, the
SOCK_SEQPACKET + SCM_RIGHTS socket), and ztunnel serves each pod from listeners inside its netns
(``manager``: the ZDS loop and the pods; ``pod``: one pod's listeners and pool; ``sockets``: sockets made
inside the pod netns; ``outbound_capture``: the 15001 listener; ``testing``: fake node agent)."""
