"""
The pure RFC 9111 / RFC 5861 / RFC 9211 rules of L{txgateway.caching.policy}.

Every test names the section it checks.  Time comes from a L{Clock} set to a
realistic epoch, so that HTTP dates and the cache's clock agree.
"""

from __future__ import annotations

import http_sfv
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import datetimeToString
from twisted.web.http_headers import Headers

from txgateway.caching import policy as p
from txgateway.caching.stored import StoredResponse

T0 = 1_700_000_000.0


def date(t: float) -> bytes:
    return datetimeToString(int(t))


def stored(*headers: tuple[bytes, bytes], code: int = 200, body: bytes = b"body", requestTime: float = T0,
           responseTime: float = T0, withDate: bool = True, varyFields: tuple[bytes, ...] = (),
           varyValues: tuple[bytes | None, ...] = ()) -> StoredResponse:
    hs = list(headers)
    if withDate and not any(k.lower() == b"date" for k, _ in hs):
        hs.append((b"Date", date(responseTime)))
    return StoredResponse(code, b"OK", hs, body, requestTime, responseTime, varyFields, varyValues)


def lookup(*pairs: tuple[bytes, bytes]) -> p.HeaderLookup:
    h = Headers()
    for k, v in pairs:
        h.addRawHeader(k, v)
    return h.getRawHeaders


def rules(*pairs: tuple[bytes, bytes]) -> p.RequestRules:
    return p.requestRules(lookup(*pairs))


def cc(value: bytes) -> p.Directives:
    return p.parseCacheControl([value])


PLAIN = p.RequestRules()


class ClockMixin:
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)


class CacheControlParsingTests(SynchronousTestCase):
    def test_namesAreCaseInsensitiveAndArgumentsUnquoted(self) -> None:
        """§5.2: directive names are case-insensitive; arguments may be quoted strings."""
        d = p.parseCacheControl([b'Max-Age=60, PRIVATE="Set-Cookie, X-Foo", no-cache'])
        self.assertEqual(d.seconds(b"max-age"), 60)
        self.assertEqual(d.fieldNames(b"private"), frozenset((b"set-cookie", b"x-foo")))
        self.assertIn(b"no-cache", d)
        self.assertIsNone(d.fieldNames(b"no-cache"))

    def test_directivesSpreadOverSeveralLines(self) -> None:
        """RFC 9110 §5.3: several field lines are one comma-separated list."""
        d = p.parseCacheControl([b"public", b"s-maxage=5"])
        self.assertIn(b"public", d)
        self.assertEqual(d.seconds(b"s-maxage"), 5)

    def test_invalidDeltaSeconds(self) -> None:
        """§1.2.2: a delta-seconds that is not digits is invalid (-1 to callers)."""
        self.assertEqual(cc(b"max-age=abc").seconds(b"max-age"), -1)
        self.assertEqual(cc(b"max-age=-5").seconds(b"max-age"), -1)
        self.assertEqual(cc(b"max-age").seconds(b"max-age"), -1)
        self.assertIsNone(cc(b"public").seconds(b"max-age"))

    def test_hugeDeltaSecondsIsCapped(self) -> None:
        """§1.2.2: a value too large to represent is taken as 2^31."""
        self.assertEqual(cc(b"max-age=99999999999999999999").seconds(b"max-age"), 2**31)

    def test_conflictingDuplicatesAreInvalid(self) -> None:
        """§4.2.1: duplicated max-age with different values may be treated as stale."""
        self.assertEqual(cc(b"max-age=10, max-age=20").seconds(b"max-age"), -1)
        self.assertEqual(cc(b"max-age=10, max-age=10").seconds(b"max-age"), 10)

    def test_commaInsideQuotesDoesNotSplit(self) -> None:
        """RFC 9110 §5.6.4: a quoted string may contain commas."""
        self.assertEqual(p.splitList([b'"a,b", W/"c", d']), [b'"a,b"', b'W/"c"', b"d"])


class RequestRulesTests(SynchronousTestCase):
    def test_plainRequest(self) -> None:
        """§5.2.1: a request without directives asks nothing special."""
        r = rules()
        self.assertFalse(r.noCache or r.noStore or r.onlyIfCached or r.hasAuthorization)
        self.assertIsNone(r.maxAge)

    def test_requestDirectives(self) -> None:
        """§5.2.1.1-7: max-age, max-stale, min-fresh, no-cache, no-store, only-if-cached."""
        r = rules((b"Cache-Control", b"max-age=5, max-stale=10, min-fresh=3, no-store, only-if-cached, no-cache"))
        self.assertEqual((r.maxAge, r.maxStale, r.minFresh), (5, 10.0, 3))
        self.assertTrue(r.noStore and r.onlyIfCached and r.noCache)

    def test_maxStaleWithoutValueAcceptsAnyStaleness(self) -> None:
        """§5.2.1.2: max-stale without a value means any staleness."""
        self.assertEqual(rules((b"Cache-Control", b"max-stale")).maxStale, float("inf"))

    def test_invalidRequestValuesAreIgnored(self) -> None:
        """§5.2.1: an invalid argument does not constrain the cache."""
        r = rules((b"Cache-Control", b"max-age=x, min-fresh=-1"))
        self.assertIsNone(r.maxAge)
        self.assertIsNone(r.minFresh)

    def test_pragmaNoCacheWithoutCacheControl(self) -> None:
        """§5.4: Pragma: no-cache counts as no-cache when Cache-Control is absent."""
        self.assertTrue(rules((b"Pragma", b"no-cache")).noCache)
        self.assertFalse(rules((b"Pragma", b"no-cache"), (b"Cache-Control", b"max-age=5")).noCache)

    def test_authorizationIsNoticed(self) -> None:
        """§3.5: the cache must know when a request carries Authorization."""
        self.assertTrue(rules((b"Authorization", b"Bearer x")).hasAuthorization)

    def test_staleIfErrorRequestDirective(self) -> None:
        """RFC 5861 §4: stale-if-error may be sent by the client."""
        self.assertEqual(rules((b"Cache-Control", b"stale-if-error=30")).staleIfError, 30)


