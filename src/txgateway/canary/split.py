# -*- test-case-name: tests.test_canary_split -*-
"""
A route's weighted split among upstreams: override, sticky key, weighted pick.

The order of the decision, per request (L{Splitter.choose}):

  1. Override.  When the route has C{canary_override} and the request
     carries its header (C{X-Canary}) with the name of one of the route's
     upstreams, or C{always} (the route's canary: its last listed
     upstream), and the client is trusted, the request goes there, even
     to an upstream at weight 0 (how a tester reaches a new version before
     it takes any traffic).  Any other value, or an untrusted client, is
     ignored: the request is routed as if the header were absent, so
     sending it gains an outsider nothing.  Trust is an input (a function
     of the request), asked only when the header is present.
  2. Sticky.  When the route has C{sticky} and the request has that key,
     the key is hashed (weighted rendezvous hashing, below): the same key
     goes to the same upstream for as long as the weights stay.
  3. Weighted.  Otherwise a point is drawn uniformly in C{[0, total
     weight)} with the injected C{random.Random}, and the upstream whose
     interval holds it is chosen.

A request without the sticky key (no such header or cookie, an anonymous
consumer) takes the weighted pick: hashing one shared value instead would
send every such request to the same upstream, possibly the canary.

Why rendezvous hashing for the sticky key, not a hashed point in
C{[0, total)} mapped onto the same intervals: with intervals, a change of
one weight shifts every interval after it, so with three upstreams (v1 90,
v2 5, v3 5 -> v3 25) every key of v2 moves although v2's share hardly
changed.  With weighted rendezvous hashing each upstream scores each key,
C{weight / -ln(u)} with C{u} uniform in (0, 1) from the key's and the
upstream's hashes, and the highest score wins.  An upstream wins a key with
probability C{weight / total} exactly, and when one weight changes, keys
move only to or from that upstream: raising v2 from 5 to 25 takes keys to
v2 and moves no other key, the least that can move.  With two upstreams
any change (95/5 -> 75/25) moves exactly the keys that must.  The result
depends only on the names and the weights, so every process and every
gateway instance with the same weights sends a key to the same upstream.

The split is an immutable L{Split}, replaced whole (L{Splitter.setSplit}):
a weight change under load is atomic by construction, one attribute
assignment in a single-threaded reactor.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
from math import log
from random import Random
from typing import Any

from zope.interface import implementer

from txgateway.canary.interfaces import Choice, ISplitter, RequestView
from txgateway.canary.specs import CanaryRouteSpec, OverrideSpec, StickySpec

__all__ = [
    "ALWAYS", "OVERRIDE", "STICKY", "WEIGHTED", "Split", "SplitRefused", "Splitter", "defaultTrust", "keyFunction",
    "splitFromSpec", "updateSplit",
]

ALWAYS = "always"
OVERRIDE = "override"
STICKY = "sticky"
WEIGHTED = "weighted"

_M64 = (1 << 64) - 1
_UNIT = 1.0 / (1 << 53)


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


def _mix64(z: int) -> int:
    """splitmix64's finaliser: turns C{key hash ^ upstream seed} into an independent-looking 64-bit value."""
    z = (z + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


class Split:
    """
    The upstreams of a route and their integer weights, in config order: an
    immutable value (a change makes a new one, L{withWeights}).
    """

    __slots__ = ("names", "weights", "total", "_cumulative", "_seeds", "_index")

    names: tuple[str, ...]
    weights: tuple[int, ...]
    total: int
    _cumulative: tuple[int, ...]
    _seeds: tuple[int, ...]
    _index: dict[str, int]

    def __init__(self, upstreams: Iterable[tuple[str, int]]) -> None:
        pairs = tuple(upstreams)
        names = tuple(n for n, _ in pairs)
        weights = tuple(w for _, w in pairs)
        if not names:
            raise ValueError("a split needs at least one upstream")
        if len(set(names)) != len(names):
            raise ValueError("an upstream is listed twice")
        if any(isinstance(w, bool) or not isinstance(w, int) or w < 0 for w in weights):
            raise ValueError("weights are whole numbers, 0 or more")
        if not any(weights):
            raise ValueError("every weight is 0: at least one upstream must take traffic")
        cumulative, running = [], 0
        for w in weights:
            running += w
            cumulative.append(running)
        setter = object.__setattr__
        setter(self, "names", names)
        setter(self, "weights", weights)
        setter(self, "total", running)
        setter(self, "_cumulative", tuple(cumulative))
        setter(self, "_seeds", tuple(_hash64("\x00upstream\x00" + n) for n in names))
        setter(self, "_index", {n: i for i, n in enumerate(names)})

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("a Split is immutable: make a new one (withWeights)")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Split) and self.names == other.names and self.weights == other.weights

    def __hash__(self) -> int:
        return hash((self.names, self.weights))

    def __repr__(self) -> str:
        return "<Split " + ", ".join(f"{n}={w}" for n, w in zip(self.names, self.weights, strict=True)) + ">"

    @property
    def canary(self) -> str:
        """The upstream C{X-Canary: always} names: the last listed (by convention, the new version)."""
        return self.names[-1]

    def weight(self, name: str) -> int:
        """C{name}'s weight (KeyError for an upstream not in the split)."""
        return self.weights[self._index[name]]

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def shares(self) -> dict[str, float]:
        """The configured share of each upstream, 0 to 1."""
        return {n: w / self.total for n, w in zip(self.names, self.weights, strict=True)}

    def pick(self, rng: Random) -> str:
        """The weighted random pick: a point in [0, total) and the interval that holds it."""
        if len(self.names) == 1:
            return self.names[0]
        return self.names[bisect_right(self._cumulative, rng.randrange(self.total))]

    def pickByKey(self, key: str) -> str:
        """The sticky pick: the highest weighted rendezvous score for C{key} (see the module docstring)."""
        if len(self.names) == 1:
            return self.names[0]
        k = _hash64(key)
        best, bestScore = 0, -1.0
        for i, (seed, w) in enumerate(zip(self._seeds, self.weights, strict=True)):
            if w:
                u = ((_mix64(k ^ seed) >> 11) + 0.5) * _UNIT  # uniform in (0, 1), never 0 or 1
                score = w / -log(u)
                if score > bestScore:
                    best, bestScore = i, score
        return self.names[best]

    def withWeights(self, weights: Mapping[str, int]) -> Split:
        """A new split with some weights changed (the others kept); ValueError as the constructor's."""
        unknown = [n for n in weights if n not in self._index]
        if unknown:
            raise ValueError(f"not an upstream of this split: {', '.join(map(repr, unknown))}")
        return Split((n, weights.get(n, w)) for n, w in zip(self.names, self.weights, strict=True))


