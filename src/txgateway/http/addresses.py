# -*- test-case-name: tests.test_auth -*-
"""
Client addresses: CIDR sets and the one X-Forwarded-For walk.

Every place that asks "who is the client?" or "is this address allowed?"
(the real client IP of a request, the hops forwarded upstream, ip_allow /
ip_deny, per-address connection caps) uses L{AddressSet} and
L{ForwardedFor}, so the gateway has one set of IP rules and one reading of
X-Forwarded-For.  A primitive module: it imports nothing from txgateway.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["AddressSet", "ForwardedFor"]


class AddressSet:
    """CIDR membership with a per-address cache (client addresses repeat)."""

    def __init__(self, networks: Iterable[Any]) -> None:
        self.networks = tuple(networks)
        self._cache: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, ip: object) -> bool:
        assert isinstance(ip, str)
        hit = self._cache.get(ip)
        if hit is None:
            try:
                addr = ipaddress.ip_address(ip)
                if addr.version == 6 and addr.ipv4_mapped is not None:  # type: ignore[union-attr]
                    addr = addr.ipv4_mapped  # type: ignore[union-attr]
                hit = any(addr in n for n in self.networks)
            except ValueError:
                hit = False
            if len(self._cache) > 65536:
                self._cache.clear()
            self._cache[ip] = hit
        return hit


class ForwardedFor:
    """
    C{server.trusted_proxies} and the X-Forwarded-For walk that follows from it.

    The walk goes right to left while the hop is a trusted proxy; the first
    untrusted address is the client.  The leftmost value is never believed
    just because it is there.  L{clientIP} and L{hops} are two readings of
    the same walk.
    """

    __slots__ = ("trusted",)

    def __init__(self, trusted: AddressSet) -> None:
        self.trusted = trusted

    def hops(self, values: Sequence[bytes] | None) -> list[bytes] | None:
        """
        The X-Forwarded-For hops worth passing on: from the client (the
        first untrusted hop, walking right to left) to the nearest proxy.
        Whatever the client claimed left of that is dropped, so a backend
        reading the leftmost value reads the client, not a forgery.
        """
        if not values:
            return None
        hops = [h.strip() for v in values for h in v.split(b",") if h.strip()]
        trusted = self.trusted
        i = len(hops) - 1
        while i > 0 and hops[i].decode("latin-1") in trusted:
            i -= 1
        return hops[i:] or None

    def clientIP(self, peer: str, values: Sequence[bytes] | None) -> str:
        """The real client of a request from C{peer} carrying these X-Forwarded-For C{values}."""
        trusted = self.trusted
        if not trusted or not values or peer not in trusted:
            return peer
        hops = self.hops(values)
        return hops[0].decode("latin-1") if hops else peer
