# -*- test-case-name: tests.test_limiting -*-
"""
Rate limiting per client key: token bucket and sliding window, local
(C{local}) or shared by replicas in Redis (C{shared}); what a key is
(C{keys}); the chain filter that answers 429 (C{filter}).
"""

from __future__ import annotations

from txgateway.limiting.filter import RateLimitFilter, rateLimitFilter
from txgateway.limiting.keys import ANONYMOUS, MAX_KEY_LENGTH, keyFunction
from txgateway.limiting.local import (
    Decision,
    LocalLimiter,
    SlidingWindowLimiter,
    TokenBucketLimiter,
    localLimiter,
    wholeSeconds,
    windowRetryAfter,
)
from txgateway.limiting.shared import SLIDING_WINDOW_SCRIPT, TOKEN_BUCKET_SCRIPT, RedisRateLimiter

__all__ = [
    "ANONYMOUS", "MAX_KEY_LENGTH", "SLIDING_WINDOW_SCRIPT", "TOKEN_BUCKET_SCRIPT", "Decision", "LocalLimiter",
    "RateLimitFilter", "RedisRateLimiter", "SlidingWindowLimiter", "TokenBucketLimiter", "keyFunction",
    "localLimiter", "rateLimitFilter", "wholeSeconds", "windowRetryAfter",
]
