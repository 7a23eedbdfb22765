# -*- test-case-name: tests.test_balancing -*-
"""
Load balancers: which of an upstream's eligible targets takes a request.

A balancer lives as long as its upstream keeps the same C{balancer:} and
C{hash_on:}: a reload hands it the new target list through
L{IBalancer.setTargets} instead of building a new one, so rotation
positions and smooth-WRR current weights carry over and a reload does not
restart every cycle at the first target.

C{pick} runs once per attempt on the request path.  The balancers below
keep their state keyed by the L{Endpoint} objects themselves (which survive
reloads) and never build a list or a set per call.
"""

from __future__ import annotations

import bisect
import hashlib
import importlib
import random as _random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from zope.interface import implementer

from txgateway.config import ConfigError, Problem
from txgateway.interfaces import IBalancer

if TYPE_CHECKING:
    from txgateway.cluster import Endpoint
    from txgateway.config import UpstreamConfig
    from txgateway.context import RequestContext

__all__ = ["MAX_RING_POINTS", "VNODES_PER_WEIGHT", "ConsistentHash", "LeastConnections", "PowerOfTwoChoices", "RoundRobin",
           "WeightedRoundRobin", "makeBalancer", "sameBalancer"]

# Ring points per unit of weight: with 160 points a target's share of the
# ring is within a few percent of its fair share, so one target leaving moves
# close to 1/N of the keys and no target gets a visibly larger slice.
VNODES_PER_WEIGHT = 160
# Bounds the ring (memory and build time) when weights are large: points are
# scaled down proportionally past this.
MAX_RING_POINTS = 160_000


class _Rotation:
    """
    Where the last pick fell in the full target list.

    Rotating over positions in the configured list, rather than over
    indices of the eligible subset, keeps the rotation strict when the
    subset changes between calls: a retry that excludes one target, or a
    target leaving and coming back, does not make the next request repeat
    or skip one.
    """

    __slots__ = ("positions", "count", "last")

    def __init__(self) -> None:
        self.positions: dict[Endpoint, int] = {}
        self.count = 0
        self.last = -1

    def setTargets(self, targets: Sequence[Endpoint]) -> None:
        old = self.positions
        lastEndpoint = None
        for e, i in old.items():
            if i == self.last:
                lastEndpoint = e
                break
        self.positions = {e: i for i, e in enumerate(targets)}
        self.count = len(targets)
        # Continue after the same target when it stays; otherwise keep the
        # numeric position, which is as good a place as any to resume.
        if lastEndpoint is not None and lastEndpoint in self.positions:
            self.last = self.positions[lastEndpoint]
        elif self.count:
            self.last = min(self.last, self.count - 1)

    def startIndex(self, eligible: Sequence[Endpoint]) -> int:
        """The index in C{eligible} of the first target after the last pick, cyclically."""
        if not self.count:
            # Never told the targets (a hand-built cluster): rotate over these.
            self.setTargets(eligible)
        n = len(eligible)
        last = self.last
        if n == self.count:
            # Everyone is eligible (the common case): positions are indices.
            return (last + 1) % n
        positions = self.positions
        for i in range(n):
            if positions.get(eligible[i], -1) > last:
                return i
        return 0

    def mark(self, endpoint: Endpoint) -> None:
        self.last = self.positions.get(endpoint, self.last)


@implementer(IBalancer)
class RoundRobin:
    """Strict rotation over the configured targets, skipping those not eligible."""

    def __init__(self) -> None:
        self._rotation = _Rotation()

    def setTargets(self, targets: Sequence[Endpoint]) -> None:
        self._rotation.setTargets(targets)

    def pick(self, eligible: Sequence[Endpoint], context: RequestContext | None) -> Endpoint | None:
        if not eligible:
            return None
        choice = eligible[self._rotation.startIndex(eligible)]
        self._rotation.mark(choice)
        return choice


@implementer(IBalancer)
class WeightedRoundRobin:
    """
    nginx's smooth weighted round robin over the eligible targets.

    Each pick adds every eligible target's weight to its current weight,
    takes the largest, and subtracts the eligible total from the winner:
    weights 5,1,1 give C{a a b a c a a}, spreading the heavy target out
    instead of sending it five in a row.  Current weights belong to the
    endpoints and are kept across reloads, and weights are read from the
    endpoints on every pick, so a weight change on reload takes effect at
    once without a burst.
    """

    def __init__(self) -> None:
        self._current: dict[Endpoint, int] = {}

    def setTargets(self, targets: Sequence[Endpoint]) -> None:
        old = self._current
        self._current = {e: old.get(e, 0) for e in targets}

    def pick(self, eligible: Sequence[Endpoint], context: RequestContext | None) -> Endpoint | None:
        current = self._current
        best: Endpoint | None = None
        bestWeight = 0
        total = 0
        for e in eligible:
            w = e.weight
            c = current.get(e, 0) + w
            current[e] = c
            total += w
            if best is None or c > bestWeight:
                best, bestWeight = e, c
        if best is not None:
            current[best] = bestWeight - total
        return best

    def currentWeights(self) -> dict[str, int]:
        """For tests and the admin API: each target's current weight."""
        return {e.url: c for e, c in self._current.items()}


