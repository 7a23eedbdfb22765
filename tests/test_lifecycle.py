"""
Start-up and stop, on a fake reactor: the listen backlog, a bind failure, the drain's exit status.

The end-to-end side (a real twistd, a port really in use, a real SIGTERM)
is tests/e2e/test_process.py.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from txgateway.config import parseConfig
from txgateway.listening import StartupError, listenBacklog, withBacklog
from txgateway.observe import Metrics
from txgateway.service import EXIT_DRAIN_CUT, GatewayService
from txgateway.tap import _installStartupErrorHook

CONFIG = """\
server:
  listen: "tcp:8080:interface=127.0.0.1"
  {extra}
upstreams:
  app:
    targets: [http://127.0.0.1:9]
routes:
  - name: all
    match: {{path_prefix: /}}
    upstream: app
"""


def _service(extra: str = "", reactor: Any = None) -> tuple[GatewayService, Any]:
    reactor = reactor if reactor is not None else MemoryReactorClock()
    service = GatewayService(parseConfig(CONFIG.format(extra=extra)), reactor, clock=reactor,
                             metrics=Metrics(processMetrics=False))
    return service, reactor


class _PortInUse(MemoryReactorClock):
    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        raise CannotListenError(interface, port, OSError(98, "Address already in use"))


class BacklogTests(SynchronousTestCase):
    def test_configuredBacklogIsUsed(self) -> None:
        """server.backlog reaches the listening socket."""
        service, reactor = _service("backlog: 1234")
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(reactor.tcpServers[0][2], 1234)

    def test_defaultIsTheKernelsSomaxconn(self) -> None:
        """Without server.backlog, the kernel's somaxconn (4096 when it cannot be read), not Twisted's 50."""
        with tempfile.TemporaryDirectory() as d:
            somaxconn = Path(d, "somaxconn")
            somaxconn.write_text("8192\n")
            self.assertEqual(listenBacklog(None, str(somaxconn)), 8192)
            self.assertEqual(listenBacklog(None, str(somaxconn) + ".missing"), 4096)
            self.assertEqual(listenBacklog(77, str(somaxconn)), 77)
        service, reactor = _service()
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(reactor.tcpServers[0][2], listenBacklog(None))

    def test_endpointStrings(self) -> None:
        """backlog= is added to the endpoint kinds that take it; one written in the string wins."""
        self.assertEqual(withBacklog("tcp:8080", 10), "tcp:8080:backlog=10")
        self.assertEqual(withBacklog("unix:/run/gw.sock", 10), "unix:/run/gw.sock:backlog=10")
        self.assertEqual(withBacklog("tcp:8080:backlog=5", 10), "tcp:8080:backlog=5")
        self.assertEqual(withBacklog("systemd:domain=INET:index=0", 10), "systemd:domain=INET:index=0")


class BindFailureTests(SynchronousTestCase):
    def test_aPortInUseRefusesToStart(self) -> None:
        """startService raises one short StartupError (twistd then exits non-zero) and stops what it started."""
        service, _ = _service(reactor=_PortInUse())
        with self.assertRaises(StartupError) as caught:
            service.startService()
        self.assertEqual(str(caught.exception), "cannot listen on 127.0.0.1:8080: Address already in use")
        self.assertFalse(service.running)
        self.assertFalse(service.gateway.state.ready)

    def test_theExceptHookShowsItAsOneLine(self) -> None:
        """The tap's hook prints nothing more than the one line (the log has it); other errors keep their hook."""
        seen: list[Any] = []
        previous = sys.excepthook
        self.addCleanup(setattr, sys, "excepthook", previous)
        sys.excepthook = lambda *a: seen.append(a)
        _installStartupErrorHook({})
        sys.excepthook(StartupError, StartupError("cannot listen on x"), None)
        self.assertEqual(seen, [])
        error = ValueError("a bug")
        sys.excepthook(ValueError, error, None)
        self.assertEqual(seen, [(ValueError, error, None)])


class DrainExitTests(SynchronousTestCase):
    def test_aDrainThatCutsRequestsSetsExitStatus3(self) -> None:
        """A request still in flight at timeouts.drain: the drain cuts it and the exit status is 3."""
        service, reactor = _service("timeouts: {drain: 5s}")
        service.startService()
        service.gateway.state.requestStarted()
        d = service.stopService()
        reactor.advance(4.9)
        self.assertNoResult(d)
        self.assertEqual(service.exitStatus, 0)
        reactor.advance(0.1)
        self.successResultOf(d)
        self.assertEqual(service.exitStatus, EXIT_DRAIN_CUT)

    def test_aCleanDrainKeepsExitStatus0(self) -> None:
        """Nothing in flight: the drain ends at once and the exit status stays 0."""
        service, reactor = _service("timeouts: {drain: 5s}")
        service.startService()
        d = service.stopService()
        reactor.advance(0)
        self.successResultOf(d)
        self.assertEqual(service.exitStatus, 0)