def splitFromSpec(spec: CanaryRouteSpec) -> Split:
    """The split a route's C{upstreams:} configures."""
    return Split((u.name, u.weight) for u in spec.upstreams)


# --------------------------------------------------------------------------
# Request keys


def keyFunction(spec: StickySpec) -> Callable[[RequestView], str | None]:
    """What C{sticky.key} reads of a request, compiled once per route; None when the request has no key."""
    kind, name = spec.kind, spec.name
    if kind == "client_ip":
        return lambda request: request.clientIP or None
    if kind == "consumer":
        return lambda request: request.identity or None
    if kind == "header":
        raw = name.lower().encode("ascii")

        def header(request: RequestView) -> str | None:
            value = request.header(raw)
            return value.decode("latin-1") if value else None

        return header
    if kind == "cookie":
        return _cookieGetter(name)
    raise ValueError(f"unknown sticky key {spec.key!r}")


def _cookieGetter(name: str) -> Callable[[RequestView], str | None]:
    prefix = name.encode("latin-1") + b"="

    def cookie(request: RequestView) -> str | None:
        value = request.header(b"cookie")
        if not value:
            return None
        for part in value.split(b";"):
            part = part.strip()
            if part.startswith(prefix):
                found = part[len(prefix):].strip(b'"')
                return found.decode("latin-1") if found else None
        return None

    return cookie


def defaultTrust(spec: OverrideSpec) -> Callable[[RequestView], bool]:
    """
    Whether a request may use the override, from C{canary_override}: anyone
    when not C{trusted_only}; else a client address in C{trusted_clients}
    or a consumer in C{trusted_consumers} (C{"*"}: any authenticated one).
    """
    if not spec.trusted_only:
        return lambda request: True
    networks = spec.trusted_clients
    consumers = frozenset(spec.trusted_consumers)
    anyConsumer = "*" in consumers

    def trusted(request: RequestView) -> bool:
        identity = request.identity
        if identity is not None and (anyConsumer or identity in consumers):
            return True
        try:
            address = ipaddress.ip_address(request.clientIP)
        except ValueError:
            return False
        return any(address in n for n in networks)

    return trusted


# --------------------------------------------------------------------------
# The per-route chooser


