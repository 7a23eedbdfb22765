"""
A route's weighted split: the shares over many requests, stickiness by a
request key (and how few keys move when weights change), the override
header from trusted and untrusted clients, and the admin API's weight change.
"""

from __future__ import annotations

import ipaddress
import json
from random import Random

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from txgateway.canary.interfaces import Choice, ISplitter
from txgateway.canary.specs import OverrideSpec, StickySpec
from txgateway.canary.split import (
    OVERRIDE,
    STICKY,
    WEIGHTED,
    Split,
    SplitRefused,
    Splitter,
    keyFunction,
    liveShares,
    updateSplit,
)


class FakeRequest:
    """What the splitter reads of a request (RequestContext has the same three things)."""

    def __init__(self, clientIP: str = "203.0.113.7", identity: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.clientIP = clientIP
        self.identity = identity
        self.headers = {k.lower().encode(): v.encode("latin-1") for k, v in (headers or {}).items()}

    def header(self, name: bytes) -> bytes | None:
        return self.headers.get(name)


def userKeys(n: int) -> list[str]:
    return [f"user-{i}" for i in range(n)]


class SplitTests(SynchronousTestCase):
    def test_ninetyTenOverThousandPicks(self) -> None:
        """
        A 90/10 split over 1,000 picks sends 100 +- 43 requests to the 10 %
        upstream: the count is Binomial(1000, 0.1), sd 9.49, and 43 is 4.5
        sd (a random seed fails this with probability under 1e-5).  Checked
        for 20 seeds, not one lucky one.
        """
        split = Split([("v1", 90), ("v2", 10)])
        for seed in range(20):
            rng = Random(seed)
            canary = sum(split.pick(rng) == "v2" for _ in range(1000))
            self.assertTrue(57 <= canary <= 143, f"seed {seed}: {canary} of 1000 went to the 10% upstream")

    def test_weightZeroNeverPicked(self) -> None:
        """An upstream at weight 0 takes no weighted and no sticky traffic."""
        split = Split([("v1", 1), ("v2", 0)])
        rng = Random(1)
        self.assertEqual({split.pick(rng) for _ in range(500)}, {"v1"})
        self.assertEqual({split.pickByKey(k) for k in userKeys(500)}, {"v1"})

    def test_stickyShareFollowsWeights(self) -> None:
        """Over 10,000 distinct keys, a 90/10 sticky split puts 1,000 +- 142 (5 sd) keys on the 10 %."""
        split = Split([("v1", 90), ("v2", 10)])
        onCanary = sum(split.pickByKey(k) == "v2" for k in userKeys(10_000))
        self.assertTrue(858 <= onCanary <= 1142, onCanary)

    def test_sameKeySameUpstream(self) -> None:
        """A key goes to the same upstream every time, in every Split built from the same weights."""
        a, b = Split([("v1", 50), ("v2", 50)]), Split([("v1", 50), ("v2", 50)])
        for key in userKeys(200):
            self.assertEqual({a.pickByKey(key) for _ in range(5)} | {b.pickByKey(key)}, {a.pickByKey(key)})

    def test_stickyAssignmentIsPinned(self) -> None:
        """
        The hash is part of the contract: gateways of two releases side by
        side (a rolling upgrade) must agree where a key goes.  Changing the
        algorithm fails this test on purpose.
        """
        split = Split([("model-v1", 50), ("model-v2", 50)])
        got = "".join("1" if split.pickByKey(k) == "model-v1" else "2" for k in userKeys(16))
        self.assertEqual(got, PINNED)

    def test_raisingCanaryMovesOnlyKeysThatMust(self) -> None:
        """
        5 -> 25 beside 95: every key on v2 before is on v2 after, nothing
        moves to v1, and the keys moved are the share change, (25/120 -
        5/100) of 10,000 = 1,583 +- 183 (5 sd).
        """
        before, after = Split([("v1", 95), ("v2", 5)]), Split([("v1", 95), ("v2", 25)])
        moved = 0
        for key in userKeys(10_000):
            old, new = before.pickByKey(key), after.pickByKey(key)
            if old == "v2":
                self.assertEqual(new, "v2", key)
            moved += old != new
        self.assertTrue(1400 <= moved <= 1766, moved)

    def test_rampWithSameTotalMovesOnlyKeysThatMust(self) -> None:
        """95/5 -> 75/25: keys move from v1 to v2 only, about a fifth of them."""
        before, after = Split([("v1", 95), ("v2", 5)]), Split([("v1", 75), ("v2", 25)])
        moved = 0
        for key in userKeys(10_000):
            old, new = before.pickByKey(key), after.pickByKey(key)
            self.assertFalse(old == "v2" and new == "v1", key)
            moved += old != new
        self.assertTrue(1800 <= moved <= 2200, moved)

    def test_threeUpstreamsOnlyTheChangedOneGainsKeys(self) -> None:
        """v1 90, v2 5, v3 5 -> v3 25: a key moves only to v3; v2's keys stay unless they go to v3."""
        before = Split([("v1", 90), ("v2", 5), ("v3", 5)])
        after = before.withWeights({"v3": 25})
        for key in userKeys(5_000):
            old, new = before.pickByKey(key), after.pickByKey(key)
            self.assertIn(new, (old, "v3"), key)

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.integers(0, 100), min_size=2, max_size=5).filter(any), st.data())
    def test_oneWeightChangedKeysMoveOnlyToOrFromIt(self, weights: list[int], data: st.DataObject) -> None:
        """Whatever the weights, changing one upstream's weight moves keys only to or from that upstream."""
        names = [f"u{i}" for i in range(len(weights))]
        changed = data.draw(st.sampled_from(names))
        others = [w for n, w in zip(names, weights, strict=True) if n != changed]
        new = data.draw(st.integers(0 if any(others) else 1, 100))
        before = Split(zip(names, weights, strict=True))
        after = before.withWeights({changed: new})
        for key in userKeys(300):
            old, now = before.pickByKey(key), after.pickByKey(key)
            self.assertTrue(old == now or changed in (old, now), (key, old, now))

    def test_immutable(self) -> None:
        """A Split cannot be changed in place; withWeights makes a new one."""
        split = Split([("v1", 95), ("v2", 5)])
        self.assertRaises(AttributeError, setattr, split, "weights", (50, 50))
        new = split.withWeights({"v2": 25})
        self.assertEqual((split.weights, new.weights), ((95, 5), (95, 25)))
        self.assertEqual(new, Split([("v1", 95), ("v2", 25)]))

    def test_constructorRefusesNonsense(self) -> None:
        """No upstream, a repeated one, a negative or fractional weight, or every weight 0: ValueError."""
        for bad in ([], [("a", 1), ("a", 2)], [("a", -1), ("b", 2)], [("a", 1.5)], [("a", 0), ("b", 0)],
                    [("a", True)]):
            self.assertRaises(ValueError, Split, bad)

    def test_canaryIsLastListed(self) -> None:
        """X-Canary: always means the last listed upstream, whatever its weight."""
        self.assertEqual(Split([("v1", 100), ("v2", 0)]).canary, "v2")


