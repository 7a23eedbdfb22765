"""
The attempt loop (AttemptLoop.fetch), leases from Cluster.choose and the forward sequence, with a fake
upstream client and a Clock.

The runtime is built from config text by the real C{buildRuntime}, so
breakers, the retry policy and the metrics observers are wired exactly as in
the running gateway; only the upstream's Agent is replaced.
"""

from __future__ import annotations

import io
import json
import random
import tempfile
from typing import Any

from twisted.internet import error as netError
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, fail, succeed
from twisted.internet.defer import TimeoutError as DeferTimeout
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone, ResponseFailed, ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer, IResponse
from twisted.web.test.requesthelper import DummyChannel
from zope.interface import implementer
from zope.interface.verify import verifyObject

from txgateway.attempts import UpstreamFailure, classify
from txgateway.building import buildRuntime
from txgateway.cluster import Cluster, Endpoint, NoTarget
from txgateway.config import parseConfig
from txgateway.context import RequestContext
from txgateway.deadlines import totalTimeout
from txgateway.forwarding import ClusterForwarder, forward
from txgateway.gateway import Runtime
from txgateway.http.client.agent import UpstreamAgent, makeClient
from txgateway.http.client.pool import ConnectionPool
from txgateway.http.replay import bodyProducer
from txgateway.http.request import GatewayRequest
from txgateway.interfaces import IForwarder, IUpstreamClient
from txgateway.observe import AccessLog, Metrics

PORTS = (9001, 9002, 9003)

def chosen(cluster: Cluster, context: Any, tried: Any = ()) -> Endpoint:
    """The target C{cluster.choose} leases, its in-flight slot given back at once."""
    lease = cluster.choose(context, tried)
    lease.release()
    return lease.endpoint



class FakeRequest:
    """Just what the forwarder reads of a twisted.web request."""

    def __init__(self, body: bytes | None = None, content: Any = None) -> None:
        self.requestHeaders = Headers({b"host": [b"gw.example"]})
        self.content = content if content is not None else io.BytesIO(body or b"")
        self.gone = False

    def isSecure(self) -> bool:
        return False


@implementer(IResponse)
class FakeResponse:
    version = (b"HTTP", 1, 1)
    request = None
    previousResponse = None

    def __init__(self, code: int, body: bytes = b"", broken: bool = False) -> None:
        self.code = code
        self.phrase = b"X"
        self.headers = Headers()
        self.length = len(body) * 2 if broken else len(body)
        self.body = body
        self.broken = broken
        self.discarded = False

    def deliverBody(self, protocol: Any) -> None:
        """The body, whole or (C{broken}) cut off partway as a target's reset cuts it."""
        self.discarded = True
        protocol.makeConnection(StringTransport())
        if self.body:
            protocol.dataReceived(self.body)
        if self.broken:
            protocol.connectionLost(Failure(ResponseFailed([Failure(netError.ConnectionLost())])))
        else:
            protocol.connectionLost(Failure(ResponseDone()))

    def setPreviousResponse(self, response: Any) -> None:
        pass


class Call:
    def __init__(self, method: bytes, uri: bytes, headers: Headers, body: bytes) -> None:
        self.method = method
        self.uri = uri
        self.headers = headers
        self.body = body
        self.port = int(uri.split(b":")[2].split(b"/")[0])
        self.cancelled = False
        self.deferred: Deferred[Any] | None = None


def readBody(producer: IBodyProducer | None) -> bytes:
    if producer is None:
        return b""
    view = getattr(producer, "_inputFile", None)
    if view is not None:  # a FileBodyProducer over the buffered body
        return bytes(view.read())
    out: list[bytes] = []

    class Consumer:
        def write(self, data: bytes) -> None:
            out.append(data)

    producer.startProducing(Consumer())  # type: ignore[arg-type]
    return b"".join(out)


@implementer(IAgent)
class FakeAgent:
    """
    Answers with "refuse" (connect failure), "reset", "body_reset" (a 200
    whose body breaks off partway), "hang" (a Deferred
    that only a cancel ends, failing as the real Agent's does:
    ResponseNeverReceived), or an int status.  C{script} is consumed first,
    one entry per call whatever the target (tests need not know which target
    the balancer picks first); then C{behaviour} by target port (a list is
    consumed in order); then 200.
    """

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.script: list[Any] = []
        self.behaviour: dict[int, Any] = {}
        self.responses: list[FakeResponse] = []

    def request(self, method: bytes, uri: bytes, headers: Headers | None = None,
                bodyProducer: IBodyProducer | None = None) -> Deferred[IResponse]:
        call = Call(method, uri, headers or Headers(), readBody(bodyProducer))
        self.calls.append(call)
        what = self.script.pop(0) if self.script else self.behaviour.get(call.port, 200)
        if isinstance(what, list):
            what = what.pop(0) if len(what) > 1 else what[0]
        if what == "refuse":
            return fail(netError.ConnectionRefusedError("refused"))
        if what == "reset":
            return fail(ResponseNeverReceived([Failure(netError.ConnectionLost())]))
        if what == "hang":
            def cancel(d: Deferred[IResponse]) -> None:
                call.cancelled = True
                d.errback(ResponseNeverReceived([Failure(CancelledError())]))

            call.deferred = Deferred(cancel)
            return call.deferred
        if what == "body_reset":
            response = FakeResponse(200, b"partial", broken=True)
        else:
            response = FakeResponse(int(what), b"whole")
        self.responses.append(response)
        return succeed(response)

    def ports(self) -> list[int]:
        return [c.port for c in self.calls]


