"""Balancers: exact rotations, smooth weights, least load, hash-ring stability, p2c, plug-ins."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from zope.interface import implementer
from zope.interface.verify import verifyObject

from txgateway.balancing import (
    ConsistentHash,
    LeastConnections,
    PowerOfTwoChoices,
    RoundRobin,
    WeightedRoundRobin,
    makeBalancer,
)
from txgateway.building import buildRuntime
from txgateway.cluster import Cluster, Endpoint, NoTarget
from txgateway.config import ConfigError, HealthConfig, Target, UpstreamConfig, parseConfig
from txgateway.context import RequestContext
from txgateway.interfaces import IBalancer
from txgateway.observe import Metrics


def chosen(cluster: Cluster, context: Any, tried: Any = ()) -> Endpoint:
    """The target C{cluster.choose} leases, its in-flight slot given back at once."""
    lease = cluster.choose(context, tried)
    lease.release()
    return lease.endpoint



def target(port: int, weight: int = 1) -> Target:
    return Target(url=f"http://127.0.0.1:{port}", scheme="http", host="127.0.0.1", port=port, weight=weight)


def endpoints(*weights: int) -> list[Endpoint]:
    return [Endpoint(target(9000 + i, w), "app") for i, w in enumerate(weights)]


class _FakeRequest:
    def __init__(self, headers: dict[bytes, bytes] | None = None) -> None:
        self.requestHeaders = Headers()
        for k, v in (headers or {}).items():
            self.requestHeaders.addRawHeader(k, v)


def ctx(clientIP: str = "192.0.2.1", path: str = "/", headers: dict[bytes, bytes] | None = None) -> RequestContext:
    return RequestContext(_FakeRequest(headers), 0.0, "rid", clientIP, clientIP, b"GET", "h", path, None)  # type: ignore[arg-type]


def names(eps: Sequence[Endpoint], picks: Sequence[Endpoint | None]) -> str:
    letters = {e: "abcdefghijklmnopqrstuvwxyz"[i] for i, e in enumerate(eps)}
    return " ".join(letters[p] for p in picks if p is not None)


def runPicks(balancer: Any, eligible: Sequence[Endpoint], n: int, context: RequestContext | None = None) -> list[Endpoint]:
    return [balancer.pick(eligible, context or ctx()) for _ in range(n)]


@implementer(IBalancer)
class FirstTarget:
    """A user balancer for the dotted-name test: always the first eligible target."""

    def __init__(self, config: UpstreamConfig, rng: random.Random) -> None:
        self.config = config
        self.rng = rng
        self.targets: Sequence[Endpoint] = ()

    def setTargets(self, targets: Sequence[Endpoint]) -> None:
        self.targets = targets

    def pick(self, eligible: Sequence[Endpoint], context: RequestContext) -> Endpoint | None:
        return eligible[0]


class NotABalancer:
    def __init__(self, config: UpstreamConfig, rng: random.Random) -> None:
        pass


class InterfaceTests(SynchronousTestCase):
    def test_everyBalancerProvidesIBalancer(self) -> None:
        """Each built-in strategy, and a plug-in, provides IBalancer fully."""
        eps = endpoints(1, 1)
        for name in ("round_robin", "weighted_round_robin", "least_connections", "consistent_hash", "p2c",
                     "tests.test_balancing.FirstTarget"):
            b = makeBalancer(UpstreamConfig(name="app", targets=(), balancer=name), random.Random(1))
            b.setTargets(eps)
            self.assertTrue(verifyObject(IBalancer, b), name)

    def test_namesMapToStrategies(self) -> None:
        """The balancer key picks the documented class."""
        expected = {"round_robin": RoundRobin, "weighted_round_robin": WeightedRoundRobin,
                    "least_connections": LeastConnections, "consistent_hash": ConsistentHash,
                    "p2c": PowerOfTwoChoices}
        for name, cls in expected.items():
            self.assertIsInstance(makeBalancer(UpstreamConfig(name="a", targets=(), balancer=name), random.Random()), cls)

    def test_dottedNameIsCalledWithConfigAndRandom(self) -> None:
        """A dotted name is imported and called with (config, rng)."""
        config = UpstreamConfig(name="app", targets=(), balancer="tests.test_balancing.FirstTarget")
        rng = random.Random(3)
        b = makeBalancer(config, rng)
        self.assertIsInstance(b, FirstTarget)
        assert isinstance(b, FirstTarget)
        self.assertIs(b.config, config)
        self.assertIs(b.rng, rng)

    def test_badDottedNamesAreConfigErrors(self) -> None:
        """A missing module, missing class or non-IBalancer class is a ConfigError naming the key."""
        for name, fragment in (("no_such_module_xyz.Balancer", "cannot import"),
                               ("tests.test_balancing.Missing", "has no class"),
                               ("tests.test_balancing.NotABalancer", "does not implement")):
            config = UpstreamConfig(name="app", targets=(), balancer=name)
            e = self.assertRaises(ConfigError, makeBalancer, config, random.Random())
            self.assertIn("upstreams.app.balancer", str(e))
            self.assertIn(fragment, str(e))


class RoundRobinTests(SynchronousTestCase):
    def test_rotatesStrictly(self) -> None:
        """Three targets give a b c a b c."""
        eps = endpoints(1, 1, 1)
        b = RoundRobin()
        b.setTargets(eps)
        self.assertEqual(names(eps, runPicks(b, eps, 6)), "a b c a b c")

    def test_skipsIneligibleWithoutRepeating(self) -> None:
        """When b drops out the rotation goes on from where it was, and b rejoins in its place."""
        eps = endpoints(1, 1, 1)
        a, _, c = eps
        b = RoundRobin()
        b.setTargets(eps)
        picks = runPicks(b, eps, 1) + runPicks(b, [a, c], 3) + runPicks(b, eps, 4)
        self.assertEqual(names(eps, picks), "a c a c a b c a")

    def test_retryExclusionDoesNotSkewTheNextRequest(self) -> None:
        """A retry on the untried targets does not make the next request repeat a target."""
        eps = endpoints(1, 1, 1)
        a, b_, c = eps
        b = RoundRobin()
        b.setTargets(eps)
        first = b.pick(eps, ctx())
        retry = b.pick([b_, c], ctx())
        after = runPicks(b, eps, 3)
        self.assertEqual(names(eps, [first, retry, *after]), "a b c a b")


class WeightedRoundRobinTests(SynchronousTestCase):
    def test_smoothSequenceForFiveOneOne(self) -> None:
        """Weights 5,1,1 give exactly a a b a c a a, cycle after cycle."""
        eps = endpoints(5, 1, 1)
        b = WeightedRoundRobin()
        b.setTargets(eps)
        self.assertEqual(names(eps, runPicks(b, eps, 14)), "a a b a c a a a a b a c a a")

    def test_runsOverTheEligibleSubset(self) -> None:
        """With c out, weights 5,1 give a a a b a a, and c's current weight is left alone."""
        eps = endpoints(5, 1, 1)
        a, b_, c = eps
        b = WeightedRoundRobin()
        b.setTargets(eps)
        self.assertEqual(names(eps, runPicks(b, [a, b_], 6)), "a a a b a a")
        self.assertEqual(b.currentWeights()[c.url], 0)

    def test_equalWeightsAreRoundRobin(self) -> None:
        """Equal weights degrade to plain rotation."""
        eps = endpoints(2, 2, 2)
        b = WeightedRoundRobin()
        b.setTargets(eps)
        self.assertEqual(names(eps, runPicks(b, eps, 6)), "a b c a b c")