@implementer(ISplitter)
class Splitter:
    """
    One route's run-time choice among its upstreams (see the module docstring).

    C{trust} decides who may use the override; by default L{defaultTrust}
    of the route's C{canary_override}.  Counts are kept per upstream name
    across split changes, so the status page's shares stay continuous
    through a ramp.
    """

    def __init__(self, route: str, split: Split, rng: Random, sticky: StickySpec | None = None,
                 override: OverrideSpec | None = None, trust: Callable[[RequestView], bool] | None = None) -> None:
        self.route = route
        self.split = split
        self.random = rng
        self.sticky = sticky
        self.override = override
        self._key = keyFunction(sticky) if sticky is not None else None
        self._overrideHeader = override.header.lower().encode("ascii") if override is not None else None
        self._trusted = trust if trust is not None else (defaultTrust(override) if override is not None else None)
        self._counts: dict[str, int] = dict.fromkeys(split.names, 0)
        self._choices = {(n, r): Choice(n, r) for n in split.names for r in (OVERRIDE, STICKY, WEIGHTED)}

    @classmethod
    def fromSpec(cls, route: str, spec: CanaryRouteSpec, rng: Random,
                 trust: Callable[[RequestView], bool] | None = None) -> Splitter:
        return cls(route, splitFromSpec(spec), rng, spec.sticky, spec.override, trust)

    def choose(self, request: RequestView) -> Choice:
        split = self.split  # read once: a concurrent setSplit is seen entirely or not at all
        name: str | None = None
        reason = WEIGHTED
        if self._overrideHeader is not None:
            value = request.header(self._overrideHeader)
            if value:
                wanted = value.decode("latin-1").strip()
                if wanted.lower() == ALWAYS:
                    wanted = split.canary
                if wanted in split and self._trusted is not None and self._trusted(request):
                    name, reason = wanted, OVERRIDE
        if name is None and self._key is not None:
            key = self._key(request)
            if key is not None:
                name, reason = split.pickByKey(key), STICKY
        if name is None:
            name, reason = split.pick(self.random), WEIGHTED
        self._counts[name] = self._counts.get(name, 0) + 1
        choice = self._choices.get((name, reason))
        return choice if choice is not None else Choice(name, reason)

    def setSplit(self, split: Split) -> None:
        for n in split.names:
            self._counts.setdefault(n, 0)
            for r in (OVERRIDE, STICKY, WEIGHTED):
                self._choices.setdefault((n, r), Choice(n, r))
        self.split = split

    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    def continueFrom(self, old: Splitter, configured: Split) -> bool:
        """
        Take over from the splitter of the previous runtime (a reload): its
        counts, and its split when weights were changed at run time
        (C{old.split != configured}, C{configured} being the split the old
        config gave) and this config's split equals C{configured}, i.e. the
        reload did not touch this route's C{upstreams}.  So an unrelated
        reload does not snap a ramp back to its configured weights, while a
        reload that changes them wins.  Returns whether the run-time split
        was kept (the reload logs it).
        """
        for n, c in old._counts.items():
            self._counts[n] = self._counts.get(n, 0) + c
        keep = old.split != configured and self.split == configured
        if keep:
            self.setSplit(old.split)
        return keep

    def report(self) -> dict[str, Any]:
        split = self.split
        counts = self._counts
        chosen = sum(counts.get(n, 0) for n in split.names)
        return {
            "route": self.route,
            "upstreams": [
                {"name": n, "weight": w, "share": w / split.total, "chosen": counts.get(n, 0),
                 "chosen_share": counts.get(n, 0) / chosen if chosen else None}
                for n, w in zip(split.names, split.weights, strict=True)
            ],
            "sticky": self.sticky.key if self.sticky is not None else None,
            "override": self.override.header if self.override is not None else None,
            "canary": split.canary,
        }


def liveShares(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, float | None]:
    """Shares chosen between two L{Splitter.counts} snapshots (the status page's window); None when idle."""
    deltas = {n: after[n] - before.get(n, 0) for n in after}
    total = sum(deltas.values())
    return {n: (d / total if total else None) for n, d in deltas.items()}


# --------------------------------------------------------------------------
# PUT /api/routes/{route}/split


class SplitRefused(ValueError):
    """A split change the admin API refuses (HTTP 400); the message says why, for the operator."""


def updateSplit(current: Split, body: bytes | str | Any) -> Split:
    """
    The split that C{PUT /api/routes/{route}/split} with C{body}
    (C{{"weights": {"U1": 75, "U2": 25}}}, as bytes or already decoded)
    asks for.  Upstreams not named keep their weight; a name must be one
    of the route's upstreams (adding or removing one is a config change),
    a weight a whole number, 0 or more, and not every weight may be 0.
    Raises L{SplitRefused}; the current split is unchanged either way.
    """
    if isinstance(body, (bytes, str)):
        try:
            body = json.loads(body)
        except ValueError:
            raise SplitRefused('the body is not JSON (send {"weights": {"UPSTREAM": N, ...}})') from None
    if not isinstance(body, dict) or set(body) != {"weights"} or not isinstance(body["weights"], dict):
        raise SplitRefused('send {"weights": {"UPSTREAM": N, ...}} and nothing else')
    weights = body["weights"]
    if not weights:
        raise SplitRefused("weights is empty: name at least one upstream")
    unknown = sorted(n for n in weights if n not in current)
    if unknown:
        raise SplitRefused(f"not an upstream of this route: {', '.join(map(repr, unknown))} "
                           f"(its upstreams: {', '.join(current.names)})")
    bad = sorted(n for n, w in weights.items() if isinstance(w, bool) or not isinstance(w, int) or w < 0)
    if bad:
        raise SplitRefused(f"a weight is a whole number, 0 or more: {', '.join(f'{n}={weights[n]!r}' for n in bad)}")
    if not any(weights.get(n, w) for n, w in zip(current.names, current.weights, strict=True)):
        raise SplitRefused("every weight would be 0: at least one upstream must take traffic")
    return current.withWeights(weights)
