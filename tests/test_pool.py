"""
The upstream connection pool: idle connections close after pool.idle_timeout,
swept by one timer, whatever the traffic that came before.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txgateway.http.proxy import _Pool

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
        self.pool = _Pool(self.clock)
        self.pool.cachedConnectionTimeout = 90  # type: ignore[assignment]
        self.pool.retryAutomatically = False
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
