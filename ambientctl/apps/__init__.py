"""Small apps the local cluster's demo and end-to-end tests run inside pods (``python -m ...``).

``echo``: an HTTP/1.1 server that answers every request with who served it and what it received.
``client``: sends requests (or holds one connection open) and prints the outcome as JSON.
They use only the standard library, so they start fast and run in any pod.
"""
