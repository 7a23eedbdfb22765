"""
Comparing a primary's and a mirror's answers (status, headers, JSON within
tolerance and ignore paths, bytes), the JSON path language, and what a
kept sample hides.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from txgateway.canary.compare import (
    REDACTED,
    SAMPLE_BODY_BYTES,
    Comparer,
    SampleRing,
    diffJson,
    redactJson,
)
from txgateway.canary.interfaces import Answer, MirrorRequest
from txgateway.canary.jsonpath import ANY, formatPath, matchesPrefix, parsePath
from txgateway.canary.specs import CompareSpec, JsonCompareSpec, RedactSpec


def js(doc: Any, status: int = 200, headers: tuple[tuple[bytes, bytes], ...] = ()) -> Answer:
    return Answer(status, headers, json.dumps(doc).encode())


def jsonComparer(ignore: tuple[str, ...] = (), absolute: float = 0.0, relative: float = 0.0,
                 **kw: Any) -> Comparer:
    return Comparer(CompareSpec(body="json", json=JsonCompareSpec(ignore, absolute, relative), **kw))


class JsonPathTests(SynchronousTestCase):
    def test_parse(self) -> None:
        """Names, indexes, wildcards and quoted names."""
        self.assertEqual(parsePath("$.meta.latency"), ("meta", "latency"))
        self.assertEqual(parsePath("$.items[*].id"), ("items", ANY, "id"))
        self.assertEqual(parsePath("$.items[2].scores.*"), ("items", 2, "scores", ANY))
        self.assertEqual(parsePath('$["odd key"][0]'), ("odd key", 0))
        self.assertEqual(parsePath("$"), ())

    def test_parseErrors(self) -> None:
        for bad in ("meta.latency", "$.", "$[x]", "$.a[", "$..a", '$["a]', "$ a"):
            self.assertRaises(ValueError, parsePath, bad)

    def test_formatRoundTrip(self) -> None:
        for text in ("$.items[3].score", '$["odd key"][0]', "$.a[*].b", "$"):
            self.assertEqual(formatPath(parsePath(text)), text)

    def test_prefix(self) -> None:
        """A pattern covers its node and everything below; a wildcard any index; an index is not a name."""
        self.assertTrue(matchesPrefix(parsePath("$.meta"), ("meta", "latency")))
        self.assertTrue(matchesPrefix(parsePath("$.items[*].id"), ("items", 7, "id")))
        self.assertFalse(matchesPrefix(parsePath("$.items[*].id"), ("items", 7)))
        self.assertFalse(matchesPrefix(parsePath("$.items[0]"), ("items", "0")))


class JsonCompareTests(SynchronousTestCase):
    def test_withinAbsoluteTolerance(self) -> None:
        """Scores within absolute: 1e-6 are the same; beyond it they differ, reported by path."""
        c = jsonComparer(absolute=1e-6)
        self.assertEqual(c.differences(js({"score": 0.9123456}), js({"score": 0.9123459})), [])
        self.assertEqual(c.differences(js({"score": 0.9123456}), js({"score": 0.9123556})), ["$.score"])

    def test_withinRelativeTolerance(self) -> None:
        """relative: 1e-3 admits 0.1 % of the larger value, so big numbers get room, small ones little."""
        c = jsonComparer(relative=1e-3)
        self.assertEqual(c.differences(js({"a": 1000.0, "b": 0.001}), js({"a": 1000.9, "b": 0.0010009})), [])
        self.assertEqual(c.differences(js({"a": 1000.0, "b": 0.001}), js({"a": 1001.1, "b": 0.0011})),
                         ["$.a", "$.b"])

    def test_eitherToleranceSuffices(self) -> None:
        """absolute or relative: near zero the absolute one decides."""
        c = jsonComparer(absolute=1e-6, relative=1e-3)
        self.assertEqual(c.differences(js([0.0, 500.0]), js([1e-7, 500.4])), [])

    def test_noToleranceIsExact(self) -> None:
        self.assertEqual(jsonComparer().differences(js({"a": 1}), js({"a": 1.0000001})), ["$.a"])
        self.assertEqual(jsonComparer().differences(js({"a": 1}), js({"a": 1.0})), [])

    def test_ignorePaths(self) -> None:
        """$.meta.latency and $.items[*].id are not compared; the rest is."""
        c = jsonComparer(ignore=("$.meta.latency", "$.items[*].id"))
        a = {"meta": {"latency": 12, "model": "v1"}, "items": [{"id": "a1", "score": 1}, {"id": "a2", "score": 2}]}
        b = {"meta": {"latency": 40, "model": "v2"}, "items": [{"id": "b1", "score": 1}, {"id": "b2", "score": 3}]}
        self.assertEqual(c.differences(js(a), js(b)), ["$.meta.model", "$.items[1].score"])
        self.assertEqual(c.differences(js({"meta": {}}), js({"meta": {"latency": 5}})), [])

    def test_structure(self) -> None:
        """Missing and extra members, list lengths, types; true is not 1."""
        got = diffJson({"a": 1, "b": [1, 2], "c": True, "d": "x"}, {"b": [1, 2, 3], "c": 1, "d": None, "e": 0})
        self.assertEqual(got, ["$.a", "$.b[2]", "$.c", "$.d", "$.e"])

    def test_oddNamesAndLimit(self) -> None:
        self.assertEqual(diffJson({"a b": 1}, {"a b": 2}), ['$["a b"]'])
        self.assertEqual(len(diffJson(list(range(100)), list(range(1, 101)))), 50)

    def test_hugeIntegers(self) -> None:
        self.assertEqual(diffJson(10**400, 10**400 + 1, absolute=1.0), ["$"])

    def test_statusAndHeaders(self) -> None:
        """Status always (unless status: false), and only the configured headers, by name in any case."""
        c = jsonComparer(headers=("Content-Type", "X-Model"))
        a = js({}, 200, ((b"content-type", b"application/json"), (b"X-Model", b"v1"), (b"Date", b"x")))
        b = js({}, 503, ((b"Content-Type", b"application/json"), (b"x-model", b"v2"), (b"Date", b"y")))
        self.assertEqual(c.differences(a, b), ["status", "headers.X-Model"])
        self.assertEqual(jsonComparer(status=False).differences(a, b), [])

    def test_notJsonComparedAsBytes(self) -> None:
        c = jsonComparer()
        self.assertEqual(c.differences(Answer(200, (), b"<html>"), js({})), ["body"])
        self.assertEqual(c.differences(Answer(200, (), b"same"), Answer(200, (), b"same")), [])

    def test_bytesAndIgnoreModes(self) -> None:
        """body: bytes compares exactly (even JSON); body: ignore compares status and headers only."""
        self.assertEqual(Comparer(CompareSpec()).differences(js({"a": 1}), Answer(200, (), b'{"a":1}')), ["body"])
        ignoring = Comparer(CompareSpec(body="ignore"))
        self.assertEqual(ignoring.differences(js({"a": 1}), js({"a": 2})), [])
        self.assertTrue(ignoring.comparable(Answer(200, truncated=True), Answer(200)))
        self.assertFalse(Comparer(CompareSpec()).comparable(Answer(200, truncated=True), Answer(200)))


class RedactionTests(SynchronousTestCase):
    request = MirrorRequest(
        b"POST", b"/v1/predict?api_key=k-123",
        ((b"Authorization", b"Bearer hunter2"), (b"Cookie", b"s=1"), (b"X-Api-Key", b"k-123"),
         (b"X-Tenant", b"acme"), (b"Accept", b"application/json")), b"", "r-9")

    def sample(self, spec: CompareSpec, primary: Answer, mirror: Answer) -> dict[str, Any]:
        c = Comparer(spec)
        return c.sample(self.request, primary, mirror, c.differences(primary, mirror), 1700000000.0)

    def test_credentialsAlwaysHidden(self) -> None:
        """Authorization, Cookie, Set-Cookie and X-Api-Key never reach a sample; the query string neither."""
        primary = js({"a": 1}, headers=((b"Set-Cookie", b"sid=abc"),))
        s = self.sample(CompareSpec(), primary, js({"a": 2}))
        text = json.dumps(s)
        for secret in ("hunter2", "s=1", "k-123", "sid=abc"):
            self.assertNotIn(secret, text)
        self.assertEqual(s["path"], "/v1/predict")
        self.assertIn(["Accept", "application/json"], s["request_headers"])
        self.assertIn(["Set-Cookie", REDACTED], s["primary"]["headers"])

    def test_configuredHeadersAndBodyPaths(self) -> None:
        """redact.headers and redact.json hide more; differing paths are still named."""
        spec = CompareSpec(body="json", redact=RedactSpec(headers=("X-Tenant",), json=("$.user.email", "$.items[*].pii")))
        a = {"user": {"email": "a@example.com", "tier": 1}, "items": [{"pii": "x", "s": 1}]}
        b = {"user": {"email": "b@example.com", "tier": 1}, "items": [{"pii": "y", "s": 2}]}
        s = self.sample(spec, js(a), js(b))
        self.assertEqual(s["differences"], ["$.user.email", "$.items[0].pii", "$.items[0].s"])
        self.assertIn(["X-Tenant", REDACTED], s["request_headers"])
        self.assertEqual(s["primary"]["body"], {"user": {"email": REDACTED, "tier": 1}, "items": [{"pii": REDACTED, "s": 1}]})
        self.assertNotIn("example.com", json.dumps(s))

    def test_nonJsonHiddenWhenBodyRedactionConfigured(self) -> None:
        """A body the JSON redaction cannot apply to is not shown at all."""
        spec = CompareSpec(redact=RedactSpec(json=("$.token",)))
        s = self.sample(spec, Answer(200, (), b"token=abc"), Answer(200, (), b"token=xyz"))
        self.assertNotIn("abc", json.dumps(s))
        self.assertIn("not shown", s["primary"]["body"])

    def test_bodiesCut(self) -> None:
        """A large body is kept only up to SAMPLE_BODY_BYTES, as text."""
        big = b"x" * (SAMPLE_BODY_BYTES + 10)
        s = self.sample(CompareSpec(), Answer(200, (), big), Answer(200, (), b"y"))
        self.assertEqual(len(s["primary"]["body"]), SAMPLE_BODY_BYTES)
        self.assertTrue(s["primary"]["body_truncated"])
        self.assertFalse(s["mirror"]["body_truncated"])

    def test_redactJsonLeavesOriginal(self) -> None:
        doc = {"a": [{"k": 1}]}
        self.assertEqual(redactJson(doc, [parsePath("$.a[*].k")]), {"a": [{"k": REDACTED}]})
        self.assertEqual(doc, {"a": [{"k": 1}]})


class SampleRingTests(SynchronousTestCase):
    def test_keepsLastN(self) -> None:
        ring = SampleRing(3)
        for i in range(5):
            ring.add({"i": i})
        self.assertEqual([s["i"] for s in ring.items()], [2, 3, 4])
        none = SampleRing(0)
        none.add({"i": 1})
        self.assertEqual(none.items(), [])
