"""
The Redis client (txgateway.stores): RESP2 encoding and parsing, the
pipelined protocol and its watchdog, and the reconnecting client's backoff,
states, logging and Sentinel discovery, all in memory with a Clock.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from txgateway.stores import (
    NoScript,
    RedisClient,
    RedisError,
    StoreUnavailable,
    describe,
    parseRedisURL,
)
from txgateway.stores.resp import INCOMPLETE, RedisProtocol, encodeCommand, parseReply


class _Transport(StringTransport):
    """A StringTransport whose abort/lose actually end the connection."""

    def __init__(self) -> None:
        super().__init__()
        self.protocol: Any = None
        self.aborted = False

    def loseConnection(self) -> None:
        super().loseConnection()
        self.end()

    def abortConnection(self) -> None:
        self.aborted = True
        self.end()

    def end(self) -> None:
        protocol, self.protocol = self.protocol, None
        if protocol is not None:
            protocol.connectionLost(Failure(ConnectionLost("closed")))


class _Conn:
    """One connection attempt the test decides the fate of."""

    def __init__(self, host: str, port: int, factory: Any) -> None:
        self.host = host
        self.port = port
        self.factory = factory
        self.result: Deferred[Any] = Deferred()
        self.transport = _Transport()
        self.protocol: Any = None

    def accept(self) -> _Conn:
        self.protocol = self.factory.buildProtocol(None)
        self.transport.protocol = self.protocol
        self.protocol.makeConnection(self.transport)
        self.result.callback(self.protocol)
        return self

    def refuse(self) -> None:
        self.result.errback(ConnectionRefusedError())

    def sent(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def reply(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def drop(self) -> None:
        self.transport.end()


@implementer(IStreamClientEndpoint)
class _Endpoint:
    def __init__(self, network: _Network, host: str, port: int) -> None:
        self.network = network
        self.host = host
        self.port = port

    def connect(self, factory: Factory) -> Deferred[Any]:
        conn = _Conn(self.host, self.port, factory)
        self.network.attempts.append(conn)
        return conn.result


class _Network:
    def __init__(self) -> None:
        self.attempts: list[_Conn] = []

    def endpointFor(self, host: str, port: int) -> _Endpoint:
        return _Endpoint(self, host, port)

    def last(self) -> _Conn:
        return self.attempts[-1]


def _client(url: str = "redis://127.0.0.1:6379/0", **kw: Any) -> tuple[RedisClient, _Network, Clock, list[Any]]:
    clock = Clock()
    network = _Network()
    events: list[dict[str, Any]] = []
    client = RedisClient(parseRedisURL(url), None, clock, timeout=0.25, connectTimeout=1.0,
                         rng=random.Random(7), endpointFor=network.endpointFor,
                         log=Logger(observer=events.append), **kw)
    return client, network, clock, events


def _levels(events: list[dict[str, Any]]) -> list[Any]:
    return [e["log_level"] for e in events if e["log_level"] != LogLevel.debug]


class RespTests(SynchronousTestCase):
    def test_encodeCommand(self) -> None:
        """Commands go out as arrays of bulk strings; numbers as their decimal text."""
        self.assertEqual(encodeCommand([b"SET", "k\u00e9", 5, 0.5]),
                         b"*4\r\n$3\r\nSET\r\n$3\r\nk\xc3\xa9\r\n$1\r\n5\r\n$3\r\n0.5\r\n")

    def test_parseEveryKind(self) -> None:
        """Simple strings, errors, integers, bulk strings, nil and nested arrays parse; partial input waits."""
        data = b"+OK\r\n-ERR bad\r\n:42\r\n$3\r\na\r\n\r\n$-1\r\n*2\r\n:1\r\n*1\r\n$0\r\n\r\n"
        out, pos = [], 0
        while pos < len(data):
            value, pos = parseReply(data, pos)
            out.append(value)
        self.assertEqual(out[0], b"OK")
        self.assertIsInstance(out[1], RedisError)
        self.assertEqual(out[2:], [42, b"a\r\n", None, [1, [b""]]])
        self.assertIs(parseReply(b"$5\r\nab", 0)[0], INCOMPLETE)
        self.assertIs(parseReply(b"*2\r\n:1\r\n", 0)[0], INCOMPLETE)
        self.assertIsInstance(parseReply(b"-NOSCRIPT No matching script\r\n", 0)[0], NoScript)


class ProtocolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.protocol = RedisProtocol(self.clock, liveness=1.0)
        self.transport = _Transport()
        self.transport.protocol = self.protocol
        self.protocol.makeConnection(self.transport)

    def test_pipelinedRepliesInOrder(self) -> None:
        """Replies arrive split anywhere and are matched to commands in order; errors fail their command."""
        a = self.protocol.execute(b"GET", b"a")
        b = self.protocol.execute(b"GET", b"b")
        c = self.protocol.execute(b"EVALSHA", b"x", 0)
        for chunk in (b"$1\r\n1", b"\r\n$1\r\n2\r\n-NOSCR", b"IPT gone\r\n"):
            self.protocol.dataReceived(chunk)
        self.assertEqual((self.successResultOf(a), self.successResultOf(b)), (b"1", b"2"))
        self.failureResultOf(c, NoScript)

    def test_lateReplyOfATimedOutCommandIsDropped(self) -> None:
        """A command that timed out keeps its place; its late reply does not reach the next command."""
        a = self.protocol.execute(b"GET", b"a").addTimeout(0.25, self.clock)
        self.clock.advance(0.25)
        self.failureResultOf(a, DeferredTimeout)
        b = self.protocol.execute(b"GET", b"b")
        self.protocol.dataReceived(b"$4\r\nlate\r\n$5\r\nfresh\r\n")
        self.assertEqual(self.successResultOf(b), b"fresh")

    def test_watchdogCutsAConnectionThatStopsAnswering(self) -> None:
        """When the oldest command has waited `liveness` seconds, the connection is aborted and all fail."""
        a = self.protocol.execute(b"PING")
        self.clock.advance(0.5)
        b = self.protocol.execute(b"PING")
        self.protocol.dataReceived(b"+PONG\r\n")
        self.successResultOf(a)
        self.clock.advance(0.9)
        self.assertNoResult(b)
        self.assertFalse(self.transport.aborted)
        self.clock.advance(0.1)
        self.assertTrue(self.transport.aborted)
        self.assertIn("no reply within 1s", str(self.failureResultOf(b, ConnectionLost).value))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_notConnectedFailsAtOnce(self) -> None:
        """A command on a closed connection fails with StoreUnavailable, no waiting."""
        self.transport.loseConnection()
        self.failureResultOf(self.protocol.execute(b"PING"), StoreUnavailable)


class ClientStateTests(SynchronousTestCase):
    def test_connectsWithHandshakeThenUp(self) -> None:
        """AUTH, SELECT and PING go out pipelined on connect; the state is up once they all answer."""
        client, net, clock, events = _client("redis://:s%40cret@127.0.0.1:6390/2")
        client.start()
        self.assertEqual(client.describe()["state"], "connecting")
        conn = net.last().accept()
        self.assertEqual(conn.sent(), encodeCommand([b"AUTH", b"s@cret"]) + encodeCommand([b"SELECT", 2])
                         + encodeCommand([b"PING"]))
        self.assertEqual(client.state, "connecting")
        conn.reply(b"+OK\r\n+OK\r\n+PONG\r\n")
        report = client.describe()
        self.assertEqual((report["state"], report["address"]), ("up", "127.0.0.1:6390"))
        d = client.get(b"k")
        self.assertEqual(conn.sent(), encodeCommand([b"GET", b"k"]))
        conn.reply(b"$1\r\nv\r\n")
        self.assertEqual(self.successResultOf(d), b"v")
        self.assertEqual(_levels(events), [LogLevel.info])
        self.successResultOf(client.stop())
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_commandsFailAtOnceWhileNotUp(self) -> None:
        """Before the first connection (or while down), commands fail at once: callers decide locally."""
        client, net, clock, _ = _client()
        client.start()
        self.failureResultOf(client.execute(b"PING"), StoreUnavailable)
        self.successResultOf(client.stop())

    def test_everyCommandHasATimeout(self) -> None:
        """A command on a live connection fails after stores.redis_timeout if Redis does not answer."""
        client, net, clock, _ = _client()
        client.start()
        conn = net.last().accept()
        conn.reply(b"+PONG\r\n")
        d = client.get(b"k")
        clock.advance(0.25)
        self.failureResultOf(d, DeferredTimeout)
        self.successResultOf(client.stop())

    def test_backoffIsJitteredDoublingAndCapped(self) -> None:
        """Failed attempts are retried after 0.25s doubling to 2s, each 50-100% of that, forever."""
        client, net, clock, events = _client()
        client.start()
        delays = []
        for _ in range(8):
            net.last().refuse()
            call = clock.getDelayedCalls()[0]
            delays.append(call.getTime() - clock.seconds())
            clock.advance(delays[-1])
        nominal = [0.25, 0.5, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0]
        for d, n in zip(delays, nominal, strict=True):
            self.assertTrue(n / 2 <= d <= n, (d, n))
        self.assertEqual(len(net.attempts), 9)
        self.assertEqual(client.state, "down")
        self.assertEqual(_levels(events), [LogLevel.warn])  # the outage is logged once
        self.successResultOf(client.stop())
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_stalledHandshakeIsCutAndRetried(self) -> None:
        """A Redis that accepts but never answers the handshake is cut after the connect timeout and retried."""
        client, net, clock, events = _client()
        client.start()
        first = net.last().accept()
        clock.advance(1.0)
        self.assertTrue(first.transport.aborted)
        self.assertEqual(client.state, "down")
        self.assertIn(client.describe()["error"], ("timed out", "no reply within 1s"))
        clock.advance(0.25)
        self.assertEqual(len(net.attempts), 2)  # reconnecting goes on (txredisapi's loop stopped here)
        second = net.last().accept()
        second.reply(b"+PONG\r\n")
        self.assertEqual(client.state, "up")
        self.assertEqual(_levels(events), [LogLevel.warn, LogLevel.info])
        self.successResultOf(client.stop())

    def test_stallWhileIdleIsNoticedByTheHeartbeat(self) -> None:
        """A quiet connection is PINGed; a stall then cuts it, down is logged once, and recovery once."""
        client, net, clock, events = _client()
        client.start()
        conn = net.last().accept()
        conn.reply(b"+PONG\r\n")
        conn.sent()
        upSince = client.since
        clock.advance(2.0)
        self.assertEqual(conn.sent(), encodeCommand([b"PING"]))
        clock.advance(1.0)  # no PONG within the liveness limit
        self.assertTrue(conn.transport.aborted)
        report = client.describe()
        self.assertEqual(report["state"], "down")
        self.assertIn("no reply within 1s", report["error"])
        self.assertGreater(client.since, upSince)
        for _ in range(5):  # stalled: every attempt's handshake times out
            clock.advance(clock.getDelayedCalls()[0].getTime() - clock.seconds())
            net.last().accept()
            clock.advance(1.0)
        clock.advance(clock.getDelayedCalls()[0].getTime() - clock.seconds())
        net.last().accept().reply(b"+PONG\r\n")  # thawed
        self.assertEqual(client.state, "up")
        self.assertEqual(_levels(events), [LogLevel.info, LogLevel.warn, LogLevel.info])
        self.assertIn("is back after", events[-1]["log_format"])
        self.successResultOf(client.stop())
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_lostConnectionReconnectsQuickly(self) -> None:
        """A connection dropped (Redis killed) is retried after the initial delay, and is up again."""
        client, net, clock, _ = _client()
        client.start()
        net.last().accept().reply(b"+PONG\r\n")
        net.last().drop()
        self.assertEqual(client.state, "down")
        clock.advance(0.25)
        net.last().accept().reply(b"+PONG\r\n")
        self.assertEqual(client.state, "up")
        self.successResultOf(client.stop())

    def test_stopDuringAnAttempt(self) -> None:
        """stop() while connecting cancels the attempt and leaves no timer."""
        client, net, clock, _ = _client()
        client.start()
        d = client.stop()
        self.successResultOf(d)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(client.state, "connecting")

    def test_describeForHealth(self) -> None:
        """describe() is {} without Redis and names state, since and address (no password) with it."""
        self.assertEqual(describe(None), {})
        client, _, _, _ = _client("redis://:pw@127.0.0.1:6390/0")
        report = describe(client)["redis"]
        self.assertEqual(report, {"state": "connecting", "since": "1970-01-01T00:00:00Z", "address": "127.0.0.1:6390"})
        self.assertNotIn("pw", str(report))


class SentinelTests(SynchronousTestCase):
    URL = "redis+sentinel://:pw@127.0.0.1:26379,127.0.0.1:26380/mymaster/1"

    def test_asksTheSentinelsThenChecksRole(self) -> None:
        """The first sentinel that answers names the primary; its ROLE must be master."""
        client, net, clock, _ = _client(self.URL)
        client.start()
        net.last().refuse()  # the first sentinel is down: the next one is asked
        s2 = net.last()
        self.assertEqual((s2.host, s2.port), ("127.0.0.1", 26380))
        s2.accept()
        self.assertEqual(s2.sent(), encodeCommand([b"SENTINEL", b"get-master-addr-by-name", b"mymaster"]))
        s2.reply(b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6391\r\n")
        primary = net.last()
        self.assertEqual((primary.host, primary.port), ("127.0.0.1", 6391))
        primary.accept()
        self.assertEqual(primary.sent(), encodeCommand([b"AUTH", b"pw"]) + encodeCommand([b"SELECT", 1])
                         + encodeCommand([b"ROLE"]))
        primary.reply(b"+OK\r\n+OK\r\n*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n")
        self.assertEqual(client.state, "up")
        report = client.describe()
        self.assertEqual(report["address"], "127.0.0.1:6391")
        self.assertEqual(report["sentinel"]["sentinels"][0], "127.0.0.1:26380")  # the one that answered goes first
        self.successResultOf(client.stop())

    def test_aReplicaIsRefusedAndTheSentinelsAskedAgain(self) -> None:
        """Connected to a replica (failover under way): not up; the next attempt asks the sentinels again."""
        client, net, clock, _ = _client(self.URL.replace(":pw@", ""))
        client.start()
        net.last().accept().reply(b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6391\r\n")
        net.last().accept().reply(b"+OK\r\n*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:6392\r\n$9\r\nconnected\r\n:1\r\n")
        self.assertEqual(client.state, "down")
        self.assertIn("not the primary", client.describe()["error"])
        clock.advance(0.25)
        sentinel = net.last()
        self.assertEqual(sentinel.port, 26379)
        sentinel.accept().reply(b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6392\r\n")
        net.last().accept().reply(b"+OK\r\n*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n")
        self.assertEqual((client.state, client.current), ("up", "127.0.0.1:6392"))
        self.successResultOf(client.stop())

    def test_readOnlyCutsTheConnection(self) -> None:
        """A demoted primary answering READONLY is left at once, to find the new primary."""
        client, net, clock, _ = _client(self.URL.replace(":pw@", ""))
        client.start()
        net.last().accept().reply(b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6391\r\n")
        primary = net.last().accept()
        primary.reply(b"+OK\r\n*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n")
        d = client.set(b"k", b"v", expire=5)
        primary.reply(b"-READONLY You can't write against a read only replica.\r\n")
        self.failureResultOf(d, RedisError)
        self.assertTrue(primary.transport.aborted)
        self.assertEqual(client.state, "down")
        self.successResultOf(client.stop())


class AddressTests(SynchronousTestCase):
    def test_forms(self) -> None:
        """Every form of stores.redis parses; errors say what is wrong."""
        a = parseRedisURL("redis+sentinel://u:p%2Fw@h1,[::1]:26380/mymaster/3")
        self.assertEqual((a.sentinels, a.primaryName, a.db, a.username, a.password),
                         ((("h1", 26379), ("::1", 26380)), "mymaster", 3, "u", "p/w"))
        self.assertEqual(parseRedisURL("rediss://r.example:6380/1").tls, True)
        self.assertEqual(parseRedisURL("unix:///run/redis.sock?db=4").db, 4)
        for bad in ("redis+sentinel://h1:26379/", "redis+sentinel://h1:x/m", "redis://", "http://h/", "redis://h/x"):
            self.assertRaises(ValueError, parseRedisURL, bad)


class StatusTests(SynchronousTestCase):
    def test_healthReportAndStatusPageShowTheStore(self) -> None:
        """/health's report has stores.redis with the client's state; the status page renders it."""
        from txgateway.admin import renderBody
        from txgateway.building import buildRuntime
        from txgateway.config import parseConfig
        from txgateway.observe import Metrics

        config = parseConfig("""\
