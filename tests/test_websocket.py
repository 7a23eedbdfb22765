"""
WebSocket proxying's parts without a gateway around them: the route keys,
the frame tracker and close frames, the caps and the drain, and one splice
over StringTransports on a Clock.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from txgateway.config import ConfigError, parseConfig
from txgateway.config.schema_websocket import WebSocketSpec
from txgateway.observe import Metrics
from txgateway.websocket.frames import GOING_AWAY, INTERNAL_ERROR, NO_STATUS, FrameTracker, closeFrame
from txgateway.websocket.registry import Refusal, Slot, WebSocketRegistry
from txgateway.websocket.splice import Splice

from .wssupport import closeCodeOf, frame

ROUTE = """\
upstreams:
  app: {{targets: [http://127.0.0.1:9999]}}
routes:
  - name: live
    match: {{path_prefix: /}}
    upstream: app
{keys}
"""


class ConfigTests(SynchronousTestCase):
    def route(self, keys: str) -> WebSocketSpec:
        return parseConfig(ROUTE.format(keys=keys)).routes[0].websocket

    def test_offByDefault(self) -> None:
        """A route proxies no WebSocket unless it says so; the idle timeout is 5 minutes, no caps."""
        self.assertEqual(self.route(""), WebSocketSpec(False, 300.0, None, None))

    def test_keys(self) -> None:
        spec = self.route("    websocket: true\n    websocket_idle_timeout: 30s\n    max_websockets: 100\n"
                          "    max_websockets_per_ip: 5\n")
        self.assertEqual(spec, WebSocketSpec(True, 30.0, 100, 5))

    def test_limitsWithoutWebsocketAreAMistake(self) -> None:
        """Caps on a route that proxies no WebSocket would limit nothing: the key and line are named."""
        with self.assertRaises(ConfigError) as cm:
            self.route("    max_websockets: 10\n")
        text = str(cm.exception)
        self.assertIn("routes[0](live).max_websockets", text)
        self.assertIn("needs websocket: true", text)

    def test_oneUpstreamOnly(self) -> None:
        """A split or a route answering itself has no single upstream to upgrade to: refused at load."""
        text = ROUTE.format(keys="    websocket: true\n    respond: {status: 200, body: hi}\n")
        with self.assertRaises(ConfigError) as cm:
            parseConfig(text)
        self.assertIn("routes[0](live).websocket: cannot be combined with respond", str(cm.exception))

    def test_walkthroughConfigLoads(self) -> None:
        """docs/websocket.md's config is one the gateway accepts, with the values it says."""
        doc = (Path(__file__).parent.parent / "docs" / "websocket.md").read_text()
        snippet = re.search(r"```yaml\n(.*?)```", doc, re.S)
        assert snippet is not None
        route = parseConfig(snippet.group(1)).routes[0]
        self.assertEqual(route.websocket, WebSocketSpec(True, 600.0, 2000, 20))
        self.assertIsNotNone(route.cors)

    def test_badValues(self) -> None:
        with self.assertRaises(ConfigError) as cm:
            self.route("    websocket: yes please\n    websocket_idle_timeout: 0s\n    max_websockets: 0\n")
        text = str(cm.exception)
        for key in ("websocket", "websocket_idle_timeout", "max_websockets"):
            self.assertIn(f"routes[0](live).{key}", text)


class FrameTests(SynchronousTestCase):
    def test_closeFrames(self) -> None:
        """The gateway's close frames: unmasked to a client, masked to a target, the code readable either way."""
        plain = closeFrame(GOING_AWAY, masked=False)
        self.assertEqual(plain, b"\x88\x02\x03\xe9")
        masked = closeFrame(INTERNAL_ERROR, masked=True)
        self.assertEqual((len(masked), masked[1] & 0x80), (8, 0x80))
        self.assertEqual(closeCodeOf(masked), INTERNAL_ERROR)

    def test_trackerFollowsFramesSplitAnywhere(self) -> None:
        """Fed in pieces of any size, the tracker knows where frames start and reads a masked close code."""
        stream = (frame(1, b"hello", b"abcd") + frame(2, b"x" * 300, b"wxyz") + frame(2, b"y" * 70000, b"mask")
                  + frame(9, b"", b"pppp") + frame(8, struct.pack("!H", 4001) + b"bye", b"\x01\x02\x03\x04"))
        ends = set()
        pos = 0
        for f in (frame(1, b"hello", b"abcd"), frame(2, b"x" * 300, b"wxyz"), frame(2, b"y" * 70000, b"mask"),
                  frame(9, b"", b"pppp")):
            pos += len(f)
            ends.add(pos)
        for step in (1, 3, 7, 64, 100000):
            tracker = FrameTracker()
            fed = 0
            for i in range(0, len(stream), step):
                piece = stream[i:i + step]
                tracker.feed(piece)
                fed += len(piece)
                if fed in ends:
                    self.assertTrue(tracker.atBoundary, (step, fed))
                elif fed < len(stream) and step == 1 and fed - 1 in ends:
                    self.assertFalse(tracker.atBoundary)
            self.assertEqual(tracker.closeCode, 4001, step)
            self.assertTrue(tracker.atBoundary)

    def test_feedStopsAtTheNextBoundary(self) -> None:
        """What may still pass before a close frame: the rest of the frame in flight, nothing of the next."""
        first, second = frame(2, b"a" * 10, b"abcd"), frame(1, b"b")
        tracker = FrameTracker()
        tracker.feed(first[:7])
        self.assertEqual(tracker.feed(first[7:] + second, stop=True), len(first) - 7)
        self.assertTrue(tracker.atBoundary)
        self.assertEqual(tracker.feed(second, stop=True), 0)

    def test_closeWithoutCode(self) -> None:
        tracker = FrameTracker()
        tracker.feed(frame(8, b""))
        self.assertEqual(tracker.closeCode, NO_STATUS)

    def test_impossibleLength(self) -> None:
        """A 64-bit length with the top bit set is no WebSocket: the tracker stops and never allows an injection."""
        tracker = FrameTracker()
        tracker.feed(b"\x82\x7f" + b"\xff" * 8)
        self.assertTrue(tracker.broken)
        self.assertFalse(tracker.atBoundary)


class RegistryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = Metrics(processMetrics=False)
        self.registry = WebSocketRegistry(self.clock, self.metrics)

    def gauge(self, route: str) -> float:
        value = self.metrics.registry.get_sample_value("txgateway_websocket_connections", {"route": route})
        return value or 0.0

    def test_routeCap503ClientCap429(self) -> None:
        spec = WebSocketSpec(True, 300.0, 3, 2)
        a1 = self.registry.admit("r", "10.0.0.1", spec)
        a2 = self.registry.admit("r", "10.0.0.1", spec)
        third = self.registry.admit("r", "10.0.0.1", spec)
        assert isinstance(third, Refusal)
        self.assertEqual((third.status, third.outcome), (429, "refused_client_limit"))
        b1 = self.registry.admit("r", "10.0.0.2", spec)
        self.assertIsInstance(b1, Slot)
        full = self.registry.admit("r", "10.0.0.3", spec)
        assert isinstance(full, Refusal)
        self.assertEqual((full.status, full.outcome), (503, "refused_route_limit"))
        self.assertIsInstance(self.registry.admit("other", "10.0.0.3", spec), Slot)  # caps are per route
        assert isinstance(a1, Slot) and isinstance(a2, Slot)
        a1.release()
        a1.release()  # once only
        self.assertIsInstance(self.registry.admit("r", "10.0.0.3", spec), Slot)

    def test_openedCountsInTheGauge(self) -> None:
        slot = self.registry.admit("r", "10.0.0.1", WebSocketSpec(True))
        assert isinstance(slot, Slot)
        self.registry.opened(slot, object())  # type: ignore[arg-type]
        self.assertEqual(self.gauge("r"), 1)
        slot.release()
        self.assertEqual(self.gauge("r"), 0)

    def test_drainRefusesAndClosesBeforeTheDeadline(self) -> None:
        """A drain refuses new upgrades (503) and closes open ones a second before its deadline."""
        closed: list[str] = []

        class FakeSplice:
            def goingAway(self) -> None:
                closed.append("1001")

        slot = self.registry.admit("r", "10.0.0.1", WebSocketSpec(True))
        assert isinstance(slot, Slot)
        self.registry.opened(slot, FakeSplice())  # type: ignore[arg-type]
        self.registry.drain(10.0)
        refused = self.registry.admit("r", "10.0.0.2", WebSocketSpec(True))
        assert isinstance(refused, Refusal)
        self.assertEqual(refused.status, 503)
        self.clock.advance(8.9)
        self.assertEqual(closed, [])
        self.clock.advance(0.2)
        self.assertEqual(closed, ["1001"])


class SpliceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.client = StringTransport()
        self.target = StringTransport()
        self.ended: list[Splice] = []
        self.counted = [0, 0]
        self.splice = Splice(self.target, self.clock, 60.0, self.ended.append,
                             lambda n: self.add(0, n), lambda n: self.add(1, n))
        self.splice.start(self.client)

    def add(self, i: int, n: int) -> None:
        self.counted[i] += n

    def test_bytesBothWaysAsTheyCome(self) -> None:
        message = frame(1, b"hi", b"abcd")
        self.splice.fromClient(message[:3])
        self.assertEqual(self.target.value(), message[:3])  # not held back for a whole frame
        self.splice.fromClient(message[3:])
        self.splice.fromTarget(frame(1, b"there"))
        self.assertEqual((self.target.value(), self.client.value()), (message, frame(1, b"there")))
        self.assertEqual(self.counted, [len(message), 7])

    def test_backpressureBothWays(self) -> None:
        """A client whose buffer is full pauses reading from the target, and the other way round."""
        self.client.producer.pauseProducing()
        self.assertEqual(self.target.producerState, "paused")
        self.client.producer.resumeProducing()
        self.assertEqual(self.target.producerState, "producing")
        self.target.producer.pauseProducing()
        self.assertEqual(self.client.producerState, "paused")

    def test_idleTimeoutSays1001ToBothSides(self) -> None:
        self.clock.advance(50)
        self.splice.fromClient(frame(1, b"ping", b"abcd"))
        self.client.clear()
        self.target.clear()
        self.clock.advance(59)
        self.assertEqual(self.splice.outcome, None)  # traffic 59 s ago
        self.clock.advance(1)
        self.assertEqual(self.splice.outcome, "websocket_idle_timeout")
        self.assertEqual(closeCodeOf(self.client.value()), GOING_AWAY)
        self.assertEqual(closeCodeOf(self.target.value()), GOING_AWAY)
        self.assertTrue(self.target.value()[1] & 0x80, "a client's frame to the target is masked")
        self.assertTrue(self.client.disconnecting and self.target.disconnecting)

    def test_targetDiesWithoutCloseFrame(self) -> None:
        """The client hears 1011 and the target is marked failing; a clean close would not."""
        self.splice.targetLost(Failure(ConnectionError("reset")))
        self.assertTrue(self.splice.targetFailed)
        self.assertEqual(closeCodeOf(self.client.value()), INTERNAL_ERROR)
        self.assertTrue(self.client.disconnecting)
        self.splice.clientLost(Failure(ConnectionError("closed")))
        self.assertEqual((self.splice.outcome, self.splice.closeCode), ("websocket_target_gone", INTERNAL_ERROR))
        self.assertEqual(self.ended, [self.splice])

    def test_cleanCloseIsPassedOn(self) -> None:
        self.splice.fromTarget(frame(8, struct.pack("!H", 1000)))
        self.splice.targetLost(Failure(ConnectionError("done")))
        self.assertFalse(self.splice.targetFailed)
        self.splice.clientLost(Failure(ConnectionError("done")))
        self.assertEqual((self.splice.outcome, self.splice.closeCode), ("websocket_closed", 1000))

    def test_closeFrameWaitsForTheFrameInFlight(self) -> None:
        """Half a frame has gone to the client: its rest passes, then the close frame; what follows is dropped."""
        whole = frame(2, b"z" * 1000)
        self.splice.fromTarget(whole[:500])
        self.client.clear()
        self.splice.goingAway()
        self.assertEqual(self.client.value(), b"")  # not inside the frame
        self.assertEqual(closeCodeOf(self.target.value()), GOING_AWAY)  # that side was between frames
        self.assertFalse(self.client.disconnecting)
        self.splice.fromTarget(whole[500:] + frame(1, b"after"))
        self.assertEqual(self.client.value(), whole[500:] + closeFrame(GOING_AWAY, masked=False))
        self.assertTrue(self.client.disconnecting and self.target.disconnecting)
        self.assertEqual(self.splice.bytesOut, len(whole))

    def test_frameNeverFinishedClosesWithoutCloseFrame(self) -> None:
        self.splice.fromClient(frame(2, b"q" * 100, b"abcd")[:50])
        self.splice.goingAway()
        self.assertFalse(self.target.disconnecting)
        self.clock.advance(1.0)
        self.assertTrue(self.client.disconnecting and self.target.disconnecting)
        self.assertEqual(len(self.target.value()), 50)  # no close frame after half a frame

    def test_firstCloseFrameIsTheOneLogged(self) -> None:
        self.splice.fromTarget(frame(8, struct.pack("!H", 4002)))
        self.splice.fromClient(frame(8, struct.pack("!H", 1000), b"abcd"))
        self.splice.clientLost(Failure(ConnectionError("done")))
        self.assertEqual(self.splice.closeCode, 4002)

    def test_clientLeavesClosesTarget(self) -> None:
        self.splice.clientLost(Failure(ConnectionError("gone")))
        self.assertEqual(self.splice.outcome, "websocket_client_gone")
        self.assertTrue(self.target.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])