def runtimeFor(upstreamExtra: str = "", ports: tuple[int, ...] = PORTS) -> tuple[Runtime, Cluster, FakeAgent, Clock]:
    targets = ", ".join(f"http://127.0.0.1:{p}" for p in ports)
    text = f"""
upstreams:
  u:
    targets: [{targets}]
    timeouts: {{connect: 1s, response: 5s}}
{upstreamExtra}
routes:
  - {{name: r, match: {{path_prefix: /}}, upstream: u}}
"""
    clock = Clock()
    agent = FakeAgent()
    runtime = buildRuntime(parseConfig(text), reactor=clock, clock=clock, metrics=Metrics(processMetrics=False),
                           rng=random.Random(0), accessLog=AccessLog(False), clients=lambda upstream: agent)
    cluster = runtime.clusters["u"]
    return runtime, cluster, agent, clock


def makeContext(method: bytes = b"GET", body: bytes | None = None, content: Any = None) -> RequestContext:
    request = FakeRequest(body, content)
    return RequestContext(request, 0.0, "rid", "10.0.0.1", "10.0.0.1", method, "gw.example", "/x", None)  # type: ignore[arg-type]


class ForwarderCase(SynchronousTestCase):
    def fetch(self, runtime: Runtime, cluster: Cluster, context: RequestContext) -> Deferred[Any]:
        """(the response, the lease of its attempt), as the attempt loop gives them."""
        return ensureDeferred(runtime.forwarder.fetch(context, cluster)).addCallback(  # type: ignore[arg-type]
            lambda lease: (lease.response, lease))

    def relayed(self, d: Deferred[Any]) -> Any:
        """The result of C{d}, its body read to the end and its lease finished, as the forward sequence does."""
        response, lease = self.successResultOf(d)
        lease.finish(True)
        return response, lease

    def metric(self, runtime: Runtime, name: str, **labels: str) -> float:
        value = runtime.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


