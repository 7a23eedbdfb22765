# -*- test-case-name: tests.test_observe -*-
"""
Observability: metrics, the access log, log formatting, request ids and trace context.

  - L{txgateway.observe.metrics}: every metric, in a registry of the gateway's own;
  - L{txgateway.http.fastmetrics}: prometheus-client's metric classes updated without locks;
  - L{txgateway.observe.accesslog}: one line per request;
  - L{txgateway.observe.logging}: JSON or text lines, levels, redaction, the start-up summary;
  - L{txgateway.http.twistdlog}: twistd's own log file in the gateway's format;
  - L{txgateway.observe.ids}: request ids and W3C trace context;
  - L{txgateway.observe.tracing}: server and client spans, sampling (built only with C{tracing:});
  - L{txgateway.observe.otlp}: the batching OTLP/HTTP exporter of those spans;
  - L{txgateway.observe.timeline}: the last 15 minutes, one point a second, for the status page;
  - L{txgateway.observe.timestamps}: the one timestamp format of every line.

The names the rest of the gateway imports are re-exported here.
"""

from __future__ import annotations

from txgateway.http.twistdlog import TwistdLogAdopter
from txgateway.observe.accesslog import AccessLog, requestBodySize
from txgateway.observe.ids import IdSource, parentSpanId, parseTraceparent
from txgateway.observe.logging import configSummary, formatterFor, jsonFormatter, logConfigLoaded, redact, textFormatter
from txgateway.observe.metrics import LATENCY_BUCKETS, Metrics

__all__ = ["LATENCY_BUCKETS", "AccessLog", "IdSource", "Metrics", "TwistdLogAdopter", "configSummary", "formatterFor",
           "jsonFormatter", "logConfigLoaded", "parentSpanId", "parseTraceparent", "redact", "requestBodySize", "textFormatter"]