CONFIG = """\
upstreams:
  app:
    balancer: {balancer}
    targets:
{targets}
routes:
  - match: {{path_prefix: /}}
    upstream: app
"""


def config(balancer: str, weights: Sequence[int], ports: Sequence[int] | None = None) -> Any:
    ports = ports or [9000 + i for i in range(len(weights))]
    lines = "\n".join(f"      - {{url: http://127.0.0.1:{p}, weight: {w}}}" for p, w in zip(ports, weights, strict=True))
    return parseConfig(CONFIG.format(balancer=balancer, targets=lines))


class ReloadTests(SynchronousTestCase):
    """The balancer and its state survive reloads, through the real buildRuntime."""

    def build(self, cfg: Any, previous: Any = None) -> Any:
        return buildRuntime(cfg, reactor=MemoryReactorClock(), clock=Clock(),
                            metrics=Metrics(processMetrics=False), previous=previous, rng=random.Random(0))

    def pick(self, runtime: Any, n: int) -> list[str]:
        cluster = runtime.clusters["app"]
        return [chosen(cluster, ctx()).url[-1] for _ in range(n)]

    def test_weightsChangingOnReloadTakeEffectSmoothly(self) -> None:
        """1,1 then reloaded as 3,1: the next picks are exactly 0 0 1 0 (ports ...0 and ...1)."""
        first = self.build(config("weighted_round_robin", [1, 1]))
        self.assertEqual(self.pick(first, 4), ["0", "1", "0", "1"])
        second = self.build(config("weighted_round_robin", [3, 1]), first)
        self.assertIs(second.clusters["app"].balancer, first.clusters["app"].balancer)
        self.assertEqual(self.pick(second, 8), ["0", "0", "1", "0", "0", "0", "1", "0"])

    def test_midCycleWeightChangeCarriesCurrentWeights(self) -> None:
        """5,1,1 reloaded as 1,1,1 after a a b: the owed picks of a and c come first, then plain rotation."""
        first = self.build(config("weighted_round_robin", [5, 1, 1]))
        self.assertEqual(self.pick(first, 3), ["0", "0", "1"])
        second = self.build(config("weighted_round_robin", [1, 1, 1]), first)
        self.assertEqual("".join(self.pick(second, 12)), "202021021021")

    def test_roundRobinContinuesAcrossReload(self) -> None:
        """A reload that keeps the targets does not restart the rotation at the first one."""
        first = self.build(config("round_robin", [1, 1, 1]))
        self.assertEqual(self.pick(first, 2), ["0", "1"])
        second = self.build(config("round_robin", [1, 1, 1]), first)
        self.assertEqual(self.pick(second, 3), ["2", "0", "1"])

    def test_changingTheBalancerKindBuildsANewOne(self) -> None:
        """A different balancer: a fresh object of the new kind."""
        first = self.build(config("round_robin", [1, 1]))
        second = self.build(config("least_connections", [1, 1]), first)
        self.assertIsInstance(second.clusters["app"].balancer, LeastConnections)

    def test_targetsAddedOnReloadJoinTheRotation(self) -> None:
        """A target added on reload is reached in the next cycle."""
        first = self.build(config("round_robin", [1, 1], [9000, 9001]))
        self.pick(first, 1)
        second = self.build(config("round_robin", [1, 1, 1], [9000, 9001, 9002]), first)
        self.assertEqual(self.pick(second, 4), ["1", "2", "0", "1"])