class FreshnessLifetimeTests(ClockMixin, SynchronousTestCase):
    def lifetime(self, *headers: tuple[bytes, bytes], code: int = 200, maxTTL: float | None = None) -> float:
        e = stored(*headers, code=code, responseTime=self.clock.seconds())
        return p.lifetimeOf(e, maxTTL)

    def test_sMaxageWinsForASharedCache(self) -> None:
        """§4.2.1, §5.2.2.10: a shared cache uses s-maxage over max-age and Expires."""
        self.assertEqual(self.lifetime((b"Cache-Control", b"max-age=10, s-maxage=30"),
                                       (b"Expires", date(T0 + 100))), 30)

    def test_maxAgeWinsOverExpires(self) -> None:
        """§4.2.1, §5.3: max-age overrides Expires."""
        self.assertEqual(self.lifetime((b"Cache-Control", b"max-age=10"), (b"Expires", date(T0 + 100))), 10)

    def test_expiresMinusDate(self) -> None:
        """§4.2.1: without max-age, the lifetime is Expires minus Date."""
        self.assertEqual(self.lifetime((b"Date", date(T0 - 50)), (b"Expires", date(T0 + 50))), 100)

    def test_expiresWithoutDateUsesArrivalTime(self) -> None:
        """§4.2.1 with RFC 9110 §6.6.1: a missing Date is the time the response was received."""
        e = stored((b"Expires", date(T0 + 40)), withDate=False)
        self.assertEqual(p.lifetimeOf(e, None), 40)

    def test_invalidExpiresIsInThePast(self) -> None:
        """§5.3: an invalid Expires, notably "0", means already expired."""
        self.assertEqual(self.lifetime((b"Expires", b"0")), 0)

    def test_invalidMaxAgeIsStale(self) -> None:
        """§4.2.1: invalid or conflicting freshness information is treated as stale."""
        self.assertEqual(self.lifetime((b"Cache-Control", b"max-age=soon"), (b"Expires", date(T0 + 100))), 0)
        self.assertEqual(self.lifetime((b"Cache-Control", b"max-age=5, max-age=50")), 0)

    def test_heuristicIsTenPercentOfLastModifiedAge(self) -> None:
        """§4.2.2: a heuristic lifetime of 10% of the time since Last-Modified."""
        self.assertEqual(self.lifetime((b"Last-Modified", date(T0 - 1000))), 100)

    def test_heuristicIsCapped(self) -> None:
        """§4.2.2: a heuristic lifetime is bounded (a day here)."""
        self.assertEqual(self.lifetime((b"Last-Modified", date(T0 - 10**8))), p.HEURISTIC_CAP)

    def test_noHeuristicForStatusesNotCacheableByDefault(self) -> None:
        """§4.2.2: heuristics only for heuristically cacheable statuses or public."""
        self.assertEqual(self.lifetime((b"Last-Modified", date(T0 - 1000)), code=302), 0)
        self.assertEqual(self.lifetime((b"Last-Modified", date(T0 - 1000)), (b"Cache-Control", b"public"),
                                       code=302), 100)

    def test_noHeuristicWhenExplicit(self) -> None:
        """§4.2.2: a heuristic applies only without explicit expiration."""
        self.assertEqual(self.lifetime((b"Last-Modified", date(T0 - 1000)), (b"Expires", date(T0 + 5))), 5)

    def test_noFreshnessInformation(self) -> None:
        """§4.2.1: no explicit expiration and no heuristic: lifetime zero."""
        self.assertEqual(self.lifetime(), 0)

    def test_maxTTLCaps(self) -> None:
        """Gateway rule: cache.max_ttl caps every freshness lifetime."""
        self.assertEqual(self.lifetime((b"Cache-Control", b"s-maxage=3600"), maxTTL=60), 60)
        self.assertEqual(self.lifetime((b"Cache-Control", b"max-age=30"), maxTTL=60), 30)


class AgeTests(ClockMixin, SynchronousTestCase):
    def test_residentTimeAddsToAge(self) -> None:
        """§4.2.3: current_age grows with the time the response has been resident."""
        e = stored((b"Cache-Control", b"max-age=60"), responseTime=self.clock.seconds())
        self.assertEqual(p.currentAge(e, self.clock.seconds()), 0)
        self.clock.advance(42)
        self.assertEqual(p.currentAge(e, self.clock.seconds()), 42)

    def test_ageHeaderCorrectedByResponseDelay(self) -> None:
        """§4.2.3: corrected_age_value = Age + (response_time - request_time)."""
        e = stored((b"Age", b"10"), requestTime=T0 - 2, responseTime=T0)
        self.assertEqual(p.currentAge(e, T0), 12)

    def test_apparentAgeFromDate(self) -> None:
        """§4.2.3: apparent_age = max(0, response_time - date_value) when it exceeds the corrected Age."""
        e = stored((b"Date", date(T0 - 30)), (b"Age", b"5"), responseTime=T0)
        self.assertEqual(p.currentAge(e, T0 + 1), 31)

    def test_dateInTheFutureGivesNoNegativeAge(self) -> None:
        """§4.2.3: apparent age is never negative."""
        e = stored((b"Date", date(T0 + 300)), responseTime=T0)
        self.assertEqual(p.currentAge(e, T0), 0)

    def test_invalidAgeHeaderIgnored(self) -> None:
        """§5.1: an invalid Age is not used."""
        e = stored((b"Age", b"old"), responseTime=T0)
        self.assertEqual(p.currentAge(e, T0), 0)

    def test_formatDelta(self) -> None:
        """§5.1: Age is a non-negative integer."""
        self.assertEqual(p.formatDelta(12.9), b"12")
        self.assertEqual(p.formatDelta(-3), b"0")


