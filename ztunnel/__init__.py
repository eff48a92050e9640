"""ztunnel: the per-node L4 proxy. Captures enrolled pods' TCP, carries it in HBONE (HTTP/2 CONNECT
over mTLS on 15008) under each pod's SPIFFE identity, and enforces L4 authorization at the destination."""
