"""
Parsing upstreams.NAME.concurrency (limit, adaptive, queue, priority) and a
route's batch, coalesce and idempotent_post into specs, with key paths and
lines in every problem.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from txgateway.concurrency.specs import (
    DEFAULT_KEY_HEADERS,
    AdaptiveSpec,
    BatchSpec,
    CoalesceSpec,
    ConcurrencySpec,
    FixedSpec,
    PrioritySpec,
    QueueSpec,
    RouteConcurrency,
)
from txgateway.config.parser_concurrency import ROUTE_KEYS, checkPriorityRoutes, parseConcurrency, parseRouteConcurrency
from txgateway.config.source import loadYAML

PATH = "upstreams.model.concurrency"
ROUTE = "routes[0](predict)"


class LinedDict(dict):  # type: ignore[type-arg]
    """A mapping as the config loader gives it: with the line of each key."""

    def __init__(self, items: dict[str, Any], line: int, lines: dict[str, int]) -> None:
        super().__init__(items)
        self.line = line
        self.lines = lines


def parse(value: Any) -> tuple[ConcurrencySpec | None, list[tuple[str, int | None, str]]]:
    return parseConcurrency(value, PATH, 7)


class ConcurrencyTests(SynchronousTestCase):
    def test_absentIsNoLimit(self) -> None:
        """No concurrency key: no limit, no problem."""
        self.assertEqual(parse(None), (None, []))

    def test_fixed(self) -> None:
        """{limit: N} with the default queue (100, 1s) and one class."""
        spec, problems = parse({"limit": 8})
        self.assertEqual(problems, [])
        self.assertEqual(spec, ConcurrencySpec(FixedSpec(8), QueueSpec(100, 1.0), PrioritySpec()))

    def test_adaptive(self) -> None:
        """{adaptive: true, min, max} and the tuning keys, durations in config syntax."""
        spec, problems = parse({"adaptive": True, "min": 2, "max": 64, "initial": 4, "tolerance": 1.5,
                                "window": "500ms", "probe_interval": "2m", "queue": {"size": 10, "max_wait": "250ms"}})
        self.assertEqual(problems, [])
        assert spec is not None
        self.assertEqual(spec.limit, AdaptiveSpec(2, 64, 4, 1.5, 0.5, 120.0))
        self.assertEqual(spec.queue, QueueSpec(10, 0.25))

    def test_adaptiveDefaults(self) -> None:
        """adaptive: true alone means min 1, max 200."""
        spec, _ = parse({"adaptive": True})
        assert spec is not None
        self.assertEqual((spec.limit.min, spec.limit.max), (1, 200))  # type: ignore[union-attr]

    def test_problemsWithLines(self) -> None:
        """Each mistake names its key path and line, all at once."""
        value = LinedDict({"adaptive": True, "limit": 5, "min": 10, "max": 5, "speed": 1, "tolerance": 0.5},
                          7, {"adaptive": 8, "limit": 9, "min": 10, "max": 11, "speed": 12, "tolerance": 13})
        spec, problems = parse(value)
        self.assertIsNone(spec)
        self.assertEqual(sorted(problems), [
            (f"{PATH}.limit", 9, "a fixed limit and adaptive: true exclude each other (use min and max)"),
            (f"{PATH}.min", 10, "min (10) is above max (5)"),
            (f"{PATH}.speed", 12, "unknown key (expected one of: adaptive, initial, limit, max, min, per_target, "
                                  "priority, probe_interval, queue, tolerance, window)"),
            (f"{PATH}.tolerance", 13, "not a tolerance: 0.5 (a number from 1.0 to 10; 1.25 allows latency 25% "
                                      "over its minimum)"),
        ])

    def test_neitherLimitNorAdaptive(self) -> None:
        """A concurrency section must say which limit."""
        self.assertEqual(parse({"queue": {"size": 5}}), (None, [(PATH, 7, "needs limit: N, or adaptive: true")]))

    def test_adaptiveKeysWithoutAdaptive(self) -> None:
        """min/max without adaptive: true would be silently ignored: refused instead."""
        _, problems = parse({"limit": 4, "max": 10})
        self.assertEqual(problems, [(f"{PATH}.max", 7, "only with adaptive: true")])

    def test_badValues(self) -> None:
        """Limits are whole numbers >= 1, a queue size >= 0, max_wait a positive duration."""
        _, problems = parse({"limit": 0, "queue": {"size": -1, "max_wait": "soon"}})
        self.assertEqual(sorted(p[0] for p in problems), [f"{PATH}.limit", f"{PATH}.queue.max_wait",
                                                          f"{PATH}.queue.size"])
        self.assertEqual(parse("8"), (None, [(PATH, 7, "must be a mapping: {limit: N} or {adaptive: true, "
                                                       "min: 1, max: 200}")]))

    def test_queueSizeZero(self) -> None:
        """queue: {size: 0} is allowed: shed at once at the limit."""
        spec, problems = parse({"limit": 2, "queue": {"size": 0}})
        self.assertEqual((problems, spec and spec.queue), ([], QueueSpec(0, 1.0)))


class PriorityTests(SynchronousTestCase):
    def spec(self, priority: Any) -> tuple[PrioritySpec | None, list[tuple[str, int | None, str]]]:
        spec, problems = parse({"limit": 4, "priority": priority})
        return (spec.priority if spec else None), problems

    def test_classesAndMaps(self) -> None:
        """classes highest first, default the lowest, consumer and route maps."""
        p, problems = self.spec({"classes": ["paid", "free"], "consumer": {"acme": "paid"},
                                 "route": {"health": "paid", "bulk": "free"}})
        self.assertEqual(problems, [])
        assert p is not None
        self.assertEqual((p.classes, p.default), (("paid", "free"), "free"))
        self.assertEqual(dict(p.consumer), {"acme": "paid"})

    def test_classOf(self) -> None:
        """A request's class: the higher of its consumer's and route's, else the default."""
        p = PrioritySpec(("gold", "paid", "free"), "free", {"acme": "paid", "vip": "gold"}, {"health": "gold",
                                                                                           "bulk": "free"})
        self.assertEqual(p.classOf("predict", None), "free")
        self.assertEqual(p.classOf("predict", "acme"), "paid")
        self.assertEqual(p.classOf("bulk", "acme"), "paid")
        self.assertEqual(p.classOf("health", "acme"), "gold")
        self.assertEqual(p.classOf(None, "vip"), "gold")

    def test_unknownClass(self) -> None:
        """A class used but not listed is a problem at its key."""
        _, problems = self.spec({"classes": ["paid", "free"], "default": "gold", "consumer": {"acme": "platinum"}})
        self.assertEqual(sorted(p[0] for p in problems), [f"{PATH}.priority.consumer.acme", f"{PATH}.priority.default"])
        self.assertIn("'platinum' is not one of the classes: paid, free", [p[2] for p in problems])

    def test_classesRequired(self) -> None:
        """priority without classes cannot be ordered."""
        _, problems = self.spec({"consumer": {"acme": "paid"}})
        self.assertEqual(problems[0][0], f"{PATH}.priority.classes")

    def test_duplicateClass(self) -> None:
        """A class listed twice is a mistake."""
        _, problems = self.spec({"classes": ["paid", "paid"]})
        self.assertEqual(problems, [(f"{PATH}.priority.classes", 7, "class 'paid' is listed twice")])

    def test_routeNamesChecked(self) -> None:
        """Once routes are known, a priority.route name that is no route's is reported."""
        spec, _ = parse({"limit": 4, "priority": {"classes": ["a", "b"], "route": {"predict": "a", "typo": "a"}}})
        assert spec is not None
        self.assertEqual(checkPriorityRoutes(spec, ["predict"], PATH, 7),
                         [(f"{PATH}.priority.route.typo", 7, "no route is named 'typo'")])

    def test_specsCompareAndHash(self) -> None:
        """Equal configs give equal, hashable specs: a reload keeps an unchanged controller."""
        value = {"adaptive": True, "priority": {"classes": ["a", "b"], "consumer": {"x": "a"}}}
        a, _ = parse(value)
        b, _ = parse(value)
        self.assertEqual(a, b)
        self.assertEqual(hash(a), hash(b))


