"""
The llhttp split of a request head read whole against the Python rule (#25).

L{splitWholeHead} reads a head with llhttp (httptools) and
L{splitWholeHeadPython} is the rule it replaces: for every input the two
give exactly the same answer, the same C{(request line, fields)} or the same
None.  No direction is allowed to differ: llhttp never takes a head the rule
refuses, never reads one differently, and a head llhttp refuses is handed to
the rule, which then decides (so it is never refused where the rule takes
it).

Which of the two decided is checked too, for the explicit cases, so these
tests notice when a typical head stops going the fast way.  The channel's
own fuzzing (tests/test_fuzz.py) holds the whole head path, fast or line
by line, to the byte-at-a-time reading.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txgateway.http import heads
from txgateway.http.heads import splitWholeHead, splitWholeHeadPython

_TCHARS = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

# Pieces llhttp takes, then pieces one of the two readers (or both) refuses.
_METHODS = ([b"GET", b"HEAD", b"DELETE", b"OPTIONS", b"POST", b"PURGE"], [b"get", b"FOO", b"CONNECT", b""])
_TARGETS = ([b"/", b"/a/b?c=d&e", b"http://example.com/x?y", b"HTTPS://EXAMPLE.COM", b"*", b"/a#frag",
             b"/%7e/caf%C3%A9"], [b"example.com:443", b"/a b", b"/\xff", b""])
_VERSIONS = ([b"HTTP/1.1", b"HTTP/1.0"], [b"HTTP/2.0", b"HTTP/1.2", b"HTTP/0.9", b"HTTP/1", b"http/1.1", b"HTTX/1.1", b""])
_NAMES = ([b"Host", b"host", b"HOST", b"Accept", b"User-Agent", b"X-Request-ID", b"Content-Length", b"content-LENGTH",
           b"Transfer-Encoding", b"Connection", b"Expect", b"TE", b"Keep-Alive", b"Content-Lengthy",
           b"Xontent-Length", b"!#$%&'*+-.^_`|~"], [b"X Y", b"X@", b"(X)", b"X\tY", b"\xc3\xa9", b"Upgrade", b""])
_VALUES = ([b"", b"a", b"example.com", b"*/*", b"gzip, deflate", b"close", b"keep-alive", b"0", b"5", b"a b",
            b"caf\xc3\xa9", b"\x80\xff", b"\"q\"", b"a:b", b"a=b; c"], [b"chunked", b"a\x01b", b"a\x7fb", b"a\x00"])
_OWS = [b"", b" ", b"\t", b"  ", b" \t ", b"\t\t"]


@st.composite
def heads_(draw: Callable[..., Any]) -> bytes:
    """A request head ending in CRLF CRLF: one llhttp reads, or one with pieces the two readers may judge apart."""
    odd = draw(st.booleans())

    def piece(kinds: tuple[list[bytes], list[bytes]]) -> bytes:
        return draw(st.sampled_from(kinds[0] + kinds[1] if odd else kinds[0]))

    line = b"%s %s %s" % (piece(_METHODS), piece(_TARGETS), piece(_VERSIONS))
    fields = []
    for _ in range(draw(st.integers(0, 8))):
        name = draw(st.one_of(st.just(piece(_NAMES)), st.text(_TCHARS, min_size=1, max_size=10).map(str.encode)))
        value = draw(st.one_of(st.just(piece(_VALUES)), st.binary(max_size=6) if odd else
                               st.text("abc XYZ019\t;=,/\"\x80\xff", max_size=6).map(lambda t: t.encode("latin-1"))))
        fields.append(b"%s:%s%s%s\r\n" % (name, draw(st.sampled_from(_OWS)), value, draw(st.sampled_from(_OWS))))
    return line + b"\r\n" + b"".join(fields) + b"\r\n"


_INSERTS = [b"\r\n", b"\n", b"\r", b"\x00", b" ", b"\t", b":", b"\r\n ", b"\r\n\t", b"\r\n\r\n", b"\x7f", b"\xff",
            b"Content-Length: 5\r\n", b"Transfer-Encoding: chunked\r\n", b"Connection: close\r\n",
            b"Upgrade: websocket\r\nConnection: Upgrade\r\n", b"GET / HTTP/1.1\r\nHost: b\r\n\r\n", b"HTTP/1.0",
            b"Host: x\r\n", b"X-Empty:\r\n"]


@st.composite
def mutatedHeads(draw: Callable[..., Any]) -> bytes:
    """A head with a few bytes inserted, deleted or changed; still ending in CRLF CRLF, as the channel asks."""
    data = bytearray(draw(heads_()))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["insert", "delete", "flip"]))
        at = draw(st.integers(0, len(data)))
        if kind == "insert":
            data[at:at] = draw(st.sampled_from(_INSERTS))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 4))]
        elif at < len(data):
            data[at] = draw(st.integers(0, 255))
    if data[-4:] != b"\r\n\r\n":
        data += b"\r\n\r\n"
    return bytes(data)


_ANY = st.one_of(heads_(), heads_(), mutatedHeads(), st.binary(max_size=80).map(lambda b: b + b"\r\n\r\n"))
_SETTINGS = settings(max_examples=1500, deadline=None, database=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class DifferentialTests(SynchronousTestCase):
    @_SETTINGS
    @given(_ANY, st.integers(0, 10))
    def test_sameAnswerAsTheRule(self, data: bytes, maxHeaders: int) -> None:
        """Whatever the head, llhttp's split is the rule's answer, field for field, or None where it says None."""
        self.assertEqual(splitWholeHead(data, maxHeaders), splitWholeHeadPython(data, maxHeaders))

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(st.tuples(_ANY, st.integers(0, 10)), min_size=2, max_size=8))
    def test_aParserReadsTheNextHeadAsANewOne(self, seq: list[tuple[bytes, int]]) -> None:
        """A parser kept for the next head (after any head, refused or not) reads it as a new parser would."""
        for data, maxHeaders in seq:
            self.assertEqual(splitWholeHead(data, maxHeaders), splitWholeHeadPython(data, maxHeaders))

    @given(st.binary(max_size=200))
    @settings(max_examples=500, deadline=None, database=None)
    def test_anyBytes(self, data: bytes) -> None:
        """Not even a head's end: the rule's answer (the channel never asks, but nothing breaks)."""
        self.assertEqual(splitWholeHead(data, 100), splitWholeHeadPython(data, 100))


_GET = b"GET /a?b=c HTTP/1.1\r\n"
_PLAIN = _GET + b"Host: example.com\r\nAccept: */*\r\n\r\n"
LLHTTP, RULE = "llhttp", "rule"


class ExplicitCaseTests(SynchronousTestCase):
    """The cases #25 names, with the answer and who gives it: llhttp, or the rule on a head llhttp refuses."""

    def decide(self, data: bytes, maxHeaders: int = 100) -> tuple[Any, str]:
        calls: list[bytes] = []

        def rule(data: bytes, maxHeaders: int) -> Any:
            calls.append(data)
            return splitWholeHeadPython(data, maxHeaders)

        self.patch(heads, "splitWholeHeadPython", rule)
        answer = splitWholeHead(data, maxHeaders)
        self.assertEqual(answer, splitWholeHeadPython(data, maxHeaders))
        return answer, RULE if calls else LLHTTP

    def check(self, data: bytes, expected: Any, by: str, maxHeaders: int = 100) -> None:
        self.assertEqual(self.decide(data, maxHeaders), (expected, by))

    def test_typical(self) -> None:
        self.check(_PLAIN, (b"GET /a?b=c HTTP/1.1", [(b"Host", b"example.com"), (b"Accept", b"*/*")]), LLHTTP)
        self.check(b"GET / HTTP/1.1\r\n\r\n", (b"GET / HTTP/1.1", []), LLHTTP)

    def test_obsFold(self) -> None:
        """RFC 9112 §5.2: llhttp refuses a folded line; so does the rule (its name would hold a space)."""
        self.check(_GET + b"Host: a\r\nX: b\r\n folded\r\n\r\n", None, RULE)
        self.check(_GET + b"Host: a\r\nX: b\r\n\tfolded: c\r\n\r\n", None, RULE)

    def test_bareLineFeed(self) -> None:
        self.check(b"GET / HTTP/1.1\nHost: a\r\n\r\n", None, RULE)
        self.check(_GET + b"Host: a\nX: b\r\n\r\n", None, RULE)
        self.check(_GET + b"Host: a\r\n\n\r\n\r\n", None, RULE)

    def test_leadingLineEnds(self) -> None:
        """llhttp skips empty lines and a bare LF before a request line; the rule does not."""
        self.check(b"\r\n" + _PLAIN, None, RULE)
        self.check(b"\n" + _PLAIN, None, LLHTTP)

    def test_bareCarriageReturn(self) -> None:
        self.check(_GET + b"Host: a\rX: b\r\n\r\n", None, RULE)
        self.check(b"GET /\r HTTP/1.1\r\nHost: a\r\n\r\n", (b"GET /\r HTTP/1.1", [(b"Host", b"a")]), RULE)

    def test_nul(self) -> None:
        self.check(_GET + b"Host: a\x00b\r\n\r\n", None, RULE)
        self.check(_GET + b"\x00Host: a\r\n\r\n", None, RULE)

    def test_framingFields(self) -> None:
        """A body's framing: the line-by-line path reads the body (llhttp would wait for it)."""
        for field in (b"Content-Length: 0", b"content-LENGTH: 5", b"Transfer-Encoding: chunked"):
            self.check(_GET + b"Host: a\r\n" + field + b"\r\n\r\n", None, LLHTTP)
        self.check(_GET + b"Transfer-Encoding: gzip\r\n\r\n", None, RULE)
        self.check(_GET + b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", None, RULE)
        self.check(_GET + b"Content-Lengthy: 1\r\n\r\n", (_GET[:-2], [(b"Content-Lengthy", b"1")]), LLHTTP)

    def test_duplicatesInOrder(self) -> None:
        self.check(_GET + b"Host: a\r\nX: 1\r\nHost: b\r\nx: 2\r\n\r\n",
                   (_GET[:-2], [(b"Host", b"a"), (b"X", b"1"), (b"Host", b"b"), (b"x", b"2")]), LLHTTP)

    def test_fieldCount(self) -> None:
        head = _GET + b"".join(b"X-%d: %d\r\n" % (i, i) for i in range(50)) + b"\r\n"
        fields = [(b"X-%d" % i, b"%d" % i) for i in range(50)]
        self.check(head, (_GET[:-2], fields), LLHTTP, maxHeaders=50)
        self.check(head, None, LLHTTP, maxHeaders=49)
        self.check(b"GET / HTTP/1.1\r\n\r\n", (b"GET / HTTP/1.1", []), LLHTTP, maxHeaders=0)

    def test_whitespaceAroundValues(self) -> None:
        self.check(_GET + b"X:\t b c \t\r\nY:z\r\nZ:  \t\r\nW:\r\n\r\n",
                   (_GET[:-2], [(b"X", b"b c"), (b"Y", b"z"), (b"Z", b""), (b"W", b"")]), LLHTTP)

    def test_names(self) -> None:
        self.check(_GET + b"!#$%&'*+-.^_`|~09AZaz: v\r\n\r\n", (_GET[:-2], [(b"!#$%&'*+-.^_`|~09AZaz", b"v")]), LLHTTP)
        for name in (b"X Y", b"X@", b"(X)", b"X\x7f", b"\xc3\xa9", b"Host ", b" Host", b""):
            self.check(_GET + name + b": v\r\n\r\n", None, RULE)
        self.check(_GET + b"NoColon\r\n\r\n", None, RULE)

    def test_values(self) -> None:
        """llhttp takes obs-text; control bytes and DEL it leaves to the rule, which takes all but NUL, CR, LF."""
        self.check(_GET + b"X: caf\xc3\xa9 \x80\xff\r\n\r\n", (_GET[:-2], [(b"X", b"caf\xc3\xa9 \x80\xff")]), LLHTTP)
        self.check(_GET + b"X: a\x01b\r\n\r\n", (_GET[:-2], [(b"X", b"a\x01b")]), RULE)
        self.check(_GET + b"X: a\x7f\r\n\r\n", (_GET[:-2], [(b"X", b"a\x7f")]), RULE)
        self.check(_GET + b"X: a\x0b\r\n\r\n", (_GET[:-2], [(b"X", b"a\x0b")]), RULE)

    def test_pipelined(self) -> None:
        """A second request after the head: the line-by-line path takes them one at a time."""
        self.check(_PLAIN + _PLAIN, None, RULE)
        self.check(_PLAIN + b"GET / HTTP/1.1\r\n\r\n", None, RULE)
        self.check(_PLAIN + b"\r\n", None, RULE)
        self.check(_GET + b"Content-Length: 3\r\n\r\nabc" + _PLAIN, None, RULE)

    def test_requestLines(self) -> None:
        """The request line is the rule's, raw: checkRequestLine and the channel judge it."""
        cases = [
            (b"GET / HTTP/1.0", LLHTTP), (b"GET http://example.com/a?b HTTP/1.1", LLHTTP),
            (b"OPTIONS * HTTP/1.1", LLHTTP), (b"GET /a#b HTTP/1.1", LLHTTP), (b"GET  / HTTP/1.1", LLHTTP),
            (b"GET / HTTP/2.0", LLHTTP), (b"get / HTTP/1.1", RULE), (b"FOO / HTTP/1.1", RULE),
            (b"GET / HTTP/1.2", RULE), (b"GET / HTTX/1.1", RULE), (b"GET / HTTP/1.1 ", RULE),
            (b"GET /\xff HTTP/1.1", RULE), (b"GET /", LLHTTP), (b"CONNECT example.com:443 HTTP/1.1", RULE),
        ]
        for line, by in cases:
            self.check(line + b"\r\nHost: a\r\n\r\n", (line, [(b"Host", b"a")]), by)
        self.check(b" \r\nHost: a\r\n\r\n", (b" ", [(b"Host", b"a")]), RULE)

    def test_upgrade(self) -> None:
        """llhttp stops at an upgrade's head: the rule reads it (a WebSocket handshake stays on the fast path)."""
        self.check(_GET + b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                   (_GET[:-2], [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")]), RULE)

    def test_notAWholeHead(self) -> None:
        self.check(_PLAIN[:-2], splitWholeHeadPython(_PLAIN[:-2], 100), RULE)

    def test_nextHeadAfterAnyHead(self) -> None:
        """After any head, taken or not, a parser kept for the next one reads a plain head the fast way."""
        for first in (_PLAIN, b"GET / HTTP/1.0\r\nHost: a\r\n\r\n", _GET + b"Connection: close\r\n\r\n",
                      _GET + b"Content-Length: 5\r\n\r\n", _GET + b"Transfer-Encoding: chunked\r\n\r\n",
                      _GET + b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n", b"get / HTTP/1.1\r\n\r\n",
                      _PLAIN + _PLAIN, _GET + b"X: a\x00\r\n\r\n", _PLAIN[:-4]):
            self.decide(first)
            self.check(_PLAIN, (b"GET /a?b=c HTTP/1.1", [(b"Host", b"example.com"), (b"Accept", b"*/*")]), LLHTTP)