class StorabilityTests(SynchronousTestCase):
    def refusal(self, *headers: tuple[bytes, bytes], code: int = 200, method: bytes = b"GET",
                request: p.RequestRules = PLAIN, maxTTL: float | None = None) -> str | None:
        hs = list(headers) + [(b"Date", date(T0))]
        d = p.parseCacheControl(p.headerValues(hs, b"cache-control"))
        return p.storeRefusal(method, code, hs, d, request, T0, maxTTL)

    def test_freshGetIsStorable(self) -> None:
        """§3: a final response to GET with explicit freshness may be stored."""
        self.assertIsNone(self.refusal((b"Cache-Control", b"max-age=60")))

    def test_onlyGetResponsesAreStored(self) -> None:
        """§3: this cache understands GET only for storing (HEAD is answered from a stored GET)."""
        self.assertEqual(self.refusal((b"Cache-Control", b"max-age=60"), method=b"POST"), "method")
        self.assertEqual(self.refusal((b"Cache-Control", b"max-age=60"), method=b"HEAD"), "method")

    def test_partialAndNotModifiedAreNotStored(self) -> None:
        """§3, §3.3: 206 (no range support here) and 304 are not stored as responses."""
        self.assertEqual(self.refusal((b"Cache-Control", b"max-age=60"), code=206), "status")
        self.assertEqual(self.refusal((b"Cache-Control", b"max-age=60"), code=304), "status")

    def test_noStoreInResponseOrRequest(self) -> None:
        """§5.2.2.5, §5.2.1.5: no-store on either side forbids storing."""
        self.assertEqual(self.refusal((b"Cache-Control", b"max-age=60, no-store")), "no-store")
        self.assertEqual(self.refusal((b"Cache-Control", b"max-age=60"), request=rules(
            (b"Cache-Control", b"no-store"))), "no-store")

    def test_privateIsNotStoredByASharedCache(self) -> None:
        """§5.2.2.7: a shared cache must not store a private response."""
        self.assertEqual(self.refusal((b"Cache-Control", b"private, max-age=60")), "private")

    def test_qualifiedPrivateStoresTheRest(self) -> None:
        """§5.2.2.7: with field names, only those fields are withheld from storage."""
        hs = [(b"Cache-Control", b'max-age=60, private="X-User"'), (b"X-User", b"alice"), (b"X-Other", b"1")]
        self.assertIsNone(self.refusal(*hs))
        kept = p.storableHeaders(hs, p.parseCacheControl([hs[0][1]]))
        self.assertNotIn(b"X-User", [k for k, _ in kept])
        self.assertIn(b"X-Other", [k for k, _ in kept])

    def test_authorizationNeedsExplicitPermission(self) -> None:
        """§3.5: a response to a request with Authorization is stored only with public, s-maxage or must-revalidate."""
        auth = rules((b"Authorization", b"Basic eDp5"))
        self.assertEqual(self.refusal((b"Cache-Control", b"max-age=60"), request=auth), "authorization")
        for allowed in (b"public, max-age=60", b"s-maxage=60", b"max-age=60, must-revalidate"):
            self.assertIsNone(self.refusal((b"Cache-Control", allowed), request=auth), allowed)

    def test_varyStarIsNotStored(self) -> None:
        """§4.1: Vary: * never matches, so storing it would be useless."""
        self.assertEqual(self.refusal((b"Cache-Control", b"max-age=60"), (b"Vary", b"Accept, *")), "vary-star")

    def test_setCookieIsNotStoredUnlessWithheld(self) -> None:
        """§3 allows it; this gateway refuses to replay Set-Cookie, unless private="Set-Cookie" withholds it."""
        self.assertEqual(self.refusal((b"Cache-Control", b"max-age=60"), (b"Set-Cookie", b"s=1")), "set-cookie")
        self.assertIsNone(self.refusal((b"Cache-Control", b'max-age=60, private="Set-Cookie"'),
                                       (b"Set-Cookie", b"s=1")))

    def test_statusNotCacheableByDefaultNeedsExplicitFreshness(self) -> None:
        """§3: without public/max-age/s-maxage/Expires, only heuristically cacheable statuses are stored."""
        self.assertEqual(self.refusal((b"ETag", b'"a"'), code=302), "status")
        self.assertIsNone(self.refusal((b"Cache-Control", b"max-age=60"), code=302))
        self.assertIsNone(self.refusal((b"ETag", b'"a"'), code=404))
        self.assertIsNone(self.refusal((b"Cache-Control", b"max-age=60"), code=500))

    def test_uselessResponsesAreNotStored(self) -> None:
        """§3 lets a cache decline: nothing fresh, no validator and no stale extension means no reuse."""
        self.assertEqual(self.refusal(), "stale")
        self.assertIsNone(self.refusal((b"ETag", b'"v1"')))
        self.assertIsNone(self.refusal((b"Cache-Control", b"no-cache"), (b"ETag", b'"v1"')))
        self.assertIsNone(self.refusal((b"Cache-Control", b"max-age=0, stale-if-error=60")))

    def test_hopByHopFieldsAreNotStored(self) -> None:
        """§3.1: connection-specific fields and those named by Connection are not stored."""
        hs = [(b"Connection", b"X-Hop"), (b"X-Hop", b"1"), (b"Keep-Alive", b"5"), (b"ETag", b'"a"')]
        self.assertEqual(p.storableHeaders(hs, p.parseCacheControl(None)), [(b"ETag", b'"a"')])