class RouteTests(SynchronousTestCase):
    def test_routeKeys(self) -> None:
        """The keys the route parser must accept."""
        self.assertEqual(ROUTE_KEYS, ("batch", "coalesce", "idempotent_post"))

    def test_noneOfThem(self) -> None:
        """A route without the keys: everything off."""
        self.assertEqual(parseRouteConcurrency({"name": "x"}, ROUTE, 3), (RouteConcurrency(), []))

    def test_batch(self) -> None:
        """batch with every key, max_wait in config duration syntax."""
        spec, problems = parseRouteConcurrency({"batch": {"target_path": "/v1/batch", "max_size": 16,
                                                          "max_wait": "5ms", "envelope": "instances",
                                                          "on_error": "single"}}, ROUTE, 3)
        self.assertEqual(problems, [])
        self.assertEqual(spec.batch, BatchSpec("/v1/batch", 16, 0.005, "instances", "single"))

    def test_batchDefaults(self) -> None:
        """Only target_path is required: 32 items, 5ms, a bare array, fail."""
        spec, _ = parseRouteConcurrency({"batch": {"target_path": "/b"}}, ROUTE, 3)
        self.assertEqual(spec.batch, BatchSpec("/b", 32, 0.005, None, "fail"))

    def test_batchProblems(self) -> None:
        """Missing target_path, unknown envelope and on_error, sizes out of range: each at its line."""
        batch = LinedDict({"max_size": 0, "envelope": "inputs", "on_error": "retry", "max_wait": 0},
                          4, {"max_size": 5, "envelope": 6, "on_error": 7, "max_wait": 8})
        route = LinedDict({"batch": batch}, 3, {"batch": 4})
        _, problems = parseRouteConcurrency(route, ROUTE, 3)
        self.assertEqual(sorted((p[0], p[1]) for p in problems), [
            (f"{ROUTE}.batch.envelope", 6), (f"{ROUTE}.batch.max_size", 5), (f"{ROUTE}.batch.max_wait", 8),
            (f"{ROUTE}.batch.on_error", 7), (f"{ROUTE}.batch.target_path", 4),
        ])

    def test_coalesce(self) -> None:
        """coalesce: true keys on the default headers; a headers list replaces them, lower-cased."""
        spec, _ = parseRouteConcurrency({"coalesce": True, "idempotent_post": True}, ROUTE, 3)
        self.assertEqual((spec.coalesce, spec.idempotent_post), (CoalesceSpec(DEFAULT_KEY_HEADERS), True))
        self.assertIn(b"authorization", DEFAULT_KEY_HEADERS)
        spec, problems = parseRouteConcurrency({"coalesce": {"headers": ["Accept", "X-Tenant", "accept"]}}, ROUTE, 3)
        self.assertEqual((problems, spec.coalesce), ([], CoalesceSpec((b"accept", b"x-tenant"))))

    def test_coalesceProblems(self) -> None:
        """Not a boolean, headers not a list, a bad header name."""
        self.assertEqual(parseRouteConcurrency({"coalesce": "yes"}, ROUTE, 3)[1][0][0], f"{ROUTE}.coalesce")
        self.assertEqual(parseRouteConcurrency({"coalesce": {"headers": "accept"}}, ROUTE, 3)[1][0][0],
                         f"{ROUTE}.coalesce.headers")
        self.assertEqual(parseRouteConcurrency({"coalesce": {"headers": ["a b"]}}, ROUTE, 3)[1][0][0],
                         f"{ROUTE}.coalesce.headers[0]")

    def test_fromYAML(self) -> None:
        """Read from a real config file, problems carry the file's lines."""
        tree, _ = loadYAML(
            "upstreams:\n"
            "  model:\n"
            "    concurrency:\n"
            "      adaptive: true\n"
            "      max: 0\n"
            "routes:\n"
            "  - name: predict\n"
            "    batch:\n"
            "      max_size: 9999999\n", "gw.yaml")
        _, problems = parseConcurrency(tree["upstreams"]["model"]["concurrency"], PATH, None)
        self.assertEqual([(p[0], p[1]) for p in problems], [(f"{PATH}.max", 5)])
        _, problems = parseRouteConcurrency(tree["routes"][0], ROUTE, None)
        self.assertEqual(sorted((p[0], p[1]) for p in problems), [(f"{ROUTE}.batch.max_size", 9),
                                                                   (f"{ROUTE}.batch.target_path", 8)])


class LayeringTests(SynchronousTestCase):
    def test_runtimeModulesImportNoConfig(self) -> None:
        """Only the parsers touch the config package: the running parts (and the specs) stay below it."""
        code = ("import json, sys\n"
                "import txgateway.concurrency.build, txgateway.concurrency.batching, txgateway.concurrency.coalescing\n"
                "print(json.dumps(sorted(m for m in sys.modules if m.startswith('txgateway.'))))\n")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        self.assertEqual(json.loads(out), sorted([
            "txgateway.concurrency", "txgateway.concurrency.batching", "txgateway.concurrency.build",
            "txgateway.concurrency.coalescing", "txgateway.concurrency.interfaces", "txgateway.concurrency.limits",
            "txgateway.concurrency.queue", "txgateway.concurrency.specs"]))
