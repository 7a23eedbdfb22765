# -*- test-case-name: tests.test_canary_config,tests.test_canary_split,tests.test_canary_mirror,tests.test_canary_compare -*-
"""
Canary releases: weighted splits among upstreams, and shadow traffic with answer comparison (issue 23).

What is here is self-contained and tested on its own; nothing in the core
imports it yet.  It was built while cluster.py (choosing a target becomes a
lease), http/proxy.py (an upstream client behind C{IUpstreamClient}),
gateway.py / caching/flow.py (one forward path) and admin.py (an admin/
package) were being restructured, so this docstring is the plan for wiring
it in once that work is merged.

Modules
=======
  interfaces.py  L{ISplitter} (C{choose(request) -> Choice}, C{split},
                 C{setSplit}, C{counts}, C{report}) and L{IMirror}
                 (C{submit(request) -> ticket | None}, C{stop}, C{report});
                 the values they pass: L{RequestView} (what a choice reads
                 of a request; C{RequestContext} provides it as it is),
                 L{Choice} (upstream, reason), L{MirrorRequest},
                 L{Answer}, and C{MirrorSend} (the injected async send).
  specs.py       the frozen specs: L{CanaryRouteSpec} (upstreams, sticky,
                 override, mirror) and its parts.
  config.py      pure parsing of C{routes[].upstreams}, C{sticky},
                 C{canary_override} and C{mirror} into those specs, with
                 L{Problem}s (key path, line, message); converters from
                 C{config.values}.  Moves to config/parser_canary.py at
                 integration (below).
  split.py       L{Split} (immutable names + integer weights; weighted
                 random pick over [0, total); sticky pick by weighted
                 rendezvous hashing), L{Splitter} (override -> sticky ->
                 weighted, per-upstream counts), L{updateSplit} (the
                 C{PUT /api/routes/{route}/split} body -> new Split, or
                 L{SplitRefused} with the message for a 400).
  mirror.py      L{Mirror}: percent sampling, max_body, bounded queue,
                 bounded concurrency, own timeout on the injected clock,
                 never a retry, counts; L{MirrorTicket} takes the primary's
                 answer for the comparison.
  compare.py     L{Comparer} (status, listed headers, JSON with ignore
                 paths and tolerances, or bytes), redaction, L{SampleRing},
                 L{mirrorsReport} (the C{GET /api/mirrors} body).
  jsonpath.py    the C{$.items[*].id} notation of ignore/redact paths and
                 reported differences.
  build.py       L{buildRouteCanary} (spec -> splitter and mirror) and
                 L{BodyKeeper} (the primary's first max_body bytes).

Dependency direction: everything here but config.py imports only Twisted,
zope.interface and this package (a test holds the running parts to it).
config.py imports L{txgateway.config.values} and C{errors} (the converters,
as the brief asked), which makes C{config -> canary.config -> config} a
package cycle once the route parser calls it: importing
C{txgateway.canary.config} first runs C{txgateway/config/__init__}, whose
parser would import C{canary.config} half-initialised.  At integration,
move config.py unchanged to C{txgateway/config/parser_canary.py} (it is a
config parser that speaks config's converters; it imports only
C{canary.specs} and C{canary.jsonpath} of this package), as the
concurrency package's plan does for its parser; C{config/schema.py}
imports C{canary.specs}, which imports nothing.  The import-linter
contract is then "canary is below config, routing, gateway, service,
admin, observe".


Decisions taken here (and why)
==============================
- Sticky keys use weighted rendezvous hashing rather than a hashed point in
  [0, total) mapped onto cumulative intervals: with intervals, changing one
  weight shifts every later interval (v1 90, v2 5, v3 5 -> v3 25 moves all
  of v2's keys), with rendezvous hashing keys move only to or from the
  upstream whose weight changed, and with two upstreams exactly the keys
  that must move.  It is stateless (names + weights), so every worker and
  every gateway instance sends a key to the same upstream; the assignment
  is pinned by a test, as gateways of two releases must agree during a
  rolling upgrade.  The weighted (non-sticky) pick is the point in
  [0, total) drawn with the injected C{random.Random}.
- A request without the sticky key takes the weighted pick (hashing one
  shared "anonymous" value would send all of them to one upstream).
- C{X-Canary: always} names the route's canary, its last listed upstream
  (the new version, by convention and in every docs example), whatever
  its weight, 0 included; any upstream name works too.  An unknown value
  or an untrusted client is ignored, never refused: the header gains an
  outsider nothing and tells him nothing.
- Trust is an input (C{Splitter(trust=...)}), asked only when the header
  names an upstream.  Default from the spec: C{trusted_only: false} ->
  anyone; else a client address in C{trusted_clients} (default: loopback
  and private networks, L{INTERNAL_NETWORKS}) or a consumer in
  C{trusted_consumers} (C{"*"}: any authenticated consumer).  The two list
  keys are additions to the issue's names.
- Mirror counts: C{dropped} covers "queue full" and "waited in the queue
  for its whole timeout" (the mirror is slow: sending it late helps
  nobody); C{timed_out} and C{failed} are copies that were sent.  Samples
  are kept for mismatches only.
- Runtime weights survive a reload that leaves the route's C{upstreams}
  unchanged (L{Splitter.continueFrom}); a reload that changes them wins.


1. Config (config/ package)
===========================
- Move C{canary/config.py} to C{config/parser_canary.py} (and
  tests/test_canary_config.py's imports with it).
- C{RouteConfig} gains C{canary: CanaryRouteSpec = CanaryRouteSpec()}
  (from C{txgateway.canary.specs}).
- C{parser_routes.RouteSections.route}: known keys += L{CANARY_ROUTE_KEYS};
  C{upstream} is required only when C{upstreams} is absent; then::

      canary, found = parseRouteCanary(m, path, line, upstreams.keys())
      self.problems.extend(found)

  For a split route C{RouteConfig.upstream} = the first listed upstream
  (what single-upstream readers show: the status page's Upstream column,
  error bodies), and C{CompiledRoute.upstreamName} likewise.
- Once the parser lives in config/, tests/test_docs.py C{parserKeys()}
  sees its keys by itself; docs/config/routes.md documents
  C{upstreams[].name/weight}, C{sticky.key}, C{canary_override.header /
  trusted_only / trusted_clients / trusted_consumers}, C{mirror.upstream /
  percent / timeout / max_body / queue / concurrency / compare.status /
  headers / body / json.ignore / json.absolute / json.relative /
  redact.headers / redact.json / samples}; then
  scripts/build-config-doc.py.  Note there that YAML reads C{1e-6} as text
  (accepted here) and that C{1.0e-6} is the YAML float.


2. Choosing the upstream (routing, before the lease)
====================================================
- building.buildRuntime: per route C{canary = buildRouteCanary(r.name,
  r.config.canary, clock, rng, mirrorSend, observe=metrics hook)};
  C{CompiledRoute} gains slots C{splitter} and C{clusters} (name ->
  Cluster, every upstream of the split) beside C{cluster}.  With a
  previous runtime: C{new.splitter.continueFrom(old.splitter,
  splitFromSpec(old.config.canary))}, logging "kept run-time split of
  predict: model-v1=75, model-v2=25" when it returns True, and
  C{new.mirror.continueFrom(old.mirror)} then C{old.mirror.stop()} once
  the old runtime drained.
- The one forward path, before C{cluster.choose(context) -> lease}::

      if route.splitter is not None:
          choice = route.splitter.choose(context)
          cluster = route.clusters[choice.upstream]
          context.upstreamChoice = choice.reason   # new RequestContext slot
      else:
          cluster = route.cluster

  Done once per request: retries stay within the chosen upstream (its
  other targets), so error rates per version are honest and a sticky
  client never flips version mid-request.  No fallback to the other
  version when the chosen one has no target (503 as today): a silent
  fallback would hide exactly the failure a canary exists to show.
- With C{cache} on a split route, choose before the cache lookup and add
  the chosen upstream to the cache key (one more part in the request-key
  language), or v2's answers would be served to v1's clients.
- C{server.workers > 1}: the sticky choice is consistent across workers
  (stateless), but a C{PUT .../split} reaches one worker (the admin socket
  is shared with SO_REUSEPORT).  Until the supervisor fans admin writes
  out (or writes a run-time overlay file every worker watches, as the
  config file is watched), C{PUT} answers 409 "with server.workers > 1,
  change weights by reload" under workers.


3. The mirror in the forward path (an IUpstreamClient wrapper)
==============================================================
- C{MirroringClient(inner, mirror)} provides C{IUpstreamClient} and wraps
  the primary's client the way ContentDecoderAgent wraps an IAgent; built
  for routes with a mirror only, so other routes pay nothing.  Its
  C{request(...)}:
    1. when C{mirror.spec.max_body} >= the body length, read the buffered
       body first (C{content.getvalue()} for BytesIO; for Site's temp file
       read, then C{seek(0)}), before the primary's producer starts, so
       the two never share a file position; otherwise pass C{bodyLength}
       only;
    2. C{d = inner.request(...)}: the primary's request goes out;
    3. then C{ticket = mirror.submit(MirrorRequest(method, path+query,
       headers as sent to the primary, body, requestId), bodyLength)}.
       submit only enqueues; the copy leaves in a later reactor turn.
       Skip this step when the chosen upstream is the mirror upstream.
    4. with a ticket and C{mirror.comparer}: the primary's status and
       headers, and its body through a L{BodyKeeper}(max_body) as it is
       relayed -> C{ticket.primaryAnswered(keeper.answer(...))}; a failed
       or cancelled primary -> C{ticket.primaryFailed()}.
- C{mirrorSend} for the mirror upstream: C{lease = cluster.choose(ctx)}
  on the mirror upstream's own cluster (its breaker, health, in-flight
  and metrics, not the primary's); its own upstream client and pool; the
  whole body read up to max_body (more: C{Answer.truncated}); the lease
  released with the outcome; no retry policy; Host set for the mirror's
  target; a C{Via}/C{X-Txgateway-Mirror: 1} header so the mirror knows
  shadow traffic.  It is not a client request: no route filters run (no
  rate limit consumed, no auth), no access-log line of its own.
- Shutdown: GatewayService's drain calls C{mirror.stop()} for every route
  after in-flight client requests finished (cancels copies in flight;
  C{clock.getDelayedCalls() == []} afterwards).
- Comparing a 1 MiB JSON body is tens of ms of CPU on the reactor thread;
  L{Comparer.differences} is pure, so if measurements demand it,
  C{Mirror._compare} can hand it to C{deferToThread} unchanged.


4. Metrics and access log (observe/)
====================================
- C{txgateway_mirror_mismatches_total{route}} (the issue's name), and
  C{txgateway_mirror_requests_total{route, outcome}} with the outcomes of
  L{txgateway.canary.mirror.OUTCOMES} (sent, dropped, skipped, failed,
  timed_out, compared, mismatched, not_compared), both fed by the
  C{observe(route, outcome)} hook of L{buildRouteCanary}; a gauge
  C{txgateway_mirror_queue{route}} read from C{report()["queued"]} at
  scrape time.
- C{txgateway_split_weight{route, upstream}} (gauge, set at build and on
  every PUT) and C{txgateway_split_chosen_total{route, upstream, reason}}.
- Request metrics name the chosen upstream so versions can be compared:
  C{txgateway_http_requests{route, method, status, upstream}} and
  C{txgateway_http_request_duration_seconds{route, method, upstream}}
  (bounded cardinality: upstreams come from config).  Adding a label is
  a breaking change for dashboards: say so in the changelog.
- Access log: C{upstream} already carries the cluster name (now the chosen
  one); add C{upstream_choice} (override / sticky / weighted; null on a
  one-upstream route).


5. Admin API and status page (admin/ package)
=============================================
- C{GET /api/routes/{route}/split} -> C{splitter.report()};
  C{PUT /api/routes/{route}/split} (admin token and same-origin rule as
  C{/api/config/reload}) -> C{updateSplit(splitter.split, body)} then
  C{splitter.setSplit(new)}: 200 with the report; 400 with the
  L{SplitRefused} message; 404 unknown route or route without
  C{upstreams}; 405 other methods; logged ("split of predict changed
  through the admin API: model-v1 95->75, model-v2 5->25") and listed
  beside C{/api/reloads}.  Needs the pattern dispatch the discovery plan
  also asks for (C{/api/upstreams/{u}/targets/...}).
- C{GET /api/mirrors} -> C{mirrorsReport({name: mirror})}: per route
  C{{"sent", "dropped", "compared", "mismatched", "samples", ...}}.
- Status page: the routes table shows each split ("model-v1 75 % (74.6 %)
  / model-v2 25 % (25.4 %)": configured share, live share over the page's
  window from two C{counts()} snapshots with L{liveShares}); a Mirrors
  section per route with the counts and the samples side by side
  (primary | mirror), their differing paths listed and the matching
  lines of the pretty-printed JSON highlighted.  Samples are redacted
  before they are stored, so the page never sees a credential.


6. Docs: "Ship a new model version" walkthrough (docs/canary.md)
================================================================
  1. Deploy model-v2 and add it as an upstream; the route becomes
     C{upstreams: [{name: model-v1, weight: 100}, {name: model-v2,
     weight: 0}]} with C{canary_override: {header: X-Canary}}; testers
     inside the network send C{X-Canary: always}.
  2. Shadow: C{mirror: {upstream: model-v2, percent: 10, compare: {json:
     {ignore: [$.meta.latency], absolute: 1e-6, relative: 1e-3}}}};
     watch C{/api/mirrors}, the status page and
     C{rate(txgateway_mirror_mismatches_total[5m])}; tune ignore paths
     and tolerance until mismatches mean real differences; warning:
     mirroring duplicates side effects (only mirror side-effect-free
     endpoints such as inference).
  3. Split: weights 95/5 with C{sticky: {key: consumer}} (or
     C{header:X-User}); compare error rate and p95 per C{upstream} label
     (PromQL given).
  4. Ramp without a reload: C{curl -X PUT .../api/routes/predict/split
     -d '{"weights": {"model-v1": 75, "model-v2": 25}}'}, then 50, then
     100; roll back the same way; what stickiness does at each step.
  5. Promote: set C{upstream: model-v2} in the file (the runtime split is
     dropped by a reload that changes the route's upstreams), remove the
     mirror, reload, retire model-v1.


7. Tests still to write after integration
=========================================
- End-to-end against the real C{twistd -n txgateway}: a 90/10 split over
  1,000 requests within the bound of test_canary_split (100 +- 43);
  stickiness; the override from 127.0.0.1 (trusted) and from a public
  address through C{trusted_proxies} + X-Forwarded-For (untrusted);
  weights changed through the admin API under load with no failed
  request; a mirror upstream down, slow (10 s, with a 5 s timeout), and
  answering different JSON within and outside tolerance, with primary
  latency compared to the same run without mirroring, and the counts and
  samples of C{/api/mirrors} checked.
- Config: the route parser reporting canary problems with the route's
  name in the path; a split route's upstreams resolved to clusters.
- Metrics: the mismatch counter and the upstream label; access log field.
"""

__all__: list[str] = []
