# -*- test-case-name: tests.test_admin -*-
"""
The admin listener: a live status page, a JSON API and /metrics, off the data path.

It runs on its own port (C{admin.listen}, loopback unless a token is set)
with a plain twisted.web Site, so an operator's browser polling it never
shares limits, metrics labels or the access log with client traffic.

  - L{txgateway.admin.site}: the listener's Site, made by L{makeAdminSite};
  - L{txgateway.admin.api}: the resource answering every path;
  - L{txgateway.admin.auth}: the bearer token and same-origin checks;
  - L{txgateway.admin.status}: the status document (L{StatusReport.status});
  - L{txgateway.admin.rates}: rates and percentiles from two registry snapshots;
  - L{txgateway.admin.page}: the HTML page drawn from the status document.
"""

from __future__ import annotations

from txgateway.admin.api import AdminResource
from txgateway.admin.page import renderBody
from txgateway.admin.site import AdminSite, makeAdminSite
from txgateway.admin.status import AdminTarget, StatusReport

__all__ = ["AdminResource", "AdminSite", "AdminTarget", "StatusReport", "makeAdminSite", "renderBody"]