class VaryTests(SynchronousTestCase):
    def test_varyFieldsAreNormalised(self) -> None:
        """§4.1: Vary names are case-insensitive; order and repetition do not matter."""
        self.assertEqual(p.varyOf([(b"Vary", b"Accept-Encoding, accept"), (b"vary", b"ACCEPT")]),
                         (b"accept", b"accept-encoding"))
        self.assertIsNone(p.varyOf([(b"Vary", b"*")]))
        self.assertEqual(p.varyOf([]), ())

    def test_valuesMatchAcrossWhitespaceAndLines(self) -> None:
        """§4.1: fields match after removing whitespace and combining lines."""
        fields = (b"accept",)
        e = stored(varyFields=fields, varyValues=p.varyValues(fields, lookup((b"Accept", b"a/b, c/d"))))
        self.assertTrue(p.varyMatches(e, lookup((b"Accept", b"a/b,c/d"))))
        self.assertTrue(p.varyMatches(e, lookup((b"Accept", b"a/b"), (b"Accept", b"c/d"))))
        self.assertFalse(p.varyMatches(e, lookup((b"Accept", b"c/d, a/b"))))
        self.assertFalse(p.varyMatches(e, lookup()))

    def test_absentMatchesOnlyAbsent(self) -> None:
        """§4.1: a nominated field absent from both requests matches."""
        fields = (b"x-consumer",)
        e = stored(varyFields=fields, varyValues=p.varyValues(fields, lookup()))
        self.assertTrue(p.varyMatches(e, lookup()))
        self.assertFalse(p.varyMatches(e, lookup((b"X-Consumer", b"alice"))))

    def test_secondaryKeysDiffer(self) -> None:
        """§4.1: each variant gets its own secondary key; equal values share one."""
        a = p.varyKeySuffix((b"gzip",))
        self.assertEqual(a, p.varyKeySuffix((b"gzip",)))
        self.assertNotEqual(a, p.varyKeySuffix((b"br",)))
        self.assertNotEqual(p.varyKeySuffix((None,)), p.varyKeySuffix((b"",)))


class AssessTests(ClockMixin, SynchronousTestCase):
    def entry(self, ccValue: bytes, *more: tuple[bytes, bytes]) -> StoredResponse:
        return stored((b"Cache-Control", ccValue), *more, responseTime=self.clock.seconds())

    def assessAfter(self, e: StoredResponse, seconds: float, r: p.RequestRules = PLAIN,
                    maxTTL: float | None = None) -> p.Assessment:
        self.clock.advance(seconds)
        return p.assess(e, r, self.clock.seconds(), maxTTL)

    def test_freshThenStale(self) -> None:
        """§4.2: fresh while age < lifetime, then it must be validated."""
        e = self.entry(b"max-age=10")
        a = self.assessAfter(e, 9)
        self.assertEqual((a.action, round(a.ttl)), (p.FRESH, 1))
        a = self.assessAfter(e, 1)
        self.assertEqual((a.action, a.reason), (p.VALIDATE, "stale"))

    def test_maxTTLMakesItStaleSooner(self) -> None:
        """Gateway rule: max_ttl caps freshness at read time."""
        self.assertEqual(self.assessAfter(self.entry(b"max-age=100"), 61, maxTTL=60).action, p.VALIDATE)

    def test_responseNoCacheAlwaysValidates(self) -> None:
        """§5.2.2.4: no-cache responses are never reused without validation."""
        self.assertEqual(self.assessAfter(self.entry(b"max-age=100, no-cache"), 0).action, p.VALIDATE)
        self.assertEqual(self.assessAfter(self.entry(b'max-age=100, no-cache="X-A"'), 0).action, p.VALIDATE)

    def test_requestNoCacheValidates(self) -> None:
        """§5.2.1.4: the client's no-cache forces validation (reason: request)."""
        a = self.assessAfter(self.entry(b"max-age=100"), 0, rules((b"Cache-Control", b"no-cache")))
        self.assertEqual((a.action, a.reason), (p.VALIDATE, "request"))
        a = self.assessAfter(self.entry(b"max-age=100"), 0, rules((b"Pragma", b"no-cache")))
        self.assertEqual(a.action, p.VALIDATE)

    def test_requestMaxAge(self) -> None:
        """§5.2.1.1: the client refuses responses older than its max-age."""
        e = self.entry(b"max-age=100")
        r = rules((b"Cache-Control", b"max-age=5"))
        self.assertEqual(self.assessAfter(e, 5, r).action, p.FRESH)
        self.assertEqual(self.assessAfter(e, 1, r).reason, "request")

    def test_requestMinFresh(self) -> None:
        """§5.2.1.3: the client wants the response to stay fresh at least min-fresh more seconds."""
        e = self.entry(b"max-age=100")
        r = rules((b"Cache-Control", b"min-fresh=30"))
        self.assertEqual(self.assessAfter(e, 70, r).action, p.FRESH)
        self.assertEqual(self.assessAfter(e, 1, r).action, p.VALIDATE)

    def test_requestMaxStale(self) -> None:
        """§5.2.1.2: the client accepts a response stale by at most max-stale seconds."""
        e = self.entry(b"max-age=10")
        r = rules((b"Cache-Control", b"max-stale=5"))
        self.assertEqual(self.assessAfter(e, 15, r).action, p.STALE_OK)
        self.assertEqual(self.assessAfter(e, 1, r).action, p.VALIDATE)
        self.assertEqual(self.assessAfter(e, 1000, rules((b"Cache-Control", b"max-stale"))).action, p.STALE_OK)

    def test_maxStaleCannotOverrideRevalidationDirectives(self) -> None:
        """§4.2.4, §5.2.2.2, §5.2.2.8, §5.2.2.10: must-revalidate, proxy-revalidate and s-maxage forbid stale use."""
        r = rules((b"Cache-Control", b"max-stale"))
        for value in (b"max-age=1, must-revalidate", b"max-age=1, proxy-revalidate", b"s-maxage=1"):
            self.assertEqual(self.assessAfter(self.entry(value), 5, r).action, p.VALIDATE, value)

    def test_staleWhileRevalidateWindow(self) -> None:
        """RFC 5861 §3: stale within the window is served while revalidating in the background."""
        e = self.entry(b"max-age=10, stale-while-revalidate=20")
        a = self.assessAfter(e, 15)
        self.assertEqual(a.action, p.REVALIDATE_LATER)
        self.assertEqual(round(a.ttl), -5)
        self.assertEqual(self.assessAfter(e, 16).action, p.VALIDATE)

    def test_staleWhileRevalidateRespectsMustRevalidate(self) -> None:
        """§4.2.4: must-revalidate forbids serving stale, whatever RFC 5861 extensions say."""
        e = self.entry(b"max-age=1, stale-while-revalidate=60, must-revalidate")
        self.assertEqual(self.assessAfter(e, 5).action, p.VALIDATE)

    def test_staleWhileRevalidateWithSMaxage(self) -> None:
        """RFC 5861 §3 with §5.2.2.10: the origin's explicit swr is honoured alongside s-maxage."""
        e = self.entry(b"s-maxage=1, stale-while-revalidate=60")
        self.assertEqual(self.assessAfter(e, 5).action, p.REVALIDATE_LATER)

    def test_staleWhileRevalidateNotForClientsWantingFreshness(self) -> None:
        """§5.2.1.1/§5.2.1.3: a client's max-age or min-fresh is not overridden by swr."""
        e = self.entry(b"max-age=10, stale-while-revalidate=60")
        self.assertEqual(self.assessAfter(e, 15, rules((b"Cache-Control", b"max-age=12"))).action, p.VALIDATE)
        self.assertEqual(self.assessAfter(e, 0, rules((b"Cache-Control", b"min-fresh=1"))).action, p.VALIDATE)


