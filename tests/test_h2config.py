"""
The upstream protocol keys (issue 21): C{upstreams.NAME.protocol}, the
HTTP/2 pool keys, C{health.active.grpc_service} and gRPC retry conditions,
parsed with errors that name the key path and line; and the client each
protocol gets.
"""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from txgateway.building import buildRuntime
from txgateway.config import parseConfig
from txgateway.config.errors import ConfigError
from txgateway.http.client.agent import UpstreamAgent
from txgateway.http.client.h2client import H2Client
from txgateway.observe import Metrics

BASE = """\
upstreams:
  models:
    targets: [http://127.0.0.1:8001]
{extra}
routes:
  - {{name: infer, match: {{path_prefix: /}}, upstream: models}}
"""


def parse(extra: str) -> object:
    return parseConfig(BASE.format(extra=extra))


def problems(extra: str) -> list[str]:
    try:
        parse(extra)
    except ConfigError as e:
        return [str(p) for p in e.problems]
    raise AssertionError("the config was accepted")


class ProtocolKeyTests(SynchronousTestCase):
    def test_defaultIsHttp1(self) -> None:
        """Without protocol:, an upstream speaks HTTP/1.1 as before."""
        config = parseConfig(BASE.format(extra=""))
        self.assertEqual(config.upstreams["models"].protocol, "http1")

    def test_grpcWithItsKeys(self) -> None:
        """protocol: grpc with the HTTP/2 pool keys, a gRPC health check and gRPC retry conditions."""
        config = parseConfig(BASE.format(extra="""\
    protocol: grpc
    pool: {max_connections: 2, max_streams: 50, ping_interval: 30s, ping_timeout: 5s}
    health: {active: {grpc_service: "", interval: 2s}}
    retries: {attempts: 2, on: ["grpc:UNAVAILABLE", connect_failure]}"""))
        u = config.upstreams["models"]
        self.assertEqual(u.protocol, "grpc")
        self.assertEqual((u.pool.max_connections, u.pool.max_streams, u.pool.ping_interval, u.pool.ping_timeout),
                         (2, 50, 30.0, 5.0))
        assert u.health.active is not None
        self.assertEqual(u.health.active.grpc_service, "")
        self.assertEqual(u.retries.on, ("grpc:UNAVAILABLE", "connect_failure"))

    def test_unknownProtocolNamesTheKeyAndLine(self) -> None:
        """A protocol that is not http1, http2 or grpc is refused with its key path and line."""
        found = problems("    protocol: http3")
        self.assertEqual(len(found), 1)
        self.assertIn("upstreams.models.protocol", found[0])
        self.assertIn("line 4", found[0])
        self.assertIn("http1, http2, grpc", found[0])

    def test_grpcHealthNeedsHttp2(self) -> None:
        """A gRPC health check on an HTTP/1.1 upstream cannot work: refused, naming the key."""
        found = problems('    health: {active: {grpc_service: "my.Model"}}')
        self.assertEqual(len(found), 1)
        self.assertIn("upstreams.models.health.active.grpc_service", found[0])
        self.assertIn("protocol: grpc", found[0])

    def test_badGrpcRetryCondition(self) -> None:
        """grpc:NAME must name a gRPC status code, and only a grpc upstream may use them."""
        found = problems('    protocol: grpc\n    retries: {on: ["grpc:NOPE"]}')
        self.assertEqual(len(found), 1)
        self.assertIn("upstreams.models.retries.on", found[0])
        self.assertIn("UNAVAILABLE", found[0])
        found = problems('    retries: {on: ["grpc:UNAVAILABLE"]}')
        self.assertIn("need protocol: grpc", found[0])

    def test_badPoolKeys(self) -> None:
        """max_streams must be a positive integer."""
        found = problems("    protocol: http2\n    pool: {max_streams: 0}")
        self.assertIn("upstreams.models.pool.max_streams", found[0])


class ClientChoiceTests(SynchronousTestCase):
    def build(self, extra: str) -> object:
        config = parseConfig(BASE.format(extra=extra))
        reactor = MemoryReactorClock()
        runtime = buildRuntime(config, reactor=reactor, clock=reactor, metrics=Metrics())
        return runtime.clusters["models"].agent

    def test_http2AndGrpcGetTheHttp2Client(self) -> None:
        """protocol: http2 and grpc upstreams send through the HTTP/2 client; http1 through the HTTP/1.1 one."""
        self.assertIsInstance(self.build("    protocol: http2"), H2Client)
        self.assertIsInstance(self.build("    protocol: grpc"), H2Client)
        self.assertIsInstance(self.build(""), UpstreamAgent)

    def test_reloadKeepsTheClientUnlessProtocolOrPoolChange(self) -> None:
        """A reload keeps an upstream's HTTP/2 client (and its connections) unless protocol or pool changed."""
        reactor = MemoryReactorClock()
        metrics = Metrics()

        def build(extra: str, previous: object = None) -> object:
            config = parseConfig(BASE.format(extra=extra))
            return buildRuntime(config, reactor=reactor, clock=reactor, metrics=metrics,
                                previous=previous)  # type: ignore[arg-type]

        first = build("    protocol: grpc")
        same = build("    protocol: grpc", first)
        self.assertIs(same.clusters["models"].agent, first.clusters["models"].agent)
        bigger = build("    protocol: grpc\n    pool: {max_streams: 10}", same)
        self.assertIsNot(bigger.clusters["models"].agent, same.clusters["models"].agent)
        back = build("", bigger)
        self.assertIsInstance(back.clusters["models"].agent, UpstreamAgent)
