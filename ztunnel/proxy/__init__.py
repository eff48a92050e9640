"""ztunnel's data path: decide, then execute.

Pure decisions live here as functions over one ProxyState snapshot (``routing.build_route`` -> ``Route``)
and sans-IO protocol cores (``socks5.Socks5Server``); the listeners that carry them out (outbound,
inbound HBONE, inbound plaintext) are thin asyncio shells over those values. Errors are in ``errors``:
each has an operator-facing message and a stable ``reason`` for metrics and access logs. The same code
serves dedicated mode (SOCKS5 on 15080) and in-pod mode (captured 15001/15006/15008) unchanged.
"""