stores: {redis: "redis://127.0.0.1:6390/0"}
upstreams:
  app:
    targets: [http://127.0.0.1:9]
routes:
  - name: api
    match: {path_prefix: /}
    upstream: app
""")
        client, net, clock, _ = _client("redis://127.0.0.1:6390/0")
        runtime = buildRuntime(config, reactor=clock, clock=clock, metrics=Metrics(processMetrics=False),
                               redis=client)
        code, report = runtime.healthReport()
        self.assertEqual((code, report["stores"]["redis"]["state"]), (200, "connecting"))
        client.start()
        net.last().refuse()
        code, report = runtime.healthReport()
        self.assertEqual((code, report["status"]), (200, "ok"))  # Redis down is shown, not unhealthy
        self.assertEqual(report["stores"]["redis"]["state"], "down")
        page = renderBody({"gateway": {"health": "ok", "ready": True, "draining": False, "in_flight": 0,
                                       "active_connections": 0, "uptime_s": 1, "window_s": 1, "version": "x"},
                           "upstreams": [], "routes": [], "reloads": [], "stores": report["stores"]})
        self.assertIn('data-store="redis"', page)
        self.assertIn("store-down", page)
        self.successResultOf(client.stop())
        config2 = parseConfig("""\
upstreams:
  app:
    targets: [http://127.0.0.1:9]
routes:
  - name: api
    match: {path_prefix: /}
    upstream: app
""")
        plain = buildRuntime(config2, reactor=clock, clock=clock, metrics=Metrics(processMetrics=False))
        self.assertEqual(plain.healthReport()[1]["stores"], {})
