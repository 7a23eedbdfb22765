# -*- test-case-name: tests.test_tls_client -*-
"""
The watch on upstreams' certificate files: every few seconds, each
upstream's TLS policy looks at its files (L{ClientTLSPolicy.refresh
<txgateway.tls.client.ClientTLSPolicy.refresh>}).

A policy also looks when a new connection is made; this watch makes a
rotation (and a refused one: its log line, its metric) show within seconds
even when no connection is being made, so an operator who rotated a bad
file hears of it then, not at the next reconnect.  TLS listeners have their
own watch (L{txgateway.listening.Listener}).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

__all__ = ["CertificateWatch", "upstreamCertificateWatch"]

if TYPE_CHECKING:
    from txgateway.config import GatewayConfig

log = Logger(namespace="txgateway.tls")


def upstreamCertificateWatch(config: GatewayConfig, clock: IReactorTime, gateway: Any) -> CertificateWatch | None:
    """
    The watch of the TLS policies of C{gateway.runtime}'s clusters, whatever
    runtime a reload swaps in; None when no upstream of C{config} (the
    start-up config) has a C{tls} section: then policies still look at
    their files on each new connection.
    """
    if not any(u.tls is not None for u in config.upstreams.values()):
        return None
    return CertificateWatch(clock, lambda: [getattr(c, "tlsPolicy", None) for c in gateway.runtime.clusters.values()])


class CertificateWatch(Service):
    """Calls C{refresh()} on every policy C{holders()} names (None skipped), every C{interval} seconds."""

    def __init__(self, clock: IReactorTime, holders: Callable[[], Iterable[Any]], interval: float = 2.0) -> None:
        self.clock = clock
        self.holders = holders
        self.interval = interval
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def tick(self) -> None:
        for holder in self.holders():
            if holder is None:
                continue
            try:
                holder.refresh()
            except Exception:  # one bad policy must neither stop the loop nor the others' checks
                log.failure("checking the certificate files of upstream {upstream}",
                            upstream=getattr(holder, "upstream", "?"))
