# -*- test-case-name: tests.test_hardening -*-
"""
The JSON body of every answer the gateway makes itself (400s, 502s, 429s...).

One format, written by the listening channel (answers before a request
exists) and by the request path alike.  A primitive module: it imports
nothing from txgateway.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["errorBody"]


def errorBody(status: int, message: str, requestId: str | None = None, **extra: Any) -> bytes:
    """C{{"error": message, "status": status, "request_id": ..., **extra}} as one line of JSON."""
    body: dict[str, Any] = {"error": message, "status": status}
    if requestId is not None:
        body["request_id"] = requestId
    body.update(extra)
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"
