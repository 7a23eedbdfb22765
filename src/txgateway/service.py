# -*- test-case-name: tests.test_lifecycle,tests.test_reloading -*-
"""
The gateway as a Twisted service: start, reload, drain.

L{GatewayService} owns one L{Gateway} (the swappable runtime plus process
state) and the listening ports.  A config becomes a L{Runtime} through
L{txgateway.building.buildRuntime}, which keeps what survives from the
previous runtime; the listeners and the listen backlog are in
L{txgateway.listening}.  What stays here is the order of things: start-up
(and its one-line failure), reload (atomic swap, housekeeping after) and the
drain sequence.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from txgateway import probing, stores
from txgateway.building import ClientFactory, Gateway, accessLogFor, buildRuntime, needsRedis
from txgateway.config import ConfigError, GatewayConfig, loadConfig
from txgateway.discovering import Discovery, droppedText
from txgateway.gateway import GatewayRoot, Runtime
from txgateway.http.process import markCleanStop
from txgateway.http.sending import WriteBatcher
from txgateway.http.site import GatewaySite
from txgateway.listening import Listener, StartupError, bindProblem, boundAddress, listenBacklog, withBacklog
from txgateway.observe import Metrics
from txgateway.observe.otlp import buildTracing
from txgateway.observe.timeline import Timeline
from txgateway.protection.build import retireAdmission, stopAdmission
from txgateway.reloading import ConfigWatcher
from txgateway.splitting import stopMirrors
from txgateway.tls.watching import upstreamCertificateWatch

__all__ = ["EXIT_DRAIN_CUT", "EXIT_STARTUP_FAILED", "GatewayService"]

log = Logger(namespace="txgateway")


# The exit status of a drain that reached server.timeouts.drain with
# requests still in flight and cut them: orchestration tells it from a clean
# stop (0).  Documented in docs/operations.md.
EXIT_DRAIN_CUT = 3
# The exit status when the listener failed after start-up began.
EXIT_STARTUP_FAILED = 1


class GatewayService(MultiService):
    """The whole gateway: listeners, runtime, reloads and the drain."""

    def __init__(self, config: GatewayConfig, reactor: Any, clock: IReactorTime | None = None,
                 configPath: str | None = None,
                 metrics: Metrics | None = None, rng: _random.Random | None = None,
                 loadConfig: Callable[[str], GatewayConfig] = loadConfig,
                 listenFd: int | None = None, adminFd: int | None = None, workerId: int | None = None,
                 clients: ClientFactory | None = None, accessLogFd: int | None = None,
                 shared: dict[str, Any] | None = None) -> None:
        """
        @param loadConfig: how a reload reads C{configPath}.
        @param clients: makes each upstream's client (see
            L{txgateway.building.buildRuntime}); by default the pooled
            HTTP/1.1 client.  Tests pass in-memory ones.
        @param accessLogFd: in a worker, the pipe its access-log lines go
            to (the supervisor writes them to C{logging.access_log_file}).
        """
        super().__init__()
        self.workerId = workerId
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.configPath = configPath
        self.metrics = metrics if metrics is not None else Metrics()
        self.rng = rng or _random.Random()
        self._loadConfig = loadConfig
        self._clients = clients
        self.redis = stores.makeRedis(config.stores, reactor) if needsRedis(config) else None
        self.shared: dict[str, Any] = {} if shared is None else shared  # state kept across reloads (and the fleet)
        self.accessLog = accessLogFor(config, self.clock, accessLogFd)
        # Shared by the client side and every upstream pool: each side's
        # event writes to the other side's sockets.
        self.writes = WriteBatcher()
        self.gateway = Gateway()
        self.metrics.beforeRender = self._settleLazyState
        self.gateway.state.workerId = workerId
        self.accessLog.worker = workerId
        self.gateway.runtime = self._build(config, None)
        # Tracing and the status page's timeline (issue #27): built only when configured.
        self.gateway.state.tracer, exporter = buildTracing(config.tracing, reactor, self.clock, self.gateway.state.ids,
                                                           self.metrics, workerId)
        self.timeline = Timeline(self.metrics, self.clock) if config.admin is not None else None
        certificates = upstreamCertificateWatch(config, self.clock, self.gateway)  # issue 21: rotated files
        self._observers = [s for s in (exporter, self.timeline, certificates) if s is not None]
        for s in self._observers:
            s.setServiceParent(self)
        self.discovery = Discovery(self, reactor, self.clock, self.metrics)  # started before the listeners (#22)
        self.discovery.attach(self.gateway.runtime, None)
        self.site = GatewaySite(GatewayRoot(self.gateway), config.server, self.metrics, reactor=reactor,
                                writes=self.writes, onRefusal=self._refused)
        backlog = listenBacklog(config.server.backlog)
        self.listener = Listener(reactor, withBacklog(config.server.listen, backlog), self.site, listenFd,
                                 onCertificate=self.metrics.certificateObserver("listener", "server.listen"))
        self.listener.setServiceParent(self)
        self.adminListener: Listener | None = None
        if config.admin is not None:
            from txgateway.admin import makeAdminSite

            startToken = config.admin.token
            self.adminSite = makeAdminSite(self, self.clock, lambda: self._adminToken(startToken), reactor=reactor)
            self.adminListener = Listener(reactor, withBacklog(config.admin.listen, backlog), self.adminSite, adminFd,
                                          onCertificate=self.metrics.certificateObserver("admin", "admin.listen"))
            self.adminListener.setServiceParent(self)
        self.healthServices = MultiService()
        self.healthServices.setServiceParent(self)
        self._checkers: dict[str, Any] = {}
        self._syncHealthCheckers(None)
        self.stopping: Deferred[None] | None = None
        # What the process should exit with once the reactor has stopped
        # (L{txgateway.tap} applies it): 0, EXIT_DRAIN_CUT or EXIT_STARTUP_FAILED.
        self.exitStatus = 0
        self.watcher: ConfigWatcher | None = None
        if configPath is not None:
            self.watcher = ConfigWatcher(configPath, self.reload, self.clock, config.server.watch_config)
            self.watcher.setServiceParent(self)

    @property
    def config(self) -> GatewayConfig:
        return self.gateway.runtime.config

    def _adminToken(self, startToken: str | None) -> str | None:
        """The admin token of the running config, so a reload can rotate it; never dropped by one."""
        admin = self.config.admin
        return admin.token if admin is not None and admin.token is not None else startToken

    def _settleLazyState(self) -> None:
        """Read every breaker's state: an expired open turns half-open (and says so) now."""
        for cluster in self.gateway.runtime.clusters.values():
            for endpoint in cluster.endpoints:
                if endpoint.breaker is not None:
                    endpoint.breaker.state  # noqa: B018 - reading settles the lazy transition

    def _refused(self, client: str, method: bytes, target: bytes, headers: Any, status: int) -> str:
        """A request the listening channel refused: its request id and access-log line (see L{AccessLog.refused})."""
        return self.accessLog.refused(self.gateway.state.ids, self.clock.seconds(), client, method, target, headers,
                                      status)

    def _build(self, config: GatewayConfig, previous: Runtime | None) -> Runtime:
        return buildRuntime(config, reactor=self.reactor, clock=self.clock, metrics=self.metrics,
                            previous=previous, rng=self.rng, accessLog=self.accessLog, redis=self.redis,
                            shared=self.shared, writes=self.writes, clients=self._clients)

    def _syncHealthCheckers(self, previous: Runtime | None) -> None:
        """Start checkers for new or changed upstreams, stop those of removed ones."""
        runtime = self.gateway.runtime
        for name, cluster in runtime.clusters.items():
            old = self._checkers.get(name)
            if old is not None and old.cluster is cluster:
                continue
            before = previous.clusters.get(name) if previous is not None else None
            if old is not None and before is not None and before.config.health == cluster.config.health \
                    and before.config.targets == cluster.config.targets and before.config.tls == cluster.config.tls:
                old.cluster = cluster
                continue
            if old is not None:
                old.disownServiceParent()
                del self._checkers[name]
            checker = probing.checkerFor(cluster, self.reactor, self.clock, self.metrics)
            if checker is not None:
                checker.setServiceParent(self.healthServices)
                self._checkers[name] = checker
        for name in list(self._checkers):
            if name not in runtime.clusters:
                self._checkers.pop(name).disownServiceParent()

    # -- lifecycle

    def startService(self) -> None:
        super().startService()
        assert self.listener.listening is not None
        where = self.config.server.listen
        failure: list[Any] = []

        def up(port: Any) -> None:
            # Ready once the discovery sources have answered (bounded: see discovering.READY_WITHIN).
            self.discovery.whenReady().addCallback(lambda _: setattr(self.gateway.state, "ready", True))
            log.info("txgateway listening on {address}", address=boundAddress(port), where=where)

        def failed(f: Any) -> None:
            failure.append(bindProblem(f.value))
            # One line: the reason is the whole story (a port in use, a
            # permission); a traceback of the reactor's bind would hide it.
            log.critical("cannot listen on {problem} (server.listen: {where})", problem=failure[-1], where=where)
            if self.running and self.reactor.running:
                # A listener that failed later than start-up (an endpoint
                # that binds asynchronously): stop, and say so in the status.
                self.exitStatus = EXIT_STARTUP_FAILED
                self.reactor.callLater(0, self._exitAfterBindFailure)

        self.listener.listening.addCallbacks(up, failed)
        if failure:
            # Bound synchronously (tcp, ssl, unix: nearly always): refuse to
            # start, so twistd never runs the reactor and exits non-zero.
            MultiService.stopService(self)
            # Short: a daemonising twistd passes the parent 100 bytes of it.
            raise StartupError(f"cannot listen on {failure[0]}")
        if self.adminListener is not None and self.adminListener.listening is not None:
            adminWhere = self.adminListener.description
            # A busy admin port must not take client traffic down with it: say so loudly, keep serving.
            self.adminListener.listening.addCallbacks(
                lambda port: log.info("admin listening on {address}", address=boundAddress(port), where=adminWhere),
                lambda f: log.error("cannot listen on admin.listen {where}: {reason}; no admin listener",
                                    where=adminWhere, reason=f.getErrorMessage()))

    def _exitAfterBindFailure(self) -> None:
        if self.reactor.running:
            self.reactor.stop()

    def stopService(self) -> Deferred[None]:
        """
        The drain, in order: stop accepting and say so on /ready; close idle
        keep-alive connections; let in-flight requests finish (up to
        server.timeouts.drain); stop health checks; close pools.
        """
        if self.stopping is not None:
            return self.stopping
        state = self.gateway.state
        state.draining = True
        log.info("draining: {n} request(s) in flight", n=state.inFlight)
        stopAdmission(self.gateway.runtime.clusters)  # queued requests get their 503 now, not at the deadline
        self.gateway.runtime.websockets.drain(self.config.server.timeouts.drain)  # 1001 just before the deadline
        Service.stopService(self)
        if self.watcher is not None:
            self.watcher.stopService()
        d = self.listener.stopService()

        def closeIdle(_: Any) -> Deferred[bool]:
            # In-flight requests finish; their connections then close, since
            # they are no longer persistent.  Idle keep-alive ones close now.
            for channel in list(self.site.channels):
                channel.persistent = False
                if not channel.requests and channel.transport is not None:
                    channel.transport.loseConnection()
            done = state.whenIdle().addCallback(lambda _: self.site.whenAllClosed())
            return _withDeadline(done, self.config.server.timeouts.drain, self.clock)

        def forceClose(timedOut: bool) -> None:
            if timedOut:
                cut = state.inFlight
                if cut:
                    # Not a clean stop: orchestration should be able to tell.
                    self.exitStatus = EXIT_DRAIN_CUT
                    log.error("drain deadline ({deadline:g}s, server.timeouts.drain) passed with {n} request(s) "
                              "in flight; cutting them and exiting with status {status}",
                              deadline=self.config.server.timeouts.drain, n=cut, status=EXIT_DRAIN_CUT)
                else:
                    log.warn("drain deadline passed with responses still being sent; closing their connections")
            for channel in list(self.site.channels):
                if channel.transport is not None:
                    channel.transport.abortConnection()  # type: ignore[attr-defined]

        def stopRest(_: Any) -> Deferred[Any]:
            waits = [self.healthServices.stopService()]
            stopMirrors(self.gateway.runtime.routes.routes)  # copies in flight cancelled, no timer left
            waits.extend(maybeDeferred(s.stopService) for s in self._observers)  # spans still queued are sent
            if self.adminListener is not None:  # last: the status page shows the drain
                waits.append(self.adminListener.stopService())
            for cluster in self.gateway.runtime.clusters.values():
                pool = getattr(cluster, "pool", None)
                if pool is not None:
                    waits.append(pool.closeCachedConnections())
            if self.redis is not None:
                waits.append(stores.closeRedis(self.redis))
            return DeferredList(waits, consumeErrors=True)

        def cleanExit(_: Any) -> None:
            self.accessLog.flush()
            # twistd re-raises the signal that stopped the reactor once it has
            # run, so a SIGTERM'd process would die "killed by SIGTERM" (143
            # in a container).  A completed drain is a clean stop: exit 0.
            markCleanStop(self.reactor)

        d.addCallback(closeIdle)
        d.addCallback(forceClose)
        d.addCallback(stopRest)
        d.addCallback(cleanExit)
        self.stopping = d
        return d

    # -- reload

    def reload(self, config: GatewayConfig | None = None) -> list[str]:
        """
        Swap in a new config atomically; return its problems (empty on success).

        Safe to call at any time from the reactor thread (file watcher,
        SIGHUP, admin API).  A config that does not load, parse or build is
        rejected whole and the running one keeps serving.  Requests already
        routed keep the runtime they started with (their leaf holds it), so
        they finish on their old routes and pools; new requests see the new
        runtime from the moment C{gateway.runtime} is assigned.
        """
        if self.stopping is not None or self.gateway.state.draining:
            return ["the gateway is shutting down; reload refused"]
        previous = self.gateway.runtime
        try:
            if config is None:
                if self.configPath is None:
                    return ["no config file to reload (the gateway was configured from the environment)"]
                if self.watcher is not None:
                    self.watcher.sync()  # this content is being loaded now: not a change to reload again
                config = self._loadConfig(self.configPath)
            hadRedis = self.redis is not None
            if not hadRedis and needsRedis(config):
                self.redis = stores.makeRedis(config.stores, self.reactor)
            runtime = self._build(config, previous)
            dropped = self.discovery.attach(runtime, previous)
        except ConfigError as e:
            problems = [str(p) for p in e.problems]
            self._recordReload("failure", problems)
            log.error("config reload rejected, the running config keeps serving:\n{problems}",
                      problems="\n".join(problems))
            return problems
        except Exception as e:  # a bug must not take the running config down with it
            log.failure("config reload failed while building; the running config keeps serving")
            self._recordReload("failure", [repr(e)])
            return [f"internal error building the config: {e!r}"]
        self.gateway.runtime = runtime
        pa, na = previous.config.admin, config.admin
        for what, old, new in (("server.listen", previous.config.server.listen, config.server.listen),
                               ("admin.listen", pa.listen if pa else None, na.listen if na else None),
                               ("server.workers", previous.config.server.workers, config.server.workers),
                               ("logging settings", previous.config.logging, config.logging),
                               ("tracing", previous.config.tracing, config.tracing),
                               ("stores.redis", previous.config.stores.redis, config.stores.redis)):
            if old != new and (what != "stores.redis" or hadRedis):
                log.warn("{what} changed; a restart is needed for that to take effect", what=what)
        try:
            self._syncHealthCheckers(previous)
            self._retire(previous, runtime)
            if self.watcher is not None:
                self.watcher.setInterval(config.server.watch_config)
        except Exception:
            # The new runtime already serves; what failed is housekeeping.
            log.failure("after swapping in the new config, updating health checks or pools failed")
        self._recordReload("success", [], dropped)
        log.info("config reloaded: {routes} routes, {upstreams} upstreams{dropped}",
                 routes=len(config.routes), upstreams=len(config.upstreams), dropped=droppedText(dropped))
        return []

    def _retire(self, previous: Runtime, current: Runtime) -> None:
        """
        Close the idle connections of pools no current cluster uses.

        Only idle connections close; one still carrying a request goes back
        to its old pool when the request ends and closes after the pool's
        idle timeout.  Waiting for the whole gateway to be idle instead would
        never happen under steady load.
        """
        retireAdmission(previous.clusters, current.clusters)
        inUse = {id(getattr(c, "pool", None)) for c in current.clusters.values()}
        for c in previous.clusters.values():
            pool = getattr(c, "pool", None)
            if pool is not None and id(pool) not in inUse:
                pool.closeCachedConnections()
        stopMirrors(previous.routes.routes)  # the new runtime's mirrors carry on their counts and samples

    def _recordReload(self, result: str, problems: list[str], dropped: list[str] | None = None) -> None:
        self.metrics.configReloads.labels(result).inc()
        self.gateway.history.append({"time": self.clock.seconds(), "result": result, "problems": problems,
                                     "dropped_runtime_changes": dropped or []})
        del self.gateway.history[:-20]


def _withDeadline(d: Deferred[None], seconds: float, clock: IReactorTime) -> Deferred[bool]:
    """Fire with False when C{d} fires, or with True at the deadline, whichever is first."""
    out: Deferred[bool] = Deferred()

    def expire() -> None:
        if not out.called:
            out.callback(True)

    call = clock.callLater(seconds, expire)

    def fired(_: Any) -> None:
        if call.active():
            call.cancel()
        if not out.called:
            out.callback(False)

    d.addBoth(fired)
    return out


