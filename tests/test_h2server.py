"""
HTTP/2 to clients, at the wire: the h2 package as the client, the gateway's
Site on a C{StringTransport}, time on a C{MemoryReactorClock}.

Cleartext prior knowledge (C{server.h2c}) carries the frames here; the TLS
listener's ALPN choice is the same switch (see L{NegotiateTests}) and runs
for real in tests/e2e/test_http2.py.
"""

from __future__ import annotations

import inspect
import json

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import hpack
from hyperframe.frame import ContinuationFrame, HeadersFrame
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import _http2, http

from tests.h2support import H2Client, h2Wire, ok
from tests.support import BASE_CONFIG, Wire, get, parseResponses
from txgateway.http.channel import GatewayChannel
from txgateway.http.h2channel import GatewayH2Connection
from txgateway.http.h2stream import GatewayH2Stream
from txgateway.http.negotiate import NegotiatingProtocol


class ProxyTests(SynchronousTestCase):
    def test_h2cRequestIsProxied(self) -> None:
        """A prior-knowledge HTTP/2 GET is routed by :authority, proxied, and answered on its stream."""
        wire = h2Wire()
        wire.agent.autoRespond = ok(b"hello")
        client = H2Client(wire)
        self.assertIsInstance(client.proto, NegotiatingProtocol)
        sid = client.request(b"/a/b?x=1")
        head, body, _ = client.response(sid)
        self.assertEqual(head[b":status"], b"200")
        self.assertEqual(body, b"hello")
        self.assertTrue(client.ended(sid))
        sent = wire.agent.sent[0]
        self.assertEqual(sent.uri, b"http://127.0.0.1:9999/a/b?x=1")
        self.assertEqual(sent.header(b"x-forwarded-proto"), [b"http"])
        self.assertTrue(head.get(b"x-request-id"))

    def test_viaNamesHttp2(self) -> None:
        """
        The Via entry the gateway adds names the protocol it received each
        message in (RFC 9110 §7.6.3): 2 on the request from an HTTP/2
        client, 1.1 on the response from an HTTP/1.1 target.
        """
        wire = h2Wire()
        wire.agent.autoRespond = ok()
        client = H2Client(wire)
        sid = client.request(headers=[(b"via", b"1.1 edge")])
        self.assertEqual(wire.agent.sent[0].header(b"via"), [b"1.1 edge", b"2 txgateway"])
        self.assertEqual(client.response(sid)[0][b"via"], b"1.1 txgateway")

    def test_manyStreamsOnOneConnection(self) -> None:
        """Several requests share one connection, each answered on its own stream."""
        wire = h2Wire()
        wire.agent.autoRespond = ok(b"x")
        client = H2Client(wire)
        sids = [client.request(b"/n/%d" % i) for i in range(4)]
        for sid in sids:
            self.assertEqual(client.response(sid)[0][b":status"], b"200")
        self.assertEqual(len(wire.agent.sent), 4)
        self.assertEqual(len(wire.site.channels), 1)

    def test_requestBodyIsForwarded(self) -> None:
        """A POST body sent in DATA frames reaches the upstream whole."""
        wire = h2Wire()
        wire.agent.autoRespond = ok()
        client = H2Client(wire)
        sid = client.request(b"/up", b"POST", [(b"content-type", b"text/plain")], body=b"payload")
        self.assertEqual(client.response(sid)[0][b":status"], b"200")
        self.assertEqual(wire.agent.sent[0].body, b"payload")

    def test_trailersAreRelayed(self) -> None:
        """An upstream's trailers (grpc-status) reach the HTTP/2 client as the stream's last HEADERS."""
        wire = h2Wire()
        response = ok(b"\x00\x00\x00\x00\x00", [(b"Content-Type", b"application/grpc")])
        response.trailers = http.Headers({b"grpc-status": [b"0"], b"grpc-message": [b"fine"]})  # type: ignore[attr-defined]
        wire.agent.autoRespond = response
        client = H2Client(wire)
        sid = client.request(b"/svc/Method", b"POST", [(b"content-type", b"application/grpc"), (b"te", b"trailers")],
                             body=b"\x00\x00\x00\x00\x00")
        head, body, trailers = client.response(sid)
        self.assertEqual(head[b":status"], b"200")
        self.assertEqual(body, b"\x00\x00\x00\x00\x00")
        self.assertEqual(trailers, {b"grpc-status": b"0", b"grpc-message": b"fine"})
        self.assertTrue(client.ended(sid))

    def test_connectionSpecificResponseFieldsDropped(self) -> None:
        """RFC 9113 §8.2.2: an upstream's Connection or Keep-Alive never reaches an HTTP/2 client."""
        wire = h2Wire()
        wire.agent.autoRespond = ok(b"x", [(b"Keep-Alive", b"timeout=5"), (b"X-Kept", b"1")])
        client = H2Client(wire)
        head, _, _ = client.response(client.request())
        self.assertEqual(head[b":status"], b"200")
        self.assertNotIn(b"keep-alive", head)
        self.assertEqual(head[b"x-kept"], b"1")

    def test_http11StillServedOnH2cListener(self) -> None:
        """An HTTP/1.1 client on an h2c listener is served as before."""
        wire = h2Wire()
        responses, _ = wire.exchange(get(b"/plain"))
        self.assertEqual(responses[0].status, 200)


