"""The waypoint's resilience data plane, as pure state machines (no I/O, no clock of their own).

Every module takes time as a float ``now`` (monotonic seconds) and randomness as an injectable
``random.Random``, so tests drive them with a fake clock and a fixed seed:

- ``retry``: which outcomes are retried, how many times, after which backoff; never a request whose
  body outgrew the replay buffer.
- ``timeouts``: the request timeout vs the per-try timeout of one attempt.
- ``fault``: delay (flag ``DI``) and abort (flag ``FI``) injection by percentage.
- ``lb``: endpoint choice (round robin, least request, random, consistent hash), avoiding endpoints a
  retry already tried when another is available.
- ``outlier``: per-endpoint consecutive-error ejection with growing ejection times.
- ``circuit``: connection-pool limits; overflow answered 503 ``UO``.
- ``ratelimit``: token buckets (total, per identity, overrides); excess answered 429 ``RL``.

The asyncio side (waiting, timers, the HTTP engine) lives in ``waypoint.l7.session`` and ``waypoint.app``.
"""