class RetryLoopTests(ForwarderCase):
    def test_connectFailureIsRetriedOnAnotherTarget(self) -> None:
        """A refused connection is retried at once on the next target; the client gets that target's answer."""
        runtime, cluster, agent, clock = runtimeFor("    retries: {attempts: 2, backoff: 0s}")
        agent.script = ["refuse"]
        context = makeContext()
        response, lease = self.successResultOf(self.fetch(runtime, cluster, context))
        endpoint = lease.endpoint
        self.assertEqual(response.code, 200)
        first, second = agent.ports()
        self.assertNotEqual(first, second)
        failed, other = f"http://127.0.0.1:{first}", f"http://127.0.0.1:{second}"
        self.assertEqual(context.attempts, 2)
        self.assertEqual(context.targetsTried, [failed, other])
        self.assertEqual(context.target, other)
        self.assertEqual(endpoint.url, other)
        self.assertEqual(sum(e.inFlight for e in cluster.endpoints), 1)
        self.assertEqual(endpoint.inFlight, 1)
        lease.finish(True)
        self.assertEqual(self.metric(runtime, "txgateway_retries_total", upstream="u"), 1)
        self.assertEqual(self.metric(runtime, "txgateway_upstream_requests_total", upstream="u",
                                     target=failed, status="connect_failure"), 1)
        self.assertEqual(self.metric(runtime, "txgateway_upstream_requests_total", upstream="u",
                                     target=other, status="200"), 1)

    def test_accessLogShowsAttemptsAndTargetsTried(self) -> None:
        """The access log line of a retried request carries the attempt count and every target tried."""
        runtime, cluster, agent, clock = runtimeFor("    retries: {attempts: 2, backoff: 0s}")
        agent.script = ["refuse"]
        context = makeContext()
        self.successResultOf(self.fetch(runtime, cluster, context))
        out = io.StringIO()
        AccessLog(True, out).record(context, 0.01)
        entry = json.loads(out.getvalue())
        self.assertEqual(entry["attempts"], 2)
        self.assertEqual(entry["targets_tried"], context.targetsTried)
        self.assertEqual(len(set(entry["targets_tried"])), 2)

    def test_postIsRetriedAfterAConnectFailure(self) -> None:
        """Nothing reached the backend, so a POST is replayed, body and all, on another target."""
        runtime, cluster, agent, clock = runtimeFor("    retries: {attempts: 2, backoff: 0s}")
        agent.script = ["refuse"]
        context = makeContext(b"POST", b"payload")
        response, _ = self.successResultOf(self.fetch(runtime, cluster, context))
        self.assertEqual(response.code, 200)
        self.assertEqual([(c.method, c.body) for c in agent.calls], [(b"POST", b"payload"), (b"POST", b"payload")])

    def test_postIsNotRetriedAfterA503(self) -> None:
        """The backend saw the POST: its 503 goes to the client and is not replayed."""
        runtime, cluster, agent, clock = runtimeFor("    retries: {attempts: 2, backoff: 0s, on: [connect_failure, 503]}")
        agent.script = [503]
        context = makeContext(b"POST", b"payload")
        response, _ = self.successResultOf(self.fetch(runtime, cluster, context))
        self.assertEqual(response.code, 503)
        self.assertFalse(response.discarded)
        self.assertEqual(len(agent.calls), 1)
        self.assertEqual(context.outcome, "status_503")

    def test_getIsRetriedAfterA503AndTheFirstBodyDiscarded(self) -> None:
        """A listed status is retried for an idempotent method; the failed response's body is drained."""
        runtime, cluster, agent, clock = runtimeFor("    retries: {attempts: 2, backoff: 0s, on: [503]}")
        agent.script = [503]
        context = makeContext(b"GET")
        response, _ = self.successResultOf(self.fetch(runtime, cluster, context))
        self.assertEqual(response.code, 200)
        self.assertTrue(agent.responses[0].discarded)
        self.assertEqual(len(set(agent.ports())), 2)
        self.assertEqual(cluster.endpoints[PORTS.index(agent.calls[0].port)].inFlight, 0)
        self.assertEqual(sum(e.inFlight for e in cluster.endpoints), 1)

    def test_unlistedStatusIsRelayed(self) -> None:
        """A 500 that is not in retries.on goes back to the client as it is."""
        runtime, cluster, agent, clock = runtimeFor("    retries: {attempts: 2, on: [503]}")
        agent.script = [500]
        response, _ = self.successResultOf(self.fetch(runtime, cluster, makeContext()))
        self.assertEqual(response.code, 500)
        self.assertEqual(len(agent.calls), 1)

    def test_givingUpAfterConnectFailuresIs502(self) -> None:
        """When every attempt fails to connect the client gets 502, after 1 + attempts tries."""
        runtime, cluster, agent, clock = runtimeFor("    retries: {attempts: 2, backoff: 0s}")
        for p in PORTS:
            agent.behaviour[p] = "refuse"
        failure = self.failureResultOf(self.fetch(runtime, cluster, makeContext()), UpstreamFailure)
        self.assertEqual((failure.value.status, failure.value.reason), (502, "connect_failure"))
        self.assertEqual(sorted(agent.ports()), [9001, 9002, 9003])
        self.assertEqual(self.metric(runtime, "txgateway_retries_total", upstream="u"), 2)

    def test_resetIsRetriedOnlyWhenListed(self) -> None:
        """A connection lost after sending is 'reset': 502 unless retries.on lists it."""
        runtime, cluster, agent, clock = runtimeFor("    retries: {attempts: 2, backoff: 0s, on: [connect_failure]}")
        agent.script = ["reset"]
        failure = self.failureResultOf(self.fetch(runtime, cluster, makeContext()), UpstreamFailure)
        self.assertEqual((failure.value.status, failure.value.reason), (502, "reset"))
        runtime, cluster, agent, clock = runtimeFor("    retries: {attempts: 2, backoff: 0s}")  # the default lists it
        agent.script = ["reset"]
        self.assertEqual(self.successResultOf(self.fetch(runtime, cluster, makeContext()))[0].code, 200)

    def test_retriesStopWhenTheBudgetIsSpent(self) -> None:
        """With no budget left a retryable failure is final."""
        runtime, cluster, agent, clock = runtimeFor(
            "    retries: {attempts: 2, backoff: 0s, budget: 0%, min_retries_per_second: 0}")
        agent.script = ["refuse"]
        self.failureResultOf(self.fetch(runtime, cluster, makeContext()), UpstreamFailure)
        self.assertEqual(len(agent.calls), 1)
        self.assertEqual(self.metric(runtime, "txgateway_retries_total", upstream="u"), 0)

    def test_backoffWaitsOnTheClock(self) -> None:
        """The next attempt starts only after the jittered backoff has passed."""
        runtime, cluster, agent, clock = runtimeFor("    retries: {attempts: 2, backoff: 1s, max_backoff: 1s}")
        agent.script = ["refuse"]
        d = self.fetch(runtime, cluster, makeContext())
        self.assertNoResult(d)
        self.assertEqual(len(agent.calls), 1)
        (call,) = clock.getDelayedCalls()
        self.assertTrue(0 <= call.getTime() <= 1.0)
        clock.advance(1.0)
        self.assertEqual(self.successResultOf(d)[0].code, 200)
        self.assertEqual(len(set(agent.ports())), 2)


