# -*- test-case-name: tests.test_concurrency_config,tests.test_concurrency_limits,tests.test_concurrency_queue,tests.test_concurrency_coalescing,tests.test_concurrency_batching -*-
"""
Protecting slow backends (issue 24): concurrency limits, an admission
queue with load shedding, micro-batching and coalescing.

This package is the machinery, importing only Twisted, zope.interface and
itself (it sits below the config package in the import-linter layers, so
C{config/schema.py} may hold its specs).  It is wired in (issue 24's
integration) by L{txgateway.protection}: the forward-path wrappers
(admission, batching, coalescing), the per-upstream controllers kept across
reloads, the metrics and the status report; the parser is
L{txgateway.config.parser_concurrency}.  The sections below are the plan
that integration followed; where it differs, the code says so: access-log
fields are C{queue_ms}, C{batch_id}, C{batch_size} and C{coalesced}
(L{txgateway.context.RequestContext.note}); per-target limits are
C{per_target: true} (L{txgateway.protection.targets}) rather than a
C{scope: target} key; the limit's gauges are set as permits come
and go rather than by a LoopingCall; a fixed limit is not divided among
workers (the docs tell operators to divide it); the status page shows no
per-route batch figures (the metrics do).

Modules
=======
  interfaces.py  L{IConcurrencyLimit} (C{limit}, C{onSample(latency,
                 outcome, inFlight)}), L{IPermit} (C{release(outcome,
                 latency=None)}, once) and the outcomes C{success},
                 C{dropped}, C{ignored}.
  limits.py      L{FixedLimit}; L{GradientLimit}, the adaptive limit
                 (a gradient on latency against its measured minimum, with
                 AIMD back-off on drops and a periodic minimum re-measure;
                 the algorithm is in its docstring), on an injected clock,
                 no timers.
  queue.py       L{AdmissionController}: C{acquire(priorityClass)} -> a
                 Deferred of a L{Permit}; bounded FIFO queue per class,
                 higher classes first; L{Shed} (C{queue_full}, C{max_wait},
                 C{stopped}) with a C{retryAfter} estimate; cancellation
                 leaves the queue; C{takeOver(old)} for reloads;
                 L{outcomeFor} maps attempt verdicts to outcomes.
  batching.py    L{MicroBatcher} (C{submit(item)} -> Deferred of its
                 result; C{max_size} / C{max_wait}; C{on_error: fail |
                 single}); L{encodeBatch} / L{decodeBatch} (bare array, or
                 C{instances} -> C{predictions}); L{BatchError} (C{reason},
                 C{kind}, C{cause}).
  coalescing.py  L{SingleFlight} (no leader: the work is cancelled only when
                 every caller has gone), L{CoalescedResponse},
                 L{coalescingKey}, L{mayCoalesce}.
  specs.py       frozen specs (standard library only).
  (the pure parsers L{parseConcurrency}, L{parseRouteConcurrency} and
  L{checkPriorityRoutes} live in L{txgateway.config.parser_concurrency}.)
  build.py       L{makeLimit}, L{makeAdmission}, L{rebuildAdmission}.

Dependency direction: everything here imports only Twisted, zope.interface
and this package (the parser moved to C{txgateway.config.parser_concurrency}
at integration, so there is no C{config <-> concurrency} cycle).


1. Config (config/ package)
===========================
- C{UpstreamConfig.concurrency: ConcurrencySpec | None = None}.
  parser_upstreams: C{"concurrency"} joins the known keys;
  C{spec, found = parseConcurrency(*self.child(m, "concurrency"))} with the
  path C{keyPath(path, "concurrency")}, each found triple added with
  C{self.problem(p, l, msg)}.
- C{RouteConfig.concurrency: RouteConcurrency = RouteConcurrency()}.
  parser_routes: C{ROUTE_KEYS} join the route's known keys;
  C{parseRouteConcurrency(m, rpath, rline)}.
- Cross-checks in parser.py once routes and upstreams are known:
  C{checkPriorityRoutes(spec, routeNames, path, line)}; a route with
  C{batch} must admit POST (its C{match.methods} empty or containing
  POST), and its upstream may not be a C{static} one; C{coalesce.headers}
  without C{authorization} on a route with C{auth} is allowed but logged
  at load ("answers are shared across credentials on route X").
  C{idempotent_post} alone is valid: the retry policy may also read it
  (retrying POST on such routes) in a later change.
- Workers: with C{server.workers: N} every worker has its own controller.
  A fixed limit is divided, C{ceil(limit / N)} per worker (documented,
  with the rounding); adaptive limits are not divided, each worker's limit
  learns from the same backend latency and together they settle where
  latency does (Netflix runs per-instance limits this way); C{min}/C{max}
  are per worker, which the docs must say.
- docs/config/upstreams.md: C{concurrency.limit}, C{.adaptive}, C{.min},
  C{.max}, C{.initial}, C{.tolerance}, C{.window}, C{.probe_interval},
  C{.queue.size}, C{.queue.max_wait}, C{.priority.classes},
  C{.priority.default}, C{.priority.consumer}, C{.priority.route};
  docs/config/routes.md: C{batch.target_path}, C{.max_size},
  C{.max_wait}, C{.envelope}, C{.on_error}, C{coalesce} (true or
  C{{headers: [...]}}), C{idempotent_post}.  Then
  scripts/build-config-doc.py; tests/test_docs.py insists.


2. Admission in the forward path
================================
The forward path is a chain of L{IForwarder}s (C{fetch(context) ->
exchange}; an exchange is C{response} + C{finish(complete, clientGone)}).
Outermost first, per route:

    cache flow (caching/flow.py)     a hit never queues, never coalesces
    CoalescingForwarder              identical requests share one fetch below
    BatchingForwarder                many items, one fetch below
    AdmissionForwarder               one permit per fetch below
    ClusterForwarder (AttemptLoop)   retries; Cluster.choose -> Lease -> IUpstreamClient

Each wrapper exists only on routes that use it (built once per config by
the route compiler, like the cache flow), so a route without these keys
pays nothing.  Auth, rate limits, CORS and IP rules run before the chain:
a refused request never takes a queue slot, and the consumer is known when
the priority class is chosen.

C{AdmissionForwarder(inner, controller, priority: PrioritySpec)}, new module
C{concurrency/forwarder.py} (it needs only IForwarder and the exchange
shape):

- C{fetch}: C{cls = priority.classOf(route.name, context.identity)};
  C{permit = await controller.acquire(cls)}.  The client going away while
  queued cancels that Deferred (the request's C{onGone} hook / the
  C{notifyFinish} errback the relay already uses), which leaves the queue.
  L{Shed} becomes C{UpstreamFailure(503, "shed_" + reason, e.retryAfter,
  message="service unavailable: the upstream is at its concurrency limit")};
  L{txgateway.forwarding.upstreamFailed} already writes C{Retry-After:
  ceil(retryAfter)} (at least 1) for a 503.  C{context.outcome =
  "shed_queue_full"} etc. for the access log; C{context.queued =
  permit.waited} as a new access-log field C{queue_ms}.
- Then C{exchange = await inner.fetch(context)}; the wrapper returns an
  exchange whose C{finish(complete, clientGone)} calls the inner one and
  then C{permit.release(outcome, latency)}: C{outcome =
  outcomeFor(context.verdicts)} (the attempt loop appends each lease's
  verdict to a new C{context.verdicts} list), C{latency = lease.seconds}
  of the answering attempt (time to the response head: a slow client
  reading a long body must not look like a slow backend).  An
  C{UpstreamFailure} or CancelledError from C{inner.fetch} releases with
  C{outcomeFor(context.verdicts)} (a timeout is C{dropped}; the client
  gone is C{ignored}) and re-raises.
- Relative to the lease: admission comes before C{Cluster.choose}, and
  one permit covers every attempt of the request.  A retry is not a new
  request at the backend (the failed attempt's slot is free again), and
  re-queueing a retry would make it wait twice.  The lease keeps its job
  (breaker, passive health, per-target in-flight, per-target metrics); the
  permit only counts requests per upstream and learns the limit.  Nothing
  else touches either.
- Relative to the breaker: a shed request never reaches C{choose}, so it
  takes no half-open probe slot and says nothing to the breaker; an
  admitted request that finds every breaker open gets the existing 503
  from C{NoTarget} and releases its permit C{ignored}.  Retries of a shed
  request: none (it never reached a backend; Retry-After tells the
  client).
- C{pool.max_per_target} stays the hard per-target cap inside C{choose}.
  Per-target limits (issue: "and per target"), done as C{per_target:
  true} (L{txgateway.protection.targets}): each Endpoint has its own
  IConcurrencyLimit (learning from that target's leases), C{choose}
  passes over endpoints at their limit while another has room, and the
  upstream's controller uses the sum of the usable endpoints' limits
  (C{TargetLimits}) so the queue stays per upstream.
- Reload (building.buildRuntime): controllers are kept per upstream name
  in the runtime; C{rebuildAdmission((oldSpec, oldController), spec,
  clock, onWait, onShed)} returns the same controller for an unchanged
  spec, else a new one that took over the old one's permits and waiters
  (an adaptive limit is kept when only the queue changed).  An upstream
  removed by the reload: C{controller.stop()} after the new runtime is
  swapped in (its waiters get 503 C{stopped}).
- Drain (service.stopService): stop every controller first (waiters are
  answered 503 with Retry-After at once instead of at the drain
  deadline), flush every batcher, then the existing sequence.


3. Batching (C{BatchingForwarder}, C{concurrency/forwarder.py})
===============================================================
- One L{MicroBatcher} per batching route, built with the route; its
  C{send(items)} makes one fetch through the rest of the chain
  (admission, then the attempt loop): one permit and one lease per batch,
  since a batch is one unit of backend work.
- C{fetch(context)}: a POST whose body is JSON (C{Content-Type}
  C{application/json} or C{*+json}) is decoded (the body is already
  bounded by C{server.max_request_body}) and submitted; anything else on
  the route (a GET, another type) passes to the inner forwarder unbatched.
  Invalid JSON: 400 C{"batching route needs a JSON body"}.  The result
  comes back as an in-memory exchange: 200, C{Content-Type:
  application/json}, C{json.dumps(result)} (the same in-memory
  IResponse the cache uses for a hit, caching/exchanges.py in the core
  branch), C{finish} a no-op.
- C{send(items)}: the attempt loop needs an outgoing request other than the
  client's: C{AttemptLoop.fetch} gains C{outgoing=(method, path, headers,
  body)} (default: the client's).  The batch goes as C{POST target_path}
  with C{encodeBatch(items, envelope)}, C{Content-Type} and C{Accept:
  application/json}, the route's header rules, an C{X-Request-Id} of its
  own (C{batch-<n>}), and no client headers (they differ per item; the
  gateway authenticated each client already).  Its priority class is the
  highest of its items'.  A status >= 300 or a body over
  C{max_size * 1 MiB} is a L{BatchError}; otherwise C{decodeBatch(body,
  envelope, len(items))}.  The access log writes one line per client
  (C{batch_id}, C{batch_size} fields) and none for the batch call;
  upstream metrics count the batch call once.
- Failures: L{BatchError} becomes 502 with its C{reason} in the error body,
  unless its C{cause} is an C{UpstreamFailure} (a shed batch stays 503 with
  Retry-After, a timeout 504).  C{on_error: single}: C{sendOne(item)} is
  the inner fetch of the client's own request (its path on the route),
  whose exchange is handed back as is (the batcher's result is then an
  exchange, not an item: the forwarder wraps batch results in a small
  C{BatchItem} to tell them apart).
- Each client's own deadline: its Deferred from C{submit} gets
  C{withDeadline(route timeout)}; cancelling it (timeout, client gone)
  takes the item out of a batch not yet sent.


4. Coalescing (C{CoalescingForwarder}, C{concurrency/forwarder.py})
===================================================================
- On routes with C{coalesce}: C{mayCoalesce(method, True,
  idempotent_post)} requests get the key C{coalescingKey(method, path,
  query, headers, spec.headers, body)} (the body is hashed only for POST)
  and go through one L{SingleFlight} per route; others pass through.
- The flight's work: C{inner.fetch(context)} of the caller who started
  it, its body read whole (bounded by C{coalesce_max_body}, 1 MiB, the
  cache's object limit) into a L{CoalescedResponse}, its exchange
  finished.  Every caller gets an in-memory exchange of its own copy,
  with per-client headers (C{X-Request-Id}, C{Via}, CORS) computed per
  client as for any response.  An answer that sets a cookie is not shared:
  the flight fails with "not shareable" and each caller fetches on its own,
  as it does for a body over the bound ("too large to coalesce"): one
  extra backend call per caller, only for such answers.
- With the cache on a route, GET/HEAD already collapse in the cache flow
  (caching/collapsing.py) for storable answers; the CoalescingForwarder
  beneath it covers the answers the cache will not store (private,
  no-store, POST).  So "GET/HEAD always where the cache is on": the route
  compiler turns coalescing on for GET/HEAD when C{cache} is set.
- The access log says C{coalesced: true} for callers who joined a
  flight; C{txgateway_coalesced_total{route}} counts them.


5. Metrics (observe/)
=====================
- C{txgateway_upstream_concurrency_limit{upstream}} (gauge),
  C{txgateway_upstream_concurrency_in_flight{upstream}},
  C{txgateway_upstream_queue_length{upstream, class}}: set by a 1s
  LoopingCall in the service from C{controller.limit}, C{.inFlight},
  C{.queuedByClass()} (no per-request gauge writes; workers aggregate
  with C{multiprocess_mode="livesum"}: the backend sees the sum).
- C{txgateway_upstream_queue_wait_seconds{upstream, class}} (histogram,
  buckets 1ms..10s) from C{onWait} (0.0 for an immediate grant, so the
  histogram also says what share waited).
- C{txgateway_shed_total{upstream, reason}} (counter) from C{onShed}.
- C{txgateway_upstream_min_rtt_seconds{upstream}} (gauge, adaptive only)
  from C{limiter.minRTT}.
- C{txgateway_batch_size{route}} (histogram, buckets 1, 2, 4 ... 1024)
  and C{txgateway_batch_wait_seconds{route}} from the batcher's
  C{observe(size, waited)}; C{txgateway_batch_failures_total{route,
  kind}} from C{onFailure}.
- C{txgateway_coalesced_total{route}} from the flight's C{joined}.


6. Status page and admin API (admin.py, static/status.html)
===========================================================
- C{/api/upstreams} and C{/api/status} give each upstream with a limit a
  C{concurrency} object: C{mode} (fixed / adaptive), C{limit}, C{min},
  C{max}, C{in_flight}, C{queued} (per class), C{shed} (per reason),
  C{min_rtt_ms}, C{probing}.
- The page (it already polls C{api/status}) adds a line under each
  upstream's heading: "limit 14 (adaptive 1-200) · in flight 12 · queued
  3 (paid 0, free 3) · shed 17 (max_wait 17)", and per route with
  C{batch} the mean batch size and wait over the rate window; the
  screenshot test gains an upstream with a limit.


7. Docs
=======
docs/guides/gpu-model.md, "Put a GPU model behind txgateway":
  1. The problem in numbers: a model server with 8 workers at 100ms
     serves 80/s; at 240/s without limits its queue grows without bound
     and p99 goes to tens of seconds (the unlimited run of the e2e test).
  2. C{concurrency: {adaptive: true, min: 1, max: 64}} and what the limit
     does (the gradient in three sentences), how to read
     C{txgateway_upstream_concurrency_limit} converging near the worker
     count, and when a fixed C{limit:} is the better choice (a server that
     documents its parallelism).
  3. C{queue: {size, max_wait}}: a short C{max_wait} (about one service
     time) keeps p99 low and sheds; a long one keeps more requests and
     makes them wait; the 503 and Retry-After a client sees, and that
     clients should back off on it.
  4. C{priority}: paid consumers before free ones (with API keys from
     the auth guide), and a route class for health checks.
  5. C{batch:} to a TF Serving / KServe C{:predict} endpoint with
     C{envelope: instances}; choosing C{max_wait} (a few ms: the added
     latency at low load) and C{max_size} (the server's batch size);
     C{on_error: single} while rolling out.
  6. C{coalesce: true} + C{idempotent_post: true} for deterministic
     models, and why authorization is part of the key.
  7. Dashboards: the metrics of section 5 and the status page.
docs/performance.md: the e2e overload run below, with and without limits
(p50/p99 at nominal and 3x, goodput, shed share).


8. Tests to write after integration
===================================
- tests/e2e: a simulated model server (a twisted.web resource on the real
  reactor with the worker/queue model of tests/test_concurrency_limits.py's
  C{ModelServer}, latency growing with its concurrency) behind the real
  C{twistd -n txgateway}; a load generator at nominal and 3x: with
  C{adaptive: true}, p99 at 3x within 2x of nominal p99 and 503s with
  Retry-After for the excess; the same run without limits for the
  numbers in docs/performance.md.
- e2e: priority order (paid and free API keys queued behind a held
  backend, released one by one); 100 concurrent single POSTs on a
  batching route reach the backend in batches of at most C{max_size},
  every client getting its own item; 50 identical POSTs on a route with
  C{coalesce} + C{idempotent_post} reach the backend once; a client that
  disconnects while queued leaves the queue (queue length in
  C{/api/upstreams}).
- Unit, with C{txgateway.testing}: the forwarders' ordering (a cache hit
  takes no permit; a retry keeps its permit; a shed request reaches no
  lease), reload keeping and taking over controllers, drain shedding
  waiters, the status JSON.
"""

__all__: list[str] = []