class StaleIfErrorTests(ClockMixin, SynchronousTestCase):
    def test_responseWindow(self) -> None:
        """RFC 5861 §4: usable on error while stale by at most stale-if-error seconds."""
        e = stored((b"Cache-Control", b"max-age=10, stale-if-error=20"), responseTime=T0)
        self.assertTrue(p.staleIfError(e, PLAIN, T0 + 30, None))
        self.assertFalse(p.staleIfError(e, PLAIN, T0 + 31, None))

    def test_requestWindow(self) -> None:
        """RFC 5861 §4: a request's stale-if-error applies to that request."""
        e = stored((b"Cache-Control", b"max-age=10"), responseTime=T0)
        self.assertFalse(p.staleIfError(e, PLAIN, T0 + 15, None))
        self.assertTrue(p.staleIfError(e, rules((b"Cache-Control", b"stale-if-error=5")), T0 + 15, None))

    def test_mustRevalidateForbids(self) -> None:
        """§4.2.4, §5.2.2.2: a must-revalidate response is never served stale, even on error."""
        e = stored((b"Cache-Control", b"max-age=10, stale-if-error=60, must-revalidate"), responseTime=T0)
        self.assertFalse(p.staleIfError(e, PLAIN, T0 + 15, None))


class ValidationTests(SynchronousTestCase):
    def test_conditionalHeaders(self) -> None:
        """§4.3.1: send the stored ETag in If-None-Match and Last-Modified in If-Modified-Since."""
        e = stored((b"ETag", b'"v1"'), (b"Last-Modified", date(T0 - 100)))
        self.assertEqual(p.conditionalHeaders(e), [(b"If-None-Match", b'"v1"'),
                                                   (b"If-Modified-Since", date(T0 - 100))])
        self.assertEqual(p.conditionalHeaders(stored()), [])

    def test_notModifiedSelectsByValidator(self) -> None:
        """§4.3.4: a 304 freshens the stored response with the same ETag (weak ok), else the same Last-Modified."""
        e = stored((b"ETag", b'W/"v1"'), (b"Last-Modified", date(T0 - 100)))
        self.assertTrue(p.notModifiedMatches(e, [(b"ETag", b'"v1"')]))
        self.assertFalse(p.notModifiedMatches(e, [(b"ETag", b'"v2"')]))
        self.assertTrue(p.notModifiedMatches(e, [(b"Last-Modified", date(T0 - 100))]))
        self.assertFalse(p.notModifiedMatches(e, [(b"Last-Modified", date(T0 - 50))]))
        self.assertTrue(p.notModifiedMatches(e, []))

    def test_freshenUpdatesStoredFields(self) -> None:
        """§3.2, §4.3.4: the 304's fields replace the stored ones (not Content-Length), and times restart."""
        e = stored((b"Cache-Control", b"max-age=10"), (b"ETag", b'"v1"'), (b"Content-Type", b"text/plain"),
                   (b"X-Old", b"1"), (b"Age", b"100"), responseTime=T0)
        f = p.freshen(e, [(b"Cache-Control", b"max-age=60"), (b"Date", date(T0 + 500)), (b"X-New", b"2"),
                          (b"Content-Length", b"0"), (b"Connection", b"close")], T0 + 499, T0 + 500)
        self.assertEqual(f.header(b"cache-control"), b"max-age=60")
        self.assertEqual(f.header(b"x-old"), b"1")
        self.assertEqual(f.header(b"x-new"), b"2")
        self.assertEqual(f.header(b"content-type"), b"text/plain")
        self.assertIsNone(f.header(b"content-length"))
        self.assertIsNone(f.header(b"connection"))
        self.assertIsNone(f.header(b"age"))
        self.assertEqual(f.body, e.body)
        self.assertEqual(p.currentAge(f, T0 + 500), 1)
        self.assertEqual(p.assess(f, PLAIN, T0 + 500, None).action, p.FRESH)

    def test_freshenWithoutDateUsesArrival(self) -> None:
        """§4.2.3: a 304 without Date must not leave the old Date to age the response."""
        e = stored((b"Cache-Control", b"max-age=10"), responseTime=T0)
        f = p.freshen(e, [], T0 + 100, T0 + 100)
        self.assertEqual(p.currentAge(f, T0 + 100), 0)

    def test_clientConditionalAnsweredFromStore(self) -> None:
        """§4.3.2: If-None-Match (weak comparison) then If-Modified-Since are evaluated against the stored 200."""
        e = stored((b"ETag", b'"v1"'), (b"Last-Modified", date(T0 - 100)))
        self.assertTrue(p.clientNotModified(lookup((b"If-None-Match", b'"x", W/"v1"')), e))
        self.assertTrue(p.clientNotModified(lookup((b"If-None-Match", b"*")), e))
        self.assertFalse(p.clientNotModified(lookup((b"If-None-Match", b'"v2"'),
                                                    (b"If-Modified-Since", date(T0))), e))
        self.assertTrue(p.clientNotModified(lookup((b"If-Modified-Since", date(T0 - 100))), e))
        self.assertFalse(p.clientNotModified(lookup((b"If-Modified-Since", date(T0 - 101))), e))
        self.assertFalse(p.clientNotModified(lookup((b"If-Modified-Since", b"garbage")), e))
        self.assertFalse(p.clientNotModified(lookup(), e))
        self.assertFalse(p.clientNotModified(lookup((b"If-None-Match", b'"v1"')), stored((b"ETag", b'"v1"'),
                                                                                         code=404)))

    def test_notModifiedFieldsDropRepresentationMetadata(self) -> None:
        """RFC 9110 §15.4.5: a 304 carries Cache-Control, ETag, Vary... but not Content-Type or Content-Length."""
        kept = p.notModifiedFields([(b"ETag", b'"a"'), (b"Content-Type", b"x/y"), (b"Vary", b"Accept"),
                                    (b"Content-Length", b"3"), (b"Cache-Control", b"max-age=1")])
        self.assertEqual([k for k, _ in kept], [b"ETag", b"Vary", b"Cache-Control"])


