"""
A worker's membership of the fleet (issue 26), in memory: generations
taken from the hub, reloads asked of it, admin changes replayed, and rate
limits counted once through leased tokens.
"""

from __future__ import annotations

import io
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txgateway.fleet.leases import HOLD
from txgateway.fleet.member import memberFor

from .fleetsupport import CONFIG, Fleet
from .support import Origin

SPLIT = """\
upstreams:
  v1: {targets: [http://v1.internal:8000]}
  v2: {targets: [http://v2.internal:8000]}
routes:
  - name: predict
    match: {path_prefix: /}
    upstreams: [{name: v1, weight: 100}, {name: v2, weight: 0}]
"""
LIMITED = CONFIG.format(upstream="", route="    rate_limit: {rate: 10/s, burst: 10}")


class GenerationTests(SynchronousTestCase):
    def test_everyWorkerSwitchesToTheHubsGeneration(self) -> None:
        """A reload at the hub moves every worker to generation 2 and its routes; the roster shows it."""
        fleet = Fleet(CONFIG.format(upstream="", route=""))
        fleet.path.write_text(fleet.path.read_text().replace("path_prefix: /", "path_prefix: /v2"))
        self.assertEqual(fleet.hub.reload(), [])
        fleet.settle()
        self.assertEqual([m.generation for m in fleet.members], [2, 2])
        self.assertEqual([w["generation"] for w in fleet.members[1].workers()], [2, 2])
        self.assertEqual([fleet.request(i, b"/x").code for i in (0, 1)], [404, 404])
        self.assertEqual([fleet.request(i, b"/v2/x").code for i in (0, 1)], [200, 200])

    def test_aWorkersReloadIsTheFleets(self) -> None:
        """A worker asking for a reload (admin API, SIGHUP) gets the hub's verdict; a bad file moves nobody."""
        fleet = Fleet(CONFIG.format(upstream="", route=""))
        fleet.path.write_text("routes: 7\n")
        answers: list[Any] = []
        fleet.members[1].reload().addCallback(answers.append)
        fleet.settle()
        self.assertTrue(answers[0], "the problems of the rejected file")
        self.assertEqual([m.generation for m in fleet.members], [1, 1])
        for fixture in fleet.workers:
            self.assertEqual(fixture.service.gateway.history[-1]["result"], "failure")

    def test_withoutTheHubAReloadIsRefused(self) -> None:
        fleet = Fleet(CONFIG.format(upstream="", route=""))
        fleet.links[1].cut()
        answers: list[Any] = []
        fleet.members[1].reload().addCallback(answers.append)
        self.assertEqual(answers, [["the supervisor cannot be reached; reload refused"]])


class StartTests(SynchronousTestCase):
    def test_onlyAWorkerOfAFleetIsAMember(self) -> None:
        options = {"listen-fd": "3", "worker-id": "1", "config": "gw.yaml"}
        self.assertIsNone(memberFor(options, None, environ={}))
        self.assertIsNone(memberFor(dict(options, **{"listen-fd": None}), None, environ={"TXGATEWAY_FLEET": "/d"}))
        member = memberFor(options, None, environ={"TXGATEWAY_FLEET": "/d"})
        assert member is not None
        self.assertEqual((member.workerId, member.directory), (1, "/d"))

    def test_aWorkerStartsOnTheSnapshotNotTheFile(self) -> None:
        """The file may hold an edit the supervisor rejected: a (re)starting worker loads the accepted generation."""
        fleet = Fleet(CONFIG.format(upstream="", route=""))
        fleet.path.write_text(fleet.path.read_text().replace("path_prefix: /", "path_prefix: /v2"))
        self.assertEqual(fleet.hub.reload(), [])
        fleet.path.write_text("routes: [broken")
        member = memberFor({"listen-fd": "3", "worker-id": "2", "config": str(fleet.path)}, None,
                           environ={"TXGATEWAY_FLEET": fleet.dir})
        assert member is not None
        config = member.startConfig(lambda: self.fail("the file was read"))  # type: ignore[arg-type,return-value]
        self.assertEqual((member.generation, config.routes[0].match.path_prefix), (2, "/v2"))


