"""The traffic model's values (``meshcore.model.traffic``, as istiod_lite compiled them) turned into the
resilience state machines' policies. Pure and cached (model values are frozen and hashable).

Model conventions kept: 0 means "not set" (no limit, no timeout, detector off), durations are seconds,
percentages 0..100. A retry condition the data plane does not know cannot be honoured: it is dropped
with a warning and counted in ``UNKNOWN_RETRY_ON`` (never silently), the others still apply.
"""

from __future__ import annotations

from functools import lru_cache

import structlog

from meshcore.model.traffic import ConnectionPool, LoadBalancer, OutlierDetection, RateLimit, Retry
from waypoint.resilience.circuit import PoolLimits
from waypoint.resilience.lb import HashOn, LbKind, LbPolicy
from waypoint.resilience.outlier import OutlierPolicy
from waypoint.resilience.ratelimit import RateLimitPolicy
from waypoint.resilience.retry import DEFAULT_BACKOFF_BASE, RETRY_ON, RetryPolicy

log = structlog.get_logger("waypoint.resilience")

ROUND_ROBIN = LbPolicy()
UNKNOWN_RETRY_ON: dict[str, int] = {}

_LB_KINDS = {
    "round_robin": LbKind.ROUND_ROBIN,
    "least_request": LbKind.LEAST_REQUEST,
    "random": LbKind.RANDOM,
    "consistent_hash": LbKind.CONSISTENT_HASH,
}


@lru_cache(maxsize=1024)
def retry_policy(retry: Retry | None, per_try_timeout: float = 0.0) -> RetryPolicy | None:
    """The engine's retry policy (``per_try_timeout``: the route's backendRequest / perTryTimeout)."""
    if retry is None or retry.attempts <= 0:
        return None
    conditions = set()
    for c in retry.retry_on:
        if c in RETRY_ON:
            conditions.add(c)
        else:
            UNKNOWN_RETRY_ON[c] = UNKNOWN_RETRY_ON.get(c, 0) + 1
            log.warning("retry condition not supported by this waypoint; ignored", condition=c)
    codes = frozenset(retry.codes)
    if codes:
        conditions.add("retriable-status-codes")
    if not retry.retry_on and not codes:
        conditions = {"connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes"}
        codes = frozenset({503})  # Istio's default retryOn with Gateway API's 503 default
    per_try = per_try_timeout or retry.per_try_timeout or None
    base = retry.backoff or DEFAULT_BACKOFF_BASE
    return RetryPolicy(retry.attempts, frozenset(conditions), codes, per_try_timeout=per_try, backoff_base=base)


@lru_cache(maxsize=256)
def lb_policy(lb: LoadBalancer | None) -> LbPolicy:
    if lb is None:
        return ROUND_ROBIN
    kind = _LB_KINDS[lb.kind]
    if kind is not LbKind.CONSISTENT_HASH:
        return LbPolicy(kind)
    on = HashOn(header=lb.hash_header.lower()) if lb.hash_header else HashOn(source_ip=True)
    return LbPolicy(kind, on)


@lru_cache(maxsize=256)
def outlier_policy(od: OutlierDetection | None) -> OutlierPolicy | None:
    if od is None or (od.consecutive_5xx_errors <= 0 and od.consecutive_gateway_errors <= 0):
        return None
    return OutlierPolicy(
        consecutive_5xx=max(0, od.consecutive_5xx_errors),
        consecutive_gateway=max(0, od.consecutive_gateway_errors),
        interval=od.interval or 10.0,
        base_ejection_time=od.base_ejection_time or 30.0,
        max_ejection_percent=od.max_ejection_percent,
    )


@lru_cache(maxsize=256)
def pool_limits(pool: ConnectionPool | None) -> PoolLimits | None:
    if pool is None:
        return None
    limits = PoolLimits(
        max_requests=pool.http2_max_requests or None,
        max_connections=pool.max_connections or None,
        max_pending=pool.http1_max_pending_requests or None,
        max_requests_per_connection=pool.max_requests_per_connection or None,
    )
    return None if limits == PoolLimits() else limits


@lru_cache(maxsize=256)
def rate_limit_policy(rl: RateLimit | None) -> RateLimitPolicy | None:
    if rl is None:
        return None
    overrides = {p: float(o.requests_per_second) for o in rl.overrides for p in o.principals}
    policy = RateLimitPolicy(float(rl.requests_per_second) or None, float(rl.identity_rps) or None, overrides)
    return None if policy.total is None and policy.per_identity is None and not overrides else policy
