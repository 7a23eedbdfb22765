"""
Tracing end to end: the real gateway sends spans over OTLP/HTTP to a receiver the test starts.

Checks span names, attributes, parent ids and sampling against what the
backend saw, and that with the collector down requests are unaffected and
the dropped spans are counted.
"""

from __future__ import annotations

import select
import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e.harness import Backend, GatewayProcess, childEnv, deadPort, echoed, request, simpleConfig, waitFor

RECEIVER = Path(__file__).resolve().parent / "otlpreceiver.py"
PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
UNSAMPLED = "00-5bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"


class Receiver:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(RECEIVER), "0"], env=childEnv(),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self.proc.stdout is not None
        if not select.select([self.proc.stdout], [], [], 15)[0]:
            raise AssertionError("the OTLP receiver said nothing within 15s")
        first = self.proc.stdout.readline().decode(errors="replace")
        if not first.startswith("ready "):
            raise AssertionError(f"the OTLP receiver did not start: {first}")
        self.port = int(first.split()[1])

    def spans(self) -> list[dict[str, Any]]:
        return request(self.port, "GET", "/spans").json()  # type: ignore[no-any-return]

    def posts(self) -> list[dict[str, str]]:
        return request(self.port, "GET", "/posts").json()  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


def tracing(endpoint: str, sample: float, errors: bool = False) -> str:
    return (f"tracing:\n  otlp: {{endpoint: '{endpoint}', headers: {{x-api-key: e2e-secret}}}}\n"
            f"  sample: {sample}\n  always_sample_errors: {'true' if errors else 'false'}\n"
            f"  flush_interval: 100ms\n  timeout: 1s\n")


def attrs(span: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for a in span.get("attributes", []):
        (kind, value), = a["value"].items()
        out[a["key"]] = int(value) if kind == "intValue" else value
    return out


def metric(g: GatewayProcess, name: str) -> float:
    total = 0.0
    for line in g.request("GET", "/metrics").body.decode().splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


class TracingTests(SynchronousTestCase):
    def start(self, config: str) -> GatewayProcess:
        g = GatewayProcess(config)
        self.addCleanup(g.cleanup)
        return g.start()

    def setUp(self) -> None:
        self.backend = Backend("b1").start()
        self.addCleanup(self.backend.stop)

    def receiver(self) -> Receiver:
        r = Receiver()
        self.addCleanup(r.stop)
        return r

    def test_spansReachTheCollectorWithNamesAttributesAndParents(self) -> None:
        """A traced request: a server span under the caller's, a client span under it, and the backend under that."""
        rcv = self.receiver()
        g = self.start(simpleConfig([self.backend.url], extra=tracing(f"http://127.0.0.1:{rcv.port}", 1.0)))
        r = g.request("GET", "/echo?x=1", {"traceparent": PARENT, "X-Request-ID": "e2e-trace-1"})
        self.assertEqual(r.status, 200)
        seen = {k.lower(): v for k, v in echoed(r)["headers"]}
        spans = waitFor(lambda: (s := rcv.spans()) and len(s) >= 2 and s, what="two spans at the receiver")
        self.assertEqual(len(spans), 2, "probes of /ready are not traced")
        server = next(s for s in spans if s["name"] == "HTTP GET")
        client = next(s for s in spans if s["name"] == "upstream GET")
        self.assertEqual(server["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736")
        self.assertEqual(server["parentSpanId"], "00f067aa0ba902b7")
        self.assertEqual(server["kind"], 2)
        self.assertEqual(client["kind"], 3)
        self.assertEqual(client["traceId"], server["traceId"])
        self.assertEqual(client["parentSpanId"], server["spanId"])
        self.assertEqual(seen["traceparent"], f"00-{client['traceId']}-{client['spanId']}-01")
        a = attrs(server)
        self.assertEqual(a["http.route"], "all")
        self.assertEqual(a["http.response.status_code"], 200)
        self.assertEqual(a["txgateway.upstream"], "app")
        self.assertEqual(a["txgateway.request_id"], "e2e-trace-1")
        self.assertEqual(a["client.address"], "127.0.0.1")
        self.assertIn("server.address", a)
        c = attrs(client)
        self.assertEqual(c["txgateway.attempt"], 1)
        self.assertEqual(c["txgateway.target"], self.backend.url)
        self.assertEqual(c["txgateway.outcome"], "status_200")
        self.assertLessEqual(int(server["startTimeUnixNano"]), int(client["startTimeUnixNano"]))
        self.assertLessEqual(int(client["endTimeUnixNano"]), int(server["endTimeUnixNano"]))
        self.assertEqual(server["resource"]["service.name"], {"stringValue": "txgateway"})
        self.assertEqual(rcv.posts()[0]["x-api-key"], "e2e-secret")
        self.assertEqual(rcv.posts()[0]["content-type"], "application/json")

        # Parent-based: a caller that did not sample is not exported, and 00 goes on.
        r = g.request("GET", "/echo", {"traceparent": UNSAMPLED})
        seen = {k.lower(): v for k, v in echoed(r)["headers"]}
        self.assertTrue(seen["traceparent"].endswith("-00"))
        g.request("GET", "/echo", {"traceparent": PARENT.replace("4bf9", "6bf9")})
        waitFor(lambda: any(s["traceId"].startswith("6bf9") for s in rcv.spans()), what="the third trace")
        self.assertFalse(any(s["traceId"].startswith("5bf9") for s in rcv.spans()))

    def test_ratioZeroKeepsOnlyErrorsWhenAsked(self) -> None:
        """sample 0 with always_sample_errors: new 200s are not exported, a 502 is."""
        rcv = self.receiver()
        g = self.start(simpleConfig([self.backend.url], extra=tracing(f"http://127.0.0.1:{rcv.port}", 0.0, True)))
        for _ in range(10):
            self.assertEqual(g.request("GET", "/echo").status, 200)
        self.assertEqual(g.request("GET", "/status/502").status, 502)
        spans = waitFor(lambda: rcv.spans(), what="the error's spans")
        server = [s for s in spans if s["name"] == "HTTP GET"]
        self.assertEqual(len(server), 1)
        self.assertEqual(attrs(server[0])["http.response.status_code"], 502)
        self.assertEqual(server[0]["status"], {"code": 2})
        self.assertEqual(metric(g, "txgateway_trace_spans_exported_total"), 2)

    def test_collectorDownDropsAndCountsWhileRequestsGoOn(self) -> None:
        """No collector: every request is answered as usual and the lost spans are counted."""
        g = self.start(simpleConfig([self.backend.url], extra=tracing(f"http://127.0.0.1:{deadPort()}", 1.0)))
        for _ in range(20):
            self.assertEqual(g.request("GET", "/echo", timeout=5).status, 200)
        waitFor(lambda: metric(g, 'txgateway_trace_spans_dropped_total{reason="export_failed"}') >= 40,
                what="the dropped spans counted")
        self.assertEqual(metric(g, "txgateway_trace_spans_exported_total"), 0)
        self.assertEqual(g.stop(), 0)
