# -*- test-case-name: tests.test_admin -*-
"""
The admin listener's Site: quiet, no request log of its own, no tracebacks to the browser.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.web.server import Site

from txgateway.admin.api import AdminResource
from txgateway.admin.status import AdminTarget


class AdminSite(Site):
    """A plain Site: no request log of its own (a polling page would flood it)."""

    noisy = False
    displayTracebacks = False

    def log(self, request: Any) -> None:
        pass


def makeAdminSite(target: AdminTarget, clock: IReactorTime, token: Callable[[], str | None],
                  reactor: Any = None) -> AdminSite:
    return AdminSite(AdminResource(target, clock, token), timeout=60, reactor=reactor)


__all__ = ["AdminSite", "makeAdminSite"]