@implementer(IBalancer)
class LeastConnections:
    """
    The eligible target with the fewest in-flight requests per unit of weight.

    The scan starts after the previous pick, so equally loaded targets
    take turns instead of the first one in config order taking every
    request while the load is light.
    """

    def __init__(self) -> None:
        self._rotation = _Rotation()

    def setTargets(self, targets: Sequence[Endpoint]) -> None:
        self._rotation.setTargets(targets)

    def pick(self, eligible: Sequence[Endpoint], context: RequestContext | None) -> Endpoint | None:
        n = len(eligible)
        if n == 0:
            return None
        start = self._rotation.startIndex(eligible)
        best = eligible[start]
        load, weight = best.inFlight, best.weight
        for k in range(start + 1, start + n):
            e = eligible[k % n]
            # inFlight/weight compared without division: a < b  <=>  a.i*b.w < b.i*a.w
            if e.inFlight * weight < load * e.weight:
                best = e
                load, weight = e.inFlight, e.weight
        self._rotation.mark(best)
        return best


@implementer(IBalancer)
class PowerOfTwoChoices:
    """
    Two distinct eligible targets drawn at random; the less loaded (in-flight
    per unit of weight) wins, the first drawn on a tie.

    Nearly as good as least connections at avoiding a slow target, without
    every gateway instance herding onto the same "least loaded" one.
    """

    def __init__(self, rng: _random.Random) -> None:
        self._random = rng

    def setTargets(self, targets: Sequence[Endpoint]) -> None:
        pass

    def pick(self, eligible: Sequence[Endpoint], context: RequestContext | None) -> Endpoint | None:
        n = len(eligible)
        if n < 2:
            return eligible[0] if n else None
        randrange = self._random.randrange
        i = randrange(n)
        j = randrange(n - 1)
        if j >= i:
            j += 1
        a, b = eligible[i], eligible[j]
        return b if b.inFlight * a.weight < a.inFlight * b.weight else a


def _hash64(data: bytes) -> int:
    """A hash that is the same in every process (Python's own is salted per process)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def _keyFunction(hashOn: str) -> Callable[[RequestContext], bytes | None]:
    """How to read the hash key named by C{hash_on} from a request; None means "no key"."""
    if hashOn == "client_ip":
        return lambda context: context.clientIP.encode("ascii", "replace") if context.clientIP else None
    if hashOn == "path":
        return lambda context: context.path.encode("utf-8", "surrogateescape")
    kind, _, name = hashOn.partition(":")
    if kind == "header":
        headerName = name.encode("ascii")

        def header(context: RequestContext) -> bytes | None:
            value = context.header(headerName)
            return value if value else None

        return header
    if kind == "cookie":
        cookieName = name.encode("ascii")
        return lambda context: _cookie(context, cookieName)
    raise ValueError(f"unknown hash_on {hashOn!r}")


def _cookie(context: RequestContext, name: bytes) -> bytes | None:
    """The value of cookie C{name} in the request's Cookie header(s) (RFC 6265 syntax), or None."""
    for line in context.headers.getRawHeaders(b"cookie", ()):
        for pair in line.split(b";"):
            key, sep, value = pair.partition(b"=")
            if sep and key.strip() == name:
                value = value.strip()
                return value or None
    return None


