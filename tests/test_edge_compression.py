"""
Issue #28 compression: the Accept-Encoding choice, what is never compressed, and the streamed body
decoded with the same libraries (zlib, brotli, zstandard) against the original bytes.
"""

from __future__ import annotations

import gzip
from typing import Any

import brotli
import zstandard
from twisted.internet.defer import ensureDeferred, succeed
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from txgateway.compression import CompressingForwarder, chooseEncoding
from txgateway.config.schema import CompressConfig

DECODE = {"gzip": gzip.decompress, "br": brotli.decompress,
          "zstd": lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b)}


class _Response:
    version = (b"HTTP", 1, 1)
    phrase = b"OK"
    request = None
    previousResponse = None

    def __init__(self, chunks: list[bytes], headers: dict[bytes, list[bytes]], code: int = 200,
                 length: Any = UNKNOWN_LENGTH) -> None:
        self.code = code
        self.headers = Headers(headers)
        self.length = length
        self.chunks = chunks

    def deliverBody(self, protocol: Any) -> None:
        protocol.makeConnection(object())
        for c in self.chunks:
            protocol.dataReceived(c)
        protocol.connectionLost(Failure(ResponseDone()))


class _Exchange:
    def __init__(self, response: _Response) -> None:
        self.response = response
        self.finished: list[tuple[bool, bool]] = []

    def finish(self, complete: bool, gone: bool) -> None:
        self.finished.append((complete, gone))


class _Upstream:
    def __init__(self, exchange: _Exchange) -> None:
        self.exchange = exchange

    def fetch(self, context: Any, method: Any = None, extraHeaders: Any = None) -> Any:
        return succeed(self.exchange)


class _Ctx:
    def __init__(self, accept: bytes | None) -> None:
        class R:
            requestHeaders = Headers({b"accept-encoding": [accept]} if accept else {})
        self.request = R()
        self.method = b"GET"


class _Collect:
    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.lost: Any = None

    def makeConnection(self, t: Any) -> None:
        pass

    def dataReceived(self, b: bytes) -> None:
        self.data.append(b)

    def connectionLost(self, reason: Any) -> None:
        self.lost = reason


JSON = {b"content-type": [b"application/json"]}


def through(response: _Response, accept: bytes | None, config: CompressConfig = CompressConfig()) -> tuple[Any, _Collect]:
    exchange = _Exchange(response)
    out: list[Any] = []
    ensureDeferred(CompressingForwarder(_Upstream(exchange), config).fetch(_Ctx(accept))).addCallback(out.append)  # type: ignore[arg-type]
    collect = _Collect()
    out[0].response.deliverBody(collect)
    out[0].finish(True, False)
    assert exchange.finished == [(True, False)]
    return out[0].response, collect


class ChoiceTests(SynchronousTestCase):
    def test_qValues(self) -> None:
        offered = ("zstd", "br", "gzip")
        cases = {b"gzip": "gzip", b"gzip;q=0.5, br;q=0.8": "br", b"*": "zstd", b"*;q=0.1, gzip": "gzip",
                 b"zstd;q=0, *": "br", b"identity": None, b"gzip;q=0": None, b"GZIP;Q=0.3": "gzip",
                 b"gzip;q=abc": None, b"br;q=1, zstd;q=1": "zstd"}
        for header, want in cases.items():
            self.assertEqual((header, chooseEncoding([header], offered)), (header, want))
        self.assertIsNone(chooseEncoding(None, offered))
        self.assertEqual(chooseEncoding([b"zstd, gzip"], ("gzip", "zstd")), "gzip")  # route order breaks ties


class StreamTests(SynchronousTestCase):
    def test_chunksDecodeToTheOriginal(self) -> None:
        chunks = [(b'{"n": %d, "pad": "%s"},' % (i, b"x" * (i % 50))) * 40 for i in range(30)]
        for coding in ("gzip", "br", "zstd"):
            response, collect = through(_Response(chunks, {**JSON, b"etag": [b'"e1"']}), coding.encode())
            self.assertEqual(response.headers.getRawHeaders(b"content-encoding"), [coding.encode()])
            self.assertEqual(response.headers.getRawHeaders(b"etag"), [b'W/"e1"'])
            self.assertEqual(response.headers.getRawHeaders(b"vary"), [b"Accept-Encoding"])
            self.assertIs(response.length, UNKNOWN_LENGTH)
            # One compressed piece per upstream chunk (flushed as it came), plus the end.
            self.assertGreaterEqual(len(collect.data), len(chunks))
            self.assertEqual(DECODE[coding](b"".join(collect.data)), b"".join(chunks))

    def test_contentLengthDropped(self) -> None:
        body = b"a" * 5000
        response, collect = through(_Response([body], {**JSON, b"content-length": [b"5000"]}, length=5000), b"gzip")
        self.assertFalse(response.headers.hasHeader(b"content-length"))
        self.assertEqual(gzip.decompress(b"".join(collect.data)), body)

    def test_untouched(self) -> None:
        body = b"a" * 5000
        cases = [
            (_Response([body], {**JSON, b"content-encoding": [b"br"]}), "already encoded"),
            (_Response([body], {**JSON, b"cache-control": [b"public, no-transform"]}), "no-transform"),
            (_Response([body], {b"content-type": [b"image/png"]}), "type"),
            (_Response([body], {}), "no type"),
            (_Response([body[:100]], JSON, length=100), "small"),
            (_Response([body], {**JSON, b"content-range": [b"bytes 0-4999/9999"]}, code=206), "range"),
            (_Response([], JSON, code=304), "304"),
        ]
        for response, why in cases:
            out, collect = through(response, b"gzip")
            self.assertIsNone(out.headers.getRawHeaders(b"content-encoding") if why != "already encoded"
                              else None, why)
            if why != "already encoded":
                self.assertIsNone(out.headers.getRawHeaders(b"vary"), why)
            self.assertEqual(b"".join(collect.data), b"".join(response.chunks), why)

    def test_notModifiedCarriesTheWeakETag(self) -> None:
        response, _ = through(_Response([], {b"etag": [b'"v1"']}, code=304), b"gzip")
        self.assertEqual(response.headers.getRawHeaders(b"etag"), [b'W/"v1"'])
        response, _ = through(_Response([], {b"etag": [b'"v1"']}, code=304), b"identity")
        self.assertEqual(response.headers.getRawHeaders(b"etag"), [b'"v1"'])

    def test_varyEvenWhenNotCompressed(self) -> None:
        response, collect = through(_Response([b"a" * 5000], {**JSON, b"vary": [b"Origin"]}), b"identity")
        self.assertEqual(response.headers.getRawHeaders(b"vary"), [b"Origin", b"Accept-Encoding"])
        self.assertEqual(b"".join(collect.data), b"a" * 5000)

    def test_typesAndEncodingsFromConfig(self) -> None:
        config = CompressConfig(encodings=("gzip",), types=("text/*",), min_bytes=0)
        response, collect = through(_Response([b"hello"], {b"content-type": [b"text/html; charset=utf-8"]}), b"br, gzip",
                                    config)
        self.assertEqual(response.headers.getRawHeaders(b"content-encoding"), [b"gzip"])
        self.assertEqual(gzip.decompress(b"".join(collect.data)), b"hello")