class TimeoutTests(ForwarderCase):
    def test_responseTimeoutIs504AndCancelsTheRequest(self) -> None:
        """A backend that does not answer within timeouts.response costs a 504, and the attempt is cancelled."""
        runtime, cluster, agent, clock = runtimeFor("    retries: false")
        agent.script = ["hang"]
        d = self.fetch(runtime, cluster, makeContext())
        clock.advance(4.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        failure = self.failureResultOf(d, UpstreamFailure)
        self.assertEqual((failure.value.status, failure.value.reason), (504, "timeout"))
        self.assertTrue(agent.calls[0].cancelled)
        self.assertEqual(sum(e.inFlight for e in cluster.endpoints), 0)

    def test_timeoutIsRetriedWhenListed(self) -> None:
        """With timeout in retries.on, a hanging target costs one response timeout, then another target answers."""
        runtime, cluster, agent, clock = runtimeFor("    retries: {attempts: 2, backoff: 0s, on: [timeout]}")
        agent.script = ["hang"]
        d = self.fetch(runtime, cluster, makeContext())
        clock.advance(5)
        self.assertEqual(self.successResultOf(d)[0].code, 200)
        self.assertEqual(len(set(agent.ports())), 2)

    def test_totalTimeoutBoundsEveryAttemptTogether(self) -> None:
        """retries.total_timeout caps the sum: the last attempt gets only what is left, then 504."""
        runtime, cluster, agent, clock = runtimeFor(
            "    retries: {attempts: 5, backoff: 0s, on: [timeout], total_timeout: 7s}")
        for p in PORTS:
            agent.behaviour[p] = "hang"
        d = self.fetch(runtime, cluster, makeContext())
        clock.advance(5)
        self.assertEqual(len(set(agent.ports())), 2)
        clock.advance(1.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        failure = self.failureResultOf(d, UpstreamFailure)
        self.assertEqual(failure.value.status, 504)
        self.assertEqual(len(agent.calls), 2)
        self.assertTrue(all(c.cancelled for c in agent.calls))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_defaultTotalTimeoutAllowsEveryAttemptItsResponseTimeout(self) -> None:
        """Without total_timeout, the bound is timeouts.response x (attempts + 1)."""
        runtime, cluster, agent, clock = runtimeFor("    retries: {attempts: 2}")
        self.assertEqual(totalTimeout(cluster.config), 15.0)
        runtime, cluster, agent, clock = runtimeFor("    retries: {attempts: 2, total_timeout: 8s}")
        self.assertEqual(totalTimeout(cluster.config), 8.0)

    def test_backoffThatWouldPassTheDeadlineEndsTheRequest(self) -> None:
        """No retry is started when its pause alone would overrun the total deadline."""
        runtime, cluster, agent, clock = runtimeFor(
            "    retries: {attempts: 3, on: [timeout], backoff: 10s, max_backoff: 10s, total_timeout: 8s}")
        agent.script = ["hang"]
        # Random(0)'s first draw over [0, 10s] is ~8.4s, longer than the 3s left after the first timeout.
        cluster.retryPolicy.random = random.Random(0)  # type: ignore[union-attr]
        d = self.fetch(runtime, cluster, makeContext())
        clock.advance(5)
        self.assertEqual(self.failureResultOf(d, UpstreamFailure).value.status, 504)
        self.assertEqual(len(agent.calls), 1)


class CancellationTests(ForwarderCase):
    def test_clientGoneCancelsTheAttemptWithoutBlamingTheTarget(self) -> None:
        """Cancelling the fetch (the client left) cancels the Agent request; no retry, no breaker failure."""
        runtime, cluster, agent, clock = runtimeFor(
            "    retries: {attempts: 2, backoff: 0s, on: [connect_failure, reset, timeout]}\n"
            "    circuit_breaker: {failures: 1}")
        agent.script = ["hang"]
        context = makeContext()
        d = self.fetch(runtime, cluster, context)
        context.request.gone = True  # type: ignore[attr-defined]
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(agent.calls[0].cancelled)
        self.assertEqual(len(agent.calls), 1)
        self.assertEqual(sum(e.inFlight for e in cluster.endpoints), 0)
        self.assertEqual([e.breaker.state for e in cluster.endpoints], ["closed"] * 3)  # type: ignore[union-attr]
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_cancelDuringBackoffStartsNoFurtherAttempt(self) -> None:
        """A client that leaves while the gateway waits to retry ends the request there."""
        runtime, cluster, agent, clock = runtimeFor("    retries: {attempts: 2, backoff: 1s, max_backoff: 1s}")
        agent.script = ["refuse"]
        d = self.fetch(runtime, cluster, makeContext())
        d.cancel()
        self.failureResultOf(d, CancelledError)
        clock.advance(5)
        self.assertEqual(len(agent.calls), 1)

    def test_cancelledProbeGivesItsSlotBack(self) -> None:
        """A half-open probe whose client left frees the probe slot for the next request."""
        runtime, cluster, agent, clock = runtimeFor(
            "    retries: false\n    circuit_breaker: {failures: 1, open_for: 10s, half_open_probes: 1}", ports=(9001,))
        breaker = cluster.endpoints[0].breaker
        assert breaker is not None
        breaker.recordFailure()
        clock.advance(10)
        agent.behaviour[9001] = "hang"
        d = self.fetch(runtime, cluster, makeContext())
        self.failureResultOf(self.fetch(runtime, cluster, makeContext()), UpstreamFailure)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        agent.behaviour[9001] = 200
        self.assertEqual(self.relayed(self.fetch(runtime, cluster, makeContext()))[0].code, 200)
        self.assertEqual(breaker.state, "closed")


class BreakerInLoopTests(ForwarderCase):
    def test_breakerOpensAndTheTargetIsSkipped(self) -> None:
        """After `failures` failures the target's breaker opens and later requests go elsewhere without trying it."""
        runtime, cluster, agent, clock = runtimeFor(
            "    retries: {attempts: 2, backoff: 0s}\n    circuit_breaker: {failures: 2, open_for: 30s}")
        agent.behaviour[9001] = "refuse"
        for _ in range(6):
            self.assertEqual(self.successResultOf(self.fetch(runtime, cluster, makeContext()))[0].code, 200)
        self.assertEqual(agent.ports().count(9001), 2)
        self.assertEqual(cluster.endpoints[0].breaker.state, "open")  # type: ignore[union-attr]
        target = "http://127.0.0.1:9001"
        self.assertEqual(self.metric(runtime, "txgateway_circuit_state", upstream="u", target=target), 1)
        self.assertEqual(self.metric(runtime, "txgateway_circuit_transitions_total", upstream="u", target=target,
                                     to="open"), 1)

    def test_everyBreakerOpenIs503WithRetryAfterAtOnce(self) -> None:
        """With every target's breaker open, the request fails at once with 503 and the wait, no backend touched."""
        runtime, cluster, agent, clock = runtimeFor(
            "    retries: {attempts: 2, backoff: 0s}\n    circuit_breaker: {failures: 1, open_for: 30s}")
        for p in PORTS:
            agent.behaviour[p] = "refuse"
        self.failureResultOf(self.fetch(runtime, cluster, makeContext()), UpstreamFailure)
        self.assertEqual(len(agent.calls), 3)
        clock.advance(10)
        context = makeContext()
        failure = self.failureResultOf(self.fetch(runtime, cluster, context), UpstreamFailure)
        self.assertEqual(failure.value.status, 503)
        self.assertEqual(failure.value.retryAfter, 20.0)
        self.assertEqual(len(agent.calls), 3)
        self.assertEqual(context.attempts, 0)
        self.assertEqual(context.outcome, "no_target")

    def test_halfOpenProbeSuccessClosesAndMetricsFollow(self) -> None:
        """open -> half_open -> closed through real requests; the state gauge follows each step."""
        runtime, cluster, agent, clock = runtimeFor(
            "    retries: false\n    circuit_breaker: {failures: 1, open_for: 5s}", ports=(9001,))
        target = "http://127.0.0.1:9001"
        agent.behaviour[9001] = [503, 200]
        self.relayed(self.fetch(runtime, cluster, makeContext()))
        self.assertEqual(self.metric(runtime, "txgateway_circuit_state", upstream="u", target=target), 1)
        clock.advance(5)
        self.relayed(self.fetch(runtime, cluster, makeContext()))
        self.assertEqual(self.metric(runtime, "txgateway_circuit_state", upstream="u", target=target), 0)
        for to in ("open", "half_open", "closed"):
            self.assertEqual(self.metric(runtime, "txgateway_circuit_transitions_total", upstream="u",
                                         target=target, to=to), 1, to)

    def test_halfOpenProbesLimitedUnderConcurrency(self) -> None:
        """While half-open, only half_open_probes requests reach the target; the rest get 503 at once."""
        runtime, cluster, agent, clock = runtimeFor(
            "    retries: false\n    circuit_breaker: {failures: 1, open_for: 5s, half_open_probes: 2}",
            ports=(9001,))
        cluster.endpoints[0].breaker.recordFailure()  # type: ignore[union-attr]
        clock.advance(5)
        agent.behaviour[9001] = "hang"
        pending = [self.fetch(runtime, cluster, makeContext()) for _ in range(5)]
        self.assertEqual(len(agent.calls), 2)
        for d in pending[2:]:
            self.assertEqual(self.failureResultOf(d, UpstreamFailure).value.status, 503)
        for d in pending[:2]:
            self.assertNoResult(d)
        agent.calls[0].deferred.callback(FakeResponse(200))  # type: ignore[union-attr]
        agent.calls[1].deferred.callback(FakeResponse(200))  # type: ignore[union-attr]
        for d in pending[:2]:
            self.relayed(d)
        self.assertEqual(cluster.endpoints[0].breaker.state, "closed")  # type: ignore[union-attr]

    def test_retryFindingOnlyOpenBreakersReportsTheRealFailure(self) -> None:
        """When the retry has nowhere to go, the client learns what actually failed (502), not 'no target'."""
        runtime, cluster, agent, clock = runtimeFor(
            "    retries: {attempts: 2, backoff: 0s}\n    circuit_breaker: {failures: 1}", ports=(9001,))
        agent.behaviour[9001] = "refuse"
        failure = self.failureResultOf(self.fetch(runtime, cluster, makeContext()), UpstreamFailure)
        self.assertEqual((failure.value.status, failure.value.reason), (502, "connect_failure"))
        self.assertEqual(len(agent.calls), 1)


    def test_breakerStateSurvivesAReloadThatKeepsIt(self) -> None:
        """A reload with the same circuit_breaker keeps each target's breaker (and its open state); a new one resets it."""
        runtime, cluster, agent, clock = runtimeFor("    circuit_breaker: {failures: 1}")
        cluster.endpoints[0].breaker.recordFailure()  # type: ignore[union-attr]
        again = buildRuntime(runtime.config, reactor=clock, clock=clock, metrics=runtime.metrics, previous=runtime,
                             rng=random.Random(0), accessLog=AccessLog(False))
        self.assertIs(again.clusters["u"].endpoints[0].breaker, cluster.endpoints[0].breaker)
        self.assertEqual(again.clusters["u"].endpoints[0].breaker.state, "open")  # type: ignore[union-attr]
        changed, _, _, _ = runtimeFor("    circuit_breaker: {failures: 2}")
        third = buildRuntime(changed.config, reactor=clock, clock=clock, metrics=runtime.metrics, previous=again,
                             rng=random.Random(0), accessLog=AccessLog(False))
        self.assertEqual(third.clusters["u"].endpoints[0].breaker.state, "closed")  # type: ignore[union-attr]


class ChooseTests(SynchronousTestCase):
    def test_everyTargetAtItsCapIsNoTarget(self) -> None:
        """pool.max_per_target: a full target is skipped; all full means 503 at once, not a queue."""
        runtime, cluster, agent, clock = runtimeFor("    pool: {max_per_target: 2}")
        a, b, c = cluster.endpoints
        a.inFlight = b.inFlight = 2
        self.assertIs(chosen(cluster, makeContext()), c)
        c.inFlight = 2
        with self.assertRaises(NoTarget) as raised:
            chosen(cluster, makeContext())
        self.assertEqual(raised.exception.retryAfter, 0.0)

    def test_retryPrefersAnUntriedTarget(self) -> None:
        """A retry goes to a target not tried yet when there is one."""
        runtime, cluster, agent, clock = runtimeFor()
        a, b, c = cluster.endpoints
        context = makeContext()
        for _ in range(5):
            self.assertIn(chosen(cluster, context, [a, b]), [c])

    def test_triedTargetIsUsedWhenTheUntriedOnesAreOpen(self) -> None:
        """A target already tried is better than none: open breakers elsewhere do not end the request."""
        runtime, cluster, agent, clock = runtimeFor("    circuit_breaker: {failures: 1}")
        a, b, c = cluster.endpoints
        b.breaker.recordFailure()  # type: ignore[union-attr]
        c.breaker.recordFailure()  # type: ignore[union-attr]
        self.assertIs(chosen(cluster, makeContext(), [a]), a)

    def test_triedTargetIsUsedWhenTheUntriedOnesAreProbing(self) -> None:
        """An untried half-open target with its probe slots taken falls back to a tried healthy one."""
        runtime, cluster, agent, clock = runtimeFor("    circuit_breaker: {failures: 1, open_for: 1s}", ports=(9001, 9002))
        a, b = cluster.endpoints
        b.breaker.recordFailure()  # type: ignore[union-attr]
        clock.advance(1)
        self.assertTrue(b.breaker.allow())  # type: ignore[union-attr]
        self.assertIs(chosen(cluster, makeContext(), [a]), a)

    def test_noTargetCarriesTheShortestWait(self) -> None:
        """Every breaker open: NoTarget says when the first one will let a probe through."""
        runtime, cluster, agent, clock = runtimeFor("    circuit_breaker: {failures: 1, open_for: 10s}")
        for i, e in enumerate(cluster.endpoints):
            e.breaker.recordFailure()  # type: ignore[union-attr]
            clock.advance(i + 1)
        with self.assertRaises(NoTarget) as raised:
            chosen(cluster, makeContext())
        self.assertEqual(raised.exception.retryAfter, 4.0)


class BodyReplayTests(SynchronousTestCase):
    def test_smallBodyIsReadFromTheStartEachTime(self) -> None:
        """Each producer sends the whole body, wherever the buffer's position was left."""
        request = FakeRequest(b"hello")
        request.content.read()
        self.assertEqual(readBody(bodyProducer(request)), b"hello")
        self.assertEqual(readBody(bodyProducer(request)), b"hello")

    def test_largeFileBodyIsReplayedAndNeverClosed(self) -> None:
        """A body the Site spooled to a temp file survives a finished or stopped attempt and is sent whole again."""
        body = bytes(range(256)) * 2048  # 512 KiB: above the in-memory threshold
        f = tempfile.TemporaryFile()  # noqa: SIM115 - closed by addCleanup
        self.addCleanup(f.close)
        f.write(body)
        request = FakeRequest(content=f)
        first = bodyProducer(request)
        assert first is not None
        self.assertEqual(first.length, len(body))
        # What FileBodyProducer does when it finishes or is stopped (a cancelled attempt).
        first._inputFile.close()  # type: ignore[attr-defined]
        self.assertFalse(f.closed)
        self.assertEqual(readBody(bodyProducer(request)), body)
        self.assertEqual(readBody(bodyProducer(request)), body)

    def test_largeBodyReachesTheRetry(self) -> None:
        """Through the attempt loop: a 512 KiB POST refused by one target arrives whole at the next."""
        runtime, cluster, agent, clock = runtimeFor("    retries: {attempts: 1, backoff: 0s}")
        body = b"z" * (512 * 1024)
        f = tempfile.TemporaryFile()  # noqa: SIM115 - closed by addCleanup
        self.addCleanup(f.close)
        f.write(body)
        agent.script = ["refuse"]
        context = makeContext(b"POST", content=f)
        self.successResultOf(ensureDeferred(runtime.forwarder.fetch(context, cluster)))  # type: ignore[arg-type]
        self.assertEqual([len(c.body) for c in agent.calls], [len(body), len(body)])


class ClassifyTests(SynchronousTestCase):
    def test_classify(self) -> None:
        """Each kind of failure maps to the retry condition it stands for."""
        cases = [
            (netError.ConnectionRefusedError(), "connect_failure"),
            (netError.TimeoutError(), "connect_failure"),  # connect timeout: nothing was sent
            (netError.DNSLookupError(), "connect_failure"),
            (DeferTimeout(), "timeout"),
            (ResponseNeverReceived([Failure(netError.ConnectionLost())]), "reset"),
            (ResponseFailed([Failure(netError.ConnectionDone())]), "reset"),
            (CancelledError(), "cancelled"),
            (netError.ConnectingCancelledError(None), "cancelled"),
            (ResponseNeverReceived([Failure(CancelledError())]), "cancelled"),
        ]
        for exc, expected in cases:
            self.assertEqual(classify(Failure(exc)), expected, repr(exc))

    def test_fakeAgentIsAnAgent(self) -> None:
        """The test double honours IAgent."""
        self.assertTrue(verifyObject(IAgent, FakeAgent()))

    def test_upstreamClientsAndForwardersHonourTheirInterfaces(self) -> None:
        """The HTTP/1.1 client is an IUpstreamClient (and an IAgent); a cluster's forwarder is an IForwarder."""
        clock = MemoryReactorClock()
        client = makeClient(clock, 4, 60.0, 1.0)
        self.assertTrue(verifyObject(IUpstreamClient, client))
        self.assertTrue(verifyObject(IAgent, client))
        self.successResultOf(client.close())
        runtime, cluster, agent, clock2 = runtimeFor()
        self.assertTrue(verifyObject(IForwarder, ClusterForwarder(runtime.forwarder, cluster)))


@implementer(IAgentEndpointFactory)
class _RecordingEndpoints:
    """Endpoints whose connections keep what the Agent writes."""

    def __init__(self) -> None:
        self.written: list[StringTransport] = []
        self.protocols: list[Any] = []
        self.asked: list[tuple[bytes, bytes, int]] = []

    def endpointForURI(self, uri: Any) -> Any:
        self.asked.append((uri.scheme, uri.host, uri.port))
        return self

    def connect(self, factory: Any) -> Deferred[Any]:
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        self.written.append(transport)
        self.protocols.append(proto)
        return succeed(proto)


class AgentTests(SynchronousTestCase):
    def _sent(self, agentClass: Any, url: bytes) -> bytes:
        endpoints = _RecordingEndpoints()
        agent = agentClass.usingEndpointFactory(MemoryReactorClock(), endpoints, pool=HTTPConnectionPool(
            MemoryReactorClock(), persistent=False))
        agent.request(b"GET", url, Headers({b"x-a": [b"1"]}))
        return endpoints.written[0].value()

    def test_sendsWhatTheStockAgentSends(self) -> None:
        """The forwarder's Agent puts the same bytes on the wire as Twisted's for every shape of URL."""
        urls = [b"http://127.0.0.1:9101/", b"http://127.0.0.1:9101/a/b", b"http://127.0.0.1:9101/a?x=1&y=%2F",
                b"http://127.0.0.1:9101/a;p=1?q", b"http://127.0.0.1:9101/a?", b"http://backend.example/a/",
                b"http://[::1]:8080/v6?x", b"http://127.0.0.1:9101/a%3Bb?c?d"]
        for url in urls:
            self.assertEqual(self._sent(UpstreamAgent, url), self._sent(Agent, url), url)

    def test_pooledConnectionGetsWhatTheStockAgentSends(self) -> None:
        """A request sent straight on an idle pooled connection carries the stock Agent's bytes, and reuses it."""
        endpoints = _RecordingEndpoints()
        clock = MemoryReactorClock()
        pool = ConnectionPool(clock, persistent=True)
        pool.retryAutomatically = False
        agent = UpstreamAgent.usingEndpointFactory(clock, endpoints, pool=pool)
        for url in (b"http://127.0.0.1:9101/a?x=1", b"http://127.0.0.1:9101/b/c"):
            d = agent.request(b"GET", url, Headers({b"x-a": [b"1"], b"host": [b"h.example"]}))
            [transport] = endpoints.written
            sent = transport.value()
            transport.clear()
            stock = self._sentWith(url, {b"x-a": [b"1"], b"host": [b"h.example"]})
            self.assertEqual(sent, stock.replace(b"Connection: close\r\n", b""), url)
            endpoints.protocols[0].dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            self.assertEqual(self.successResultOf(d).code, 200)
        self.assertEqual(len(endpoints.written), 1)

    def _sentWith(self, url: bytes, headers: dict[bytes, list[bytes]]) -> bytes:
        endpoints = _RecordingEndpoints()
        agent = Agent.usingEndpointFactory(MemoryReactorClock(), endpoints, pool=HTTPConnectionPool(
            MemoryReactorClock(), persistent=False))
        agent.request(b"GET", url, Headers(headers))
        return endpoints.written[0].value()

    def test_parsesEachTargetOnce(self) -> None:
        """The endpoint of a target prefix is looked up once, then reused."""
        endpoints = _RecordingEndpoints()
        clock = MemoryReactorClock()
        agent = UpstreamAgent.usingEndpointFactory(clock, endpoints, pool=HTTPConnectionPool(clock, persistent=False))
        for path in (b"/a", b"/b?x=1", b"/c"):
            agent.request(b"GET", b"http://127.0.0.1:9101" + path)
        agent.request(b"GET", b"http://127.0.0.1:9102/a")
        self.assertEqual(endpoints.asked, [(b"http", b"127.0.0.1", 9101), (b"http", b"127.0.0.1", 9102)])
        self.assertEqual(len(endpoints.written), 4)

    def test_invalidURLFailsAsWithTheStockAgent(self) -> None:
        """A URL Twisted refuses is refused the same way."""
        endpoints = _RecordingEndpoints()
        clock = MemoryReactorClock()
        agent = UpstreamAgent.usingEndpointFactory(clock, endpoints, pool=HTTPConnectionPool(clock, persistent=False))
        with self.assertRaises(ValueError):
            agent.request(b"GET", b"http://127.0.0.1:9101/a\x01b")


class BodyResetTests(ForwarderCase):
    """A target that resets partway through a body fails (issue 18): the breaker and passive health hear it."""

    def forwardOnce(self, runtime: Runtime, cluster: Cluster) -> tuple[RequestContext, Any]:
        """One request through the forward sequence, to a real twisted.web request on a dummy channel."""
        channel = DummyChannel()
        aborted: list[bool] = []
        channel.transport.abortConnection = lambda: aborted.append(True)  # type: ignore[attr-defined]
        request = GatewayRequest(channel)
        request.method = b"GET"
        request.uri = b"/x"
        request.clientproto = b"HTTP/1.1"
        request.content = io.BytesIO()
        request.requestHeaders.setRawHeaders(b"host", [b"gw.example"])
        context = RequestContext(request, 0.0, "rid", "10.0.0.1", "10.0.0.1", b"GET", "gw.example", "/x", None)
        self.successResultOf(ensureDeferred(forward(context, ClusterForwarder(runtime.forwarder, cluster),
                                                    runtime.messages)))
        return context, aborted

    def test_bodyResetOpensTheBreakerAndIsCounted(self) -> None:
        """Each broken body is a failure of its target: the breaker opens, the metric and the outcome say body_reset."""
        runtime, cluster, agent, clock = runtimeFor(
            "    retries: false\n    circuit_breaker: {failures: 2, open_for: 30s}", ports=(9001, 9002))
        agent.behaviour[9001] = "body_reset"
        broken = []
        for _ in range(6):
            context, aborted = self.forwardOnce(runtime, cluster)
            if context.target == "http://127.0.0.1:9001":
                broken.append(context)
                self.assertEqual(context.outcome, "body_reset")
                self.assertEqual(aborted, [True], "the client connection is cut: its response is truncated")
            else:
                self.assertIsNone(context.outcome)
                self.assertEqual(aborted, [])
        self.assertEqual(len(broken), 2)
        self.assertEqual(cluster.endpoints[0].breaker.state, "open")  # type: ignore[union-attr]
        self.assertEqual(self.metric(runtime, "txgateway_upstream_requests_total", upstream="u",
                                     target="http://127.0.0.1:9001", status="body_reset"), 2)
        self.assertEqual(self.metric(runtime, "txgateway_upstream_requests_total", upstream="u",
                                     target="http://127.0.0.1:9002", status="200"), 4)
        self.assertEqual([e.inFlight for e in cluster.endpoints], [0, 0])

    def test_bodyResetEjectsThroughPassiveHealth(self) -> None:
        """Passive health counts broken bodies as errors and ejects the target."""
        runtime, cluster, agent, clock = runtimeFor(
            "    retries: false\n"
            "    health: {passive: {window: 10s, min_requests: 3, max_error_rate: 0.5, eject_for: 30s}}",
            ports=(9001, 9002))
        agent.behaviour[9001] = "body_reset"
        for _ in range(8):
            self.forwardOnce(runtime, cluster)
        self.assertGreater(cluster.endpoints[0].ejectedUntil, clock.seconds())
        before = agent.ports().count(9001)
        for _ in range(4):
            self.forwardOnce(runtime, cluster)
        self.assertEqual(agent.ports().count(9001), before, "an ejected target gets no traffic")

    def test_clientGoneMidBodyIsNoVerdict(self) -> None:
        """A client that leaves partway is not the target's failure: nothing recorded, the slot freed."""
        runtime, cluster, agent, clock = runtimeFor("    retries: false\n    circuit_breaker: {failures: 1}",
                                                    ports=(9001,))
        context = makeContext()
        lease = self.successResultOf(ensureDeferred(runtime.forwarder.fetch(context, cluster)))  # type: ignore[arg-type]
        lease.finish(False, clientGone=True)
        lease.finish(False)  # a second end changes nothing
        self.assertEqual(cluster.endpoints[0].breaker.state, "closed")  # type: ignore[union-attr]
        self.assertEqual(cluster.endpoints[0].inFlight, 0)
        self.assertEqual(self.metric(runtime, "txgateway_upstream_requests_total", upstream="u",
                                     target="http://127.0.0.1:9001", status="body_reset"), 0)