class LeastConnectionsTests(SynchronousTestCase):
    def test_picksTheFewestInFlight(self) -> None:
        """The target with the fewest in-flight requests wins."""
        eps = endpoints(1, 1, 1)
        eps[0].inFlight, eps[1].inFlight, eps[2].inFlight = 3, 1, 2
        b = LeastConnections()
        b.setTargets(eps)
        self.assertIs(b.pick(eps, ctx()), eps[1])

    def test_tiesAreBrokenByRotation(self) -> None:
        """Idle targets take turns instead of the first one taking everything."""
        eps = endpoints(1, 1, 1)
        b = LeastConnections()
        b.setTargets(eps)
        self.assertEqual(names(eps, runPicks(b, eps, 6)), "a b c a b c")

    def test_weightDividesTheLoad(self) -> None:
        """Connections are compared per unit of weight: 3 on weight 4 beats 1 on weight 1."""
        eps = endpoints(4, 1)
        eps[0].inFlight, eps[1].inFlight = 3, 1
        b = LeastConnections()
        b.setTargets(eps)
        self.assertIs(b.pick(eps, ctx()), eps[0])

    def test_fairUnderConcurrentInFlight(self) -> None:
        """With requests finishing at random, in-flight counts never differ by more than one."""
        eps = endpoints(1, 1, 1, 1)
        b = LeastConnections()
        b.setTargets(eps)
        rng = random.Random(7)
        held: list[Endpoint] = []
        for _ in range(40):
            e = b.pick(eps, ctx())
            assert e is not None
            e.inFlight += 1
            held.append(e)
        self.assertEqual([e.inFlight for e in eps], [10, 10, 10, 10])
        for _ in range(2000):
            done = held.pop(rng.randrange(len(held)))
            done.inFlight -= 1
            e = b.pick(eps, ctx())
            assert e is not None
            e.inFlight += 1
            held.append(e)
            loads = [x.inFlight for x in eps]
            self.assertLessEqual(max(loads) - min(loads), 1)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.integers(1, 4), min_size=1, max_size=5),
           st.lists(st.tuples(st.integers(1, 31), st.lists(st.integers(0, 3), min_size=5, max_size=5)),
                    max_size=30))
    def test_picksTheFirstLeastLoadedAfterTheLastPick(self, weights: list[int],
                                                      steps: list[tuple[int, list[int]]]) -> None:
        """Any subset, any loads: the least loaded per weight, the first of equals after the last pick in config order."""
        eps = endpoints(*weights)
        position = {e: i for i, e in enumerate(eps)}
        b = LeastConnections()
        b.setTargets(eps)
        last = -1
        for mask, loads in steps:
            eligible = [e for i, e in enumerate(eps) if mask >> i & 1] or eps
            for e, load in zip(eps, loads, strict=False):
                e.inFlight = load
            after = [i for i, e in enumerate(eligible) if position[e] > last]
            start = after[0] if after else 0
            expected = min(eligible[start:] + eligible[:start], key=lambda e: Fraction(e.inFlight, e.weight))
            self.assertIs(b.pick(eligible, ctx()), expected)
            last = position[expected]

    def test_slowTargetGetsLess(self) -> None:
        """A target whose requests never finish stops getting new ones."""
        eps = endpoints(1, 1, 1)
        slow = eps[0]
        b = LeastConnections()
        b.setTargets(eps)
        got: Counter[Endpoint] = Counter()
        for _ in range(300):
            e = b.pick(eps, ctx())
            assert e is not None
            got[e] += 1
            if e is slow:
                e.inFlight += 1  # never finishes
        self.assertLessEqual(got[slow], 2)