class InvalidationTests(SynchronousTestCase):
    def test_unsafeMethodInvalidatesTargetAndLocations(self) -> None:
        """§4.4: a non-error response to an unsafe method invalidates the URI and same-origin Location/Content-Location."""
        got = p.invalidationTargets(b"POST", 201, [(b"Location", b"/items/5"),
                                                   (b"Content-Location", b"http://api.example.com/items/5?v=1")],
                                    "api.example.com", "/items", b"a=1")
        self.assertEqual(got, [("/items", b"a=1"), ("/items/5", None), ("/items/5", b"v=1")])

    def test_otherOriginsAreNotInvalidated(self) -> None:
        """§4.4: Location on another host must not be invalidated (that would be a denial-of-service vector)."""
        got = p.invalidationTargets(b"PUT", 200, [(b"Location", b"http://evil.example/x")], "api.example.com",
                                    "/items/1", None)
        self.assertEqual(got, [("/items/1", None)])

    def test_relativeLocationResolvedAgainstTarget(self) -> None:
        """§4.4 with RFC 9110 §10.2.2: a relative reference resolves against the target URI."""
        got = p.invalidationTargets(b"POST", 303, [(b"Location", b"5")], "h", "/items/", None)
        self.assertEqual(got, [("/items/", None), ("/items/5", None)])

    def test_errorsAndSafeMethodsInvalidateNothing(self) -> None:
        """§4.4: only non-error statuses of unsafe methods invalidate."""
        self.assertEqual(p.invalidationTargets(b"DELETE", 404, [], "h", "/x", None), [])
        self.assertEqual(p.invalidationTargets(b"DELETE", 500, [], "h", "/x", None), [])
        self.assertEqual(p.invalidationTargets(b"GET", 200, [], "h", "/x", None), [])
        self.assertEqual(p.invalidationTargets(b"DELETE", 204, [], "h", "/x", None), [("/x", None)])


class RetentionTests(SynchronousTestCase):
    def test_keptForFreshnessAndStaleWindows(self) -> None:
        """RFC 5861: an entry is kept while it may still be served stale."""
        e = stored((b"Cache-Control", b"max-age=10, stale-while-revalidate=3000, stale-if-error=5000"),
                   responseTime=T0)
        self.assertEqual(p.retention(e, T0 + 4, None), 5006)

    def test_staleCopiesAreKeptForRevalidationAndMaxStale(self) -> None:
        """§4.2.4, §4.3: a stale response stays stored a while for validation or a client's max-stale."""
        e = stored((b"Cache-Control", b"max-age=10"), (b"ETag", b'"a"'), responseTime=T0)
        self.assertEqual(p.retention(e, T0, None), 10 + p.STALE_RETENTION)
        self.assertEqual(p.retention(e, T0 + 20, None), p.STALE_RETENTION)