@implementer(IBalancer)
class ConsistentHash:
    """
    A hash ring with virtual nodes, keyed by C{hash_on}.

    Each target owns C{weight * 160} points on a 64-bit ring; a request's key
    hashes to a point and goes to the owner of the next point clockwise,
    walking on past targets that are not eligible now.  A target leaving (or
    being unhealthy) therefore moves only the keys it owned, about 1/N of
    them, and its keys come back to it when it returns.  A request with no
    key (no such header or cookie) is spread by round robin instead of all
    landing on one target.
    """

    def __init__(self, hashOn: str = "client_ip") -> None:
        self.hashOn = hashOn
        self._key = _keyFunction(hashOn)
        self._points: list[int] = []
        self._owners: list[Endpoint] = []
        self._built: tuple[tuple[str, int], ...] = ()
        self._fallback = RoundRobin()

    def setTargets(self, targets: Sequence[Endpoint]) -> None:
        self._fallback.setTargets(targets)
        shape = tuple((e.url, e.weight) for e in targets)
        if shape == self._built:
            # Same URLs and weights: the ring is the same, only the objects may differ.
            byURL = {e.url: e for e in targets}
            self._owners = [byURL[o.url] for o in self._owners]
            return
        self._built = shape
        totalWeight = sum(max(e.weight, 1) for e in targets)
        perWeight = VNODES_PER_WEIGHT
        if totalWeight * perWeight > MAX_RING_POINTS:
            perWeight = max(1, MAX_RING_POINTS // totalWeight)
        ring: list[tuple[int, str, Endpoint]] = []
        for e in targets:
            # Points derive from the URL only, so a target keeps its points
            # whatever else joins or leaves the list.
            base = e.url.encode("utf-8")
            for i in range(max(e.weight, 1) * perWeight):
                ring.append((_hash64(base + b"#" + str(i).encode()), e.url, e))
        ring.sort(key=lambda p: (p[0], p[1]))
        self._points = [p[0] for p in ring]
        self._owners = [p[2] for p in ring]

    def keyOf(self, context: RequestContext) -> bytes | None:
        return self._key(context)

    def pick(self, eligible: Sequence[Endpoint], context: RequestContext | None) -> Endpoint | None:
        if not eligible:
            return None
        key = self._key(context) if context is not None else None
        points = self._points
        if key is None or not points:
            return self._fallback.pick(eligible, context)
        owners = self._owners
        size = len(points)
        h = _hash64(key)
        i = bisect.bisect_left(points, h)
        if i == size:
            i = 0
        owner = owners[i]
        # Identity checks over a short list: cheaper than building a set per request.
        if owner in eligible and owner.share >= 1.0:
            return owner
        # A target ramping up (slow_start) takes the keys whose hash falls below its
        # share and passes the others on: deterministic per key, and the ring is not
        # rebuilt as the share grows.
        position = h / 2**64
        for step in range(size):
            owner = owners[(i + step) % size]
            if owner in eligible and (owner.share >= 1.0 or position < owner.share):
                return owner
        # Eligible targets the ring does not know (should not happen): stay useful.
        return self._fallback.pick(eligible, context)


def makeBalancer(config: UpstreamConfig, rng: _random.Random) -> IBalancer:
    """
    The balancer named by C{config.balancer}.

    A dotted name (C{mypkg.balancers.Sticky}) is imported and called as
    C{factory(config, rng)} with the L{UpstreamConfig} and the gateway's
    L{random.Random}; the result must provide L{IBalancer}.  Anything that
    goes wrong is a L{ConfigError} naming C{upstreams.NAME.balancer}, so a
    reload with a broken plug-in is rejected and the running config stays.
    """
    name = config.balancer
    if name == "round_robin":
        return RoundRobin()
    if name == "weighted_round_robin":
        return WeightedRoundRobin()
    if name == "least_connections":
        return LeastConnections()
    if name == "p2c":
        return PowerOfTwoChoices(rng)
    if name == "consistent_hash":
        return ConsistentHash(config.hash_on)
    return _importBalancer(config, rng)


def _importBalancer(config: UpstreamConfig, rng: _random.Random) -> IBalancer:
    where = f"upstreams.{config.name}.balancer"
    moduleName, _, attr = config.balancer.rpartition(".")

    def fail(message: str) -> ConfigError:
        return ConfigError([Problem(where, None, message)])

    try:
        module = importlib.import_module(moduleName)
    except Exception as e:
        raise fail(f"cannot import module {moduleName!r} for balancer {config.balancer!r}: {e}") from None
    factory: Any = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise fail(f"module {moduleName!r} has no class or callable {attr!r}")
    try:
        balancer = factory(config, rng)
    except Exception as e:
        raise fail(f"{config.balancer}(config, rng) failed: {e!r}") from None
    if not IBalancer.providedBy(balancer):
        raise fail(f"{config.balancer} does not implement txgateway.interfaces.IBalancer "
                   f"(decorate the class with @implementer(IBalancer))")
    return balancer  # type: ignore[no-any-return]


def sameBalancer(old: UpstreamConfig, new: UpstreamConfig) -> bool:
    """Whether a reload may keep the old balancer object (and its state) for C{new}."""
    return old.balancer == new.balancer and old.hash_on == new.hash_on