def keyed(i: int) -> RequestContext:
    return ctx(headers={b"X-User-ID": f"user-{i}".encode()})


class ConsistentHashTests(SynchronousTestCase):
    keys = 10000

    def ring(self, eps: Sequence[Endpoint], hashOn: str = "header:X-User-ID") -> ConsistentHash:
        b = ConsistentHash(hashOn)
        b.setTargets(eps)
        return b

    def assignment(self, b: ConsistentHash, eligible: Sequence[Endpoint]) -> list[Endpoint]:
        out = []
        for i in range(self.keys):
            e = b.pick(eligible, keyed(i))
            assert e is not None
            out.append(e)
        return out

    def test_sameKeySameTarget(self) -> None:
        """A key keeps its target, request after request."""
        eps = endpoints(*[1] * 5)
        b = self.ring(eps)
        self.assertEqual(len({b.pick(eps, keyed(42)) for _ in range(20)}), 1)

    def test_spreadIsEven(self) -> None:
        """10000 keys over 10 targets: each target gets between 8% and 12%."""
        eps = endpoints(*[1] * 10)
        counts = Counter(self.assignment(self.ring(eps), eps))
        for e in eps:
            self.assertTrue(800 <= counts[e] <= 1200, (e, counts[e]))

    def test_weightScalesTheShare(self) -> None:
        """A weight-3 target gets about three times the keys of a weight-1 target."""
        eps = endpoints(3, 1, 1, 1)
        counts = Counter(self.assignment(self.ring(eps), eps))
        self.assertTrue(2.4 <= counts[eps[0]] / (counts[eps[1]] + counts[eps[2]] + counts[eps[3]]) * 3 <= 3.6, counts)

    def test_targetLeavingMovesOnlyItsKeys(self) -> None:
        """One of 10 targets leaves the list: only its keys (about 10%) move."""
        eps = endpoints(*[1] * 10)
        before = self.assignment(self.ring(eps), eps)
        gone = eps[3]
        rest = [e for e in eps if e is not gone]
        after = self.assignment(self.ring(rest), rest)
        moved = [i for i in range(self.keys) if before[i] is not after[i]]
        self.assertEqual(moved, [i for i in range(self.keys) if before[i] is gone])
        self.assertTrue(0.07 <= len(moved) / self.keys <= 0.13, len(moved))

    def test_unhealthyTargetMovesOnlyItsKeysAndGetsThemBack(self) -> None:
        """A target that is not eligible hands on only its keys, and gets the same keys back on return."""
        eps = endpoints(*[1] * 10)
        b = self.ring(eps)
        before = self.assignment(b, eps)
        down = eps[6]
        during = self.assignment(b, [e for e in eps if e is not down])
        moved = sum(1 for i in range(self.keys) if before[i] is not during[i])
        self.assertEqual(moved, before.count(down))
        self.assertTrue(0.07 <= moved / self.keys <= 0.13, moved)
        self.assertEqual(self.assignment(b, eps), before)

    def test_targetJoiningTakesAboutOneNth(self) -> None:
        """An 11th target joins: about 1/11 of keys move, all of them to it."""
        eps = endpoints(*[1] * 11)
        before = self.assignment(self.ring(eps[:10]), eps[:10])
        after = self.assignment(self.ring(eps), eps)
        moved = [i for i in range(self.keys) if before[i] is not after[i]]
        self.assertTrue(all(after[i] is eps[10] for i in moved))
        self.assertTrue(0.06 <= len(moved) / self.keys <= 0.12, len(moved))

    def test_missingKeyFallsBackToRoundRobin(self) -> None:
        """Requests without the header rotate over the targets."""
        eps = endpoints(1, 1, 1)
        b = self.ring(eps)
        self.assertEqual(names(eps, runPicks(b, eps, 6, ctx())), "a b c a b c")

    def test_keySources(self) -> None:
        """client_ip, path and cookie:NAME each key the ring; other cookies are ignored."""
        eps = endpoints(*[1] * 8)
        byIP = self.ring(eps, "client_ip")
        self.assertEqual(len({byIP.pick(eps, ctx(clientIP="198.51.100.7")) for _ in range(5)}), 1)
        self.assertGreater(len({byIP.pick(eps, ctx(clientIP=f"198.51.100.{i}")) for i in range(50)}), 4)
        byPath = self.ring(eps, "path")
        self.assertEqual(len({byPath.pick(eps, ctx(path="/a/b")) for _ in range(5)}), 1)
        byCookie = self.ring(eps, "cookie:sid")
        self.assertEqual(byCookie.keyOf(ctx(headers={b"Cookie": b"theme=dark; sid=abc123; x=1"})), b"abc123")
        self.assertIsNone(byCookie.keyOf(ctx(headers={b"Cookie": b"theme=dark; sidx=1"})))
        self.assertIsNone(byCookie.keyOf(ctx()))

    def test_reloadWithSameTargetsKeepsTheRing(self) -> None:
        """setTargets with the same URLs and weights keeps every key where it was."""
        eps = endpoints(*[1] * 5)
        b = self.ring(eps)
        before = self.assignment(b, eps)
        b.setTargets(eps)
        self.assertEqual(self.assignment(b, eps), before)

    def test_ringIsTheSameInEveryProcess(self) -> None:
        """The ring does not use Python's per-process salted hash: known keys have known targets."""
        eps = endpoints(*[1] * 4)
        b = self.ring(eps)
        self.assertEqual([b.pick(eps, keyed(i)).url[-1] for i in range(12)],  # type: ignore[union-attr]
                         list("213020222312"))