class CacheStatusTests(SynchronousTestCase):
    def parse(self, value: bytes) -> list[tuple[object, dict[str, object]]]:
        lst = http_sfv.List()
        lst.parse(value)
        return [(m.value, dict(m.params)) for m in lst]  # type: ignore[union-attr]

    def test_hitWithTtl(self) -> None:
        """RFC 9211 §2.1, §2.7: a hit with its remaining freshness."""
        v = p.cacheStatus(b"txgateway", hit=True, ttl=42.7)
        self.assertEqual(v, b"txgateway; hit; ttl=42")
        self.assertEqual(self.parse(v), [("txgateway", {"hit": True, "ttl": 42})])

    def test_forwardParameters(self) -> None:
        """RFC 9211 §2.2-§2.5, §2.8: fwd, fwd-status, stored, collapsed and detail parse as a valid SF List."""
        v = p.cacheStatus(b"txgateway", fwd="uri-miss", fwdStatus=200, stored=True, collapsed=True,
                          detail="set-cookie", ttl=-3)
        self.assertEqual(self.parse(v), [("txgateway", {"fwd": "uri-miss", "fwd-status": 200, "stored": True,
                                                        "collapsed": True, "ttl": -3, "detail": "set-cookie"})])

    def test_everyDetailIsAValidToken(self) -> None:
        """RFC 9211 §2.8: detail values emitted by the gateway are sf-tokens."""
        for detail in ("no-store", "private", "authorization", "vary-star", "set-cookie", "status", "stale",
                       "too-big", "method", "range", "max-stale", "stale-while-revalidate", "stale-if-error",
                       "only-if-cached", "upstream-failure"):
            self.assertEqual(self.parse(p.cacheStatus(b"c", detail=detail))[0][1]["detail"], detail)

    def test_nameIsTokenOrString(self) -> None:
        """RFC 9211 §2: the cache identifier is an sf-token or an sf-string."""
        self.assertEqual(p.cacheName("txgateway"), b"txgateway")
        self.assertEqual(p.cacheName("edge 1"), b'"edge 1"')
        self.assertEqual(self.parse(p.cacheStatus(p.cacheName("edge 1"), hit=True))[0][0], "edge 1")


class StrictExpiresTests(SynchronousTestCase):
    """Issue #19: RFC 9111 §5.3 with RFC 9110 §5.6.7."""

    def test_threeFormsParse(self) -> None:
        """RFC 9110 §5.6.7: IMF-fixdate, RFC 850 and asctime dates are all read."""
        t = 784111777.0
        self.assertEqual(p.strictHttpDate(b"Sun, 06 Nov 1994 08:49:37 GMT"), t)
        self.assertEqual(p.strictHttpDate(b"Sunday, 06-Nov-94 08:49:37 GMT"), t)
        self.assertEqual(p.strictHttpDate(b"Sun Nov  6 08:49:37 1994"), t)

    def test_anythingElseIsInvalid(self) -> None:
        """§5.3: another zone, a missing comma, doubled spaces, dashes or a one-digit hour are invalid."""
        for bad in (b"Sun, 06 Nov 1994 08:49:37 UTC", b"Sun 06 Nov 1994 08:49:37 GMT",
                    b"Sun,  06 Nov 1994 08:49:37 GMT", b"Sun, 06-Nov-1994 08:49:37 GMT",
                    b"Sun, 06 Nov 1994 8:49:37 GMT", b"0", b"", b"Sun, 06 Nov 1994 25:49:37 GMT"):
            self.assertIsNone(p.strictHttpDate(bad), bad)

    def test_invalidOrRepeatedExpiresIsStale(self) -> None:
        """§5.3: an invalid Expires, or two Expires lines, give no freshness at all."""
        good = (b"Expires", date(T0 + 100))
        self.assertEqual(p.lifetimeOf(stored(good), None), 100)
        self.assertEqual(p.lifetimeOf(stored((b"Expires", date(T0 + 100).replace(b"GMT", b"UTC"))), None), 0)
        self.assertEqual(p.lifetimeOf(stored(good, good), None), 0)


class AgeListTests(SynchronousTestCase):
    def test_listCountsByItsFirstMember(self) -> None:
        """RFC 9111 §5.1: `Age: 7200, 0` is 7200; on max-age=3600 the response is stale."""
        e = stored((b"Age", b"7200, 0"), (b"Cache-Control", b"max-age=3600"))
        self.assertEqual(p.currentAge(e, T0), 7200)
        self.assertEqual(p.assess(e, PLAIN, T0, None).action, p.VALIDATE)
        self.assertEqual(p.ageOf([(b"Age", b"30"), (b"Age", b"0")]), 30)