class RefusalTests(SynchronousTestCase):
    def test_invalidAuthorityIs400OnTheStream(self) -> None:
        """A request with an invalid :authority gets 400 on its stream; the connection stays usable."""
        wire = h2Wire()
        wire.agent.autoRespond = ok()
        client = H2Client(wire)
        sid = client.request(authority=b"bad host")
        head, body, _ = client.response(sid)
        self.assertEqual(head[b":status"], b"400")
        self.assertEqual(json.loads(body)["error"], "invalid :authority")
        self.assertEqual(wire.agent.sent, [])
        self.assertEqual(client.response(client.request())[0][b":status"], b"200")

    def test_hostDifferingFromAuthorityEndsTheConnection(self) -> None:
        """
        RFC 9113 §8.3.1: a Host that differs from :authority makes the
        request malformed, a stream error that §5.4.1 lets a server treat as
        a connection error; the h2 package does (GOAWAY PROTOCOL_ERROR) and
        the gateway keeps that: nothing is forwarded, whichever one a
        backend would have believed.  A Host equal to :authority is fine.
        """
        wire = h2Wire()
        wire.agent.autoRespond = ok()
        client = H2Client(wire)
        same = client.request(headers=[(b"host", b"example.com")])
        self.assertEqual(client.response(same)[0][b":status"], b"200")
        client.conn.config.validate_outbound_headers = False  # the h2 package would not send this
        client.request(headers=[(b"host", b"other.example")])
        goaway = client.goaway()
        assert goaway is not None
        self.assertEqual(goaway.error_code, h2.errors.ErrorCodes.PROTOCOL_ERROR)
        self.assertEqual(len(wire.agent.sent), 1)

    def test_contentLengthOverLimitIs413(self) -> None:
        """A declared body over max_request_body is refused 413 before it is read."""
        wire = h2Wire()
        client = H2Client(wire)
        sid = client.conn.get_next_available_stream_id()
        client.conn.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/"),
                                       (b":authority", b"example.com"), (b"content-length", b"5000")])
        client.flush()
        self.assertEqual(client.response(sid)[0][b":status"], b"413")
        self.assertEqual(client.reset(sid), h2.errors.ErrorCodes.NO_ERROR)
        self.assertEqual(wire.agent.sent, [])

    def test_bodyOverLimitIs413(self) -> None:
        """A body with no Content-Length is counted as it arrives: 413 once it passes the limit."""
        wire = h2Wire()
        wire.agent.autoRespond = ok()
        client = H2Client(wire)
        sid = client.conn.get_next_available_stream_id()
        client.conn.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/"),
                                       (b":authority", b"example.com")])
        client.conn.send_data(sid, b"x" * 1500)
        client.flush()
        self.assertEqual(client.response(sid)[0][b":status"], b"413")
        self.assertEqual(wire.agent.sent, [])
        self.assertEqual(client.response(client.request())[0][b":status"], b"200")