class KeyTests(SynchronousTestCase):
    def test_keys(self) -> None:
        """header:, cookie:, client_ip and consumer read what they name, None when absent."""
        r = FakeRequest("10.1.2.3", "alice", {"X-User": "u42", "Cookie": "a=1; session=abc; z=9"})
        empty = FakeRequest("", None)
        for key, want in (("header:X-User", "u42"), ("cookie:session", "abc"), ("client_ip", "10.1.2.3"),
                          ("consumer", "alice"), ("cookie:missing", None)):
            get = keyFunction(StickySpec(key))
            self.assertEqual(get(r), want, key)
            self.assertIsNone(get(empty), key)


def splitter(split: Split, sticky: str | None = None, override: OverrideSpec | None = None,
             seed: int = 3, **kw: object) -> Splitter:
    return Splitter("predict", split, Random(seed), StickySpec(sticky) if sticky else None, override,
                    **kw)  # type: ignore[arg-type]


class SplitterTests(SynchronousTestCase):
    def test_provides(self) -> None:
        verifyObject(ISplitter, splitter(Split([("v1", 1)])))

    def test_stickyRequestsStay(self) -> None:
        """Requests with the same X-User go to one upstream; different users spread by weight."""
        s = splitter(Split([("v1", 50), ("v2", 50)]), "header:X-User")
        seen = {s.choose(FakeRequest(headers={"X-User": "bob"})) for _ in range(50)}
        self.assertEqual(len(seen), 1)
        self.assertEqual(next(iter(seen)).reason, STICKY)
        users = {s.choose(FakeRequest(headers={"X-User": k})).upstream for k in userKeys(100)}
        self.assertEqual(users, {"v1", "v2"})

    def test_missingStickyKeyIsWeighted(self) -> None:
        """A request without the key is picked by weight, not hashed as one shared value."""
        s = splitter(Split([("v1", 50), ("v2", 50)]), "header:X-User")
        choices = [s.choose(FakeRequest()) for _ in range(100)]
        self.assertEqual({c.reason for c in choices}, {WEIGHTED})
        self.assertEqual({c.upstream for c in choices}, {"v1", "v2"})

    def test_overrideFromTrustedClient(self) -> None:
        """A client on an internal address naming v2 (weight 0) gets v2; 'always' means the canary."""
        s = splitter(Split([("v1", 100), ("v2", 0)]), "header:X-User", OverrideSpec())
        for value in ("v2", "always", "ALWAYS"):
            c = s.choose(FakeRequest("10.0.0.9", headers={"X-Canary": value, "X-User": "bob"}))
            self.assertEqual(c, Choice("v2", OVERRIDE), value)
        c = s.choose(FakeRequest("127.0.0.1", headers={"X-Canary": "v1"}))
        self.assertEqual(c, Choice("v1", OVERRIDE))

    def test_overrideFromUntrustedClientIgnored(self) -> None:
        """From the internet the header changes nothing: routed as if absent."""
        s = splitter(Split([("v1", 100), ("v2", 0)]), None, OverrideSpec())
        for value in ("v2", "always"):
            c = s.choose(FakeRequest("203.0.113.7", headers={"X-Canary": value}))
            self.assertEqual(c, Choice("v1", WEIGHTED), value)

    def test_unknownOverrideValueIgnored(self) -> None:
        """A value naming no upstream of the route is ignored even from a trusted client."""
        s = splitter(Split([("v1", 100), ("v2", 0)]), None, OverrideSpec())
        self.assertEqual(s.choose(FakeRequest("127.0.0.1", headers={"X-Canary": "v9"})), Choice("v1", WEIGHTED))

    def test_trustedConsumers(self) -> None:
        """trusted_consumers: a named consumer may override; '*' admits any authenticated one."""
        spec = OverrideSpec(header="X-Version", trusted_clients=(), trusted_consumers=("qa-team",))
        s = splitter(Split([("v1", 100), ("v2", 0)]), None, spec)
        self.assertEqual(s.choose(FakeRequest("127.0.0.1", "qa-team", {"X-Version": "v2"})).upstream, "v2")
        self.assertEqual(s.choose(FakeRequest("127.0.0.1", "mallory", {"X-Version": "v2"})).upstream, "v1")
        anyone = splitter(Split([("v1", 100), ("v2", 0)]), None,
                          OverrideSpec(trusted_clients=(), trusted_consumers=("*",)))
        self.assertEqual(anyone.choose(FakeRequest(identity="x", headers={"X-Canary": "v2"})).upstream, "v2")
        self.assertEqual(anyone.choose(FakeRequest(headers={"X-Canary": "v2"})).upstream, "v1")

    def test_trustedClientNetworks(self) -> None:
        """trusted_clients replaces the internal default."""
        spec = OverrideSpec(trusted_clients=(ipaddress.ip_network("198.51.100.0/24"),))
        s = splitter(Split([("v1", 100), ("v2", 0)]), None, spec)
        self.assertEqual(s.choose(FakeRequest("198.51.100.4", headers={"X-Canary": "v2"})).upstream, "v2")
        self.assertEqual(s.choose(FakeRequest("127.0.0.1", headers={"X-Canary": "v2"})).upstream, "v1")
        self.assertEqual(s.choose(FakeRequest("not-an-ip", headers={"X-Canary": "v2"})).upstream, "v1")

    def test_notTrustedOnly(self) -> None:
        """trusted_only: false lets anyone override."""
        s = splitter(Split([("v1", 100), ("v2", 0)]), None, OverrideSpec(trusted_only=False))
        self.assertEqual(s.choose(FakeRequest("203.0.113.7", headers={"X-Canary": "v2"})).upstream, "v2")

    def test_trustAskedOnlyWithTheHeader(self) -> None:
        """The injected trust decision is asked only when the override header names an upstream."""
        asked: list[str] = []

        def trust(request: FakeRequest) -> bool:
            asked.append(request.clientIP)
            return request.clientIP == "192.0.2.1"

        s = splitter(Split([("v1", 100), ("v2", 0)]), None, OverrideSpec(), trust=trust)
        s.choose(FakeRequest("192.0.2.1"))
        self.assertEqual(asked, [])
        self.assertEqual(s.choose(FakeRequest("192.0.2.1", headers={"X-Canary": "v2"})).upstream, "v2")
        self.assertEqual(s.choose(FakeRequest("192.0.2.2", headers={"X-Canary": "v2"})).upstream, "v1")
        self.assertEqual(asked, ["192.0.2.1", "192.0.2.2"])

    def test_countsAndLiveShares(self) -> None:
        """Chosen counts per upstream survive a split change; shares over a window are differences."""
        s = splitter(Split([("v1", 90), ("v2", 10)]))
        for _ in range(1000):
            s.choose(FakeRequest())
        before = s.counts()
        self.assertEqual(sum(before.values()), 1000)
        s.setSplit(s.split.withWeights({"v1": 50, "v2": 50}))
        for _ in range(1000):
            s.choose(FakeRequest())
        shares = liveShares(before, s.counts())
        self.assertTrue(0.45 <= (shares["v2"] or 0) <= 0.55, shares)
        report = s.report()
        self.assertEqual([(u["name"], u["weight"], u["share"]) for u in report["upstreams"]],
                         [("v1", 50, 0.5), ("v2", 50, 0.5)])
        self.assertEqual(sum(u["chosen"] for u in report["upstreams"]), 2000)
        self.assertEqual(report["canary"], "v2")

    def test_setSplitIsWhole(self) -> None:
        """A request sees the old split or the new one: setSplit is one assignment of an immutable value."""
        s = splitter(Split([("v1", 100), ("v2", 0)]))
        old = s.split
        s.setSplit(updateSplit(old, b'{"weights": {"v1": 0, "v2": 1}}'))
        self.assertEqual(old.weights, (100, 0))
        self.assertEqual({s.choose(FakeRequest()).upstream for _ in range(20)}, {"v2"})

    def test_reloadKeepsRuntimeWeightsUnlessConfigChanged(self) -> None:
        """A reload that leaves upstreams alone keeps a ramp made through the API; one that changes them wins."""
        configured = Split([("v1", 95), ("v2", 5)])
        old = splitter(configured)
        old.choose(FakeRequest())
        old.setSplit(configured.withWeights({"v1": 75, "v2": 25}))
        same = splitter(configured)
        self.assertTrue(same.continueFrom(old, configured))
        self.assertEqual(same.split.weights, (75, 25))
        self.assertEqual(sum(same.counts().values()), 1)
        edited = splitter(Split([("v1", 50), ("v2", 50)]))
        self.assertFalse(edited.continueFrom(old, configured))
        self.assertEqual(edited.split.weights, (50, 50))
        untouched = splitter(configured)
        self.assertFalse(untouched.continueFrom(splitter(configured), configured))