class AdminReplayTests(SynchronousTestCase):
    def test_aDisabledTargetIsDisabledInEveryWorker(self) -> None:
        """An admin change applied in one worker is replayed by the others through the hub."""
        fleet = Fleet(CONFIG.format(upstream="", route=""))

        class Request:
            method = b"POST"
            path = b"/api/upstreams/app/targets/a.internal:8000/disable"
            content = None

        fleet.members[0].shareAdmin(Request())  # as the admin API does once worker 0 applied it
        fleet.settle()
        self.assertIsNone(fleet.endpoint(1), "out of worker 1's rotation")
        self.assertIsNotNone(fleet.endpoint(0), "the sender is not sent its own change")


    def test_aSplitsWeightsChangeInEveryWorker(self) -> None:
        """A split's PUT, answered by one worker, sets the weights in the others too."""
        fleet = Fleet(SPLIT, origins={"http://v1.internal:8000": Origin(Clock()), "http://v2.internal:8000": Origin(Clock())})

        class Request:
            method = b"PUT"
            path = b"/api/routes/predict/split"
            content = io.BytesIO(b'{"weights": {"v1": 50, "v2": 50}}')

        fleet.members[0].shareAdmin(Request())
        fleet.settle()
        [route] = fleet.workers[1].service.gateway.runtime.routes.routes
        self.assertEqual([route.canary.splitter.split.weight(n) for n in ("v1", "v2")], [50, 50])


class LeaseTests(SynchronousTestCase):
    def admitted(self, fleet: Fleet, order: list[int]) -> list[int]:
        return [fleet.request(worker, b"/x").code for worker in order]

    def test_oneLimitForAllWorkers(self) -> None:
        """A burst of 10 is 10 for the whole gateway: the workers' admissions add up to it, not to 20."""
        fleet = Fleet(LIMITED)
        codes = self.admitted(fleet, [0, 1] * 10)
        self.assertEqual(codes.count(200), 10)
        self.assertEqual(codes[-1], 429)

    def test_aRefusalCostsTheHubNothingUntilTheNextToken(self) -> None:
        """Refused requests are answered in the worker until the time the hub gave; then it asks again."""
        fleet = Fleet(LIMITED)
        self.admitted(fleet, [0] * 11)
        sent = fleet.links[0].toHub
        self.assertEqual(fleet.request(0, b"/x").code, 429)
        self.assertEqual(sent.value(), b"")  # no lease asked
        fleet.advance(0.1)
        self.assertEqual(fleet.request(0, b"/x").code, 200)

    def test_unusedTokensGoBack(self) -> None:
        """Tokens a worker holds but does not use return to the hub after HOLD, for the other workers."""
        fleet = Fleet(CONFIG.format(upstream="", route="    rate_limit: {rate: 100/s, burst: 10}"))
        fleet.request(0, b"/x")  # leases 5 (0.05 s of 100/s), uses 1
        self.assertEqual(self.admitted(fleet, [1] * 6).count(200), 5)
        fleet.advance(HOLD)
        fleet.advance(HOLD)
        self.assertEqual(self.admitted(fleet, [1] * 4).count(200), 4)

    def test_withoutTheHubTheWorkersOwnLimitAnswers(self) -> None:
        fleet = Fleet(LIMITED)
        fleet.links[0].cut()
        self.assertEqual(self.admitted(fleet, [0] * 11).count(200), 10)

    def test_headersStillSayTheLimit(self) -> None:
        fleet = Fleet(LIMITED)
        response = fleet.request(1, b"/x")
        self.assertEqual((response.code, response.header(b"RateLimit-Limit")), (200, b"10"))
        self.assertEqual(response.header(b"RateLimit-Remaining"), b"9")

    def test_theNextLeaseIsAskedBeforeTheTokensRunOut(self) -> None:
        """With a quarter of a lease left the worker asks for the next: a busy key does not wait for the hub."""
        fleet = Fleet(CONFIG.format(upstream="", route="    rate_limit: {rate: 1000/s, burst: 1000}"))

        def leased() -> float:
            return sum(1000 - c.tokens for c in fleet.hub.bank.counters.values())

        self.assertEqual(self.admitted(fleet, [0] * 37), [200] * 37)  # 50 a lease: 13 left
        self.assertEqual(leased(), 50)
        fleet.request(0, b"/x")  # 12 left: the next lease is asked
        self.assertEqual(leased(), 100)
