"""
The upstream connection pool: idle connections close after pool.idle_timeout,
swept by one timer, whatever the traffic that came before.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web._newclient import ResponseFailed, ResponseNeverReceived

from txgateway.http.client.pool import ConnectionPool

KEY = (b"http", b"127.0.0.1", 9000)


class _Transport:
    def __init__(self) -> None:
        self.closed = False

    def loseConnection(self) -> None:
        self.closed = True


class _Connection:
    """Stands for a pooled HTTP11ClientProtocol: a state and a transport."""

    def __init__(self) -> None:
        self.state = "QUIESCENT"
        self.transport = _Transport()


class _Endpoint:
    def __init__(self) -> None:
        self.made: list[_Connection] = []

    def connect(self, factory: Any) -> Any:
        c = _Connection()
        self.made.append(c)
        return succeed(c)


class IdleExpiry(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.pool = ConnectionPool(self.clock)
        self.pool.cachedConnectionTimeout = 90  # type: ignore[assignment]
        self.pool.retryAutomatically = False
        self.pool.replayStale = False  # hand out the pooled connections themselves, to compare them
        self.endpoint = _Endpoint()

    def take(self) -> Any:
        return self.successResultOf(self.pool.getConnection(KEY, self.endpoint))

    def test_idleConnectionClosesAfterTheTimeout(self) -> None:
        """A connection left idle is closed once idle_timeout has passed, not before, and is not handed out again."""
        c = self.take()
        self.pool._putConnection(KEY, c)
        self.clock.advance(89)
        self.assertFalse(c.transport.closed)
        self.clock.advance(1)
        self.assertTrue(c.transport.closed)
        self.assertIsNot(self.take(), c)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_reuseRestartsTheIdleTime(self) -> None:
        """A connection reused at 60 s and returned is idle from then: it closes at 150 s, not 90 s."""
        c = self.take()
        self.pool._putConnection(KEY, c)
        self.clock.advance(60)
        self.assertIs(self.take(), c)
        self.pool._putConnection(KEY, c)
        self.clock.advance(89)
        self.assertFalse(c.transport.closed)
        self.clock.advance(1)
        self.assertTrue(c.transport.closed)

    def test_eachIdleConnectionHasItsOwnDeadline(self) -> None:
        """Connections that went idle at different times close at different times, with one timer pending."""
        a, b = self.take(), self.take()
        self.pool._putConnection(KEY, a)
        self.clock.advance(30)
        self.pool._putConnection(KEY, b)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(60)
        self.assertEqual((a.transport.closed, b.transport.closed), (True, False))
        self.clock.advance(30)
        self.assertEqual((a.transport.closed, b.transport.closed), (True, True))

    def test_poolSizeCapClosesTheOldest(self) -> None:
        """Past maxPersistentPerHost idle connections, the oldest is closed at once."""
        self.pool.maxPersistentPerHost = 2
        a, b, c = self.take(), self.take(), self.take()
        for conn in (a, b, c):
            self.pool._putConnection(KEY, conn)
        self.assertEqual([x.transport.closed for x in (a, b, c)], [True, False, False])

    def test_deadConnectionsAreSkipped(self) -> None:
        """A pooled connection the backend closed meanwhile is not handed out."""
        c = self.take()
        self.pool._putConnection(KEY, c)
        c.state = "CONNECTION_LOST"
        self.assertIsNot(self.take(), c)

    def test_closingThePoolStopsTheTimer(self) -> None:
        """closeCachedConnections (the drain) leaves no timer behind."""
        c = self.take()
        c.abort = lambda: succeed(None)
        self.pool._putConnection(KEY, c)
        self.successResultOf(self.pool.closeCachedConnections())
        self.assertEqual(self.clock.getDelayedCalls(), [])


class Reuse(SynchronousTestCase):
    def test_sequentialRequestsReuseOnePooledConnectionPerTarget(self) -> None:
        """Keep-alive traffic through the real Agent opens one upstream connection per target, then reuses it."""
        from twisted.web.resource import Resource

        from txgateway.testing import GatewayFixture

        channels: list[Any] = []  # held, so that no two connections share an id

        class Origin(Resource):
            isLeaf = True

            def render(self, request: Any) -> bytes:
                channels.append(request.channel)  # one HTTP channel per upstream connection
                return b"ok"

        config = """
