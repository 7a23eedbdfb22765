# -*- test-case-name: tests.test_caching_policy -*-
"""
The rules of a shared HTTP cache (RFC 9111, RFC 5861, RFC 9211), as pure functions.

Nothing here does I/O or reads a clock: every decision is a function of the
request (its parsed directives and a header lookup), the stored response and
C{now}, so each rule can be tested exhaustively with plain numbers and the
cache in L{txgateway.caching.flow} only wires the decisions to the network.

The gateway is a I{shared} cache: C{s-maxage} and C{proxy-revalidate} apply,
C{private} responses are never stored, and a request carrying
C{Authorization} is only answered from the cache when the origin said so.

This module gathers the rules, one module per concern, under the one name
the flow reads them by (C{policy.assess}, C{policy.storeRefusal}, ...):

  - L{txgateway.caching.directives}: list fields, C{Cache-Control}, HTTP dates, the request's rules;
  - L{txgateway.caching.stored}: the stored response and the fields kept with it (§3.1);
  - L{txgateway.caching.storable}: whether to store, and how long to keep (§3);
  - L{txgateway.caching.freshness}: lifetime, age and what may be done with an entry (§4.2);
  - L{txgateway.caching.vary}: which variant answers which request (§4.1);
  - L{txgateway.caching.conditional}: validation and clients' conditional requests (§4.3);
  - L{txgateway.caching.invalidation}: what unsafe methods invalidate (§4.4);
  - L{txgateway.caching.cachestatus}: the C{Cache-Status} field (RFC 9211).
"""

from __future__ import annotations

from txgateway.caching.cachestatus import cacheName, cacheStatus
from txgateway.caching.conditional import (
    clientNotModified,
    conditionalHeaders,
    freshen,
    notModifiedFields,
    notModifiedMatches,
)
from txgateway.caching.directives import (
    DEFAULT_TARGETED,
    MAX_DELTA,
    Directives,
    HeaderLookup,
    HeaderPairs,
    RequestRules,
    formatDelta,
    headerValues,
    httpDate,
    parseCacheControl,
    requestRules,
    responseDirectives,
    splitList,
    strictHttpDate,
)
from txgateway.caching.freshness import (
    DEFAULT_TTL_STATUS,
    ERROR_STATUS,
    FRESH,
    HEURISTIC_CAP,
    HEURISTIC_FRACTION,
    HEURISTIC_STATUS,
    REVALIDATE_LATER,
    STALE_OK,
    VALIDATE,
    Assessment,
    ageOf,
    assess,
    currentAge,
    freshnessLifetime,
    hasValidator,
    lifetimeOf,
    neverStale,
    staleIfError,
)
from txgateway.caching.invalidation import SAFE_METHODS, invalidationTargets
from txgateway.caching.storable import STALE_RETENTION, retention, storeRefusal
from txgateway.caching.stored import HOP_BY_HOP, StoredResponse, storableHeaders
from txgateway.caching.vary import normalizedField, varyKeySuffix, varyMatches, varyOf, varyValues

__all__ = ["DEFAULT_TARGETED", "ageOf", "responseDirectives", "strictHttpDate", "DEFAULT_TTL_STATUS", "ERROR_STATUS", "FRESH", "HEURISTIC_CAP", "HEURISTIC_FRACTION", "HEURISTIC_STATUS", "HOP_BY_HOP",
           "MAX_DELTA", "REVALIDATE_LATER", "SAFE_METHODS", "STALE_OK", "STALE_RETENTION", "VALIDATE", "Assessment",
           "Directives", "HeaderLookup", "HeaderPairs", "RequestRules", "StoredResponse", "assess", "cacheName",
           "cacheStatus", "clientNotModified", "conditionalHeaders", "currentAge", "formatDelta", "freshen",
           "freshnessLifetime", "hasValidator", "headerValues", "httpDate", "invalidationTargets", "lifetimeOf",
           "neverStale", "normalizedField", "notModifiedFields", "notModifiedMatches", "parseCacheControl",
           "requestRules", "retention", "splitList", "staleIfError", "storableHeaders", "storeRefusal",
           "varyKeySuffix", "varyMatches", "varyOf", "varyValues"]