class PowerOfTwoTests(SynchronousTestCase):
    def test_neverPicksTheMostLoaded(self) -> None:
        """Two distinct draws: the single most loaded target can never win."""
        eps = endpoints(1, 1, 1)
        eps[0].inFlight = 5
        eps[1].inFlight = 1
        b = PowerOfTwoChoices(random.Random(11))
        b.setTargets(eps)
        counts = Counter(runPicks(b, eps, 3000))
        self.assertEqual(counts[eps[0]], 0)
        # c wins whenever drawn (2 of the 3 pairs), b only against a.
        self.assertTrue(0.6 <= counts[eps[2]] / 3000 <= 0.73, counts)

    def test_usesTheInjectedRandom(self) -> None:
        """The same seed gives the same choices."""
        eps = endpoints(1, 1, 1, 1)
        one, two = PowerOfTwoChoices(random.Random(5)), PowerOfTwoChoices(random.Random(5))
        self.assertEqual(runPicks(one, eps, 50), runPicks(two, eps, 50))

    def test_prefersLessLoadedPerWeight(self) -> None:
        """With two targets: 3 in flight on weight 4 beats 1 on weight 1."""
        eps = endpoints(4, 1)
        eps[0].inFlight, eps[1].inFlight = 3, 1
        b = PowerOfTwoChoices(random.Random(1))
        self.assertEqual(set(runPicks(b, eps, 20)), {eps[0]})

    def test_singleTarget(self) -> None:
        """One eligible target is simply returned."""
        eps = endpoints(1)
        self.assertIs(PowerOfTwoChoices(random.Random()).pick(eps, ctx()), eps[0])