class UpdateSplitTests(SynchronousTestCase):
    current = Split([("U1", 95), ("U2", 5)])

    def refused(self, body: object) -> str:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        e = self.assertRaises(SplitRefused, updateSplit, self.current, raw)
        return str(e)

    def test_newWeights(self) -> None:
        """{"weights": {"U1": 75, "U2": 25}} is the new split; naming one keeps the other."""
        self.assertEqual(updateSplit(self.current, b'{"weights": {"U1": 75, "U2": 25}}'),
                         Split([("U1", 75), ("U2", 25)]))
        self.assertEqual(updateSplit(self.current, {"weights": {"U2": 100}}), Split([("U1", 95), ("U2", 100)]))
        self.assertEqual(updateSplit(self.current, {"weights": {"U1": 0}}), Split([("U1", 0), ("U2", 5)]))

    def test_refusals(self) -> None:
        """Each refusal says what is wrong; the current split is unchanged."""
        self.assertIn("not JSON", self.refused(b"weights=75"))
        self.assertIn('{"weights"', self.refused({"U1": 75}))
        self.assertIn('{"weights"', self.refused({"weights": {"U1": 75}, "extra": 1}))
        self.assertIn("empty", self.refused({"weights": {}}))
        self.assertIn("'U3'", self.refused({"weights": {"U3": 5}}))
        self.assertIn("its upstreams: U1, U2", self.refused({"weights": {"U3": 5}}))
        for bad in (-1, 2.5, "50", True, None):
            self.assertIn("whole number", self.refused({"weights": {"U1": bad}}))
        self.assertIn("every weight would be 0", self.refused({"weights": {"U1": 0, "U2": 0}}))
        self.assertEqual(self.current.weights, (95, 5))


PINNED = "1112112211112121"