class HardeningTests(SynchronousTestCase):
    def test_settingsAdvertiseLimits(self) -> None:
        """The server's SETTINGS carry its stream cap and header-list size."""
        wire = h2Wire()
        client = H2Client(wire)
        changed = [e for e in client.events if isinstance(e, h2.events.RemoteSettingsChanged)][0]
        values = {k: v.new_value for k, v in changed.changed_settings.items()}
        self.assertEqual(values[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS], 5)
        self.assertEqual(values[h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE], 2048)

    def test_tooManyConcurrentStreamsEndsConnection(self) -> None:
        """A client that opens more streams than advertised gets GOAWAY."""
        wire = h2Wire()
        client = H2Client(wire)
        for sid in range(1, 13, 2):  # six streams, one over the five advertised
            client.headers(sid, [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                                 (b":authority", b"example.com")])
        self.assertIsNotNone(client.goaway())
        self.assertEqual(client.goaway().error_code, h2.errors.ErrorCodes.PROTOCOL_ERROR)
        self.assertTrue(client.transport.disconnecting)

    def test_rapidResetEndsConnection(self) -> None:
        """CVE-2023-44487: streams opened and reset faster than the allowance get GOAWAY ENHANCE_YOUR_CALM."""
        wire = h2Wire()
        client = H2Client(wire)
        for _ in range(25):
            sid = client.conn.get_next_available_stream_id()
            client.conn.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                                           (b":authority", b"example.com")], end_stream=True)
            client.conn.reset_stream(sid)
            client.flush()
            if client.goaway() is not None:
                break
        end = client.goaway()
        self.assertIsNotNone(end)
        self.assertEqual(end.error_code, h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertTrue(client.transport.disconnecting)

    def test_resetsWithinAllowanceAreFine(self) -> None:
        """A client that cancels a few streams now and then keeps its connection."""
        wire = h2Wire()
        wire.agent.autoRespond = ok()
        client = H2Client(wire)
        for _ in range(3):
            for _ in range(10):
                sid = client.conn.get_next_available_stream_id()
                client.conn.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                                               (b":authority", b"example.com")])
                client.conn.reset_stream(sid)
                client.flush()
            wire.clock.advance(4)
        self.assertIsNone(client.goaway())
        self.assertEqual(client.response(client.request())[0][b":status"], b"200")

    def test_hpackBombEndsConnection(self) -> None:
        """A header block that decodes past max_header_bytes (an HPACK bomb) gets GOAWAY."""
        wire = h2Wire()
        client = H2Client(wire)
        encoder = hpack.Encoder()
        block = encoder.encode([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                                (b":authority", b"example.com"), (b"x-bomb", b"b" * 1000)])
        # The same table entry referenced again and again: a few bytes each, 1 KB decoded each.
        index = encoder.header_table.search(b"x-bomb", b"b" * 1000)[0]  # type: ignore[index]
        block += bytes([0x80 | index]) * 50
        frame = HeadersFrame(1, block, flags=["END_HEADERS", "END_STREAM"])
        client.raw(frame.serialize())
        self.assertIsNotNone(client.goaway())
        self.assertTrue(client.transport.disconnecting)
        self.assertEqual(wire.agent.sent, [])

    def test_continuationFloodEndsConnection(self) -> None:
        """Endless CONTINUATION frames (no END_HEADERS) are cut off once past max_header_bytes."""
        wire = h2Wire()
        client = H2Client(wire)
        first = hpack.Encoder().encode([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                                        (b":authority", b"example.com")])
        client.raw(HeadersFrame(1, first).serialize())
        for _ in range(10):
            client.raw(ContinuationFrame(1, b"\x00" * 500).serialize())
            if client.transport.disconnecting:
                break
        self.assertTrue(client.transport.disconnecting)
        self.assertIsNotNone(client.goaway())

    def test_requestBudgetSendsGracefulGoaway(self) -> None:
        """After http2_max_requests_per_connection streams the client is told to move on; streams in flight finish."""
        wire = h2Wire(budget=2)
        client = H2Client(wire)
        first = client.request(b"/1")
        second = client.request(b"/2")
        end = client.goaway()
        self.assertIsNotNone(end)
        self.assertEqual(end.error_code, h2.errors.ErrorCodes.NO_ERROR)
        self.assertEqual(end.last_stream_id, second)
        self.assertFalse(client.transport.disconnecting)
        for d in wire.agent.sent:
            d.deferred.callback(ok())
        client.pump()
        self.assertEqual(client.response(first)[0][b":status"], b"200")
        self.assertEqual(client.response(second)[0][b":status"], b"200")
        self.assertTrue(client.transport.disconnecting)

    def test_headerTimeout(self) -> None:
        """A connection that sends the preface but no request within request_header is closed."""
        wire = h2Wire()
        client = H2Client(wire)
        wire.clock.advance(11)
        client.pump()
        self.assertTrue(client.transport.disconnecting)

    def test_idleTimeoutWaitsForOpenStreams(self) -> None:
        """The idle timeout does not cut a connection whose request is waiting on its upstream."""
        wire = h2Wire()
        client = H2Client(wire)
        sid = client.request()
        wire.clock.advance(6)
        client.pump()
        self.assertFalse(client.transport.disconnecting)
        wire.agent.sent[0].deferred.callback(ok())
        client.pump()
        self.assertEqual(client.response(sid)[0][b":status"], b"200")
        wire.clock.advance(6)
        client.pump()
        self.assertTrue(client.transport.disconnecting)

    def test_drainSendsGoaway(self) -> None:
        """The drain's persistent = False tells an HTTP/2 client to go away, gracefully."""
        wire = h2Wire()
        client = H2Client(wire)
        sid = client.request()
        for channel in list(wire.site.channels):
            channel.persistent = False
        client.pump()
        self.assertEqual(client.goaway().error_code, h2.errors.ErrorCodes.NO_ERROR)
        wire.agent.sent[0].deferred.callback(ok())
        client.pump()
        self.assertEqual(client.response(sid)[0][b":status"], b"200")
        self.assertTrue(client.transport.disconnecting)