class ClusterChooseTests(SynchronousTestCase):
    """The balancer only ever sees what health allows; when nothing is healthy, when_all_unhealthy decides."""

    def cluster(self, whenAll: str) -> tuple[Cluster, list[Endpoint]]:
        eps = endpoints(1, 1, 1)
        config = UpstreamConfig(name="app", targets=tuple(target(9000 + i) for i in range(3)),
                                health=HealthConfig(when_all_unhealthy=whenAll))
        return Cluster(config, Clock(), RoundRobin(), eps), eps

    def test_unhealthyAndEjectedTargetsAreSkipped(self) -> None:
        """Active-unhealthy and passively ejected targets get nothing."""
        cluster, eps = self.cluster("fail_open")
        eps[0].activeHealthy = False
        eps[1].ejectedUntil = 100.0
        self.assertEqual({chosen(cluster, ctx()).url for _ in range(6)}, {eps[2].url})

    def test_failOpenUsesEveryTargetWhenNoneIsHealthy(self) -> None:
        """fail_open: with every target unhealthy, all of them are used."""
        cluster, eps = self.cluster("fail_open")
        for e in eps:
            e.activeHealthy = False
        self.assertEqual({chosen(cluster, ctx()).url for _ in range(6)}, {e.url for e in eps})

    def test_failClosedRefusesWhenNoneIsHealthy(self) -> None:
        """fail_closed: with every target unhealthy, choose raises NoTarget (a 503)."""
        cluster, eps = self.cluster("fail_closed")
        for e in eps:
            e.activeHealthy = False
        e = self.assertRaises(NoTarget, cluster.choose, ctx())
        self.assertIn("fail_closed", e.reason)
        eps[1].activeHealthy = True
        self.assertIs(chosen(cluster, ctx()), eps[1])

    def test_failClosedSaysWhenToComeBack(self) -> None:
        """fail_closed's NoTarget carries a Retry-After: the soonest ejection end, at least a second."""
        cluster, eps = self.cluster("fail_closed")
        eps[0].activeHealthy = False
        eps[1].ejectedUntil = 12.5
        eps[2].ejectedUntil = 30.0
        self.assertEqual(self.assertRaises(NoTarget, cluster.choose, ctx()).retryAfter, 12.5)
        eps[1].ejectedUntil = eps[2].ejectedUntil = 0.0
        eps[1].activeHealthy = eps[2].activeHealthy = False
        self.assertEqual(self.assertRaises(NoTarget, cluster.choose, ctx()).retryAfter, 1.0)
