"""ztunnel's in-pod mode: the node agent hands pods over ZDS (``protocol``, sans-IO; ``transport``, the
SOCK_SEQPACKET + SCM_RIGHTS socket), and ztunnel serves each pod from listeners inside its netns."""