class TargetedFieldTests(SynchronousTestCase):
    """RFC 9213: targeted cache-control fields."""

    def test_targetedFieldReplacesCacheControlAndExpires(self) -> None:
        """RFC 9213 §2.1, §2.2: CDN-Cache-Control wins; Expires is ignored with it."""
        hs = [(b"Cache-Control", b"no-store"), (b"CDN-Cache-Control", b"max-age=60"), (b"Expires", b"0")]
        d = p.responseDirectives(hs)
        self.assertTrue(d.targeted)
        self.assertNotIn(b"no-store", d)
        self.assertEqual(d.seconds(b"max-age"), 60)
        e = stored(*hs)
        self.assertEqual(p.lifetimeOf(e, None), 60)
        self.assertIsNone(p.storeRefusal(b"GET", 200, hs, d, PLAIN, T0, None))

    def test_priorityAndInvalidValues(self) -> None:
        """RFC 9213 §2.1: the first listed field with a valid, non-empty value; an invalid one is skipped."""
        hs = [(b"Gateway-Cache-Control", b"no-store"), (b"CDN-Cache-Control", b"max-age=60"),
              (b"Cache-Control", b"max-age=5")]
        self.assertIn(b"no-store", p.responseDirectives(hs, (b"gateway-cache-control", b"cdn-cache-control")))
        self.assertEqual(p.responseDirectives(hs, (b"other",)).seconds(b"max-age"), 5)
        broken = [(b"CDN-Cache-Control", b"max-age=60;x, (a b)"), (b"Cache-Control", b"max-age=5")]
        self.assertFalse(p.responseDirectives(broken).targeted)

    def test_structuredBooleans(self) -> None:
        """RFC 8941 §3.3.6 in RFC 9213: `private=?0` is absent, `no-store=?1` present."""
        d = p.responseDirectives([(b"CDN-Cache-Control", b"private=?0, no-store=?1")])
        self.assertNotIn(b"private", d)
        self.assertIn(b"no-store", d)

    def test_storedEntryReadsItsRoutesTargets(self) -> None:
        """A stored response's directives follow the route's targeted_fields, set when it is read."""
        e = stored((b"Cache-Control", b"max-age=5"), (b"Gateway-Cache-Control", b"max-age=50"))
        self.assertEqual(p.lifetimeOf(e, None), 5)
        self.assertEqual(p.lifetimeOf(e.withTargets((b"gateway-cache-control",)), None), 50)


class IssueNineteenRuleTests(SynchronousTestCase):
    def test_acceptLanguageNormalised(self) -> None:
        """RFC 9111 §4.1 with RFC 9110 §12.5.4: order, case and how a weight is written do not matter."""
        a = p.varyValues((b"accept-language",), lookup((b"Accept-Language", b"en-US, fr;q=0.5")))
        b = p.varyValues((b"accept-language",), lookup((b"Accept-Language", b"FR;q=0.50,en-us")))
        c = p.varyValues((b"accept-language",), lookup((b"Accept-Language", b"fr, en-us")))
        self.assertEqual(a, b)
        self.assertNotEqual(a, c)

    def test_setCookieOptIn(self) -> None:
        """RFC 9111 §3 allows it; the route's store_set_cookie opts in."""
        hs = [(b"Cache-Control", b"max-age=60"), (b"Set-Cookie", b"a=1")]
        self.assertEqual(p.storeRefusal(b"GET", 200, hs, cc(b"max-age=60"), PLAIN, T0, None), "set-cookie")
        self.assertIsNone(p.storeRefusal(b"GET", 200, hs, cc(b"max-age=60"), PLAIN, T0, None, storeSetCookie=True))

    def test_serveStaleOnError(self) -> None:
        """RFC 9111 §4.2.4: the route's window, never with must-revalidate, no-cache or s-maxage."""
        e = stored((b"Cache-Control", b"max-age=10"))
        later = T0 + 100
        self.assertIsNone(p.staleIfError(e, PLAIN, later, None))
        self.assertEqual(p.staleIfError(e, PLAIN, later, None, onError=300), "serve-stale-on-error")
        self.assertIsNone(p.staleIfError(e, PLAIN, later, None, onError=60))
        for directive in (b"max-age=10, must-revalidate", b"max-age=10, no-cache", b"s-maxage=10",
                          b"max-age=10, proxy-revalidate"):
            self.assertIsNone(p.staleIfError(stored((b"Cache-Control", directive)), PLAIN, later, None, onError=300))
        self.assertGreaterEqual(p.retention(e, T0, None, None, 3600), 3600)


class RangeTests(SynchronousTestCase):
    """RFC 9110 §14.1.2, §13.1.5: ranges served from a stored complete response."""

    def test_byteRanges(self) -> None:
        """First-last, open-ended and suffix ranges; past the end is unsatisfiable; anything else is the whole."""
        from txgateway.caching.ranges import UNSATISFIABLE, byteRange

        self.assertEqual(byteRange(b"bytes=2-9", 100), (2, 9))
        self.assertEqual(byteRange(b"bytes=90-200", 100), (90, 99))
        self.assertEqual(byteRange(b"bytes=95-", 100), (95, 99))
        self.assertEqual(byteRange(b"bytes=-5", 100), (95, 99))
        self.assertEqual(byteRange(b"bytes=-500", 100), (0, 99))
        self.assertEqual(byteRange(b"bytes=100-", 100), UNSATISFIABLE)
        self.assertEqual(byteRange(b"bytes=-0", 100), UNSATISFIABLE)
        for whole in (b"bytes=0-1,5-6", b"items=0-1", b"bytes=9-2", b"bytes=-", b"nonsense"):
            self.assertIsNone(byteRange(whole, 100), whole)

    def test_ifRange(self) -> None:
        """§13.1.5: a strong ETag match or the exact Last-Modified; weak tags never match."""
        from txgateway.caching.ranges import ifRangeMatches

        e = stored((b"ETag", b'"a"'), (b"Last-Modified", date(T0 - 100)))
        self.assertTrue(ifRangeMatches(b'"a"', e))
        self.assertFalse(ifRangeMatches(b'"b"', e))
        self.assertFalse(ifRangeMatches(b'W/"a"', e))
        self.assertTrue(ifRangeMatches(date(T0 - 100), e))
        self.assertFalse(ifRangeMatches(date(T0 - 50), e))
