"""
An HTTP/2 client at the wire for the unit tests: the h2 package as the
client, the gateway's Site on a C{StringTransport}, time on a
C{MemoryReactorClock} (shared by tests/test_h2server.py and
tests/test_h2body.py).
"""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from hyperframe.frame import Frame, GoAwayFrame, HeadersFrame

from tests.support import FakeResponse, Wire

H2C = """\
server:
  listen: "tcp:8080"
  h2c: true
  max_request_body: 1KiB
  max_header_bytes: 2KiB
  max_uri_bytes: 200
  max_connections_per_ip: 3
  http2_max_concurrent_streams: 5
  http2_max_requests_per_connection: {budget}
  http2_max_resets: 20
  timeouts: {{request_header: 10s, request_body: 20s, idle: 5s}}
logging: {{access_log: false}}
upstreams:
  app:
    targets: [http://127.0.0.1:9999]
    retries: false
routes:
  - name: all
    match: {{path_prefix: /}}
    upstream: app
"""


class H2Client:
    """An HTTP/2 client (the h2 package) talking to the gateway's Site over a StringTransport."""

    def __init__(self, wire: Wire, peer: str = "192.0.2.10", preface: bool = True) -> None:
        self.wire = wire
        self.proto, self.transport = wire.connect(peer)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.events: list[Any] = []
        self.goaways: list[GoAwayFrame] = []
        self.pending = b""
        if preface:
            self.conn.initiate_connection()
            self.flush()

    def raw(self, data: bytes) -> None:
        self.proto.dataReceived(data)
        self.pump()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.proto.dataReceived(data)
        self.pump()

    def pump(self) -> None:
        for _ in range(100):
            self.wire.clock.advance(0)
            out = self.transport.value()
            self.transport.clear()
            if not out:
                return
            try:
                self.events.extend(self.conn.receive_data(self._withoutGoaway(out)))
            except h2.exceptions.ProtocolError:
                return
            back = self.conn.data_to_send()
            if back and not self.transport.disconnecting:
                self.proto.dataReceived(back)

    def _withoutGoaway(self, data: bytes) -> bytes:
        """
        The server's bytes less its GOAWAY frames, kept in C{goaways}: the h2
        package as a client takes no frame at all after a GOAWAY, and a
        graceful one is followed by the answers to streams in flight.
        """
        data = self.pending + data
        kept = []
        preface = 0
        while len(data) - preface >= 9:
            frame, length = Frame.parse_frame_header(memoryview(data[preface:preface + 9]))
            if len(data) - preface - 9 < length:
                break
            whole = data[preface:preface + 9 + length]
            if isinstance(frame, GoAwayFrame):
                frame.parse_body(memoryview(whole[9:]))
                self.goaways.append(frame)
            else:
                kept.append(whole)
            preface += 9 + length
        self.pending = data[preface:]
        return b"".join(kept)

    def headers(self, sid: int, fields: list[tuple[bytes, bytes]], end: bool = True) -> None:
        """A HEADERS frame written by hand (the client's own h2 would refuse to send what the test needs)."""
        flags = ["END_HEADERS"] + (["END_STREAM"] if end else [])
        self.raw(HeadersFrame(sid, self.conn.encoder.encode(fields), flags=flags).serialize())

    def request(self, path: bytes = b"/", method: bytes = b"GET", headers: list[tuple[bytes, bytes]] | None = None,
                body: bytes | None = None, authority: bytes = b"example.com") -> int:
        sid = self.conn.get_next_available_stream_id()
        fields = [(b":method", method), (b":scheme", b"http"), (b":path", path), (b":authority", authority)]
        fields += headers or []
        self.conn.send_headers(sid, fields, end_stream=body is None)
        if body is not None:
            self.conn.send_data(sid, body, end_stream=True)
        self.flush()
        return sid

    def response(self, sid: int) -> tuple[dict[bytes, bytes], bytes, dict[bytes, bytes]]:
        """(response fields, body, trailers) of stream C{sid}."""
        heads = [dict(e.headers) for e in self.events if isinstance(e, h2.events.ResponseReceived)
                 and e.stream_id == sid]
        body = b"".join(e.data for e in self.events if isinstance(e, h2.events.DataReceived) and e.stream_id == sid)
        trailers = [dict(e.headers) for e in self.events if isinstance(e, h2.events.TrailersReceived)
                    and e.stream_id == sid]
        return (heads[0] if heads else {}), body, (trailers[0] if trailers else {})

    def ended(self, sid: int) -> bool:
        return any(isinstance(e, h2.events.StreamEnded) and e.stream_id == sid for e in self.events)

    def reset(self, sid: int) -> int | None:
        codes = [e.error_code for e in self.events if isinstance(e, h2.events.StreamReset) and e.stream_id == sid]
        return codes[0] if codes else None

    def goaway(self) -> GoAwayFrame | None:
        return self.goaways[0] if self.goaways else None


def h2Wire(budget: int = 0) -> Wire:
    return Wire(config=H2C.format(budget=budget))


def ok(body: bytes = b"ok", headers: list[tuple[bytes, bytes]] | None = None) -> FakeResponse:
    return FakeResponse(200, headers or [(b"Content-Type", b"text/plain")], body)