class NegotiateTests(SynchronousTestCase):
    def test_plainTcpWithoutH2cHasNoNegotiation(self) -> None:
        """With server.h2c off, a tcp: listener builds the HTTP/1.1 channel with nothing in front."""
        wire = Wire()
        proto, _ = wire.connect()
        self.assertIsInstance(proto, GatewayChannel)
        self.assertEqual(wire.site.acceptableProtocols(), [b"h2", b"http/1.1"])

    def test_alpnH2SwitchesToHttp2(self) -> None:
        """A TLS transport that negotiated h2 gets the HTTP/2 connection; the Site counts one connection."""
        wire = h2Wire()
        proto = NegotiatingProtocol(wire.site.buildProtocol(IPv4Address("TCP", "192.0.2.10", 1)).channel,
                                    wire.site, tls=True)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.10", 1))
        transport.negotiatedProtocol = b"h2"  # type: ignore[attr-defined]
        proto.makeConnection(transport)
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        proto.dataReceived(client.data_to_send())
        self.assertIsInstance(proto.channel, GatewayH2Connection)
        self.assertEqual(list(wire.site.channels), [proto.channel])
        self.assertEqual(wire.site.perAddress, {"192.0.2.10": 1})

    def test_partialPrefaceWaits(self) -> None:
        """Bytes that could still be the preface are held until they tell; then HTTP/1.1 gets them all."""
        wire = h2Wire()
        wire.agent.autoRespond = ok()
        proto, transport = wire.connect()
        proto.dataReceived(b"P")
        self.assertEqual(transport.value(), b"")
        proto.dataReceived(b"OST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(parseResponses(transport.value())[0].status, 200)


class StockTwistedTests(SynchronousTestCase):
    def test_privateNamesStillThere(self) -> None:
        """The private Twisted names http/h2stream.py and http/h2channel.py rely on exist in this Twisted."""
        for name in ("_convertHeaders", "_request", "_send100Continue"):
            self.assertTrue(hasattr(GatewayH2Stream, name) or name == "_request", name)
        for name in ("_requestReceived", "_requestDataReceived", "_requestEnded", "_requestAborted",
                     "_terminate", "_tryToWriteControlData", "_requestDone", "_streamIsActive"):
            self.assertTrue(callable(getattr(_http2.H2Connection, name, None)), name)
        conn = _http2.H2Connection(Wire().clock)
        for name in ("streams", "_streamCleanupCallbacks", "_outboundStreamQueues", "priority", "_stillProducing",
                     "_reactor", "_consumerBlocked"):
            self.assertTrue(hasattr(conn, name), name)
        self.assertIn("self._producerProducing = False", inspect.getsource(_http2.H2Stream.__init__))
        state = h2.connection.H2Connection()
        self.assertIsInstance(state._data_to_send, bytearray)
        self.assertEqual(state.incoming_buffer._headers_buffer, [])


_unused = BASE_CONFIG