upstreams:
  app: {targets: [http://127.0.0.1:9101, http://127.0.0.1:9102], balancer: least_connections}
routes:
  - {name: api, match: {path_prefix: /api}, upstream: app}
"""
        origin = Origin()
        gw = GatewayFixture.fromYAML(config, origins={"http://127.0.0.1:9101": origin, "http://127.0.0.1:9102": origin})
        codes = [gw.request(b"GET", b"http://gw.example/api/x").code for _ in range(10)]
        self.assertEqual(codes, [200] * 10)
        self.assertLessEqual(len({id(c) for c in channels}), 2)  # the config's two targets


class _StaleConnection(_Connection):
    """A pooled connection the target closed while it sat idle: a request on it dies unanswered."""

    def __init__(self, reason: Exception) -> None:
        super().__init__()
        self.reason = reason
        self.requests: list[Any] = []

    def request(self, request: Any) -> Any:
        self.requests.append(request)
        return fail(self.reason)


class _FreshConnection(_Connection):
    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Any] = []

    def request(self, request: Any) -> Any:
        self.requests.append(request)
        return succeed("answered")


class _FreshEndpoint(_Endpoint):
    def connect(self, factory: Any) -> Any:
        c = _FreshConnection()
        self.made.append(c)
        return succeed(c)


class _Request:
    def __init__(self, method: bytes, bodyProducer: Any = None) -> None:
        self.method = method
        self.bodyProducer = bodyProducer


class StaleConnectionReplay(SynchronousTestCase):
    """
    A keep-alive connection the target closed while idle can cross the next
    request; a bodiless idempotent request then goes once more on a new
    connection instead of the client getting a 502 for nothing the target did.
    """

    def setUp(self) -> None:
        self.pool = ConnectionPool(Clock())
        self.pool.retryAutomatically = False
        self.endpoint = _FreshEndpoint()

    def send(self, request: _Request, reason: Exception | None = None) -> Any:
        stale = _StaleConnection(reason or ResponseNeverReceived([Failure(ConnectionDone())]))
        d = self.pool.reuse(stale, KEY, self.endpoint).request(request)  # type: ignore[arg-type]
        return stale, d

    def test_idempotentBodilessRequestGoesAgainOnANewConnection(self) -> None:
        """A GET that died unanswered on a reused connection is answered over a new one, sent there once."""
        request = _Request(b"GET")
        stale, d = self.send(request)
        self.assertEqual(self.successResultOf(d), "answered")
        self.assertEqual(stale.requests, [request])
        self.assertEqual([c.requests for c in self.endpoint.made], [[request]])

    def test_postIsNotSentTwice(self) -> None:
        """A POST may have been acted on: its failure stands, and no second connection is made."""
        _, d = self.send(_Request(b"POST"))
        self.failureResultOf(d, ResponseNeverReceived)
        self.assertEqual(self.endpoint.made, [])

    def test_requestWithABodyIsNotSentTwice(self) -> None:
        """A body already streamed cannot be streamed again from the client: no replay."""
        _, d = self.send(_Request(b"DELETE", bodyProducer=object()))
        self.failureResultOf(d, ResponseNeverReceived)
        self.assertEqual(self.endpoint.made, [])

    def test_clientCancellationIsNotReplayed(self) -> None:
        """A request the client went away from is not sent again."""
        _, d = self.send(_Request(b"GET"), ResponseNeverReceived([Failure(CancelledError())]))
        self.failureResultOf(d, ResponseNeverReceived)
        self.assertEqual(self.endpoint.made, [])

    def test_failureAfterAnAnswerBeganIsNotReplayed(self) -> None:
        """A response cut partway is the target's failure and the retry policy's business, not a replay."""
        _, d = self.send(_Request(b"GET"), ResponseFailed([Failure(ConnectionDone())]))
        self.failureResultOf(d, ResponseFailed)
        self.assertEqual(self.endpoint.made, [])
